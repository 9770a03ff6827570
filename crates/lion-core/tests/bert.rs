//! BERT parity with `transformers.BertModel` (fixtures by scripts/fixtures_bert.py), weight
//! loading from safetensors and .pth, key reports, bad files, and gradients.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use lion_core::bert::{BertConfig, BertModel};
use lion_core::sentence::load_bert;
use lion_core::testing::fixture;
use lion_core::testing::{check_all_vars_get_grad, max_abs_diff};
use lion_core::weights::{Checkpoint, LoadMode, WeightLoader};
use lion_core::Error;

fn io() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture("bert-tiny/io.safetensors"), &Device::Cpu).unwrap()
}

fn cfg() -> BertConfig {
    BertConfig::from_file(fixture("bert-tiny/config.json")).unwrap()
}

fn run(model: &BertModel, io: &HashMap<String, Tensor>) -> (Tensor, Tensor) {
    let ids = io["input_ids"].to_dtype(DType::U32).unwrap();
    let mask = &io["attention_mask"];
    let tt = io["token_type_ids"].to_dtype(DType::U32).unwrap();
    let h = model.forward(&ids, Some(&tt), Some(mask), false).unwrap();
    let p = model.pool(&h).unwrap().expect("pooler loaded");
    (h, p)
}

fn check_parity(file: &str) {
    let io = io();
    let (model, report) = load_bert(&cfg(), &fixture(file), &Device::Cpu, None).unwrap();
    assert!(report.is_clean(), "{report}");
    let (h, p) = run(&model, &io);
    // Padded positions' states are compared too: HF computes them the same way.
    let dh = max_abs_diff(&h, &io["last_hidden_state"]).unwrap();
    let dp = max_abs_diff(&p, &io["pooler_output"]).unwrap();
    assert!(dh <= 1e-5, "{file}: last_hidden_state differs by {dh}");
    assert!(dp <= 1e-5, "{file}: pooler_output differs by {dp}");
}

#[test]
fn parity_from_safetensors() {
    check_parity("bert-tiny/model.safetensors");
}

#[test]
fn parity_from_pth_state_dict() {
    check_parity("bert-tiny/model.pth");
}

#[test]
fn parity_from_pth_wrapped_in_model_key() {
    check_parity("bert-tiny/model_wrapped.pth");
}

fn tensors() -> HashMap<String, Tensor> {
    Checkpoint::open(fixture("bert-tiny/model.safetensors"))
        .unwrap()
        .load_all(&Device::Cpu)
        .unwrap()
}

fn load_from(
    ts: HashMap<String, Tensor>,
    mode: LoadMode,
) -> lion_core::Result<lion_core::weights::LoadReport> {
    let loader = WeightLoader::new(vec![Checkpoint::from_tensors("edited.safetensors", ts)]);
    let vb = loader.var_builder(DType::F32, &Device::Cpu);
    BertModel::new(&cfg(), vb)?;
    loader.finish(mode)
}

#[test]
fn renamed_key_is_named_in_the_error() {
    let mut ts = tensors();
    let t = ts
        .remove("encoder.layer.1.attention.self.key.weight")
        .unwrap();
    ts.insert("encoder.layer.1.attention.self.kee.weight".into(), t);
    let err = load_from(ts.clone(), LoadMode::Strict).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::Keys { .. }), "{msg}");
    assert!(msg.contains("edited.safetensors"), "{msg}");
    assert!(
        msg.contains("missing keys: encoder.layer.1.attention.self.key.weight"),
        "{msg}"
    );
    assert!(
        msg.contains("unexpected keys: encoder.layer.1.attention.self.kee.weight"),
        "{msg}"
    );
    // lenient: same report, no error
    let report = load_from(ts, LoadMode::Lenient).unwrap();
    assert_eq!(
        report.missing,
        vec!["encoder.layer.1.attention.self.key.weight"]
    );
    assert_eq!(
        report.unexpected,
        vec!["encoder.layer.1.attention.self.kee.weight"]
    );
}

#[test]
fn misshaped_key_is_named_in_the_error() {
    let mut ts = tensors();
    ts.insert(
        "encoder.layer.0.intermediate.dense.weight".into(),
        Tensor::zeros((47, 32), DType::F32, &Device::Cpu).unwrap(),
    );
    let msg = load_from(ts, LoadMode::Strict).unwrap_err().to_string();
    assert!(
        msg.contains("mis-shaped keys: encoder.layer.0.intermediate.dense.weight (model [48, 32], checkpoint [47, 32])"),
        "{msg}"
    );
}

