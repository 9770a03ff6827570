//! Flan-T5 + LION adapters: parity with `transformers` `T5ForConditionalGeneration` and a PyTorch
//! reference of LION's adapters (fixtures by scripts/fixtures_t5.py), KV-cache decoding,
//! gradients with a frozen backbone. Greedy, beam and sampled generation: `t5_generate.rs`.

mod t5_common;

use t5_common::*;

use std::collections::HashMap;

use candle_core::{DType, Tensor};
use candle_nn::VarMap;
use lion_core::adapter::{AdapterConfig, AdapterRouter, Route};
use lion_core::t5::{relative_position_bucket, T5Config, T5ForConditionalGeneration, T5Input};
use lion_core::testing::fixture;
use lion_core::testing::{check_all_vars_get_grad, max_abs_diff};
use lion_core::weights::{Checkpoint, LoadMode, LoadReport, WeightLoader};

/// Encoder states, logits at every target position (26 tokens, padded batch of 3) and loss.
fn check_forward(model: &T5ForConditionalGeneration, prefix: &str, route: Route) {
    let io = io();
    let (input_ids, mask) = ids(&io);
    let out = model
        .forward_train(
            T5Input::Ids(&input_ids),
            Some(&mask),
            &io["labels"],
            route,
            false,
        )
        .unwrap();
    assert_eq!(out.logits.dims(), &[3, 26, 96]);
    let de = max_abs_diff(&out.encoder_states, &io[&format!("{prefix}.encoder")]).unwrap();
    let dl = max_abs_diff(&out.logits, &io[&format!("{prefix}.logits")]).unwrap();
    let loss = out.loss.to_scalar::<f32>().unwrap();
    let want = io[&format!("{prefix}.loss")].to_vec1::<f32>().unwrap()[0];
    let dloss = (loss - want).abs();
    eprintln!("{prefix}: encoder {de:.2e}, logits {dl:.2e}, loss {loss} vs {want} ({dloss:.2e})");
    assert!(de <= TOL, "{prefix}: encoder states differ by {de}");
    assert!(dl <= TOL, "{prefix}: logits differ by {dl}");
    assert!(dloss <= TOL, "{prefix}: loss {loss} vs {want}");
}

#[test]
fn relative_position_buckets_match_transformers() {
    let b = candle_core::safetensors::load(fixture("t5/buckets.safetensors"), &dev()).unwrap();
    let rel = b["relative_position"].to_vec1::<i64>().unwrap();
    for (nb, md) in [(32usize, 128usize), (8, 20)] {
        for bi in [true, false] {
            let key = format!("b{nb}_{md}_{}", if bi { "bi" } else { "uni" });
            let want = b[&key].to_vec1::<i64>().unwrap();
            for (r, w) in rel.iter().zip(want) {
                assert_eq!(
                    relative_position_bucket(*r, bi, nb, md) as i64,
                    w,
                    "{key}: relative position {r}"
                );
            }
        }
    }
}

#[test]
fn plain_flan_t5_parity_untied_head() {
    let model = load(&cfg("config.json", 0), "model.safetensors");
    assert!(model.lm_head().is_some());
    check_forward(&model, "plain", Route::ImageLevel);
}

#[test]
fn plain_t5_parity_tied_head() {
    let c = cfg("config_tied.json", 0);
    assert!(c.tie_word_embeddings);
    let loader = WeightLoader::new(vec![
        Checkpoint::open(fixture("t5/model_tied.safetensors")).unwrap()
    ]);
    let model =
        T5ForConditionalGeneration::new(&c, loader.var_builder(DType::F32, &dev())).unwrap();
    loader.finish(LoadMode::Strict).unwrap();
    assert!(model.lm_head().is_none());
    check_forward(&model, "plain_tied", Route::ImageLevel);
}

