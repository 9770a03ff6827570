//! EVA ViT, Q-Former and vision aggregator parity with PyTorch references at tiny configs
//! (fixtures by scripts/fixtures_vision.py: timm's Eva for the ViT, torch code following LAVIS
//! Qformer.py for the Q-Former, transformers.BertLayer for the aggregator), key names, frozen
//! weights, and gradients.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use lion_core::aggregator::{AggregatorConfig, VisionAggregator};
use lion_core::bert::BertConfig;
use lion_core::eva_vit::{interpolate_pos_embed, EvaVit, EvaVitConfig};
use lion_core::ops::Activation;
use lion_core::qformer::{QFormer, QFormerConfig};
use lion_core::testing::fixture;
use lion_core::testing::{check_all_vars_get_grad, max_abs_diff};
use lion_core::weights::{Checkpoint, LoadMode, WeightLoader};

const TOL: f32 = 1e-4;

fn io(name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture(&format!("vision/{name}")), &Device::Cpu).unwrap()
}

fn loader(name: &str) -> WeightLoader {
    WeightLoader::new(vec![
        Checkpoint::open(fixture(&format!("vision/{name}"))).unwrap()
    ])
}

// ------------------------------------------------------------------------------------------
// EVA ViT

fn vit_cfg(img: usize, frozen: bool) -> EvaVitConfig {
    EvaVitConfig {
        img_size: img,
        patch_size: 8,
        in_chans: 3,
        width: 16,
        depth: 5,
        checkpoint_depth: None,
        num_heads: 4,
        mlp_dim: 44,
        layer_norm_eps: 1e-6,
        frozen,
    }
}

fn load_vit(img: usize, frozen: bool, varmap: Option<VarMap>) -> EvaVit {
    let mut l = loader("vit.safetensors");
    if let Some(vm) = varmap {
        l = l.with_trainable(vm, |_| true);
    }
    let vit = EvaVit::new(
        &vit_cfg(img, frozen),
        l.var_builder(DType::F32, &Device::Cpu),
    )
    .unwrap();
    let report = l.finish(LoadMode::Strict).unwrap();
    assert!(report.is_clean(), "{report}");
    vit
}

#[test]
fn vit_matches_timm_eva_frozen_and_trainable() {
    let io = io("vit_io.safetensors");
    for frozen in [true, false] {
        let vit = load_vit(32, frozen, None);
        // asked out of order, as LION asks (38, 28, 18)
        let outs = vit.forward(&io["pixel_values"], &[4, 3, 1]).unwrap();
        for (o, name) in outs.iter().zip(["block4", "block3", "block1"]) {
            let d = max_abs_diff(o, &io[name]).unwrap();
            println!("vit frozen={frozen} {name}: max abs diff {d:e}");
            assert!(d <= TOL, "frozen={frozen} {name} differs by {d}");
        }
    }
}

