//! RAM tagger parity with the upstream RAM code (fixtures by scripts/fixtures_ram.py), checkpoint
//! keys (the `vision_multi` rename, ignored Tag2Text parts, the tied-head fallback), recomputed
//! Swin buffers, tag selection and formatting, batched file tagging with a broken image, gradients.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use lion_core::swin::{relative_position_index, shifted_window_mask};
use lion_core::tagger::{
    format_tags, format_tags_with_scores, load_image, select_tags, Ram, RamConfig, TagOrder,
    TagSelection, TagVocab, Tagger, IMAGENET_MEAN, IMAGENET_STD, RAM_IGNORED_KEYS,
};
use lion_core::testing::fixture;
use lion_core::testing::{check_all_vars_get_grad, max_abs_diff};
use lion_core::weights::{Checkpoint, LoadMode, WeightLoader};
use lion_core::Error;

fn io() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture("ram/io.safetensors"), &Device::Cpu).unwrap()
}

fn fixture_json() -> serde_json::Value {
    lion_core::util::read_json(fixture("ram/config.json")).unwrap()
}

fn cfg() -> RamConfig {
    // config.json is RamConfig's JSON (plus reference-only fields, ignored)
    RamConfig::from_name_or_file(fixture("ram/config.json").to_str().unwrap()).unwrap()
}

fn check_logits(model: &Ram, what: &str) {
    let io = io();
    let feats = model.image_features(&io["image"]).unwrap();
    let d_feats = max_abs_diff(&feats, &io["image_embeds"]).unwrap();
    let logits = model.forward(&io["image"], false).unwrap();
    let d_logits = max_abs_diff(&logits, &io["logits"]).unwrap();
    let probs = model.probabilities(&io["image"]).unwrap();
    let d_probs = max_abs_diff(&probs, &io["probs"]).unwrap();
    eprintln!(
        "{what}: max abs diff swin {d_feats:.2e}, logits {d_logits:.2e}, probs {d_probs:.2e}"
    );
    assert!(d_feats <= 1e-4, "{what}: swin features differ by {d_feats}");
    assert!(d_logits <= 1e-4, "{what}: logits differ by {d_logits}");
    assert!(d_probs <= 1e-4, "{what}: probabilities differ by {d_probs}");
}

#[test]
fn logits_match_upstream_ram_with_shifted_windows() {
    let cfg = cfg();
    // the fixture size must exercise shifted windows (resolution > window in some stage)
    assert!(cfg.swin.img_size / cfg.swin.patch_size > cfg.swin.window_size);
    let (model, report) = Ram::load(&cfg, fixture("ram/model.pth"), &Device::Cpu).unwrap();
    assert!(report.is_clean(), "{report}");
    assert!(report.loaded > 50, "{report}");
    check_logits(&model, "model.pth");
}

#[test]
fn the_pth_has_vision_multi_keys_and_tag2text_parts() {
    // guards the fixture itself: the load above must have gone through the rename and the ignores
    let ckpt = Checkpoint::open(fixture("ram/model.pth")).unwrap();
    assert!(ckpt
        .keys()
        .any(|k| k == "tagging_head.encoder.layer.1.output.LayerNorm.weight"));
    let raw =
        candle_core::pickle::read_pth_tensor_info(fixture("ram/model.pth"), false, Some("model"))
            .unwrap();
    assert!(raw.iter().any(|t| t.name.starts_with("vision_multi.")));
    assert!(!raw.iter().any(|t| t.name.starts_with("tagging_head.")));
    for part in [
        "tag_encoder.",
        "text_decoder.",
        "attn_mask",
        "relative_position_index",
    ] {
        assert!(raw.iter().any(|t| t.name.contains(part)), "{part}");
    }
}