/// Loads `tensors` into a T5 of `config` and returns the strict verdict and the lenient report.
fn fit(
    config: &str,
    tensors: &HashMap<String, Tensor>,
) -> (Result<LoadReport, String>, LoadReport) {
    let go = |mode| {
        let loader = WeightLoader::new(vec![Checkpoint::from_tensors(
            "edited.pth",
            tensors.clone(),
        )]);
        T5ForConditionalGeneration::new(&cfg(config, 0), loader.var_builder(DType::F32, &dev()))
            .unwrap();
        loader.finish(mode)
    };
    (
        go(LoadMode::Strict).map_err(|e| e.to_string()),
        go(LoadMode::Lenient).unwrap(),
    )
}

#[test]
fn unfiltered_state_dicts_load_strictly_and_tied_aliases_must_equal_their_source() {
    // as `state_dict()` writes them: `encoder.` / `decoder.embed_tokens.weight` beside
    // `shared.weight` (model.pth: torch.save, one shared storage; safetensors: equal copies)
    for file in ["model.pth", "model.safetensors"] {
        let ckpt = Checkpoint::open(fixture(&format!("t5/{file}"))).unwrap();
        assert!(
            ckpt.shape("encoder.embed_tokens.weight").is_some(),
            "{file}"
        );
        let loader = WeightLoader::new(vec![ckpt]);
        let model = T5ForConditionalGeneration::new(
            &cfg("config.json", 0),
            loader.var_builder(DType::F32, &dev()),
        )
        .unwrap();
        let report = loader.finish(LoadMode::Strict).unwrap();
        assert_eq!(
            report.tied,
            ["decoder.embed_tokens.weight", "encoder.embed_tokens.weight"],
            "{file}"
        );
        println!("{file}: {report}");
        check_forward(&model, "plain", Route::ImageLevel);
    }
    let base = Checkpoint::open(fixture("t5/model.safetensors"))
        .unwrap()
        .load_all(&dev())
        .unwrap();
    // an alias that differs from its source: strict loading names both keys and by how much
    let mut ts = base.clone();
    let e = (&ts["decoder.embed_tokens.weight"] + 0.25).unwrap();
    ts.insert("decoder.embed_tokens.weight".into(), e);
    let (strict, lenient) = fit("config.json", &ts);
    let err = strict.unwrap_err();
    assert!(
        err.contains("decoder.embed_tokens.weight differs from shared.weight (max abs diff 2."),
        "{err}"
    );
    assert_eq!(lenient.tie_mismatches.len(), 1);
    assert_eq!(lenient.tied, ["encoder.embed_tokens.weight"]);
    // ... or has another shape
    let mut ts = base.clone();
    let e = ts["encoder.embed_tokens.weight"].narrow(0, 0, 10).unwrap();
    ts.insert("encoder.embed_tokens.weight".into(), e);
    let err = fit("config.json", &ts).0.unwrap_err();
    assert!(
        err.contains("encoder.embed_tokens.weight differs from shared.weight (shapes [10, "),
        "{err}"
    );
    // an alias without its source is just unexpected (and the source missing)
    let mut ts = base.clone();
    ts.remove("shared.weight");
    let err = fit("config.json", &ts).0.unwrap_err();
    assert!(
        err.contains("missing keys: shared.weight")
            && err.contains(
                "unexpected keys: decoder.embed_tokens.weight, encoder.embed_tokens.weight"
            ),
        "{err}"
    );
    // lm_head.weight: a tie alias only where the model does not read it (tie_word_embeddings)
    let mut ts = Checkpoint::open(fixture("t5/model_tied.safetensors"))
        .unwrap()
        .load_all(&dev())
        .unwrap();
    ts.insert("lm_head.weight".into(), ts["shared.weight"].clone());
    let report = fit("config_tied.json", &ts).0.unwrap();
    assert!(report.tied.contains(&"lm_head.weight".to_string()));
    ts.insert(
        "lm_head.weight".into(),
        (&ts["shared.weight"] * 2.0).unwrap(),
    );
    let err = fit("config_tied.json", &ts).0.unwrap_err();
    assert!(
        err.contains("lm_head.weight differs from shared.weight"),
        "{err}"
    );
    // Flan-T5 (untied) reads its own head, whatever it holds
    assert_ne!(
        max_abs_diff(&base["lm_head.weight"], &base["shared.weight"]).unwrap(),
        0.0
    );
    assert!(fit("config.json", &base).0.is_ok());
}

