//! What a run reports: per-stage timings, FLOP rates, peak memory, check samples; the table.

use std::collections::{BTreeMap, HashMap};

use candle_core::{DType, Tensor};
use lion_core::Result;
use serde::{Deserialize, Serialize};

use crate::*;

/// One stage's timings.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageResult {
    pub name: String,
    /// Seconds of each timed run.
    pub runs_s: Vec<f64>,
    pub median_s: f64,
    /// Matmul work of one run (GEMM-heavy stages).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gflop: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gflops: Option<f64>,
    /// `gflops` / the `gemm` stage's rate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub frac_of_gemm: Option<f64>,
    /// Bytes read from memory by one run, GB (the `stream` stage; the weights of one decoding
    /// step).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gbytes: Option<f64>,
    /// `gbytes` / the median time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gbps: Option<f64>,
    /// `gbps` / the `stream` stage's rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frac_of_stream: Option<f64>,
    /// Items per second (throughput stages).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub items_per_s: Option<f64>,
    /// Resident-set high-water mark during the stage, MiB.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak_rss_mib: Option<f64>,
    /// Sub-timings (median seconds), e.g. forward / backward / optimizer.
    #[serde(default, skip_serializing_if = "HashMap::is_empty")]
    pub parts_s: HashMap<String, f64>,
    /// Output samples for the cross-check with PyTorch: name -> a strided sample of at most
    /// [`CHECK_SAMPLES`] values of the flattened output (or the generated token ids).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub check: BTreeMap<String, Vec<f64>>,
}

/// Values kept per checked output.
pub const CHECK_SAMPLES: usize = 64;

/// Every `max(len / CHECK_SAMPLES, 1)`-th value of the flattened tensor, at most
/// [`CHECK_SAMPLES`] (`bench_torch.py` takes the same).
pub fn check_sample(t: &Tensor) -> Result<Vec<f64>> {
    let v: Vec<f32> = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    let stride = (v.len() / CHECK_SAMPLES).max(1);
    Ok(v.iter()
        .step_by(stride)
        .take(CHECK_SAMPLES)
        .map(|&x| x as f64)
        .collect())
}

/// The whole run, as printed with `--json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchReport {
    pub implementation: String,
    /// The CPU features and kernels picked ([`lion_core::cpu::summary`]).
    #[serde(default)]
    pub cpu: String,
    /// The inference stages' weight dtype.
    #[serde(default)]
    pub dtype: String,
    /// Where the stages ran (`cpu`, `cuda:0`).
    #[serde(default)]
    pub device: String,
    pub threads: usize,
    /// `CANDLE_NUM_THREADS` (candle's element-wise thread pool), when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candle_num_threads: Option<String>,
    /// 1-minute load average before and after (the machine may be shared).
    pub load_before: Option<f64>,
    pub load_after: Option<f64>,
    pub setup: BenchSetup,
    /// Building the model from the checkpoint files (read, convert, quantize): seconds and the
    /// resident-set high-water mark of the process up to then.
    #[serde(default)]
    pub load_s: Option<f64>,
    #[serde(default)]
    pub load_peak_rss_mib: Option<f64>,
    pub stages: Vec<StageResult>,
}

/// The report as a table (one row per stage).
pub fn table(r: &BenchReport) -> String {
    let mut out = format!(
        "{} | {} | weights {}{} | {} threads | load {:.1} -> {:.1} | preset {} | seq {} | beams {} | {} new tokens\ncpu: {}\n",
        r.implementation,
        if r.device.is_empty() { "cpu" } else { &r.device },
        r.dtype,
        r.setup
            .quantize
            .map_or(String::new(), |q| format!(" + {} (ViT, T5 blocks)", q.name())),
        r.threads,
        r.load_before.unwrap_or(f64::NAN),
        r.load_after.unwrap_or(f64::NAN),
        r.setup.preset,
        r.setup.seq_len(),
        r.setup.beams,
        r.setup.new_tokens,
        r.cpu,
    );
    if let (Some(t), Some(m)) = (r.load_s, r.load_peak_rss_mib) {
        out += &format!("model load: {t:.1} s, peak {m:.0} MiB\n");
    }
    out += &format!(
        "{:<16} {:>10} {:>10} {:>9} {:>9} {:>9} {:>9}  {}\n",
        "stage", "median ms", "min ms", "GFLOP", "GFLOP/s", "of GEMM", "peak MiB", "notes"
    );
    for s in &r.stages {
        let min = s.runs_s.iter().copied().fold(f64::INFINITY, f64::min);
        let opt = |x: Option<f64>, p: usize| x.map_or("-".to_string(), |v| format!("{v:.p$}"));
        let mut notes = vec![];
        if let Some(i) = s.items_per_s {
            notes.push(format!("{i:.3} items/s"));
        }
        if let (Some(b), Some(r)) = (s.gbytes, s.gbps) {
            let of = s
                .frac_of_stream
                .map_or(String::new(), |f| format!(" = {:.0}% of stream", f * 100.0));
            notes.push(format!("reads {b:.3} GB at {r:.1} GB/s{of}"));
        }
        let mut parts: Vec<_> = s.parts_s.iter().collect();
        parts.sort_by(|a, b| a.0.cmp(b.0));
        for (k, v) in parts {
            notes.push(format!("{k} {:.0} ms", v * 1e3));
        }
        out += &format!(
            "{:<16} {:>10.1} {:>10.1} {:>9} {:>9} {:>9} {:>9}  {}\n",
            s.name,
            s.median_s * 1e3,
            min * 1e3,
            opt(s.gflop, 2),
            opt(s.gflops, 1),
            s.frac_of_gemm
                .map_or("-".to_string(), |f| format!("{:.0}%", f * 100.0)),
            opt(s.peak_rss_mib, 0),
            notes.join(", ")
        );
    }
    out
}