#[test]
fn unused_keys_are_reported_without_the_ignore_list() {
    let loader = WeightLoader::new(vec![Checkpoint::open(fixture("ram/model.pth")).unwrap()]);
    Ram::new(&cfg(), loader.var_builder(DType::F32, &Device::Cpu)).unwrap();
    let report = loader.report();
    assert!(report.missing.is_empty(), "{report}");
    assert!(!report.unexpected.is_empty());
    for k in &report.unexpected {
        assert!(
            RAM_IGNORED_KEYS.iter().any(|p| k.contains(p)),
            "{k} is unexpected and not a known unused key"
        );
    }
}

#[test]
fn missing_and_misshaped_keys_are_named() {
    let ckpt = Checkpoint::open(fixture("ram/model.pth")).unwrap();
    let mut tensors = ckpt.load_all(&Device::Cpu).unwrap();
    tensors.remove("visual_encoder.layers.1.blocks.1.attn.relative_position_bias_table");
    tensors.insert(
        "image_proj.weight".into(),
        Tensor::zeros((3, 3), DType::F32, &Device::Cpu).unwrap(),
    );
    let loader = WeightLoader::new(vec![Checkpoint::from_tensors("broken", tensors)])
        .ignore_unexpected(RAM_IGNORED_KEYS);
    Ram::new(&cfg(), loader.var_builder(DType::F32, &Device::Cpu)).unwrap();
    let err = loader.finish(LoadMode::Strict).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::Keys { .. }), "{msg}");
    assert!(
        msg.contains("visual_encoder.layers.1.blocks.1.attn.relative_position_bias_table"),
        "{msg}"
    );
    assert!(msg.contains("image_proj.weight"), "{msg}");
}

#[test]
fn head_falls_back_to_the_tied_tag_encoder_layers() {
    // a checkpoint with the head only under tag_encoder.encoder.layer.{0,1} (upstream ties them)
    let ckpt = Checkpoint::open(fixture("ram/model.pth")).unwrap();
    let tensors: HashMap<String, Tensor> = ckpt
        .load_all(&Device::Cpu)
        .unwrap()
        .into_iter()
        .filter(|(k, _)| !k.starts_with("tagging_head."))
        .collect();
    let loader = WeightLoader::new(vec![Checkpoint::from_tensors("tied", tensors)])
        .ignore_unexpected(RAM_IGNORED_KEYS);
    let model = Ram::new(&cfg(), loader.var_builder(DType::F32, &Device::Cpu)).unwrap();
    let report = loader.finish(LoadMode::Strict).unwrap();
    assert!(report.missing.is_empty(), "{report}");
    check_logits(&model, "tied tag_encoder head");
}

#[test]
fn recomputed_swin_buffers_equal_upstream_buffers() {
    let ckpt = Checkpoint::open(fixture("ram/model.pth")).unwrap();
    let dev = Device::Cpu;
    let mut masks = 0;
    let mut indices = 0;
    for key in ckpt.keys() {
        if key.ends_with("attn.relative_position_index") {
            let up = ckpt.get(key, &dev).unwrap().to_dtype(DType::U32).unwrap();
            let n = up.dim(0).unwrap();
            let w = (n as f64).sqrt() as usize;
            let ours = relative_position_index(w, &dev).unwrap();
            assert_eq!(
                ours.to_vec1::<u32>().unwrap(),
                up.flatten_all().unwrap().to_vec1::<u32>().unwrap(),
                "{key}"
            );
            indices += 1;
        } else if key.ends_with("attn_mask") {
            let up = ckpt.get(key, &dev).unwrap();
            let (nw, n, _) = up.dims3().unwrap();
            let w = (n as f64).sqrt() as usize;
            let res = w * (nw as f64).sqrt() as usize;
            let ours = shifted_window_mask(res, w, w / 2, &dev).unwrap();
            assert_eq!(max_abs_diff(&ours, &up).unwrap(), 0.0, "{key}");
            masks += 1;
        }
    }
    assert_eq!(indices, 6);
    assert_eq!(masks, 2, "shifted blocks in stages 0 and 1");
}