#[test]
fn encoder_from_embeddings_equals_encoder_from_ids() {
    let io = io();
    let model = load(&cfg("config.json", 0), "model.safetensors");
    let (input_ids, mask) = ids(&io);
    let embeds = model.embed(&input_ids).unwrap();
    let d0 = max_abs_diff(&embeds, &io["inputs_embeds"]).unwrap();
    assert!(d0 <= 1e-6, "embedding differs by {d0}");
    let a = model
        .encode(
            T5Input::Embeds(&io["inputs_embeds"]),
            Some(&mask),
            Route::ImageLevel,
            false,
        )
        .unwrap();
    let d = max_abs_diff(&a, &io["plain.encoder"]).unwrap();
    eprintln!("encoder from inputs_embeds: {d:.2e}");
    assert!(d <= TOL, "{d}");
    // the padding mask matters: without it row 2 (5 real tokens of 13) changes
    let unmasked = model
        .encode(T5Input::Ids(&input_ids), None, Route::ImageLevel, false)
        .unwrap();
    assert!(max_abs_diff(&unmasked, &a).unwrap() > 1e-3);
}

#[test]
fn lion_two_adapters_parity_both_routes() {
    let model = load(&cfg("config.json", 2), LION);
    check_forward(&model, "lion.route0", Route::RegionLevel);
    check_forward(&model, "lion.route1", Route::ImageLevel);
    // the two routes really differ
    let io = io();
    let d = max_abs_diff(&io["lion.route0.logits"], &io["lion.route1.logits"]).unwrap();
    assert!(d > 1e-2, "routes give the same logits ({d})");
}

#[test]
fn lion_one_adapter_parity() {
    let model = load(&cfg("config.json", 1), LION1);
    check_forward(&model, "lion1.route0", Route::RegionLevel);
    // one adapter: no router, the route is irrelevant
    check_forward(&model, "lion1.route0", Route::ImageLevel);
}

#[test]
fn lion_checkpoint_without_adapters_in_config_reports_unexpected_adapter_keys() {
    let loader = WeightLoader::new(checkpoints(LION));
    T5ForConditionalGeneration::new(
        &cfg("config.json", 0),
        loader.var_builder(DType::F32, &dev()),
    )
    .unwrap();
    let msg = loader.finish(LoadMode::Strict).unwrap_err().to_string();
    assert!(
        msg.contains("encoder.block.0.layer.1.adapter.adapters.0.down_proj.weight"),
        "{msg}"
    );
    assert!(
        msg.contains("decoder.block.2.layer.2.adapter.router_ratio2"),
        "{msg}"
    );
}

#[test]
fn kv_cache_decoding_matches_full_sequence() {
    let io = io();
    let model = load(&cfg("config.json", 2), LION);
    let (input_ids, mask) = ids(&io);
    let route = Route::RegionLevel;
    let enc = model
        .encode(T5Input::Ids(&input_ids), Some(&mask), route, false)
        .unwrap();
    let labels = io["labels"].to_vec2::<i64>().unwrap();
    let dec_in = model.shift_right(&labels, &dev()).unwrap();
    let full = model
        .decode(&dec_in, &enc, Some(&mask), route, false)
        .unwrap();
    let mut cache = model.start_decoding(&enc, Some(&mask)).unwrap();
    // first 3 positions at once, then one by one
    let mut parts = vec![model
        .decode_step(&dec_in.narrow(1, 0, 3).unwrap(), &mut cache, route)
        .unwrap()];
    for t in 3..26 {
        parts.push(
            model
                .decode_step(&dec_in.narrow(1, t, 1).unwrap(), &mut cache, route)
                .unwrap(),
        );
    }
    assert_eq!(cache.seq_len(), 26);
    let inc = Tensor::cat(&parts, 1).unwrap();
    let d = max_abs_diff(&inc, &full).unwrap();
    eprintln!("incremental vs full-sequence logits: {d:.2e}");
    assert!(d <= 1e-5, "{d}");
    let dref = max_abs_diff(&inc, &io["lion.route0.logits"]).unwrap();
    assert!(dref <= TOL, "{dref}");
}

