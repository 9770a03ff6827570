//! The quantized decoding kernel (`QWeight::matmul_wt` for a few rows: the weight streamed once,
//! dequantized in registers) at flan-t5-xl's decoder shapes, q8_0, q4_0 and q4k: the best of
//! `REPEATS` runs and the weight bytes read per second (compare `lion bench --stages stream`,
//! the machine's memory read rate).
//!
//! Before the kernels, the quantisation itself (`QWeight::quantize`, as `--quantize` runs it at
//! load and `lion convert` once): weights per second for each format.
//!
//! `cargo run --release -p lion-core --example quant_decode [REPEATS] [quantize]` (`quantize`:
//! stop after timing the quantisation)

use std::time::Instant;

use lion_core::cpu::Quantize;
use lion_core::quant::QWeight;

fn best(repeats: usize, f: impl Fn()) -> f64 {
    f();
    (0..repeats)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    let repeats: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    println!("cpu: {}", lion_core::cpu::summary());
    let (n, k) = (5120, 2048);
    let w: Vec<f32> = (0..n * k)
        .map(|i| ((i * 7919 % 1000) as f32 - 500.0) * 1e-3)
        .collect();
    for kind in Quantize::ALL {
        let t = best(repeats.min(3), || {
            std::hint::black_box(QWeight::quantize(&w, n, k, kind));
        });
        println!(
            "quantize {kind:?} ({n}, {k}): {:8.1} ms, {:7.1} M weights/s",
            t * 1e3,
            (n * k) as f64 / t / 1e6
        );
    }
    if std::env::args().nth(2).as_deref() == Some("quantize") {
        return;
    }
    // (n, k): flan-t5-xl's attention and feed-forward weights; 8 copies so they leave the cache
    for kind in Quantize::ALL {
        for (n, k) in [(2048, 2048), (5120, 2048), (2048, 5120)] {
            let w: Vec<f32> = (0..n * k)
                .map(|i| ((i * 7919 % 1000) as f32 - 500.0) * 1e-3)
                .collect();
            let ws: Vec<QWeight> = (0..8).map(|_| QWeight::quantize(&w, n, k, kind)).collect();
            for m in [1, 5, 10] {
                let x: Vec<f32> = (0..m * k).map(|i| (i % 13) as f32 * 0.1).collect();
                let t = best(repeats, || {
                    for q in &ws {
                        std::hint::black_box(q.matmul_wt(&x, m));
                    }
                });
                let bytes: usize = ws.iter().map(QWeight::size_in_bytes).sum();
                println!(
                    "{kind:?} n {n:5} k {k:5} m {m:2}: {:7.3} ms per weight, {:5.1} GB/s",
                    t / 8.0 * 1e3,
                    bytes as f64 / t / 1e9
                );
            }
        }
    }
}