fn vocab_from_fixture(n: usize) -> TagVocab {
    let j = fixture_json();
    let th: Vec<f32> = j["class_threshold"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    assert_eq!(th.len(), n);
    TagVocab {
        tags: (0..n).map(|i| format!("tag{i}")).collect(),
        thresholds: th,
    }
}

#[test]
fn class_threshold_selection_matches_upstream_generate_tag() {
    let cfg = cfg();
    let (model, _) = Ram::load(&cfg, fixture("ram/model.pth"), &Device::Cpu).unwrap();
    let vocab = vocab_from_fixture(cfg.num_tags);
    let tagger = Tagger::new(model, vocab, Device::Cpu).unwrap();
    let out = tagger.tag_tensor(&io()["image"]).unwrap();
    let expected: Vec<String> = fixture_json()["upstream_generate_tag"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(out.len(), expected.len());
    for (o, e) in out.iter().zip(&expected) {
        let ours: Vec<&str> = o.tags.iter().map(|t| t.scored.tag.as_str()).collect();
        assert_eq!(ours.join(" | "), *e);
        assert_eq!(o.probs.len(), 20);
    }
}

#[test]
fn the_embedded_ram_vocabulary_has_4585_tags_and_thresholds() {
    let v = TagVocab::ram();
    assert_eq!(v.len(), 4585);
    assert_eq!(v.thresholds.len(), 4585);
    assert!(v.tags.iter().all(|t| !t.is_empty() && t.trim() == t));
    assert!(v.thresholds.iter().all(|t| (0.4..=1.0).contains(t)));
    assert_eq!(v.thresholds.iter().filter(|t| **t == 0.65).count(), 3414);
    assert!(TagVocab::parse("a\nb", "0.5", "x").is_err());
    assert!(TagVocab::parse("a", "zero", "x")
        .unwrap_err()
        .to_string()
        .contains("zero"));
}

fn toy() -> (Vec<f32>, TagVocab) {
    let vocab = TagVocab {
        tags: ["cat", "dog", "sky", "tree", "car"]
            .map(String::from)
            .to_vec(),
        thresholds: vec![0.9, 0.5, 0.5, 0.7, 0.5],
    };
    (vec![0.95, 0.5, 0.8, 0.71, 0.8], vocab)
}

fn names(t: &[lion_core::tagger::KeptTag]) -> Vec<&str> {
    t.iter().map(|t| t.scored.tag.as_str()).collect()
}

#[test]
fn selection_by_class_threshold_global_threshold_and_top_k() {
    let (p, v) = toy();
    // strictly greater than the class threshold: dog at exactly 0.5 is out
    let t = select_tags(&p, &v, TagSelection::ClassThreshold, TagOrder::Index).unwrap();
    assert_eq!(names(&t), ["cat", "sky", "tree", "car"]);
    assert_eq!(t[2].index, 3);
    assert_eq!(t[2].scored.score, 0.71);
    let t = select_tags(&p, &v, TagSelection::ClassThreshold, TagOrder::Score).unwrap();
    assert_eq!(names(&t), ["cat", "sky", "car", "tree"], "ties by index");
    let t = select_tags(&p, &v, TagSelection::Threshold(0.75), TagOrder::Index).unwrap();
    assert_eq!(names(&t), ["cat", "sky", "car"]);
    let t = select_tags(&p, &v, TagSelection::TopK(2), TagOrder::Score).unwrap();
    assert_eq!(names(&t), ["cat", "sky"]);
    let t = select_tags(&p, &v, TagSelection::TopK(3), TagOrder::Index).unwrap();
    assert_eq!(names(&t), ["cat", "sky", "car"]);
    let t = select_tags(&p, &v, TagSelection::TopK(99), TagOrder::Index).unwrap();
    assert_eq!(t.len(), 5);
    assert!(select_tags(&p[..3], &v, TagSelection::TopK(1), TagOrder::Index).is_err());
}

#[test]
fn tag_strings_for_lion_and_dynamic_lion() {
    let (p, v) = toy();
    let t = select_tags(&p, &v, TagSelection::Threshold(0.75), TagOrder::Index).unwrap();
    assert_eq!(format_tags(&t), "cat, sky, car");
    assert_eq!(
        format_tags_with_scores(&t, Some(2)),
        "cat: 0.95, sky: 0.80, car: 0.80"
    );
    assert_eq!(
        format_tags_with_scores(&t, None),
        "cat: 0.95, sky: 0.8, car: 0.8"
    );
    assert_eq!(format_tags(&[]), "");
}

fn write_png(path: &Path, rgb: [u8; 3], w: u32, h: u32) {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        if (x + y) % 7 == 0 {
            image::Rgb([255 - rgb[0], rgb[1], rgb[2]])
        } else {
            image::Rgb(rgb)
        }
    });
    img.save(path).unwrap();
}

