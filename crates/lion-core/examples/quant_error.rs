//! How far each weight format moves a model's quantizable weights (the ViT's and T5's linear
//! layers, those `--quantize` stores quantized, each in the format its role gives it: q4k keeps
//! the T5's `v` and `wo` at 8 bits): the relative RMS error
//! `sqrt(sum (w - dequantized)^2 / sum w^2)` over all of them, per format.
//!
//! `cargo run --release -p lion-core --example quant_error -- MODEL_FOLDER`
//! (e.g. `assets/shapes-backbone`; its weights are read from the folder's safetensors files).

use std::path::PathBuf;

use candle_core::Device;
use lion_core::cpu::Quantize;
use lion_core::linear::record_quantizable;
use lion_core::model_spec::ModelSpec;
use lion_core::quant::QWeight;
use lion_core::weights::{Checkpoint, LoadMode};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let Some(dir) = std::env::args().nth(1).map(PathBuf::from) else {
        eprintln!("usage: quant_error MODEL_FOLDER");
        std::process::exit(2);
    };
    let (built, keys) =
        record_quantizable(|| ModelSpec::from_folder(&dir, LoadMode::Strict)?.build());
    drop(built?);
    let mut files = vec![];
    for e in std::fs::read_dir(&dir)? {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == "safetensors") {
            files.push(Checkpoint::open(&p)?);
        }
    }
    let mut weights = vec![];
    for k in &keys {
        let Some(ck) = files.iter().find(|c| c.has_key(&k.key)) else {
            eprintln!(
                "{}: not stored densely in {} (skipped)",
                k.key,
                dir.display()
            );
            continue;
        };
        let w = ck
            .get(&k.key, &Device::Cpu)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        weights.push((w, k.n, k.k, k.role));
    }
    let count: usize = weights.iter().map(|(w, ..)| w.len()).sum();
    println!(
        "{}: {} quantizable weights, {count} values",
        dir.display(),
        weights.len()
    );
    for q in Quantize::ALL {
        let (mut err, mut norm) = (0f64, 0f64);
        for (w, n, k, role) in &weights {
            // each layer in the format its role gives it (q4k: some at 8 bits)
            let Some(f) = role.format(q).filter(|f| f.fits(*k)) else {
                continue;
            };
            let back = QWeight::quantize(w, *n, *k, f).dequantize();
            for (a, b) in w.iter().zip(&back) {
                err += ((a - b) as f64).powi(2);
                norm += (*a as f64).powi(2);
            }
        }
        println!(
            "{:<5} relative RMS error {:.2}%",
            q.name(),
            100.0 * (err / norm).sqrt()
        );
    }
    Ok(())
}
