//! The whole LION forward at the tiny preset against upstream's own `LIONT5InstructAdapter`
//! (fixtures by scripts/fixtures_lion.py): visual tokens, encoder input, logits and loss for both
//! router routes with the static prompt, and our dynamic and gated prompts against the script's
//! own reference on the same model.
//!
//! The only change from `preset("tiny")` is the Q-Former vocabulary (1000 instead of 30523), to
//! keep the checkpoint fixture small; the script builds the same.

use std::collections::HashMap;

use candle_core::{DType, Device, IndexOp, Tensor, Var};
use candle_nn::VarMap;
use lion_core::adapter::Route;
use lion_core::lion::{LionBatch, LionConfig, LionModel};
use lion_core::model_spec::ModelSpec;
use lion_core::pipeline::LionPipeline;
use lion_core::presets::preset;
use lion_core::prompt::{PromptKind, PromptTemplates};
use lion_core::sentence::TokenBatch;
use lion_core::testing::fixture;
use lion_core::testing::{check_vars_get_grad, max_abs_diff};
use lion_core::text::{Encoded, T5Tokenizer};
use lion_core::weights::{Checkpoint, LoadMode, WeightLoader};

const TOL: f32 = 1e-4;
const QF_VOCAB: usize = 1000;

/// `LION_TEST_DEVICE` (default cpu): the GPU check runs these parity tests on a GPU.
fn dev() -> Device {
    lion_core::testing::device()
}

fn io() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture("lion/io.safetensors"), &dev()).unwrap()
}

fn config(kind: PromptKind) -> LionConfig {
    let mut cfg = preset("tiny", Some(kind)).unwrap();
    cfg.qformer.as_mut().unwrap().bert.vocab_size = QF_VOCAB;
    cfg
}

/// Loads the fixture strictly: every key of the model is in the files and vice versa (except
/// the recomputed `position_ids` and, for dynamic prompts, the unused `soft_prompt_hint`).
fn load(kind: PromptKind) -> LionModel {
    load_with(kind, None)
}

/// LION's trainable set (`lion_t5.py` __init__ / `_init_llm`): everything but the ViT and the
/// T5 weights outside the adapters.
fn lion_trainable(key: &str) -> bool {
    !key.starts_with("visual_encoder.")
        && (!key.starts_with("t5_model.") || key.contains("adapter"))
}

fn load_with(kind: PromptKind, trainable: Option<VarMap>) -> LionModel {
    let mut files = vec![Checkpoint::open(fixture("lion/model.safetensors")).unwrap()];
    let mut ignore = vec!["position_ids"];
    match kind {
        PromptKind::Static => {}
        PromptKind::Dynamic => {
            files.push(Checkpoint::open(fixture("lion/prompt_dynamic.safetensors")).unwrap());
            ignore.push("soft_prompt_hint");
        }
        PromptKind::Gated { .. } => {
            files.push(Checkpoint::open(fixture("lion/prompt_gated.safetensors")).unwrap())
        }
    }
    let mut loader = WeightLoader::new(files).ignore_unexpected(&ignore);
    if let Some(vm) = trainable {
        loader = loader.with_trainable(vm, lion_trainable);
    }
    let tok = T5Tokenizer::from_file(fixture("lion/tokenizer.json")).unwrap();
    let model = LionModel::new(
        &config(kind),
        tok.placeholder_id().unwrap(),
        loader.var_builder(DType::F32, &dev()),
    )
    .unwrap();
    let report = loader.finish(LoadMode::Strict).unwrap();
    assert!(report.is_clean(), "{report}");
    model
}

