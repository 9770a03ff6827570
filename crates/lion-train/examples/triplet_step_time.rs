//! Seconds per triplet training step of the tag encoder, split into forward (tokenizer, encoder
//! and loss), backward and the AdamW update, as wall time and as this process's CPU time (on a
//! shared machine the CPU time is the steadier number).
//!
//! cargo run -p lion-train --example triplet_step_time -- [MODEL_DIR] [BATCH] [STEPS]
//! (defaults: models/all-MiniLM-L6-v2, 32, 3; tag strings of about 40 tokens)

use std::time::Instant;

use candle_core::{Device, Tensor};
use lion_train::tag_encoder::TagEncoder;
use lion_train::triplet_trainer::{TripletConfig, TripletTrainer};

/// This process's user + system CPU seconds (Linux /proc; 0 elsewhere).
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // fields after the ")" of the command name; utime and stime are the 12th and 13th there
    let rest = stat.rsplit_once(')').map_or("", |r| r.1);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

fn main() -> lion_core::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let dir = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "models/all-MiniLM-L6-v2".into());
    let batch: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(32);
    let steps: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(3);
    let dev = Device::Cpu;
    let enc = TagEncoder::load(&dir, &dev)?;
    let d = enc.embedder().hidden_size();
    let words = [
        "person", "shirt", "table", "cup", "dog", "grass", "sky", "tree", "car", "road",
        "building", "window", "plate", "food", "man", "woman",
    ];
    let texts: Vec<String> = (0..batch)
        .map(|i| {
            (0..5 + i % 2)
                .map(|j| {
                    let w = words[(i * 7 + j * 3) % words.len()];
                    format!("{w}: 0.{}", 9999 - (i * 131 + j * 977) % 5000)
                })
                .collect::<Vec<_>>()
                .join(", ")
        })
        .collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let tokens = enc.tokenize(&refs)?;
    let (b, t) = tokens.input_ids.dims2()?;
    let real: u32 = tokens.attention_mask.sum_all()?.to_scalar()?;
    println!(
        "model {dir}: batch {b}, {:.1} tokens per string on average, padded to {t}; {steps} steps",
        real as f64 / b as f64
    );
    let pos = lion_core::bert::l2_normalize(&Tensor::randn(0f32, 1., (b, d), &dev)?)?;
    let neg = lion_core::bert::l2_normalize(&Tensor::randn(0f32, 1., (b, d), &dev)?)?;
    let mut trainer = TripletTrainer::new(enc, TripletConfig::default())?;
    for step in 0..=steps {
        let (w0, c0) = (Instant::now(), cpu_seconds());
        let (loss, _) = trainer.loss(&refs, &pos, &neg, true)?;
        let _ = loss.to_scalar::<f32>()?;
        let (w1, c1) = (Instant::now(), cpu_seconds());
        let grads = loss.backward()?;
        let (w2, c2) = (Instant::now(), cpu_seconds());
        trainer.apply(&grads)?;
        let (w3, c3) = (Instant::now(), cpu_seconds());
        let label = if step == 0 {
            "warm-up".to_string()
        } else {
            format!("step {step}")
        };
        println!(
            "{label}: total {:.2} s wall / {:.2} s cpu | forward {:.2}/{:.2} backward {:.2}/{:.2} adamw {:.2}/{:.2}",
            (w3 - w0).as_secs_f64(),
            c3 - c0,
            (w1 - w0).as_secs_f64(),
            c1 - c0,
            (w2 - w1).as_secs_f64(),
            c2 - c1,
            (w3 - w2).as_secs_f64(),
            c3 - c2,
        );
    }
    Ok(())
}
