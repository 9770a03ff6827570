//! Throughput of RAM tagging: 200 image files tagged in one batched `Tagger::tag_files` call
//! (decode + resize + normalise + forward + selection), tiny config over the full 4585-tag
//! vocabulary, random weights. Prints images/s.
//!
//! Run: `cargo bench -p lion-core --bench tagger` (release), or quicker to build:
//! `cargo test -p lion-core --bench tagger` (dev profile, dependencies optimised).
//! `LION_BENCH_IMAGES=N` changes the image count, `LION_BENCH_CONFIG` the RAM config
//! (`tiny`, `swin-l` or a JSON file).

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::Device;
use lion_core::tagger::{Ram, RamConfig, TagVocab, Tagger};

fn main() {
    let n: usize = std::env::var("LION_BENCH_IMAGES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let spec = std::env::var("LION_BENCH_CONFIG").unwrap_or_else(|_| "tiny".into());
    let cfg = RamConfig::from_name_or_file(&spec).expect("config");
    let dev = Device::Cpu;
    let model = Ram::random(&cfg, &dev).expect("model");
    let vocab = if cfg.num_tags == 4585 {
        TagVocab::ram()
    } else {
        TagVocab::synthetic(cfg.num_tags, 0.68)
    };
    let tagger = Tagger::new(model, vocab, dev).expect("tagger");

    let dir = tempfile::tempdir().expect("tempdir");
    let paths: Vec<PathBuf> = (0..n)
        .map(|i| {
            let p = dir.path().join(format!("img{i:04}.jpg"));
            let img = image::RgbImage::from_fn(160, 120, |x, y| {
                image::Rgb([
                    (x * 3 + i as u32) as u8,
                    (y * 5) as u8,
                    ((x ^ y) + 7 * i as u32) as u8,
                ])
            });
            img.save(&p).expect("write image");
            p
        })
        .collect();
    let refs: Vec<&Path> = paths.iter().map(|p| p.as_path()).collect();

    // where the time goes: the Swin alone and the whole model on a preprocessed batch
    let s = cfg.img_size();
    let batch = candle_core::Tensor::randn(0f32, 1., (n, 3, s, s), &Device::Cpu).expect("batch");
    let t0 = Instant::now();
    tagger.model.image_features(&batch).expect("swin");
    let t_swin = t0.elapsed().as_secs_f64();
    let t0 = Instant::now();
    tagger.model.forward(&batch, false).expect("forward");
    let t_all = t0.elapsed().as_secs_f64();
    println!(
        "preprocessed batch of {n}: swin {t_swin:.2} s, swin + head {t_all:.2} s ({:.1} images/s)",
        n as f64 / t_all
    );

    // warm-up on a few images
    tagger.tag_files(&refs[..n.min(4)]).expect("warm-up");
    let threads = candle_core::utils::get_num_threads();
    for run in 0..2 {
        let t0 = Instant::now();
        let out = tagger.tag_files(&refs).expect("tagging");
        let dt = t0.elapsed().as_secs_f64();
        assert_eq!(out.iter().filter(|r| r.is_ok()).count(), n);
        println!(
            "tagger bench run {run}: {n} images ({spec}, {} tags, {}px) in one call: {dt:.2} s, {:.1} images/s ({threads} threads)",
            cfg.num_tags,
            cfg.img_size(),
            n as f64 / dt
        );
    }
}