#[test]
fn adapter_router_parity_with_reference() {
    let t = candle_core::safetensors::load(fixture("t5/adapter.safetensors"), &dev()).unwrap();
    let ckpt: HashMap<String, Tensor> = t
        .iter()
        .filter_map(|(k, v)| {
            k.strip_prefix("adapter.")
                .map(|k| (k.to_string(), v.clone()))
        })
        .collect();
    let x = &t["x"];
    let acfg = AdapterConfig {
        d_model: 16,
        bottleneck: 64,
        num_adapters: 2,
    };
    let loader = WeightLoader::new(vec![Checkpoint::from_tensors("adapter", ckpt.clone())]);
    let router = AdapterRouter::new(&acfg, loader.var_builder(DType::F32, &dev())).unwrap();
    loader.finish(LoadMode::Strict).unwrap();
    for (route, key) in [
        (Route::RegionLevel, "out_route0"),
        (Route::ImageLevel, "out_route1"),
    ] {
        let d = max_abs_diff(&router.forward(x, route).unwrap(), &t[key]).unwrap();
        eprintln!("adapter router {key}: {d:.2e}");
        assert!(d <= 1e-6, "{key}: {d}");
    }
    // one adapter: adapters.0 only, no router parameters
    let single: HashMap<String, Tensor> = ckpt
        .into_iter()
        .filter(|(k, _)| k.starts_with("adapters.0."))
        .collect();
    let loader = WeightLoader::new(vec![Checkpoint::from_tensors("adapter1", single)]);
    let one = AdapterRouter::new(
        &AdapterConfig {
            num_adapters: 1,
            ..acfg
        },
        loader.var_builder(DType::F32, &dev()),
    )
    .unwrap();
    loader.finish(LoadMode::Strict).unwrap();
    assert_eq!(one.num_adapters(), 1);
    let d = max_abs_diff(
        &one.forward(x, Route::ImageLevel).unwrap(),
        &t["out_single"],
    )
    .unwrap();
    eprintln!("single adapter: {d:.2e}");
    assert!(d <= 1e-6, "{d}");
}

#[test]
fn adapter_init_is_lora_style_and_router_rows_select_one_adapter() {
    let varmap = VarMap::new();
    let loader = WeightLoader::random().with_trainable(varmap.clone(), |_| true);
    let acfg = AdapterConfig {
        d_model: 32,
        bottleneck: 64,
        num_adapters: 2,
    };
    let router = AdapterRouter::new(&acfg, loader.var_builder(DType::F32, &dev())).unwrap();
    let data = varmap.data().lock().unwrap();
    let get = |k: &str| data[k].as_tensor().clone();
    let down = get("adapters.0.down_proj.weight");
    let bound = 1.0 / 32f32.sqrt();
    let m = lion_core::testing::max_abs(&down).unwrap();
    assert!(
        m <= bound && m > 0.5 * bound,
        "down_proj init max {m}, bound {bound}"
    );
    for k in [
        "adapters.1.up_proj.weight",
        "adapters.0.up_proj.bias",
        "adapters.1.down_proj.bias",
    ] {
        assert_eq!(
            get(k)
                .abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap(),
            0.0,
            "{k}"
        );
    }
    assert_eq!(get("adapters.0.scale").to_vec1::<f32>().unwrap(), vec![1.0]);
    let r1 = get("router_ratio1").to_vec2::<f32>().unwrap();
    let r2 = get("router_ratio2").to_vec2::<f32>().unwrap();
    assert!(r1[0].iter().all(|&x| x == 1.0) && r1[1].iter().all(|&x| x == 0.0));
    assert!(r2[0].iter().all(|&x| x == 0.0) && r2[1].iter().all(|&x| x == 1.0));
    drop(data);
    // zero up_proj: the adapters add nothing at init
    let x = Tensor::randn(0f32, 1., (2, 3, 32), &dev()).unwrap();
    let out = router.forward(&x, Route::ImageLevel).unwrap();
    assert_eq!(
        out.abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap(),
        0.0
    );
}