/// The fixture is upstream's `state_dict()` unfiltered: T5's tied `embed_tokens` aliases are in
/// it. A model folder (lion.json with the full config) loads it strictly; an edited alias is an
/// error naming both keys.
#[test]
fn unfiltered_upstream_state_dict_loads_strictly_from_a_model_folder() {
    let model = fixture("lion/model.safetensors");
    let ckpt = Checkpoint::open(&model).unwrap();
    for k in [
        "t5_model.encoder.embed_tokens.weight",
        "t5_model.decoder.embed_tokens.weight",
    ] {
        assert!(ckpt.shape(k).is_some(), "{k} not in the fixture");
    }
    let dir = tempfile::tempdir().unwrap();
    let write = |weights: &std::path::Path| {
        let manifest = serde_json::json!({
            "config": config(PromptKind::Static),
            "weights": [{"file": weights}],
            "t5_tokenizer": fixture("lion/tokenizer.json"),
            "qformer_tokenizer": lion_core::testing::minilm_dir().join("tokenizer.json"),
        });
        std::fs::write(dir.path().join("lion.json"), manifest.to_string()).unwrap();
    };
    write(&model);
    let p = ModelSpec::from_folder(dir.path(), LoadMode::Strict)
        .and_then(|s| s.with_device(dev()).build())
        .unwrap();
    assert_eq!(
        p.report().tied,
        [
            "t5_model.decoder.embed_tokens.weight",
            "t5_model.encoder.embed_tokens.weight"
        ]
    );
    println!("{}", p.report());
    let mut ts = ckpt.load_all(&dev()).unwrap();
    let k = "t5_model.encoder.embed_tokens.weight";
    ts.insert(k.into(), ts[k].affine(1.0, 1e-3).unwrap());
    let edited = dir.path().join("edited.safetensors");
    lion_core::weights::save_safetensors(&ts, &edited).unwrap();
    write(&edited);
    let err = ModelSpec::from_folder(dir.path(), LoadMode::Strict)
        .and_then(|s| s.with_device(dev()).build())
        .err()
        .expect("a differing alias fails strict loading")
        .to_string();
    assert!(
        err.contains("t5_model.encoder.embed_tokens.weight differs from t5_model.shared.weight (max abs diff "),
        "{err}"
    );
}

fn to_u32(t: &Tensor) -> Tensor {
    t.to_dtype(DType::U32).unwrap()
}

/// The padded prompt ids/mask from the fixture as `Encoded` (unpadded rows from the mask).
fn encoded(ids: &Tensor, mask: &Tensor) -> Encoded {
    let rows = ids.to_dtype(DType::I64).unwrap().to_vec2::<i64>().unwrap();
    let m = mask.to_dtype(DType::I64).unwrap().to_vec2::<i64>().unwrap();
    Encoded {
        ids: rows
            .iter()
            .zip(&m)
            .map(|(r, m)| {
                r.iter()
                    .zip(m)
                    .filter(|(_, &m)| m == 1)
                    .map(|(&i, _)| i as u32)
                    .collect()
            })
            .collect(),
        input_ids: to_u32(ids),
        attention_mask: to_u32(mask),
    }
}

fn batch(io: &HashMap<String, Tensor>, prefix: &str, route: Route) -> LionBatch {
    LionBatch {
        pixel_values: io["pixel_values"].clone(),
        qformer_text: Some(TokenBatch {
            input_ids: to_u32(&io["qformer_input_ids"]),
            attention_mask: to_u32(&io["qformer_attention_mask"]),
        }),
        prompt: encoded(
            &io[&format!("{prefix}prompt_ids")],
            &io[&format!("{prefix}prompt_mask")],
        ),
        tag_embedding: Some(io["tag_embedding"].clone()),
        route,
    }
}

/// Logits at the target positions only (label != -100): upstream passes the target mask as
/// `decoder_attention_mask`, which changes nothing at those positions (causal attention) but
/// does change the logits at padded ones, which no loss or decoding ever reads.
fn target_logits(logits: &Tensor, labels: &Tensor) -> Tensor {
    let labels = labels.to_vec2::<i64>().unwrap();
    let mut rows = vec![];
    for (b, row) in labels.iter().enumerate() {
        for (t, &l) in row.iter().enumerate() {
            if l != -100 {
                rows.push(logits.i((b, t)).unwrap());
            }
        }
    }
    Tensor::stack(&rows, 0).unwrap()
}

fn check(name: &str, ours: &Tensor, theirs: &Tensor) -> f32 {
    let d = max_abs_diff(ours, theirs).unwrap();
    println!("{name}: max abs diff {d:e}");
    assert!(d <= TOL, "{name} differs by {d}");
    d
}

