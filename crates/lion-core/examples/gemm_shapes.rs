//! The f32 GEMM kernels at the model's shapes, candle's matmul (the `gemm` crate) against
//! `lion_core::sgemm` (AVX-512, or its AVX2 tile), alternating, median of `REPEATS`: the
//! forward `x (m, k) @ W^T` with W (n, k), the backward's input gradient `g (m, n) @ W (n, k)`
//! and weight gradient `g^T @ x`, and attention's per-head products batched over heads
//! (`sgemm::matmul_tensors`); where the CPU has AVX512-BF16, also `sgemm` f32 against `bf16::matmul_wt` (W stored in bf16).
//!
//! It first measures the cores' FMA peak (independent FMA chains on every rayon thread, with
//! the widest vectors the tile uses: 512-bit where sgemm runs its AVX-512 tile, else 256-bit),
//! so that each rate can be read as a fraction of what the machine can do at all.
//!
//! `cargo run --release -p lion-core --example gemm_shapes [REPEATS]`
//!
//! It tunes glibc's allocator first, as the `lion` binary does at start-up
//! (`lion_core::util::tune_allocator`: buffers up to 32 MiB from the heap, not fresh `mmap`s
//! whose pages fault in on every call); `NO_TUNE=1` skips that, to see what a library caller
//! who does not call it gets.

use std::time::Instant;

use candle_core::{Device, Tensor};
use lion_core::sgemm::{self, MatRef};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Times `theirs` and `ours` alternately (one warm-up each) and prints one row for an
/// (m, k) @ (k, n) product.
fn compare<T, U>(
    label: String,
    (m, k, n): (usize, usize, usize),
    repeats: usize,
    theirs: impl Fn() -> T,
    ours: impl Fn() -> U,
) {
    let (mut a, mut b) = (vec![], vec![]);
    for i in 0..repeats + 1 {
        let t = Instant::now();
        std::hint::black_box(theirs());
        let ta = t.elapsed().as_secs_f64();
        let t = Instant::now();
        std::hint::black_box(ours());
        let tb = t.elapsed().as_secs_f64();
        if i > 0 {
            a.push(ta);
            b.push(tb);
        }
    }
    let (ta, tb) = (median(a), median(b));
    let gf = 2.0 * (m * n * k) as f64 / 1e9;
    println!(
        "{label:<20} {:>12.3} {:>8.1} {:>10.3} {:>8.1} {:>8.2}x",
        ta * 1e3,
        gf / ta,
        tb * 1e3,
        gf / tb,
        ta / tb
    );
}

/// FMA throughput of as many threads as rayon has, all at once (GFLOP/s, best of 5 rounds of ~0.1 s): 12
/// independent chains per thread, as many as the tile's accumulators, so latency is hidden.
#[cfg(target_arch = "x86_64")]
fn fma_peak(wide: bool) -> f64 {
    use std::arch::x86_64::*;
    const STEPS: usize = 4_000_000;
    #[target_feature(enable = "avx2,fma")]
    unsafe fn chains256() -> f32 {
        let (x, y) = (_mm256_set1_ps(0.999_999), _mm256_set1_ps(1e-7));
        let mut a = [_mm256_set1_ps(1.0); 12];
        for _ in 0..STEPS {
            for v in a.iter_mut() {
                *v = _mm256_fmadd_ps(*v, x, y);
            }
        }
        a.iter().map(|v| _mm256_cvtss_f32(*v)).sum()
    }
    #[target_feature(enable = "avx512f")]
    unsafe fn chains512() -> f32 {
        let (x, y) = (_mm512_set1_ps(0.999_999), _mm512_set1_ps(1e-7));
        let mut a = [_mm512_set1_ps(1.0); 12];
        for _ in 0..STEPS {
            for v in a.iter_mut() {
                *v = _mm512_fmadd_ps(*v, x, y);
            }
        }
        a.iter().map(|v| _mm512_reduce_add_ps(*v)).sum()
    }
    on_every_thread(if wide { 16.0 } else { 8.0 } * 2.0, STEPS * 12, move || {
        // SAFETY: `wide` only where the CPU has AVX-512 F; sgemm::available() (checked by the
        // caller) means AVX2 + FMA otherwise.
        unsafe {
            if wide {
                chains512()
            } else {
                chains256()
            }
        }
    })
}