#[test]
fn adapters_train_while_the_backbone_is_frozen() {
    let io = io();
    let (input_ids, mask) = ids(&io);
    let varmap = VarMap::new();
    let loader = WeightLoader::new(checkpoints(LION))
        .with_trainable(varmap.clone(), |k| k.contains(".adapter."));
    let model = T5ForConditionalGeneration::new(
        &cfg("config.json", 2),
        loader.var_builder(DType::F32, &dev()),
    )
    .unwrap();
    loader.finish(LoadMode::Strict).unwrap();
    // trainable: exactly the adapter/router tensors of 2 encoder + 3 decoder FFNs
    let names: Vec<String> = varmap.data().lock().unwrap().keys().cloned().collect();
    assert_eq!(names.len(), 5 * (2 * 5 + 2), "{names:?}");
    assert!(names.iter().all(|k| k.contains(".adapter.")));
    assert!(names.contains(&"decoder.block.2.layer.2.adapter.router_ratio1".to_string()));
    // the backbone's weights are plain tensors, not Vars
    assert!(!model.shared().is_variable());
    assert!(!model.lm_head().unwrap().is_variable());
    for route in [Route::RegionLevel, Route::ImageLevel] {
        let out = model
            .forward_train(
                T5Input::Ids(&input_ids),
                Some(&mask),
                &io["labels"],
                route,
                true,
            )
            .unwrap();
        let grads = out.loss.backward().unwrap();
        assert!(grads.get(model.shared()).is_none());
        assert!(grads.get(model.lm_head().unwrap()).is_none());
        let n = check_all_vars_get_grad(&varmap, &out.loss).unwrap();
        assert_eq!(n, 60);
    }
}

#[test]
fn every_t5_variable_gets_a_gradient_when_all_train() {
    let io = io();
    let (input_ids, mask) = ids(&io);
    let varmap = VarMap::new();
    let loader = WeightLoader::new(checkpoints(LION)).with_trainable(varmap.clone(), |_| true);
    let model = T5ForConditionalGeneration::new(
        &cfg("config.json", 2),
        loader.var_builder(DType::F32, &dev()),
    )
    .unwrap();
    let out = model
        .forward_train(
            T5Input::Ids(&input_ids),
            Some(&mask),
            &io["labels"],
            Route::ImageLevel,
            false,
        )
        .unwrap();
    let n = check_all_vars_get_grad(&varmap, &out.loss).unwrap();
    assert_eq!(n, varmap.all_vars().len());
}

#[test]
fn training_mode_applies_dropout() {
    let io = io();
    let (input_ids, mask) = ids(&io);
    let model = load(&cfg("config.json", 2), LION);
    let run = |train| {
        model
            .forward_train(
                T5Input::Ids(&input_ids),
                Some(&mask),
                &io["labels"],
                Route::ImageLevel,
                train,
            )
            .unwrap()
            .logits
    };
    assert!(max_abs_diff(&run(true), &run(false)).unwrap() > 1e-3);
    assert!(max_abs_diff(&run(false), &run(false)).unwrap() == 0.0);
}

#[test]
fn bad_labels_config_and_weights_give_clear_errors() {
    let io = io();
    let (input_ids, mask) = ids(&io);
    let model = load(&cfg("config.json", 0), "model.safetensors");
    let labels = Tensor::new(&[[5i64, 96, -100]], &dev()).unwrap();
    let err = model
        .forward_train(
            T5Input::Ids(&input_ids.narrow(0, 0, 1).unwrap()),
            None,
            &labels,
            Route::ImageLevel,
            false,
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("96"), "{err}");
    let all_ignored = Tensor::new(&[[-100i64, -100]], &dev()).unwrap();
    let err = model
        .forward_train(
            T5Input::Ids(&input_ids.narrow(0, 0, 1).unwrap()),
            None,
            &all_ignored,
            Route::ImageLevel,
            false,
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("-100"), "{err}");
    // mask of the wrong shape
    let bad_mask = mask.narrow(1, 0, 5).unwrap();
    assert!(model
        .encode(
            T5Input::Ids(&input_ids),
            Some(&bad_mask),
            Route::ImageLevel,
            false
        )
        .is_err());
    // config
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("t5/config.json")).unwrap()).unwrap();
    v["feed_forward_proj"] = "gated-gelu-x".into();
    std::fs::write(&p, v.to_string()).unwrap();
    let err = T5Config::from_file(&p).unwrap_err().to_string();
    assert!(
        err.contains("feed_forward_proj") && err.contains("config.json"),
        "{err}"
    );
    // a missing head is named
    let mut ts = Checkpoint::open(fixture("t5/model.safetensors"))
        .unwrap()
        .load_all(&dev())
        .unwrap();
    ts.remove("lm_head.weight");
    let loader = WeightLoader::new(vec![Checkpoint::from_tensors("edited.safetensors", ts)]);
    T5ForConditionalGeneration::new(
        &cfg("config.json", 0),
        loader.var_builder(DType::F32, &dev()),
    )
    .unwrap();
    let err = loader.finish(LoadMode::Strict).unwrap_err().to_string();
    assert!(err.contains("missing keys: lm_head.weight"), "{err}");
}