#[test]
fn prompt_text_tokenizes_as_upstream() {
    // upstream: tag_prompt.format(tags) + question, T5TokenizerFast(truncation_side="left")
    let io = io();
    let tok = T5Tokenizer::from_file(fixture("lion/tokenizer.json")).unwrap();
    let t = PromptTemplates::default();
    for (slots, prefix) in [(1, ""), (2, "gated.")] {
        let texts = [
            t.encoder_text(slots, "cat, dog, sky", "what is in the picture?"),
            t.encoder_text(slots, "dog", "where is the dog?"),
        ];
        let refs: Vec<&str> = texts.iter().map(|s| s.as_str()).collect();
        let ours = tok.batch(&refs, Some(128), true, &dev()).unwrap();
        let theirs = encoded(
            &io[&format!("{prefix}prompt_ids")],
            &io[&format!("{prefix}prompt_mask")],
        );
        assert_eq!(ours.ids, theirs.ids, "slots {slots}");
    }
    let labels = tok
        .labels(
            &["a cat and a dog under the sky", "in the park"],
            128,
            &dev(),
        )
        .unwrap();
    assert_eq!(
        labels.to_vec2::<i64>().unwrap(),
        io["labels"].to_vec2::<i64>().unwrap()
    );
}

#[test]
fn long_text_truncates_as_upstream() {
    // encoder text: truncation_side="left"; target: "right"; both keep `</s>`
    let io = io();
    let tok = T5Tokenizer::from_file(fixture("lion/tokenizer.json")).unwrap();
    let t = PromptTemplates::default();
    let tags = "cat, dog, sky, grass, tree, a red car";
    for (slots, left, key) in [(1, true, "trunc.left_ids"), (2, false, "trunc.right_ids")] {
        let text = t.encoder_text(slots, tags, "what is in the picture?");
        let ours = tok.encode(&[text.as_str()], Some(24), left).unwrap();
        let theirs: Vec<u32> = io[key].to_vec2::<i64>().unwrap()[0]
            .iter()
            .map(|&i| i as u32)
            .collect();
        assert_eq!(ours[0], theirs, "{key}");
    }
}

#[test]
fn lion_static_matches_upstream_both_routes() {
    let io = io();
    let model = load(PromptKind::Static);
    // ViT block outputs the aggregator reads (upstream 38, 28, 18 -> tiny 3, 2, 1)
    let layers = model.vit_layers(&io["pixel_values"]).unwrap();
    assert_eq!(model.config().vit_layers(), vec![3, 2, 1]);
    for (l, name) in layers
        .iter()
        .zip(["vit_block3", "vit_block2", "vit_block1"])
    {
        check(name, l, &io[name]);
    }
    for (route, key) in [
        (Route::RegionLevel, "region_level"),
        (Route::ImageLevel, "image_level"),
    ] {
        let b = batch(&io, "", route);
        let visual = model
            .encode_image(&b.pixel_values, b.qformer_text.as_ref(), false)
            .unwrap();
        check("visual tokens", &visual, &io["visual"]);
        let (embeds, mask) = model.encoder_input(&visual, &b.prompt, None).unwrap();
        check(
            &format!("{key} encoder input"),
            &embeds,
            &io[&format!("{key}.encoder_embeds")],
        );
        assert_eq!(
            mask.to_dtype(DType::I64).unwrap().to_vec2::<i64>().unwrap(),
            io[&format!("{key}.encoder_mask")].to_vec2::<i64>().unwrap()
        );
        let out = model.forward_train(&b, &io["labels"], false).unwrap();
        check(
            &format!("{key} logits"),
            &target_logits(&out.logits, &io["labels"]),
            &target_logits(&io[&format!("{key}.logits")], &io["labels"]),
        );
        check(
            &format!("{key} loss"),
            &out.loss.reshape(1).unwrap(),
            &io[&format!("{key}.loss")],
        );
    }
    // the routes really differ, so both are tested
    let d = max_abs_diff(&io["region_level.logits"], &io["image_level.logits"]).unwrap();
    assert!(d > 1e-2, "routes give the same logits ({d})");
}

