//! Step parity of triplet tag-encoder training with PyTorch (scripts/fixtures_tagenc.py):
//! tokenization, the loss, the gradient of every trainable parameter at each of 3 steps, and the
//! parameters after 3 AdamW steps, at the bert-tiny config.
//!
//! Dropout is off on both sides (PyTorch: `model.eval()` with gradients; here:
//! `TripletConfig::dropout = false`), so the steps are deterministic.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use lion_core::testing::fixture;
use lion_core::testing::max_abs_diff;
use lion_train::tag_encoder::TagEncoder;
use lion_train::triplet::TripletMarginLoss;
use lion_train::triplet_trainer::{TripletConfig, TripletTrainer};

#[derive(serde::Deserialize)]
struct Reference {
    anchors: Vec<Vec<String>>,
    lr: f64,
    weight_decay: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    margin: f64,
    p: f64,
}

/// max |a - b| / max |b|
fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
    let scale = b
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
        .max(1e-12);
    max_abs_diff(a, b).unwrap() / scale
}

fn max_abs(t: &Tensor) -> f32 {
    t.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// `attention.self.key.bias` adds `q . b` to every score of a query, which softmax ignores: its
/// exact gradient is 0, and both sides give round-off (~1e-12), which has no relative accuracy.
fn exactly_zero_grad(name: &str) -> bool {
    name.ends_with("attention.self.key.bias")
}

fn scalar(t: &Tensor) -> f32 {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()[0]
}

#[test]
fn three_adamw_steps_match_pytorch() {
    let dev = Device::Cpu;
    let r: Reference = lion_core::util::read_json(fixture("tagenc/reference.json")).unwrap();
    let reference: HashMap<String, Tensor> =
        candle_core::safetensors::load(fixture("tagenc/reference.safetensors"), &dev).unwrap();
    let encoder = TagEncoder::load(fixture("tagenc/model"), &dev).unwrap();
    let initial: HashMap<String, Tensor> = encoder
        .varmap()
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().copy().unwrap()))
        .collect();
    let cfg = TripletConfig {
        lr: r.lr,
        weight_decay: r.weight_decay,
        beta1: r.beta1,
        beta2: r.beta2,
        adam_eps: r.eps,
        margin: r.margin,
        p: r.p,
        dropout: false,
        ..Default::default()
    };
    let mut trainer = TripletTrainer::new(encoder, cfg).unwrap();
    let vars = lion_core::weights::varmap_vars(trainer.encoder().varmap());
    // The same parameters train on both sides: everything but the (unused) pooler.
    let mut ref_names: Vec<&str> = reference
        .keys()
        .filter_map(|k| k.strip_prefix("grad.0."))
        .collect();
    ref_names.sort();
    let names: Vec<&str> = vars.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(names, ref_names);
    assert!(names.len() >= 37, "{}", names.len());

    let mut worst_grad = 0f32;
    for (s, texts) in r.anchors.iter().enumerate() {
        let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
        let batch = trainer.encoder().tokenize(&texts).unwrap();
        let ids = reference[&format!("input_ids.{s}")]
            .to_dtype(DType::U32)
            .unwrap();
        let mask = reference[&format!("attention_mask.{s}")]
            .to_dtype(DType::U32)
            .unwrap();
        assert_eq!(
            batch.input_ids.to_vec2::<u32>().unwrap(),
            ids.to_vec2::<u32>().unwrap(),
            "step {s}: token ids"
        );
        assert_eq!(
            batch.attention_mask.to_vec2::<u32>().unwrap(),
            mask.to_vec2::<u32>().unwrap()
        );
        let pos = &reference[&format!("positive.{s}")];
        let neg = &reference[&format!("negative.{s}")];
        let (loss, anchor) = trainer.loss(&texts, pos, neg, true).unwrap();
        let want = scalar(&reference[&format!("loss.{s}")]);
        let got = loss.to_scalar::<f32>().unwrap();
        assert!(
            ((got - want) / want).abs() <= 1e-4,
            "step {s}: loss {got} vs {want}"
        );
        if s == 0 {
            for (margin, p, key) in [(0.5, 1.0, "loss_p1"), (0.2, 3.0, "loss_p3")] {
                let l = TripletMarginLoss::new(margin, p)
                    .forward(&anchor, pos, neg)
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap();
                let want = scalar(&reference[key]);
                assert!(((l - want) / want).abs() <= 1e-4, "{key}: {l} vs {want}");
            }
            // FaceNet's squared form, its value and its gradient on the anchors
            let a = candle_core::Var::from_tensor(&anchor.detach()).unwrap();
            for (margin, p, key) in [(1.5, 2.0, "loss_sq2"), (0.2, 3.0, "loss_sq3")] {
                let sq = TripletMarginLoss {
                    squared: true,
                    ..TripletMarginLoss::new(margin, p)
                };
                let l = sq.forward(a.as_tensor(), pos, neg).unwrap();
                let got = l.to_scalar::<f32>().unwrap();
                let want = scalar(&reference[key]);
                assert!(
                    ((got - want) / want).abs() <= 1e-4,
                    "{key}: {got} vs {want}"
                );
                if key == "loss_sq2" {
                    let g = l.backward().unwrap();
                    let g = g.get(a.as_tensor()).expect("anchor gradient");
                    let err = max_abs(&(g - &reference["grad_anchor_sq2"]).unwrap());
                    assert!(err <= 1e-5, "grad_anchor_sq2: max abs error {err}");
                }
            }
        }
        let grads = loss.backward().unwrap();
        for (name, var) in &vars {
            let g = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("step {s}: no gradient for {name}"));
            let want = &reference[&format!("grad.{s}.{name}")];
            if exactly_zero_grad(name) {
                assert!(max_abs(g) <= 1e-9 && max_abs(want) <= 1e-9, "{name}");
                continue;
            }
            let e = rel_err(g, want);
            worst_grad = worst_grad.max(e);
            assert!(
                e <= 1e-4,
                "step {s}: gradient of {name}: relative error {e}"
            );
        }
        trainer.apply(&grads).unwrap();
    }
    let mut worst_param = 0f32;
    let mut worst_update = 0f32;
    for (name, var) in &vars {
        let want = &reference[&format!("param.{name}")];
        let e = rel_err(var.as_tensor(), want);
        worst_param = worst_param.max(e);
        assert!(e <= 1e-4, "{name} after 3 steps: relative error {e}");
        if exactly_zero_grad(name) {
            continue;
        }
        // The update itself (3 steps of about lr each) is compared too, relative to its size.
        let ours = (var.as_tensor() - &initial[name]).unwrap();
        let theirs = (want - &initial[name]).unwrap();
        let e = rel_err(&ours, &theirs);
        worst_update = worst_update.max(e);
        assert!(e <= 1e-3, "{name}: update over 3 steps: relative error {e}");
    }
    eprintln!(
        "worst relative errors: gradients {worst_grad:.2e}, parameters {worst_param:.2e}, updates {worst_update:.2e}"
    );
}
