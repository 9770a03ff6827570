//! The trainable tag encoder: every variable gets a gradient (tiny fixture and the real
//! all-MiniLM-L6-v2), the unused pooler is frozen, and a saved folder loads back as a
//! `SentenceEmbedder` that computes what the trained encoder computes.

use candle_core::{Device, Tensor};
use lion_core::sentence::SentenceEmbedder;
use lion_core::testing::{check_all_vars_get_grad, max_abs_diff};
use lion_core::testing::{fixture, minilm_dir};
use lion_core::weights::Checkpoint;
use lion_train::tag_encoder::TagEncoder;
use lion_train::triplet_trainer::{TripletConfig, TripletData, TripletTrainer};

fn unit_rows(b: usize, d: usize, dev: &Device) -> Tensor {
    let x = Tensor::randn(0f32, 1., (b, d), dev).unwrap();
    lion_core::bert::l2_normalize(&x).unwrap()
}

fn check_grads(dir: &std::path::Path, texts: &[&str]) -> usize {
    let dev = Device::Cpu;
    let enc = TagEncoder::load(dir, &dev).unwrap();
    let d = enc.embedder().hidden_size();
    let vm = enc.varmap().clone();
    assert!(
        vm.data()
            .lock()
            .unwrap()
            .keys()
            .all(|k| !k.contains("pooler")),
        "the pooler is not used by mean pooling and must not be trained"
    );
    let trainer = TripletTrainer::new(enc, TripletConfig::default()).unwrap();
    let b = texts.len();
    // dropout on (training mode), as in real training
    let (loss, _) = trainer
        .loss(texts, &unit_rows(b, d, &dev), &unit_rows(b, d, &dev), true)
        .unwrap();
    check_all_vars_get_grad(&vm, &loss).unwrap()
}

#[test]
fn every_tiny_tag_encoder_variable_gets_a_gradient() {
    let n = check_grads(
        &fixture("tagenc/model"),
        &[
            "dog: 0.9, grass: 0.8",
            "red: 0.99",
            "sky: 1.0, tree: 0.7, car: 0.5",
        ],
    );
    // 5 embedding tensors + 16 per layer x 2 layers
    assert_eq!(n, 5 + 2 * 16);
}

#[test]
fn every_minilm_tag_encoder_variable_gets_a_gradient() {
    let n = check_grads(
        &minilm_dir(),
        &[
            "dog: 0.9311, grass: 0.8125",
            "person: 0.7, shirt: 0.66, table: 0.61",
        ],
    );
    assert_eq!(n, 5 + 6 * 16);
}

#[test]
fn saved_folder_loads_and_embeds_like_the_trained_encoder() {
    let dev = Device::Cpu;
    let dir = tempfile::tempdir().unwrap();
    let src = fixture("tagenc/model");
    let enc = TagEncoder::load(&src, &dev).unwrap();
    let cfg = TripletConfig {
        lr: 1e-2,
        dropout: false,
        ..Default::default()
    };
    let mut trainer = TripletTrainer::new(enc, cfg).unwrap();
    let anchors = vec![
        "dog: 0.9, grass: 0.8".to_string(),
        "red: 0.99, circle: 0.5".to_string(),
        "sky: 1.0".to_string(),
    ];
    let data = TripletData::new(anchors.clone(), unit_rows(3, 32, &dev)).unwrap();
    for _ in 0..2 {
        trainer.step(&data, &[0, 1, 2], &[1, 2, 0]).unwrap();
    }
    let out = dir.path().join("model");
    trainer.encoder().save(&out).unwrap();
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "modules.json",
        "sentence_bert_config.json",
        "1_Pooling/config.json",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let texts: Vec<&str> = anchors.iter().map(String::as_str).collect();
    let trained = trainer
        .encoder()
        .forward(&trainer.encoder().tokenize(&texts).unwrap(), false)
        .unwrap();
    let loaded = SentenceEmbedder::load(&out, &dev, None).unwrap();
    let reloaded = loaded
        .forward(&loaded.tokenizer().batch(&texts, &dev).unwrap(), false)
        .unwrap();
    assert!(max_abs_diff(&trained, &reloaded).unwrap() < 1e-6);
    // training changed the embedding, and the saved file holds the trained weights
    let original = SentenceEmbedder::load(&src, &dev, None).unwrap();
    let before = original
        .forward(&original.tokenizer().batch(&texts, &dev).unwrap(), false)
        .unwrap();
    assert!(max_abs_diff(&before, &reloaded).unwrap() > 1e-3);
    // the pooler is saved back unchanged
    let a = Checkpoint::open(src.join("model.safetensors")).unwrap();
    let b = Checkpoint::open(out.join("model.safetensors")).unwrap();
    let key = "pooler.dense.weight";
    let d = max_abs_diff(&a.get(key, &dev).unwrap(), &b.get(key, &dev).unwrap()).unwrap();
    assert_eq!(d, 0.0);
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
}

#[test]
fn missing_model_folder_is_named() {
    let err = TagEncoder::load("/nonexistent/tag-encoder", &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("/nonexistent/tag-encoder"), "{err}");
}
