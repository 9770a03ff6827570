//! `TripletTrainer::fit` at the tiny config: outputs, determinism from the seed, and a
//! non-finite loss stopping the run with a clear message.

use candle_core::{Device, Tensor};
use lion_core::testing::fixture;
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

#[test]
fn eval_every_writes_a_line_per_validation_and_patience_stops_at_the_best() {
    let tmp = tempfile::tempdir().unwrap();
    let d = data(8, None);
    // 6 training images in batches of 3: 2 steps per epoch; a validation every step.
    let every = TripletConfig {
        eval_every: 1,
        epochs: 3,
        ..cfg()
    };
    let h = run(&tmp.path().join("e"), every.clone(), &d).unwrap();
    let steps: Vec<(usize, usize)> = h.iter().map(|m| (m.epoch, m.step)).collect();
    assert_eq!(
        steps,
        [(0, 0), (1, 1), (1, 2), (2, 3), (2, 4), (3, 5), (3, 6)]
    );
    assert!(h[1..]
        .iter()
        .all(|m| m.steps == 1 && m.train_loss.is_some()));
    // The same run validated only at epoch ends has the same epoch-end validations.
    let ends = run(
        &tmp.path().join("n"),
        TripletConfig {
            eval_every: 0,
            ..every.clone()
        },
        &d,
    )
    .unwrap();
    assert_eq!(ends.len(), 4);
    assert_eq!(ends[3].val_loss, h[6].val_loss);

    // A learning rate this high overshoots: the validation loss rises, and patience 2 stops
    // the run two validations after its best, keeping the best weights.
    let wild = TripletConfig {
        lr: 0.5,
        patience: 2,
        epochs: 20,
        ..every
    };
    let dir = tmp.path().join("p");
    let enc = TagEncoder::load(fixture("tagenc/model"), &Device::Cpu).unwrap();
    let mut t = TripletTrainer::new(enc, wild).unwrap();
    let out = TrainOutputs { dir: dir.clone() };
    let h = t.fit(&d, &out, |_| {}).unwrap();
    assert!(h.len() < 41, "stopped early: {} validations", h.len());
    let losses: Vec<f64> = h.iter().map(|m| m.val_loss.unwrap()).collect();
    let best = losses.iter().copied().fold(f64::INFINITY, f64::min);
    let at = losses.iter().position(|&l| l == best).unwrap();
    assert_eq!(
        at + 2,
        h.len() - 1,
        "stops 2 validations after the best: {losses:?}"
    );
    // The saved folder is the best validation's weights: reloaded, it scores the best loss.
    let (_, val) = split(8, 0.25, 5);
    let saved = TripletTrainer::new(TagEncoder::load(&dir, &Device::Cpu).unwrap(), cfg()).unwrap();
    let mut rng = lion_train::rng::SplitMix64::new(5 ^ 0x7A1_0000_0000_0002);
    let neg: Vec<usize> = val
        .iter()
        .map(|&i| lion_train::triplet_trainer::draw_negative(&mut rng, &val, i))
        .collect();
    let reloaded = saved.evaluate(&d, &val, &neg).unwrap().loss().unwrap();
    assert!((reloaded - best).abs() < 1e-4, "{reloaded} vs best {best}");

    let bad = TripletConfig {
        patience: 1,
        val_fraction: 0.0,
        ..cfg()
    };
    let e = bad.validate().unwrap_err().to_string();
    assert!(e.contains("patience") && e.contains("validation"), "{e}");
}