#[test]
fn image_loader_resizes_and_normalises() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("flat.png");
    image::RgbImage::from_pixel(50, 30, image::Rgb([255, 128, 0]))
        .save(&p)
        .unwrap();
    let t = load_image(&p, 16, &Device::Cpu).unwrap();
    assert_eq!(t.dims(), &[3, 16, 16]);
    let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    for c in 0..3 {
        let raw = [255.0, 128.0, 0.0][c] / 255.0;
        let want = (raw - IMAGENET_MEAN[c]) / IMAGENET_STD[c];
        for x in &v[c * 256..(c + 1) * 256] {
            assert!((x - want).abs() < 1e-5, "channel {c}: {x} vs {want}");
        }
    }
    let bad = dir.path().join("bad.jpg");
    std::fs::write(&bad, b"not a jpeg").unwrap();
    let err = load_image(&bad, 16, &Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("bad.jpg"), "{err}");
}

#[test]
fn a_broken_image_in_a_batch_is_named_and_the_others_are_tagged() {
    let dir = tempfile::tempdir().unwrap();
    let mut paths: Vec<PathBuf> = vec![];
    for (i, c) in [[200, 30, 30], [20, 200, 90], [10, 10, 240]]
        .iter()
        .enumerate()
    {
        let p = dir.path().join(format!("img{i}.png"));
        write_png(&p, *c, 80 + 10 * i as u32, 64);
        paths.push(p);
    }
    let broken = dir.path().join("broken.png");
    std::fs::write(&broken, b"\x89PNG\r\n\x1a\n truncated").unwrap();
    paths.insert(1, broken.clone());
    paths.push(dir.path().join("missing.jpg"));

    let dev = Device::Cpu;
    let cfg = RamConfig::tiny_with_tags(12);
    let model = Ram::random(&cfg, &dev).unwrap();
    let mut tagger = Tagger::new(model, TagVocab::synthetic(12, 0.5), dev).unwrap();
    tagger.selection = TagSelection::TopK(3);
    let refs: Vec<&Path> = paths.iter().map(|p| p.as_path()).collect();
    let out = tagger.tag_files(&refs).unwrap();
    assert_eq!(out.len(), 5);
    let err = out[1].as_ref().unwrap_err().to_string();
    assert!(err.contains("broken.png"), "{err}");
    let err = out[4].as_ref().unwrap_err().to_string();
    assert!(err.contains("missing.jpg"), "{err}");
    // the good ones are tagged, and as they would be alone (batching does not mix images)
    for i in [0, 2, 3] {
        let r = out[i].as_ref().unwrap();
        assert_eq!(r.tags.len(), 3);
        assert_eq!(r.probs.len(), 12);
        let alone = tagger.tag_files(&[refs[i]]).unwrap().remove(0).unwrap();
        let d = r
            .probs
            .iter()
            .zip(&alone.probs)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(d < 1e-5, "image {i}: batched vs alone differ by {d}");
    }
    assert_ne!(
        out[0].as_ref().unwrap().probs,
        out[2].as_ref().unwrap().probs
    );
    // a vocabulary that does not fit the model is refused
    let model = Ram::random(&cfg, &Device::Cpu).unwrap();
    assert!(Tagger::new(model, TagVocab::synthetic(5, 0.5), Device::Cpu).is_err());
}