fn check_prompt(kind: PromptKind, prefix: &str, key: &str) {
    let io = io();
    let model = load(kind);
    let b = batch(&io, prefix, Route::ImageLevel);
    let out = model.forward_train(&b, &io["labels"], false).unwrap();
    check(
        &format!("{key} logits"),
        &target_logits(&out.logits, &io["labels"]),
        &target_logits(&io[&format!("{key}.logits")], &io["labels"]),
    );
    check(
        &format!("{key} loss"),
        &out.loss.reshape(1).unwrap(),
        &io[&format!("{key}.loss")],
    );
    // a tag embedding is required
    let mut no_tags = b.clone();
    no_tags.tag_embedding = None;
    assert!(model.forward_train(&no_tags, &io["labels"], false).is_err());
}

#[test]
fn lion_dynamic_prompt_matches_reference() {
    check_prompt(PromptKind::Dynamic, "", "dynamic");
}

#[test]
fn lion_gated_prompt_matches_reference() {
    check_prompt(PromptKind::Gated { k: 2 }, "gated.", "gated");
}

#[test]
fn every_trainable_lion_variable_gets_a_gradient() {
    let io = io();
    for (kind, prefix) in [
        (PromptKind::Static, ""),
        (PromptKind::Gated { k: 2 }, "gated."),
    ] {
        let vm = VarMap::new();
        let model = load_with(kind, Some(vm.clone()));
        let b = batch(&io, prefix, Route::RegionLevel);
        // trainable variables hold the checkpoint values: same loss as upstream
        let eval = model.forward_train(&b, &io["labels"], false).unwrap();
        let want = if prefix.is_empty() {
            "region_level.loss"
        } else {
            "gated.loss"
        };
        if prefix.is_empty() {
            check("trainable loss", &eval.loss.reshape(1).unwrap(), &io[want]);
        }
        let out = model.forward_train(&b, &io["labels"], true).unwrap();
        // as upstream, the last Q-Former layer's text FFN only feeds text rows that encode_img
        // drops ([:, :queries]): exactly those 6 tensors get no gradient
        let dead = |k: &str| {
            k.starts_with("Qformer.bert.encoder.layer.1.intermediate.")
                || k.starts_with("Qformer.bert.encoder.layer.1.output.")
        };
        let vars: Vec<(String, Var)> = lion_core::weights::varmap_vars(&vm)
            .into_iter()
            .filter(|(k, _)| !dead(k))
            .collect();
        assert_eq!(vars.len() + 6, vm.all_vars().len());
        let n = check_vars_get_grad(&vars, &out.loss).unwrap_or_else(|e| panic!("{kind:?}: {e}"));
        let grads = out.loss.backward().unwrap();
        for (k, v) in vm.data().lock().unwrap().iter().filter(|(k, _)| dead(k)) {
            let zero = grads.get(v.as_tensor()).is_none_or(|g| {
                g.abs()
                    .unwrap()
                    .max_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap()
                    == 0.0
            });
            assert!(zero, "{k} unexpectedly gets a gradient");
        }
        let names = vm
            .data()
            .lock()
            .unwrap()
            .keys()
            .cloned()
            .collect::<Vec<_>>();
        for k in [
            "query_tokens",
            "fusion_adapter.blocks.1.output.dense.weight",
            "t5_model.encoder.block.0.layer.1.adapter.router_ratio1",
            "t5_model.decoder.block.1.layer.2.adapter.adapters.1.up_proj.weight",
            "soft_prompt_hint",
        ] {
            assert!(names.iter().any(|n| n == k), "{k} is not trainable");
        }
        assert!(!names.iter().any(|n| n.starts_with("visual_encoder.")));
        println!("{kind:?}: {n} trainable variables with gradients (+6 dead as upstream)");
    }
}

/// A tiny static LION with random weights, the fixture's T5 tokenizer and MiniLM's BERT
/// tokenizer for the Q-Former (its full vocabulary: questions use real words).
fn random_pipeline() -> LionPipeline {
    let mut spec = ModelSpec::preset("tiny", Some(PromptKind::Static))
        .unwrap()
        .with_init_seed(Some(0));
    spec.t5_tokenizer = Some(fixture("lion/tokenizer.json"));
    spec.qformer_tokenizer = Some(lion_core::testing::minilm_dir().join("tokenizer.json"));
    spec.build().unwrap()
}

