//! `TripletTrainer::fit` at the tiny config: outputs, determinism from the seed, and a
//! non-finite loss stopping the run with a clear message.

mod common;

use candle_core::{Device, Tensor};
use common::fixture;
use lion_train::tag_encoder::TagEncoder;
use lion_train::triplet_trainer::{
    split, EpochMetrics, TrainEvent, TrainOutputs, TripletConfig, TripletData, TripletTrainer,
};

fn data(n: usize, nan_at: Option<usize>) -> TripletData {
    let words = ["dog", "cat", "red", "blue", "sky", "grass", "tree", "car"];
    let anchors: Vec<String> = (0..n)
        .map(|i| {
            format!(
                "{}: 0.9, {}: 0.{}",
                words[i % 8],
                words[(i * 3 + 1) % 8],
                5 + i % 4
            )
        })
        .collect();
    let mut v: Vec<f32> = (0..n * 32)
        .map(|i| ((i * 7919) % 97) as f32 / 97.0 - 0.5)
        .collect();
    if let Some(i) = nan_at {
        v[i * 32] = f32::NAN;
    }
    let p = Tensor::from_vec(v, (n, 32), &Device::Cpu).unwrap();
    TripletData::new(anchors, lion_core::bert::l2_normalize(&p).unwrap()).unwrap()
}

fn cfg() -> TripletConfig {
    TripletConfig {
        epochs: 2,
        batch_size: 3,
        lr: 1e-3,
        val_fraction: 0.25,
        seed: 5,
        dropout: false,
        ..Default::default()
    }
}

fn run(
    dir: &std::path::Path,
    cfg: TripletConfig,
    d: &TripletData,
) -> lion_core::Result<Vec<EpochMetrics>> {
    run_with(dir, cfg, d).map(|(h, _)| h)
}

fn run_with(
    dir: &std::path::Path,
    cfg: TripletConfig,
    d: &TripletData,
) -> lion_core::Result<(Vec<EpochMetrics>, TripletTrainer)> {
    let enc = TagEncoder::load(fixture("tagenc/model"), &Device::Cpu)?;
    let epochs = cfg.epochs;
    let mut t = TripletTrainer::new(enc, cfg)?;
    let mut steps = 0;
    let out = TrainOutputs {
        dir: dir.to_path_buf(),
    };
    let h = t.fit(d, &out, |e| {
        if let TrainEvent::Step { .. } = e {
            steps += 1
        }
    })?;
    assert_eq!(steps, 2 * epochs, "6 training images in batches of 3");
    Ok((h, t))
}

#[test]
fn fit_writes_metrics_curves_and_model_and_is_seeded() {
    let tmp = tempfile::tempdir().unwrap();
    let d = data(8, None);
    let a = run(&tmp.path().join("a"), cfg(), &d).unwrap();
    let b = run(&tmp.path().join("b"), cfg(), &d).unwrap();
    assert_eq!(a.len(), 3);
    let strip = |h: &[EpochMetrics]| -> Vec<(Option<f64>, Option<f64>, Option<f64>)> {
        h.iter()
            .map(|m| (m.train_loss, m.val_loss, m.val_cos_ap))
            .collect()
    };
    assert_eq!(strip(&a), strip(&b), "same seed, same run");
    let lines = std::fs::read_to_string(tmp.path().join("a/metrics.jsonl")).unwrap();
    let rows: Vec<EpochMetrics> = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[2].epoch, 2);
    assert!(rows[2].val_loss.unwrap().is_finite());
    assert!(tmp.path().join("a/curves.png").is_file());
    assert!(tmp.path().join("a/model.safetensors").is_file());
    // Training lowers the loss on the training images (scored with fixed negatives).
    let (train, _) = split(8, 0.25, 5);
    let neg: Vec<usize> = train.iter().map(|&i| (i + 1) % 8).collect();
    let enc = TagEncoder::load(fixture("tagenc/model"), &Device::Cpu).unwrap();
    let fresh = TripletTrainer::new(enc, cfg()).unwrap();
    let before = fresh.evaluate(&d, &train, &neg).unwrap().loss().unwrap();
    let strong = TripletConfig {
        lr: 1e-2,
        epochs: 10,
        ..cfg()
    };
    let (_, trained) = run_with(&tmp.path().join("s"), strong, &d).unwrap();
    let after = trained.evaluate(&d, &train, &neg).unwrap().loss().unwrap();
    assert!(after < before - 0.05, "loss {before} -> {after}");
    let c = run(
        &tmp.path().join("c"),
        TripletConfig { seed: 6, ..cfg() },
        &d,
    )
    .unwrap();
    assert_ne!(strip(&a), strip(&c), "another seed, another split/order");
}

#[test]
fn non_finite_loss_stops_with_a_clear_message() {
    let tmp = tempfile::tempdir().unwrap();
    let d = data(6, Some(2));
    let cfg = TripletConfig {
        val_fraction: 0.0,
        ..cfg()
    };
    let err = run(tmp.path(), cfg, &d).unwrap_err().to_string();
    assert!(
        err.contains("not finite") && err.contains("epoch 1 step"),
        "{err}"
    );
    // epoch 0 was recorded, no epoch was finished, so no model was written
    let lines = std::fs::read_to_string(tmp.path().join("metrics.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), 1);
    assert!(!tmp.path().join("model.safetensors").exists());
}

#[test]
fn too_few_images_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let err = run(
        tmp.path(),
        TripletConfig {
            val_fraction: 0.5,
            ..cfg()
        },
        &data(2, None),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("at least 2"), "{err}");
}