/// `vdpbf16ps` throughput of as many threads as rayon has, all at once (GFLOP/s: 16 lanes x
/// 2 products x 2 flops per instruction), 24 independent chains per thread like the bf16 tile.
#[cfg(target_arch = "x86_64")]
fn dpbf16_peak() -> f64 {
    use std::arch::x86_64::*;
    const STEPS: usize = 2_000_000;
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn chains() -> f32 {
        let x: __m512bh = std::mem::transmute(_mm512_set1_epi16(0x3f80));
        let y: __m512bh = std::mem::transmute(_mm512_set1_epi16(0x3380));
        let mut a = [_mm512_set1_ps(1.0); 24];
        for _ in 0..STEPS {
            for v in a.iter_mut() {
                *v = _mm512_dpbf16_ps(*v, x, y);
            }
        }
        a.iter().map(|v| _mm512_reduce_add_ps(*v)).sum()
    }
    // SAFETY: called only where cpu::kernels() picked the AVX512-BF16 kernel.
    on_every_thread(64.0, STEPS * 24, || unsafe { chains() })
}

/// Runs `f` on one OS thread per rayon thread, all at once, 5 times; the best rate in GFLOP/s
/// given `flops` per instruction and `count` instructions per thread.
#[cfg(target_arch = "x86_64")]
fn on_every_thread(flops: f64, count: usize, f: impl Fn() -> f32 + Copy + Send) -> f64 {
    let threads = rayon::current_num_threads();
    (0..5)
        .map(|_| {
            let t = Instant::now();
            // one OS thread per rayon thread, all at once
            let s: f32 = std::thread::scope(|sc| {
                let runs: Vec<_> = (0..threads).map(|_| sc.spawn(f)).collect();
                runs.into_iter()
                    .map(|r| r.join().expect("peak thread"))
                    .sum()
            });
            std::hint::black_box(s);
            (threads * count) as f64 * flops / t.elapsed().as_secs_f64() / 1e9
        })
        .fold(0.0, f64::max)
}

fn random(rows: usize, cols: usize) -> candle_core::Result<(Tensor, Vec<f32>)> {
    let t = Tensor::randn(0f32, 1., (rows, cols), &Device::Cpu)?;
    let v = t.flatten_all()?.to_vec1::<f32>()?;
    Ok((t, v))
}