/// The official `eva_vit_g.pth` layout: a torch.save'd fp16 state dict with one block more
/// than the model (EVA-CLIP-g: 40, LAVIS/LION: 39). Here 5 blocks for a 4-block model.
#[test]
fn vit_loads_the_official_fp16_layout_with_its_extra_block_skipped() {
    let reference = io("vit_official_io.safetensors");
    let pixels = io("vit_io.safetensors")["pixel_values"].clone();
    let open = || Checkpoint::open(fixture("vision/vit_official.pth")).unwrap();
    assert_eq!(
        open()
            .get("blocks.4.attn.qkv.weight", &Device::Cpu)
            .unwrap()
            .dtype(),
        DType::F16
    );
    let mut cfg = vit_cfg(32, true);
    cfg.depth = 4;
    cfg.checkpoint_depth = Some(5);
    let build = |cfg: &EvaVitConfig| {
        let l = WeightLoader::new(vec![open()]).skip_unused(&cfg.unused_checkpoint_prefixes(""));
        let vit = EvaVit::new(cfg, l.var_builder(DType::F32, &Device::Cpu)).unwrap();
        (vit, l.finish(LoadMode::Strict))
    };
    let (vit, report) = build(&cfg);
    let report = report.unwrap();
    assert_eq!(report.skipped.len(), 13, "{:?}", report.skipped);
    assert!(report.skipped.iter().all(|k| k.starts_with("blocks.4.")));
    let outs = vit.forward(&pixels, &[3, 1]).unwrap();
    for (o, name) in outs.iter().zip(["block3", "block1"]) {
        let d = max_abs_diff(o, &reference[name]).unwrap();
        println!("official layout (fp16 -> f32) {name}: max abs diff {d:e}");
        assert!(d <= TOL, "{name} differs by {d}");
    }
    // without the config's word for it, the extra block is an error naming its keys
    cfg.checkpoint_depth = None;
    let err = build(&cfg).1.unwrap_err().to_string();
    assert!(
        err.contains("unexpected keys: blocks.4.attn.proj.bias, blocks.4.attn.proj.weight"),
        "{err}"
    );
    // and only the blocks the config names are skipped: a 3-block model with checkpoint_depth 4
    // still finds block 4 unexpected
    cfg.depth = 3;
    cfg.checkpoint_depth = Some(4);
    let err = build(&cfg).1.unwrap_err().to_string();
    assert!(
        err.contains("unexpected keys: blocks.4.") && !err.contains("blocks.3."),
        "{err}"
    );
    cfg.checkpoint_depth = Some(2);
    let err = cfg.validate().unwrap_err();
    assert!(err.field == "checkpoint_depth" && err.value == "2", "{err}");
}

#[test]
fn vit_interpolates_pos_embed_for_another_image_size() {
    let io = io("vit_io.safetensors");
    let vit = load_vit(48, true, None);
    let out = &vit.forward(&io["pixel_values_48"], &[4]).unwrap()[0];
    let d = max_abs_diff(out, &io["block4_48"]).unwrap();
    println!("vit 48px (pos_embed 4x4 -> 6x6): max abs diff {d:e}");
    assert!(d <= TOL, "48 px output differs by {d}");
    let ckpt = Checkpoint::open(fixture("vision/vit.safetensors")).unwrap();
    let pos = ckpt.get("pos_embed", &Device::Cpu).unwrap();
    let p48 = interpolate_pos_embed(&pos, 1, 6).unwrap();
    let d = max_abs_diff(&p48, &io["pos_embed_48"]).unwrap();
    println!("interpolate_pos_embed vs torch bicubic: max abs diff {d:e}");
    assert!(d <= 1e-5, "pos_embed interpolation differs by {d}");
    // same grid: unchanged
    let same = interpolate_pos_embed(&pos, 1, 4).unwrap();
    assert_eq!(max_abs_diff(&same, &pos).unwrap(), 0.0);
}

#[test]
fn vit_rejects_a_pos_embed_of_the_wrong_width() {
    let ckpt = Checkpoint::open(fixture("vision/vit.safetensors")).unwrap();
    let mut ts = ckpt.load_all(&Device::Cpu).unwrap();
    ts.insert(
        "pos_embed".into(),
        Tensor::zeros((1, 17, 12), DType::F32, &Device::Cpu).unwrap(),
    );
    let l = WeightLoader::new(vec![Checkpoint::from_tensors("edited", ts)]);
    let e = EvaVit::new(&vit_cfg(32, true), l.var_builder(DType::F32, &Device::Cpu))
        .unwrap_err()
        .to_string();
    assert!(e.contains("pos_embed") && e.contains("(1, 17, 16)"), "{e}");
}

#[test]
fn vit_rejects_bad_inputs_with_clear_errors() {
    let vit = load_vit(32, true, None);
    let x = Tensor::zeros((1, 3, 40, 32), DType::F32, &Device::Cpu).unwrap();
    let e = vit.forward(&x, &[4]).unwrap_err().to_string();
    assert!(e.contains("(b, 3, 32, 32)"), "{e}");
    let x = Tensor::zeros((1, 3, 32, 32), DType::F32, &Device::Cpu).unwrap();
    let e = vit.forward(&x, &[5]).unwrap_err().to_string();
    assert!(e.contains("block 5 requested"), "{e}");
    let mut bad = vit_cfg(30, true);
    bad.patch_size = 8;
    let e = EvaVit::new(
        &bad,
        WeightLoader::random().var_builder(DType::F32, &Device::Cpu),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("multiple of patch_size"), "{e}");
}