#[test]
fn every_ram_variable_gets_a_gradient() {
    let dev = Device::Cpu;
    let varmap = VarMap::new();
    let loader = WeightLoader::random().with_trainable(varmap.clone(), |_| true);
    let cfg = RamConfig::tiny_with_tags(6);
    let model = Ram::new(&cfg, loader.var_builder(DType::F32, &dev)).unwrap();
    let images = Tensor::randn(0f32, 1., (2, 3, 64, 64), &dev).unwrap();
    let logits = model.forward(&images, false).unwrap();
    let target = Tensor::randn(0f32, 1., logits.shape(), &dev).unwrap();
    let loss = (logits - target)
        .unwrap()
        .sqr()
        .unwrap()
        .mean_all()
        .unwrap();
    let n = check_all_vars_get_grad(&varmap, &loss).unwrap();
    assert!(n > 40, "{n} variables");
}

#[test]
fn bad_configs_and_inputs_are_errors() {
    let mut cfg = RamConfig::tiny_with_tags(4);
    cfg.swin.window_size = 3; // 16 is not a multiple of 3
    let err = Ram::random(&cfg, &Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("window"), "{err}");
    let mut cfg = RamConfig::tiny_with_tags(4);
    cfg.swin.num_heads = vec![3, 2, 4, 4];
    assert!(Ram::random(&cfg, &Device::Cpu).is_err());
    let model = Ram::random(&RamConfig::tiny_with_tags(4), &Device::Cpu).unwrap();
    let wrong = Tensor::zeros((1, 3, 32, 32), DType::F32, &Device::Cpu).unwrap();
    let err = model.forward(&wrong, false).unwrap_err().to_string();
    assert!(err.contains("64"), "{err}");
    assert!(RamConfig::from_name_or_file("no-such-config.json").is_err());
    let l = RamConfig::from_name_or_file("swin-l").unwrap();
    assert_eq!(l.swin.num_tokens(), 145);
    assert_eq!(l.swin.num_features(), 1536);
}

/// `patch_norm` (Swin's own option; on in RAM): on by default and left out of a serialised config
/// (RAM's configs read as before); off, `patch_embed.norm` is not read and the features of the
/// same weights change.
#[test]
fn the_patch_norm_is_an_option_and_off_reads_no_norm_keys() {
    let dev = Device::Cpu;
    let on = RamConfig::tiny();
    assert!(on.swin.patch_norm);
    let json = serde_json::to_value(&on.swin).unwrap();
    assert!(json.get("patch_norm").is_none(), "{json}");
    let mut off = on.clone();
    off.swin.patch_norm = false;
    let back: lion_core::swin::SwinConfig =
        serde_json::from_value(serde_json::to_value(&off.swin).unwrap()).unwrap();
    assert!(!back.patch_norm);
    let keys = |c: &RamConfig| -> Vec<String> {
        lion_core::weights::record_keys(|vb| {
            Ram::new(c, vb)
                .map(|_| ())
                .map_err(|e| candle_core::Error::Msg(e.to_string()))
        })
        .unwrap()
        .into_iter()
        .map(|s| s.key)
        .collect()
    };
    let (k_on, k_off) = (keys(&on), keys(&off));
    let norm: Vec<&String> = k_on
        .iter()
        .filter(|k| k.contains("patch_embed.norm"))
        .collect();
    assert_eq!(norm.len(), 2, "{norm:?}");
    assert!(!k_off.iter().any(|k| k.contains("patch_embed.norm")));
    assert_eq!(k_on.len(), k_off.len() + 2);
    let build = |c: &RamConfig| {
        Ram::new(
            c,
            WeightLoader::random()
                .with_init_seed(4)
                .var_builder(DType::F32, &dev),
        )
        .unwrap()
    };
    let s = on.swin.img_size;
    let x = Tensor::randn(0f32, 1., (1, 3, s, s), &dev).unwrap();
    let a = build(&on).image_features(&x).unwrap();
    let b = build(&off).image_features(&x).unwrap();
    assert_eq!(a.dims(), b.dims());
    assert!(max_abs_diff(&a, &b).unwrap() > 1e-3);
}
