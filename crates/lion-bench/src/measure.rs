//! Timing and memory: warm-up plus timed runs (device-synchronised), medians, peak RSS, load.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use candle_core::Device;
use lion_core::Result;

use crate::*;

pub fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The 1-minute load average (Linux).
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Resets the resident-set high-water mark (Linux >= 4.0; silently nothing elsewhere).
pub(crate) fn reset_peak_rss() {
    // the heap keeps freed memory for reuse (lion_core::util::tune_allocator): give it back
    // first, so a stage's peak is not the previous stage's leftovers
    lion_core::util::release_free_memory();
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// `VmHWM` in MiB.
pub fn peak_rss_mib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Times `f`: one warm-up run, then `repeats` timed runs (seconds).
/// Runs `f` once to warm up, then `repeats` timed times; on a GPU each timing waits for the
/// device to finish (a no-op on the CPU).
pub(crate) fn time_runs(
    dev: &Device,
    repeats: usize,
    mut f: impl FnMut() -> Result<()>,
) -> Result<Vec<f64>> {
    f()?;
    dev.synchronize()?;
    (0..repeats)
        .map(|_| {
            let t0 = Instant::now();
            f()?;
            dev.synchronize()?;
            Ok(t0.elapsed().as_secs_f64())
        })
        .collect()
}

pub(crate) fn stage(name: &str, runs: Vec<f64>) -> StageResult {
    StageResult {
        name: name.into(),
        median_s: median(&runs),
        runs_s: runs,
        gflop: None,
        gflops: None,
        frac_of_gemm: None,
        gbytes: None,
        gbps: None,
        frac_of_stream: None,
        items_per_s: None,
        peak_rss_mib: peak_rss_mib(),
        parts_s: HashMap::new(),
        check: BTreeMap::new(),
    }
}

/// The stage read `bytes` per run: its rate and, given the `stream` stage's, the fraction of it.
pub(crate) fn with_bytes(mut st: StageResult, bytes: f64, stream: Option<f64>) -> StageResult {
    let rate = bytes / st.median_s / 1e9;
    st.gbytes = Some(bytes / 1e9);
    st.gbps = Some(rate);
    st.frac_of_stream = stream.map(|g| rate / g);
    st
}

/// The machine's rate of reading memory: `mib` MiB of f32 summed in parallel (rayon's threads,
/// as the kernels use), once to warm up (page the buffer in), then `repeats` times. Far more
/// than the last-level cache, so each run reads memory.
pub(crate) fn stream_runs(mib: usize, repeats: usize) -> Result<(Vec<f64>, f64)> {
    use rayon::prelude::*;
    let n = mib * (1 << 20) / 4;
    let data: Vec<f32> = (0..n).map(|i| (i % 7) as f32).collect();
    let runs = time_runs(&Device::Cpu, repeats, || {
        let s: f32 = data
            .par_chunks(1 << 16)
            .map(|c| {
                // 16 independent sums, so the loop vectorises and is not latency-bound
                let mut acc = [0f32; 16];
                for ch in c.chunks_exact(16) {
                    for (a, x) in acc.iter_mut().zip(ch) {
                        *a += x;
                    }
                }
                acc.iter().sum::<f32>()
            })
            .sum();
        std::hint::black_box(s);
        Ok(())
    })?;
    Ok((runs, (n * 4) as f64))
}

pub(crate) fn with_flops(mut st: StageResult, flop: f64, gemm: Option<f64>) -> StageResult {
    let rate = flop / st.median_s / 1e9;
    st.gflop = Some(flop / 1e9);
    st.gflops = Some(rate);
    st.frac_of_gemm = gemm.map(|g| rate / g);
    st
}