#[test]
fn frozen_vit_holds_no_vars_even_when_the_loader_offers_them() {
    let io = io("vit_io.safetensors");
    let varmap = VarMap::new();
    let vit = load_vit(32, true, Some(varmap.clone()));
    // the loader made Vars for every key, but the frozen ViT detached them: no gradient reaches
    // any of them, and the output does not track any variable
    let out = &vit.forward(&io["pixel_values"], &[4]).unwrap()[0];
    let loss = out.sqr().unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    let vars = varmap.all_vars();
    assert!(!vars.is_empty());
    for v in &vars {
        assert!(
            grads.get(v.as_tensor()).is_none(),
            "a frozen ViT weight got a gradient"
        );
    }
    assert!(
        !out.is_variable() && !out.track_op(),
        "frozen ViT output tracks an op graph"
    );
}

#[test]
fn trainable_vit_vars_all_get_gradients() {
    let io = io("vit_io.safetensors");
    let varmap = VarMap::new();
    let vit = load_vit(32, false, Some(varmap.clone()));
    let out = &vit.forward(&io["pixel_values"], &[4]).unwrap()[0];
    let w = Tensor::randn(0f32, 1., out.shape(), &Device::Cpu).unwrap();
    let loss = (out * w).unwrap().sum_all().unwrap();
    let n = check_all_vars_get_grad(&varmap, &loss).unwrap();
    assert_eq!(n, 4 + 5 * 13);
}

#[test]
fn vit_g_preset_shapes() {
    let cfg = EvaVitConfig::vit_g();
    assert_eq!(cfg.num_tokens(), 257);
    assert_eq!(cfg.width / cfg.num_heads, 88);
    assert_eq!(cfg.mlp_dim, (1408.0f64 * 4.3637) as usize);
    assert!(cfg.frozen);
}

// ------------------------------------------------------------------------------------------
// Q-Former

fn qformer_cfg() -> QFormerConfig {
    QFormerConfig {
        bert: BertConfig {
            vocab_size: 50,
            hidden_size: 16,
            num_hidden_layers: 4,
            num_attention_heads: 4,
            intermediate_size: 24,
            hidden_act: Activation::Gelu,
            hidden_dropout_prob: 0.1,
            attention_probs_dropout_prob: 0.1,
            max_position_embeddings: 24,
            type_vocab_size: 0,
            layer_norm_eps: 1e-12,
            pad_token_id: 0,
            position_embedding_type: "absolute".into(),
        },
        encoder_width: 20,
        cross_attention_freq: 2,
        num_query_token: 6,
        d_model: 12,
        ln_vision_eps: 1e-5,
    }
}

fn load_qformer(varmap: Option<VarMap>) -> QFormer {
    let mut l = loader("qformer.safetensors").ignore_unexpected(&["position_ids"]);
    if let Some(vm) = varmap {
        l = l.with_trainable(vm, |_| true);
    }
    let q = QFormer::new(&qformer_cfg(), l.var_builder(DType::F32, &Device::Cpu)).unwrap();
    let report = l.finish(LoadMode::Strict).unwrap();
    assert!(report.is_clean(), "{report}");
    q
}

#[test]
fn qformer_matches_reference() {
    let io = io("qformer_io.safetensors");
    let q = load_qformer(None);
    let ids = io["input_ids"].to_dtype(DType::U32).unwrap();
    let mask = &io["attention_mask"];
    let hidden = q
        .forward_hidden(&io["vision"], Some(&ids), Some(mask), false)
        .unwrap();
    let d = max_abs_diff(&hidden, &io["hidden"]).unwrap();
    println!("qformer last_hidden_state: max abs diff {d:e}");
    assert!(d <= TOL, "hidden differs by {d}");
    let out = q
        .forward(&io["vision"], Some(&ids), Some(mask), false)
        .unwrap();
    assert_eq!(out.dims(), &[2, 6, 12]);
    let d = max_abs_diff(&out, &io["output"]).unwrap();
    println!("qformer t5_proj output: max abs diff {d:e}");
    assert!(d <= TOL, "output differs by {d}");
    let out = q.forward(&io["vision"], None, None, false).unwrap();
    let d = max_abs_diff(&out, &io["output_queries_only"]).unwrap();
    println!("qformer queries only: max abs diff {d:e}");
    assert!(d <= TOL, "queries-only output differs by {d}");
}