/// Streaming hands out each answer in pieces whose concatenation is the answer `answer` gives
/// (greedy, sampling with n = 2, beam search as one piece at the end), per request and sequence;
/// stopping from the callback cuts generation short.
#[test]
fn streamed_pieces_join_to_the_answers() {
    use lion_core::generate::{GenerationConfig, Sampling};
    use lion_core::pipeline::{Request, TextDelta};
    use lion_core::prompt::Task;
    let p = random_pipeline();
    let images: Vec<image::RgbImage> = (0..3u8)
        .map(|k| image::RgbImage::from_fn(40, 30, |x, y| image::Rgb([x as u8 * k, y as u8, 9])))
        .collect();
    let reqs = vec![
        Request {
            task: Task::Caption,
            text: String::new(),
            tags: vec![("dog".into(), 0.9)],
        },
        Request {
            task: Task::Rec,
            text: "the left dog".into(),
            tags: vec![],
        },
        Request {
            task: Task::Vqa,
            text: "what is it?".into(),
            tags: vec![],
        },
    ];
    let greedy = GenerationConfig {
        num_beams: 1,
        max_new_tokens: 12,
        min_length: 13,
        ..GenerationConfig::default()
    };
    let sampled = GenerationConfig {
        sampling: Some(Sampling {
            temperature: 1.0,
            top_p: 0.95,
            top_k: None,
            seed: 5,
        }),
        num_return_sequences: 2,
        ..greedy.clone()
    };
    let beams = GenerationConfig {
        num_beams: 3,
        ..greedy.clone()
    };
    for (name, gen) in [
        ("greedy", &greedy),
        ("sampled", &sampled),
        ("beams", &beams),
    ] {
        let n = gen.num_return_sequences;
        let want = p.answer(&images, &reqs, gen).unwrap();
        let mut pieces: Vec<Vec<String>> = vec![Vec::new(); reqs.len() * n];
        let mut on_text = |d: TextDelta| {
            pieces[d.request * n + d.sequence].push(d.text.to_string());
            true
        };
        let got = p
            .answer_streaming(&images, &reqs, gen, Some(&mut on_text))
            .unwrap();
        if name != "beams" {
            assert!(
                pieces.iter().any(|p| p.len() >= 3),
                "{name}: word by word: {pieces:?}"
            );
        }
        assert_eq!(got, want, "{name}: streaming changed the answers");
        for (k, a) in want.iter().enumerate() {
            assert_eq!(
                pieces[k].concat(),
                a.text,
                "{name}: sequence {k}: {:?}",
                pieces[k]
            );
            assert!(
                pieces[k].iter().all(|s| !s.is_empty()),
                "{name}: empty piece"
            );
            let spaces = a.text.matches(' ').count();
            if name == "beams" {
                assert!(pieces[k].len() <= 1, "{name}: beam search streams once");
            } else {
                // every word before the last space arrives on its own step at the latest
                assert!(
                    pieces[k].len() > spaces.min(1),
                    "{name}: {:?} for {:?}",
                    pieces[k],
                    a.text
                );
            }
        }
    }
    // stopping after the first piece: every answer is cut short
    let mut first = true;
    let mut stop = |_: TextDelta| std::mem::take(&mut first);
    let cut = p
        .answer_streaming(&images, &reqs, &greedy, Some(&mut stop))
        .unwrap();
    assert!(cut.iter().all(|a| a.tokens < 12 && !a.finished), "{cut:?}");
}