#[test]
fn config_defaults_follow_hf() {
    let c = T5Config::from_file(fixture("t5/config.json")).unwrap();
    // dense_act_fn is in the HF config.json as gelu_new; LION overrides it
    assert_eq!(c.dense_act_fn, Some(lion_core::ops::Activation::GeluNew));
    assert_eq!(
        c.clone().with_exact_gelu().dense_act_fn,
        Some(lion_core::ops::Activation::Gelu)
    );
    assert_eq!(c.num_decoder_layers(), 3);
    assert_eq!(c.decoder_start_token_id(), 0);
    assert!(!c.tie_word_embeddings);
    assert_eq!(Route::from_category("region_level"), Route::RegionLevel);
    assert_eq!(Route::from_category("vqa"), Route::ImageLevel);
}

#[test]
fn loads_from_a_lion_style_checkpoint_under_t5_model_prefix() {
    // Inside LION the T5 keys carry the prefix `t5_model.` (docs/DESIGN.md §3).
    let mut ts = HashMap::new();
    for c in checkpoints(LION) {
        for (k, v) in c.load_all(&dev()).unwrap() {
            ts.insert(format!("t5_model.{k}"), v);
        }
    }
    let loader = WeightLoader::new(vec![Checkpoint::from_tensors("lion.pth", ts)]);
    let vb = loader.var_builder(DType::F32, &dev());
    let model = T5ForConditionalGeneration::new(&cfg("config.json", 2), vb.pp("t5_model")).unwrap();
    loader.finish(LoadMode::Strict).unwrap();
    check_forward(&model, "lion.route1", Route::ImageLevel);
}

#[test]
fn bf16_forward_stays_close_to_f32() {
    // The reference runs Flan-T5 in bf16; RMSNorm variance and softmax are computed in f32.
    let io = io();
    let (input_ids, mask) = ids(&io);
    let varmap = VarMap::new();
    let loader = WeightLoader::new(checkpoints(LION))
        .with_trainable(varmap.clone(), |k| k.contains(".adapter."));
    let model = T5ForConditionalGeneration::new(
        &cfg("config.json", 2),
        loader.var_builder(DType::BF16, &dev()),
    )
    .unwrap();
    // adapters stay f32 parameters (upstream creates them after the bf16 load), backbone is bf16
    assert_eq!(model.shared().dtype(), DType::BF16);
    assert!(varmap.all_vars().iter().all(|v| v.dtype() == DType::F32));
    let out = model
        .forward_train(
            T5Input::Ids(&input_ids),
            Some(&mask),
            &io["labels"],
            Route::ImageLevel,
            false,
        )
        .unwrap();
    assert_eq!(out.logits.dtype(), DType::BF16);
    let d = max_abs_diff(&out.logits, &io["lion.route1.logits"]).unwrap();
    let scale = lion_core::testing::max_abs(&io["lion.route1.logits"]).unwrap();
    eprintln!("bf16 logits vs f32 reference: {d:.3} (max |logit| {scale:.2})");
    assert!(d.is_finite() && d < 0.05 * scale, "{d} vs scale {scale}");
}