#[test]
fn qformer_keys_follow_upstream_layout() {
    let l = WeightLoader::random();
    QFormer::new(&qformer_cfg(), l.var_builder(DType::F32, &Device::Cpu)).unwrap();
    let ckpt = Checkpoint::open(fixture("vision/qformer.safetensors")).unwrap();
    let keys: Vec<&str> = ckpt.keys().collect();
    // cross-attention only in layers 0 and 2, with key/value taking the vision width
    assert!(keys.contains(&"Qformer.bert.encoder.layer.2.crossattention.self.key.weight"));
    assert!(!keys.iter().any(|k| k.contains("layer.1.crossattention")));
    assert_eq!(
        ckpt.shape("Qformer.bert.encoder.layer.0.crossattention.self.key.weight")
            .unwrap()
            .dims(),
        &[16, 20]
    );
    // every checkpoint key is used (strict load above), and nothing else is asked for
    let report = loader("qformer.safetensors")
        .ignore_unexpected(&["position_ids"])
        .report();
    assert!(report.missing.is_empty());
}

#[test]
fn qformer_padding_does_not_change_query_outputs() {
    // a padded text token (mask 0) must not influence the queries: changing its id is a no-op
    let io = io("qformer_io.safetensors");
    let q = load_qformer(None);
    let mut ids: Vec<Vec<u32>> = io["input_ids"]
        .to_dtype(DType::U32)
        .unwrap()
        .to_vec2()
        .unwrap();
    let mask = &io["attention_mask"];
    let a = q
        .forward(
            &io["vision"],
            Some(&Tensor::new(ids.clone(), &Device::Cpu).unwrap()),
            Some(mask),
            false,
        )
        .unwrap();
    ids[1][5] = 17;
    let b = q
        .forward(
            &io["vision"],
            Some(&Tensor::new(ids.clone(), &Device::Cpu).unwrap()),
            Some(mask),
            false,
        )
        .unwrap();
    assert!(max_abs_diff(&a, &b).unwrap() < 1e-6);
    // but an unpadded one does
    ids[1][1] = (ids[1][1] + 1) % 50;
    let c = q
        .forward(
            &io["vision"],
            Some(&Tensor::new(ids, &Device::Cpu).unwrap()),
            Some(mask),
            false,
        )
        .unwrap();
    assert!(max_abs_diff(&a, &c).unwrap() > 1e-4);
}

#[test]
fn every_qformer_variable_gets_a_gradient() {
    let io = io("qformer_io.safetensors");
    let varmap = VarMap::new();
    let q = load_qformer(Some(varmap.clone()));
    let ids = io["input_ids"].to_dtype(DType::U32).unwrap();
    let hidden = q
        .forward_hidden(&io["vision"], Some(&ids), Some(&io["attention_mask"]), true)
        .unwrap();
    let out = q.project(&hidden).unwrap();
    // The LION output alone never reaches the last layer's text FFN (as upstream), so the loss
    // also reads the text rows of the last hidden state.
    let w1 = Tensor::randn(0f32, 1., out.shape(), &Device::Cpu).unwrap();
    let w2 = Tensor::randn(0f32, 1., hidden.shape(), &Device::Cpu).unwrap();
    let loss = ((out * w1).unwrap().sum_all().unwrap() + (hidden * w2).unwrap().sum_all().unwrap())
        .unwrap();
    let n = check_all_vars_get_grad(&varmap, &loss).unwrap();
    assert_eq!(n, varmap.all_vars().len());
    assert!(n > 100, "only {n} vars");

    // with the LION output only, exactly the last layer's text FFN gets nothing
    let out = q
        .forward(&io["vision"], Some(&ids), Some(&io["attention_mask"]), true)
        .unwrap();
    let grads = out.sum_all().unwrap().backward().unwrap();
    let data = varmap.data().lock().unwrap();
    let mut dead: Vec<&String> = data
        .iter()
        .filter(|(_, v)| {
            grads
                .get(v.as_tensor())
                .map(|g| {
                    g.abs()
                        .unwrap()
                        .sum_all()
                        .unwrap()
                        .to_scalar::<f32>()
                        .unwrap()
                        == 0.0
                })
                .unwrap_or(true)
        })
        .map(|(k, _)| k)
        .collect();
    dead.sort();
    let prefix = "Qformer.bert.encoder.layer.3.";
    assert!(!dead.is_empty());
    assert!(
        dead.iter()
            .all(|k| k.starts_with(&format!("{prefix}intermediate."))
                || k.starts_with(&format!("{prefix}output."))),
        "{dead:?}"
    );
}