#[test]
fn tensorflow_style_layernorm_names_are_renamed() {
    let ts: HashMap<String, Tensor> = tensors()
        .into_iter()
        .map(|(k, v)| {
            let k = k
                .replace("LayerNorm.weight", "LayerNorm.gamma")
                .replace("LayerNorm.bias", "LayerNorm.beta");
            (k, v)
        })
        .collect();
    let report = load_from(ts, LoadMode::Strict).unwrap();
    assert!(report.is_clean());
}

fn write(dir: &tempfile::TempDir, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let p = dir.path().join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn bad_files_give_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let good_st = std::fs::read(fixture("bert-tiny/model.safetensors")).unwrap();
    let good_pth = std::fs::read(fixture("bert-tiny/model.pth")).unwrap();
    let mut corrupt_header = good_st.clone();
    for b in corrupt_header.iter_mut().skip(10).take(40) {
        *b = b'#';
    }
    let mut corrupt_pth = good_pth.clone();
    let mid = corrupt_pth.len() / 2;
    for b in corrupt_pth.iter_mut().skip(mid).take(2000) {
        *b = 0xAB;
    }
    let cases = [
        ("empty.safetensors", Vec::new()),
        (
            "truncated.safetensors",
            good_st[..good_st.len() / 2].to_vec(),
        ),
        ("tiny.safetensors", good_st[..5].to_vec()),
        ("corrupt-header.safetensors", corrupt_header),
        ("truncated.pth", good_pth[..good_pth.len() / 2].to_vec()),
        ("corrupt.pth", corrupt_pth),
        ("text.pth", b"this is not a checkpoint\n".to_vec()),
        ("legacy.pth", vec![0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc]),
    ];
    for (name, bytes) in cases {
        let p = write(&dir, name, &bytes);
        // Either opening fails, or loading the model from it does; never a panic, and the
        // message names the file.
        let result = Checkpoint::open(&p).and_then(|c| {
            let loader = WeightLoader::new(vec![c]);
            let vb = loader.var_builder(DType::F32, &Device::Cpu);
            BertModel::new(&cfg(), vb)?;
            loader.finish(LoadMode::Strict)
        });
        let msg = result.expect_err(name).to_string();
        assert!(
            msg.contains(name),
            "{name}: error does not name the file: {msg}"
        );
    }
    let missing = Checkpoint::open(dir.path().join("nope.safetensors")).unwrap_err();
    assert!(missing.to_string().contains("nope.safetensors"));
}

#[test]
fn every_bert_variable_gets_a_gradient() {
    let io = io();
    let varmap = VarMap::new();
    let (model, _) = load_bert(
        &cfg(),
        &fixture("bert-tiny/model.safetensors"),
        &Device::Cpu,
        Some(varmap.clone()),
    )
    .unwrap();
    let (h, p) = run(&model, &io);
    let w = Tensor::randn(0f32, 1., h.shape(), &Device::Cpu).unwrap();
    let loss = ((h * w).unwrap().sum_all().unwrap() + p.sum_all().unwrap()).unwrap();
    let n = check_all_vars_get_grad(&varmap, &loss).unwrap();
    assert_eq!(n, varmap.all_vars().len());
    assert!(n >= 2 * 16 + 5 + 2, "only {n} vars");
}

#[test]
fn training_mode_applies_dropout() {
    let io = io();
    let (model, _) = load_bert(
        &cfg(),
        &fixture("bert-tiny/model.safetensors"),
        &Device::Cpu,
        None,
    )
    .unwrap();
    let ids = io["input_ids"].to_dtype(DType::U32).unwrap();
    let a = model.forward(&ids, None, None, true).unwrap();
    let b = model.forward(&ids, None, None, false).unwrap();
    assert!(max_abs_diff(&a, &b).unwrap() > 1e-3);
}

#[test]
fn prefixed_checkpoint_loads_under_its_prefix() {
    let ckpt = Checkpoint::open(fixture("bert-tiny/model.safetensors"))
        .unwrap()
        .with_prefix("tag_encoder.");
    assert!(ckpt.keys().all(|k| k.starts_with("tag_encoder.")));
    let loader = WeightLoader::new(vec![ckpt]);
    let vb = loader.var_builder(DType::F32, &Device::Cpu);
    BertModel::new(&cfg(), vb.pp("tag_encoder")).unwrap();
    assert!(loader.finish(LoadMode::Strict).unwrap().is_clean());
}