fn main() -> candle_core::Result<()> {
    if std::env::var_os("NO_TUNE").is_none() {
        lion_core::util::tune_allocator();
    }
    let repeats: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    println!("cpu: {}", lion_core::cpu::summary());
    println!("threads: {}", rayon::current_num_threads());
    if !sgemm::available() {
        println!(
            "no sgemm kernel on this CPU (neither AVX-512 nor AVX2 + FMA): nothing to compare"
        );
        return Ok(());
    }
    #[cfg(target_arch = "x86_64")]
    {
        let wide = lion_core::cpu::kernels().f32_gemm == lion_core::cpu::F32Gemm::Avx512;
        let bits = if wide { 512 } else { 256 };
        println!(
            "FMA peak ({bits}-bit, all threads): {:.1} GFLOP/s",
            fma_peak(wide)
        );
        if lion_core::cpu::kernels().bf16 == lion_core::cpu::Bf16Kernel::Avx512Bf16 {
            println!(
                "vdpbf16ps peak (512-bit, all threads): {:.1} GFLOP/s",
                dpbf16_peak()
            );
        }
    }
    // (m, k, n): T5-base encoder (349 rows), ViT-B (257), Q-Former (32), train batch (698), square
    let shapes = [
        (32, 768, 768),
        (32, 768, 3072),
        (32, 3072, 768),
        (257, 768, 2304),
        (257, 768, 3072),
        (257, 3072, 768),
        (349, 768, 768),
        (349, 768, 2048),
        (349, 2048, 768),
        (698, 768, 768),
        (1344, 384, 384),
        (1344, 384, 1536),
        (1344, 1536, 384),
        (2048, 2048, 2048),
    ];
    println!("x @ W^T: m x k x n   gemm crate ms  GFLOP/s   sgemm ms  GFLOP/s   speedup");
    for (m, k, n) in shapes {
        let (x, xv) = random(m, k)?;
        let (w, wv) = random(n, k)?;
        let wt = w.t()?;
        compare(
            format!("{m}x{k}x{n}"),
            (m, k, n),
            repeats,
            || x.matmul(&wt).expect("candle matmul"),
            || {
                sgemm::matmul(
                    m,
                    n,
                    k,
                    MatRef::row_major(&xv, k),
                    MatRef::transposed(&wv, k),
                )
            },
        );
    }
    println!("g @ W: m x n x k     gemm crate ms  GFLOP/s   sgemm ms  GFLOP/s   speedup");
    for (m, n, k) in [
        (40, 32128, 768),
        (698, 768, 768),
        (698, 2048, 768),
        (40, 768, 768),
        (1344, 384, 384),
        (1344, 1536, 384),
        (1344, 384, 1536),
    ] {
        let (g, gv) = random(m, n)?;
        let (w, wv) = random(n, k)?;
        compare(
            format!("{m}x{n}x{k}"),
            (m, n, k),
            repeats,
            || g.matmul(&w).expect("candle matmul"),
            || {
                sgemm::matmul(
                    m,
                    k,
                    n,
                    MatRef::row_major(&gv, n),
                    MatRef::row_major(&wv, k),
                )
            },
        );
    }
    // the weight gradient g^T @ x: g (t, n) and x (t, k) row-major, A = g^T a transposed view;
    // t = 1344: the tag-encoder step's tokens (32 strings of 42), n/k its widths
    println!("g^T @ x: m x t x k   gemm crate ms  GFLOP/s   sgemm ms  GFLOP/s   speedup");
    for (m, t, k) in [
        (384, 1344, 384),
        (1536, 1344, 384),
        (384, 1344, 1536),
        (768, 698, 768),
        (2048, 698, 768),
    ] {
        let (g, gv) = random(t, m)?;
        let (x, xv) = random(t, k)?;
        let gt = g.t()?;
        compare(
            format!("{m}x{t}x{k}"),
            (m, t, k),
            repeats,
            || gt.matmul(&x).expect("candle matmul"),
            || {
                sgemm::matmul(
                    m,
                    k,
                    t,
                    MatRef::transposed(&gv, m),
                    MatRef::row_major(&xv, k),
                )
            },
        );
    }
    // attention's per-head products, batched over (batch x heads) through `matmul_tensors` as
    // the attention kernel runs them: scores q @ k^T, context p @ v, and the backward's
    // dv = p^T @ g (A a transposed view; sgemm runs it swapped, see `tall_transposed`).
    // 24 = the train step's 2 x 12 heads of T5-base over 349 tokens; 384 = the tag-encoder
    // step's 32 strings x 12 heads of MiniLM (head width 32) over 42 tokens
    println!("heads x (m x k x n)  gemm crate ms  GFLOP/s   sgemm ms  GFLOP/s   speedup");
    for (h, t, d) in [(24, 349, 64), (384, 42, 32)] {
        let q = Tensor::randn(0f32, 1., (h, t, d), &Device::Cpu)?;
        let kk = Tensor::randn(0f32, 1., (h, t, d), &Device::Cpu)?;
        let p = Tensor::randn(0f32, 1., (h, t, t), &Device::Cpu)?;
        let (kt, pt) = (kk.t()?, p.t()?);
        for (label, (m, k, n), a, b) in [
            ("q @ k^T", (t, d, t), &q, &kt),
            ("p @ v", (t, t, d), &p, &kk),
            ("p^T @ g", (t, t, d), &pt, &q),
        ] {
            compare(
                format!("{h} x {label} {m}x{k}x{n}"),
                (h * m, k, n),
                repeats,
                // candle's matmul takes a transposed batch item only as a copy
                || {
                    a.matmul(b)
                        .or_else(|_| a.contiguous()?.matmul(b))
                        .expect("candle matmul")
                },
                || sgemm::matmul_tensors(a, b).expect("sgemm batched"),
            );
        }
    }
    if lion_core::cpu::kernels().bf16 != lion_core::cpu::Bf16Kernel::Avx512Bf16 {
        println!("no AVX512-BF16 on this CPU: the bf16 kernel is not compared");
        return Ok(());
    }
    println!("bf16 W: m x k x n    sgemm f32 ms  GFLOP/s    bf16 ms  GFLOP/s   speedup (bf16: bf16::matmul_wt as dispatched)");
    for (m, k, n) in shapes
        .into_iter()
        // LION-4B: the T5-XL encoder (349 rows) and ViT-g (257), and decoding (5 beams)
        .chain([
            (349, 2048, 2048),
            (349, 2048, 5120),
            (349, 5120, 2048),
            (257, 1408, 4224),
            (257, 6144, 1408),
            (5, 2048, 5120),
            (5, 2048, 32128),
        ])
    {
        let (_, xv) = random(m, k)?;
        let (_, wv) = random(n, k)?;
        let wb = lion_core::bf16::to_bf16(&wv);
        compare(
            format!("{m}x{k}x{n}"),
            (m, k, n),
            repeats,
            || sgemm::matmul_wt(&xv, m, k, &wv, n),
            || lion_core::bf16::matmul_wt(&xv, m, k, &wb, n),
        );
    }
    Ok(())
}