// ------------------------------------------------------------------------------------------
// Vision aggregator

fn agg_cfg() -> AggregatorConfig {
    AggregatorConfig {
        width: 16,
        num_heads: 4,
        intermediate_size: 24,
        num_blocks: 2,
        proj_hidden: 64,
        d_model: 12,
        layer_norm_eps: 1e-12,
        ln_adapter_eps: 1e-5,
        dropout: 0.1,
        source_layers: vec![4, 3, 1],
    }
}

fn load_agg(varmap: Option<VarMap>) -> VisionAggregator {
    let mut l = loader("aggregator.safetensors");
    if let Some(vm) = varmap {
        l = l.with_trainable(vm, |_| true);
    }
    let a = VisionAggregator::new(&agg_cfg(), l.var_builder(DType::F32, &Device::Cpu)).unwrap();
    let report = l.finish(LoadMode::Strict).unwrap();
    assert!(report.is_clean(), "{report}");
    a
}

#[test]
fn aggregator_matches_transformers_bert_layers() {
    let io = io("aggregator_io.safetensors");
    let a = load_agg(None);
    let layers = [io["x38"].clone(), io["x28"].clone(), io["x18"].clone()];
    let fused = a.fuse(&layers, false).unwrap();
    let d = max_abs_diff(&fused, &io["fused"]).unwrap();
    println!("aggregator ln_adapter(fusion): max abs diff {d:e}");
    assert!(d <= TOL, "fused differs by {d}");
    let out = a.forward(&layers, false).unwrap();
    let d = max_abs_diff(&out, &io["output"]).unwrap();
    println!("aggregator adapter_proj output: max abs diff {d:e}");
    assert!(d <= TOL, "output differs by {d}");
    let e = a.forward(&layers[..2], false).unwrap_err().to_string();
    assert!(e.contains("2 ViT layers given, 3 needed"), "{e}");
}

#[test]
fn every_aggregator_variable_gets_a_gradient() {
    let io = io("aggregator_io.safetensors");
    let varmap = VarMap::new();
    let a = load_agg(Some(varmap.clone()));
    let layers = [io["x38"].clone(), io["x28"].clone(), io["x18"].clone()];
    let out = a.forward(&layers, true).unwrap();
    let w = Tensor::randn(0f32, 1., out.shape(), &Device::Cpu).unwrap();
    let loss = (out * w).unwrap().sum_all().unwrap();
    let n = check_all_vars_get_grad(&varmap, &loss).unwrap();
    // every checkpoint tensor is a trainable variable: 2 x 26 block tensors + 2 + 4
    assert_eq!(n, 58);
    assert_eq!(
        n,
        Checkpoint::open(fixture("vision/aggregator.safetensors"))
            .unwrap()
            .len()
    );
}