/// The GPU's path on the CPU: the whole LION training forward with the plain candle ops forced
/// ([`lion_core::kernels::with_plain_ops`]) against the fused CPU kernels: the loss within 1e-5
/// and the gradient of every trainable variable within 1e-5 of its largest element.
#[test]
fn plain_ops_match_the_fused_kernels_loss_and_every_gradient() {
    use lion_core::kernels::with_plain_ops;
    let io = io();
    for (kind, prefix) in [
        (PromptKind::Static, ""),
        (PromptKind::Gated { k: 2 }, "gated."),
    ] {
        let run = |plain: bool| {
            with_plain_ops(plain, || {
                let vm = VarMap::new();
                let model = load_with(kind, Some(vm.clone()));
                let b = batch(&io, prefix, Route::RegionLevel);
                let out = model.forward_train(&b, &io["labels"], false).unwrap();
                let grads = out.loss.backward().unwrap();
                let mut g: Vec<(String, Option<Tensor>)> = vm
                    .data()
                    .lock()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| (k.clone(), grads.get(v.as_tensor()).cloned()))
                    .collect();
                g.sort_by(|a, b| a.0.cmp(&b.0));
                (out.loss.to_scalar::<f32>().unwrap(), g)
            })
        };
        let (loss_f, grads_f) = run(false);
        let (loss_p, grads_p) = run(true);
        let d = (loss_f - loss_p).abs() / loss_f.abs().max(1.0);
        assert!(
            d <= 1e-5,
            "{kind:?}: loss {loss_f} (fused) vs {loss_p} (plain)"
        );
        assert_eq!(grads_f.len(), grads_p.len());
        let mut worst = 0f32;
        for ((k, a), (k2, b)) in grads_f.iter().zip(&grads_p) {
            assert_eq!(k, k2);
            match (a, b) {
                (Some(a), Some(b)) => {
                    let scale = lion_core::testing::max_abs(a).unwrap();
                    let d = max_abs_diff(a, b).unwrap();
                    // + 1e-9: attention key biases have an exactly-zero gradient (softmax is
                    // invariant to q.b added to a whole row); both paths give ~1e-10 of rounding
                    assert!(
                        d <= 1e-5 * scale + 1e-9,
                        "{kind:?}: gradient of {k} differs by {d:e} (largest element {scale:e})"
                    );
                    if scale > 1e-6 {
                        worst = worst.max(d / scale);
                    }
                }
                (None, None) => {}
                _ => panic!("{kind:?}: {k} has a gradient on one path only"),
            }
        }
        println!(
            "{kind:?}: loss {loss_f}, {} gradients, plain vs fused worst relative difference {worst:e}",
            grads_f.len()
        );
    }
}

/// `lion convert --quantize`: the ViT's and T5's linear weights are stored quantized (each as its
/// quants and scales, no dense copy), everything else as it was, and the manifest names the
/// format. The folder loads strictly, as stored, into the same model as quantizing the dense
/// folder at load: the logits agree bit for bit, and differ from the dense model's.
#[test]
fn a_quantized_folder_loads_as_stored_and_equals_quantizing_at_load() {
    use lion_core::cpu::Quantize;
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("dense");
    std::fs::create_dir_all(&src).unwrap();
    let manifest = serde_json::json!({
        "config": config(PromptKind::Static),
        "weights": [{"file": fixture("lion/model.safetensors")}],
        "t5_tokenizer": fixture("lion/tokenizer.json"),
        "qformer_tokenizer": lion_core::testing::minilm_dir().join("tokenizer.json"),
    });
    std::fs::write(src.join("lion.json"), manifest.to_string()).unwrap();
    let io = io();
    let b = batch(&io, "", Route::ImageLevel);
    let logits = |pipe: &LionPipeline| {
        let out = pipe
            .model()
            .forward_train(&b, &io["labels"], false)
            .unwrap();
        target_logits(&out.logits, &io["labels"])
    };
    let dense = logits(
        &ModelSpec::from_folder(&src, LoadMode::Strict)
            .unwrap()
            .build()
            .unwrap(),
    );
    for q in Quantize::ALL {
        let dst = dir.path().join(q.name());
        lion_core::convert::convert_model_folder(&src, &dst, None, Some(q), |_, _, _| {}).unwrap();
        let stored = Checkpoint::open(dst.join("model.safetensors")).unwrap();
        let keys: Vec<&str> = stored.keys().collect();
        let parts = |k: &str| lion_core::linear::quantized_names(k, q);
        for k in [
            "visual_encoder.blocks.0.attn.qkv.weight",
            "visual_encoder.blocks.3.mlp.fc2.weight",
            "t5_model.encoder.block.0.layer.0.SelfAttention.q.weight",
            "t5_model.decoder.block.1.layer.1.EncDecAttention.o.weight",
        ] {
            let (qs, scales) = parts(k);
            assert!(stored.shape(&qs).is_some(), "{qs} not stored");
            assert!(stored.shape(&scales).is_some(), "{scales} not stored");
            assert!(stored.shape(k).is_none(), "{k} stored dense too");
        }
        // q4k keeps the T5's value and FFN output projections at 8 bits
        for k in [
            "t5_model.encoder.block.0.layer.0.SelfAttention.v.weight",
            "t5_model.decoder.block.1.layer.2.DenseReluDense.wo.weight",
        ] {
            let format = match q {
                Quantize::Q4K => Quantize::Q8_0,
                q => q,
            };
            let (qs, _) = lion_core::linear::quantized_names(k, format);
            assert!(stored.shape(&qs).is_some(), "{qs} not stored");
        }
        // never quantized: the LM head, embeddings, norms, the Q-Former, biases
        for k in [
            "t5_model.lm_head.weight",
            "t5_model.shared.weight",
            "visual_encoder.blocks.0.attn.proj.bias",
            "Qformer.bert.encoder.layer.0.attention.self.query.weight",
        ] {
            assert!(stored.shape(k).is_some(), "{k} missing");
        }
        let n_quantized = keys.iter().filter(|k| k.ends_with(".qs")).count();
        // tiny: 4 ViT blocks x 4 layers; T5 2 + 2 blocks: encoder 4 + 3 (gated FFN), decoder
        // 4 + 4 + 3
        assert_eq!(n_quantized, 4 * 4 + 2 * 7 + 2 * 11, "{keys:?}");
        let spec = ModelSpec::from_folder(&dst, LoadMode::Strict).unwrap();
        assert_eq!(spec.quantize, Some(q));
        let from_folder = logits(&spec.build().unwrap());
        let at_load = logits(
            &ModelSpec::from_folder(&src, LoadMode::Strict)
                .unwrap()
                .with_quantize(Some(q))
                .build()
                .unwrap(),
        );
        assert_eq!(
            max_abs_diff(&from_folder, &at_load).unwrap(),
            0.0,
            "{}",
            q.name()
        );
        // (the accuracy of each format is measured in tests/formats.rs and the README)
        let d = max_abs_diff(&from_folder, &dense).unwrap();
        eprintln!("{}: logits {d:.3} from the dense model's", q.name());
        assert!(d > 0.0 && d.is_finite(), "{}: {d}", q.name());
    }
    // the stored format cannot be quantized again into another one
    let err = lion_core::convert::convert_model_folder(
        &dir.path().join("q8_0"),
        &dir.path().join("again"),
        None,
        Some(Quantize::Q4_0),
        |_, _, _| {},
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("stored in q8_0"), "{err}");
}