#[test]
fn aggregator_upstream_init_starts_each_sublayer_as_layernorm_of_residual() {
    let varmap = VarMap::new();
    let l = WeightLoader::random().with_trainable(varmap.clone(), |_| true);
    let a = VisionAggregator::new(&agg_cfg(), l.var_builder(DType::F32, &Device::Cpu)).unwrap();
    let data = varmap.data().lock().unwrap();
    let zero = |k: &str| {
        let v: &Var = &data[k];
        v.as_tensor()
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            == 0.0
    };
    for b in 0..2 {
        for part in ["attention.output", "crossattention.output", "output"] {
            assert!(zero(&format!(
                "fusion_adapter.blocks.{b}.{part}.dense.weight"
            )));
            assert!(zero(&format!(
                "fusion_adapter.blocks.{b}.{part}.dense.bias"
            )));
        }
        assert!(!zero(&format!(
            "fusion_adapter.blocks.{b}.attention.self.query.weight"
        )));
        assert!(zero(&format!(
            "fusion_adapter.blocks.{b}.attention.self.query.bias"
        )));
    }
    assert!(!zero("adapter_proj.0.bias"));
    drop(data);
    // so the fused stream is LayerNorm applied 6 times (eps 1e-12), then ln_adapter: the
    // normalised x38, whatever the other layers hold
    let io = io("aggregator_io.safetensors");
    let x = &io["x38"];
    let fused = a
        .fuse(&[x.clone(), io["x28"].clone(), io["x18"].clone()], false)
        .unwrap();
    let mean = x.mean_keepdim(2).unwrap();
    let xc = x.broadcast_sub(&mean).unwrap();
    let var = xc.sqr().unwrap().mean_keepdim(2).unwrap();
    let expect = xc
        .broadcast_div(&(var + 1e-5).unwrap().sqrt().unwrap())
        .unwrap();
    assert!(max_abs_diff(&fused, &expect).unwrap() < 1e-4);
}

#[test]
fn lion_presets_match_upstream_sizes() {
    let a = AggregatorConfig::lion(2048);
    assert_eq!(
        (a.width, a.num_heads, a.intermediate_size, a.proj_hidden),
        (1408, 16, 3072, 5632)
    );
    assert_eq!(a.source_layers, vec![38, 28, 18]);
    let q = QFormerConfig::lion(2048);
    assert_eq!(
        (
            q.bert.vocab_size,
            q.encoder_width,
            q.cross_attention_freq,
            q.num_query_token
        ),
        (30523, 1408, 2, 32)
    );
}

#[test]
fn image_file_to_t5_visual_tokens_composes() {
    // LION's encode_img at a tiny size with random weights: file -> eval-style transform ->
    // ViT (blocks 4, 3, 1 as LION's 38, 28, 18) -> Q-Former (32 -> 6 queries) + aggregator.
    use lion_core::preprocess::{load_image, Filter, ImageTransform, CLIP_MEAN, CLIP_STD};
    let img = load_image(fixture("vision/robust/photo.jpg")).unwrap();
    let t = ImageTransform {
        size: 32,
        filter: Filter::Bicubic,
        mean: CLIP_MEAN,
        std: CLIP_STD,
    };
    let pixels = t.apply_batch(&[img.clone(), img], &Device::Cpu).unwrap();
    let vb = WeightLoader::random().var_builder(DType::F32, &Device::Cpu);
    let vit = EvaVit::new(&vit_cfg(32, true), vb.pp("visual_encoder")).unwrap();
    let mut qcfg = qformer_cfg();
    qcfg.encoder_width = 16;
    let qformer = QFormer::new(&qcfg, vb.clone()).unwrap();
    let agg = VisionAggregator::new(&agg_cfg(), vb).unwrap();
    let layers = vit.forward(&pixels, &agg_cfg().source_layers).unwrap();
    let ids = Tensor::new(&[[5u32, 9, 11], [7, 3, 0]], &Device::Cpu).unwrap();
    let mask = Tensor::new(&[[1u32, 1, 1], [1, 1, 0]], &Device::Cpu).unwrap();
    let q = qformer
        .forward(&layers[0], Some(&ids), Some(&mask), false)
        .unwrap();
    let a = agg.forward(&layers, false).unwrap();
    assert_eq!(q.dims(), &[2, 6, 12]);
    assert_eq!(a.dims(), &[2, 17, 12]);
    let visual = Tensor::cat(&[&q, &a], 1).unwrap();
    assert_eq!(visual.dims(), &[2, 23, 12]);
    // the two rows saw the same image but different questions: only the Q-Former part differs
    let rows = visual.chunk(2, 0).unwrap();
    let d = |r: std::ops::Range<usize>| {
        max_abs_diff(
            &rows[0].narrow(1, r.start, r.len()).unwrap(),
            &rows[1].narrow(1, r.start, r.len()).unwrap(),
        )
        .unwrap()
    };
    assert!(d(0..6) > 1e-4);
    assert_eq!(d(6..23), 0.0);
}