/// `--dtype bf16` on a whole LION (the fixture's weights): every frozen linear layer, including
/// the Q-Former's `t5_proj`, LION's `adapter_proj` and the aggregator's output `dense` layers, runs
/// on bf16 weights; the logits of both routes (image-level through `t5_proj`, region-level through
/// the aggregator) stay within bf16 rounding of the f32 model's, and do differ from them (the
/// layers really are bf16).
#[test]
fn a_bf16_lion_stays_close_to_the_f32_lion_on_both_routes() {
    use lion_core::cpu::WeightDtype;
    let dir = tempfile::tempdir().unwrap();
    let manifest = serde_json::json!({
        "config": config(PromptKind::Static),
        "weights": [{"file": fixture("lion/model.safetensors")}],
        "t5_tokenizer": fixture("lion/tokenizer.json"),
        "qformer_tokenizer": lion_core::testing::minilm_dir().join("tokenizer.json"),
    });
    std::fs::write(dir.path().join("lion.json"), manifest.to_string()).unwrap();
    let build = |dtype| {
        ModelSpec::from_folder(dir.path(), LoadMode::Strict)
            .unwrap()
            .with_dtype(dtype)
            .build()
            .unwrap()
    };
    let (f32_pipe, bf16_pipe) = (build(WeightDtype::F32), build(WeightDtype::Bf16));
    let io = io();
    for route in [Route::ImageLevel, Route::RegionLevel] {
        let b = batch(&io, "", route);
        let logits = |pipe: &LionPipeline| {
            let out = pipe
                .model()
                .forward_train(&b, &io["labels"], false)
                .unwrap();
            target_logits(&out.logits.to_dtype(DType::F32).unwrap(), &io["labels"])
        };
        let (want, got) = (logits(&f32_pipe), logits(&bf16_pipe));
        let scale = lion_core::testing::max_abs(&want).unwrap();
        let d = max_abs_diff(&got, &want).unwrap();
        eprintln!("{route:?}: bf16 logits {d:.4} from f32 (max |logit| {scale:.2})");
        assert!(
            d.is_finite() && d < 0.05 * scale,
            "{route:?}: {d} vs {scale}"
        );
        assert!(d > 0.0, "{route:?}: bf16 gave exactly the f32 logits");
    }
}

/// An f32 model over a bf16 checkpoint (the fixture with every f32 tensor rounded to bf16) keeps
/// its frozen linear weights and lookup tables in bf16 as stored, and gives the visual tokens,
/// logits and loss of the same model loaded from an f32 copy of that checkpoint bit for bit, on
/// both routes (ViT, Q-Former with its word embeddings, aggregator, T5 with its LM head).
#[test]
fn a_bf16_checkpoint_in_an_f32_model_gives_the_bits_of_its_f32_copy() {
    let cpu = Device::Cpu;
    let ts = Checkpoint::open(fixture("lion/model.safetensors"))
        .unwrap()
        .load_all(&cpu)
        .unwrap();
    let cast = |from: DType, to: DType| -> HashMap<String, Tensor> {
        ts.iter()
            .map(|(k, t)| {
                let t = match t.dtype() == from {
                    true => t.to_dtype(DType::BF16).unwrap().to_dtype(to).unwrap(),
                    false => t.clone(),
                };
                (k.clone(), t)
            })
            .collect()
    };
    let dir = tempfile::tempdir().unwrap();
    let (bf, wide) = (dir.path().join("bf16.st"), dir.path().join("f32.st"));
    lion_core::weights::save_safetensors(&cast(DType::F32, DType::BF16), &bf).unwrap();
    lion_core::weights::save_safetensors(&cast(DType::F32, DType::F32), &wide).unwrap();
    let tok = T5Tokenizer::from_file(fixture("lion/tokenizer.json")).unwrap();
    let load = |p: &std::path::Path| {
        let loader = WeightLoader::new(vec![Checkpoint::open(p).unwrap()])
            .ignore_unexpected(&["position_ids"]);
        let m = LionModel::new(
            &config(PromptKind::Static),
            tok.placeholder_id().unwrap(),
            loader.var_builder(DType::F32, &cpu),
        )
        .unwrap();
        (m, loader.finish(LoadMode::Strict).unwrap())
    };
    let ((kept, kept_report), (plain, plain_report)) = (load(&bf), load(&wide));
    // the memory check counts such weights at their bf16 size
    let spec = |p: &std::path::Path| {
        lion_core::model_spec::ModelSpec::new(config(PromptKind::Static))
            .with_checkpoints(vec![Checkpoint::open(p).unwrap()])
            .held_dtype()
    };
    assert_eq!(spec(&bf), lion_core::cpu::WeightDtype::Bf16);
    assert_eq!(spec(&wide), lion_core::cpu::WeightDtype::F32);
    assert_eq!(plain_report.kept_bf16.0, 0);
    // every linear weight and lookup table of the ViT, Q-Former and T5 outside the adapters
    assert!(kept_report.kept_bf16.0 > 50, "{:?}", kept_report.kept_bf16);
    assert_eq!(
        kept.t5().lm_head().map(|w| w.dtype()),
        Some(DType::BF16),
        "the LM head as stored"
    );
    let io = candle_core::safetensors::load(fixture("lion/io.safetensors"), &cpu).unwrap();
    for route in [Route::RegionLevel, Route::ImageLevel] {
        let b = batch(&io, "", route);
        let visual = |m: &LionModel| {
            m.encode_image(&b.pixel_values, b.qformer_text.as_ref(), false)
                .unwrap()
        };
        assert_eq!(max_abs_diff(&visual(&kept), &visual(&plain)).unwrap(), 0.0);
        let (a, p) = (
            kept.forward_train(&b, &io["labels"], false).unwrap(),
            plain.forward_train(&b, &io["labels"], false).unwrap(),
        );
        assert_eq!(a.logits.dtype(), DType::F32);
        assert_eq!(
            max_abs_diff(&a.logits, &p.logits).unwrap(),
            0.0,
            "{route:?}"
        );
        assert_eq!(max_abs_diff(&a.loss, &p.loss).unwrap(), 0.0, "{route:?}");
    }
}
