//! [`run`] / [`run_on`]: every stage timed on the weights and inputs [`crate::prepare`] wrote.

use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::{ParamsAdamW, VarMap};
use lion_core::adapter::Route;
use lion_core::cpu::WeightDtype;
use lion_core::generate::generate;
use lion_core::lion::{LionBatch, LionModel};
use lion_core::t5::{T5ForConditionalGeneration, T5Input};
use lion_core::tagger::Ram;
use lion_core::text::Encoded;
use lion_core::weights::{Checkpoint, LoadMode, WeightLoader};
use lion_core::{input_err, Error, Result};

use lion_train::optim::AdamW;

use crate::*;

/// Runs the stages on the model and inputs [`prepare`] wrote into `dir`, on the CPU.
pub fn run(dir: &Path) -> Result<BenchReport> {
    run_on(dir, &Device::Cpu)
}

/// [`run`] on `dev` (`lion bench --device`): weights and inputs are loaded onto it.
pub fn run_on(dir: &Path, dev: &Device) -> Result<BenchReport> {
    let setup: BenchSetup = lion_core::util::read_json(dir.join("setup.json"))?;
    setup.validate()?;
    let load_before = load_average();
    let dev = dev.clone();
    let cfg = &setup.t5;
    let lion_cfg = match &setup.lion {
        Some(l) if LION_STAGES.iter().any(|s| setup.wants(s)) => Some(l),
        _ => None,
    };
    // The inference stages run a frozen model, as `lion caption` loads it: no weight is a `Var`,
    // so no op records an autograd graph (the PyTorch side runs them under `inference_mode`).
    // The training step builds its own T5 over the same weight storage (`t5_checkpoint`), whose
    // adapters are trainable copies: training them leaves the other stages' weights as loaded.
    // Without a training step the checkpoint is read as stored (mapped, converted tensor by
    // tensor); with one, loaded once into f32 tensors that both models share.
    let t5_path = dir.join("t5.safetensors");
    let t5_weights = match setup.wants("train_step") {
        true => Some(Checkpoint::open(&t5_path)?.load_all(&dev)?),
        false => None,
    };
    let t5_checkpoint = || match &t5_weights {
        Some(w) => Ok(Checkpoint::from_tensors("t5.safetensors", w.clone())),
        None => Checkpoint::open(&t5_path),
    };
    let t_load = Instant::now();
    let build = || match lion_cfg {
        Some(l) => {
            // refused up front when it cannot fit (the estimate counts the stored format)
            l.check_memory(1, false)
                .map_err(|e| Error::config("bench model", e))?;
            // the T5 of the T5 stages is the LION model's own (the same weights)
            let loader = WeightLoader::new(vec![
                Checkpoint::open(dir.join("vision.safetensors"))?,
                t5_checkpoint()?.with_prefix("t5_model."),
            ]);
            let m = LionModel::new(l, 0, loader.var_builder(DType::F32, &dev))?;
            loader.finish(LoadMode::Strict)?;
            Ok((Some(m), None))
        }
        None => {
            let loader = WeightLoader::new(vec![t5_checkpoint()?]);
            let m = T5ForConditionalGeneration::new(cfg, loader.var_builder(DType::F32, &dev))?;
            loader.finish(LoadMode::Strict)?;
            Ok::<_, Error>((None, Some(m)))
        }
    };
    let (lion, t5_only) = lion_core::linear::with_weight_dtype(setup.dtype, || {
        lion_core::linear::with_quantize(setup.quantize, build)
    })?;
    let load_s = t_load.elapsed().as_secs_f64();
    let load_peak_rss_mib = peak_rss_mib();
    // (the checkpoints' mappings are dropped with the loaders: they would count in the peak RSS)
    let model: &T5ForConditionalGeneration = match (&lion, &t5_only) {
        (Some(l), _) => l.t5(),
        (None, Some(m)) => m,
        (None, None) => unreachable!("one model is always built"),
    };
    let inputs = Checkpoint::open(dir.join("inputs.safetensors"))?;
    let embeds = inputs.get("embeds", &dev)?;
    let labels = inputs.get("labels", &dev)?;
    let s = setup.seq_len();
    let reps = setup.repeats;
    let route = Route::ImageLevel;
    let mut stages = vec![];
    let mut gemm_rate = None;

    if setup.wants("gemm") {
        reset_peak_rss();
        let n = setup.gemm_n;
        let a = Tensor::randn(0f32, 1., (n, n), &dev)?;
        let b = Tensor::randn(0f32, 1., (n, n), &dev)?;
        // f32 activations times a weight stored (n, k) in the bench's dtype, through the
        // model's linear layer (its kernel: AVX-512 GEMM, the gemm crate or bf16)
        let weight = b.t()?.contiguous()?;
        let weight = match setup.dtype {
            WeightDtype::Bf16 => weight.to_dtype(DType::BF16)?,
            WeightDtype::F32 => weight,
        };
        let linear = lion_core::linear::with_weight_dtype(setup.dtype, || {
            lion_core::linear::Linear::new(weight, None)
        });
        let runs = time_runs(&dev, reps.max(5), || {
            candle_core::Module::forward(&linear, &a)?;
            Ok(())
        })?;
        let st = with_flops(stage("gemm", runs), 2.0 * (n as f64).powi(3), None);
        gemm_rate = st.gflops;
        stages.push(st);
    }
    tracing::info!("gemm done");

    let mut stream_rate = None;
    if setup.wants("stream") && dev.is_cpu() {
        reset_peak_rss();
        let (runs, bytes) = stream_runs(setup.stream_mib, reps.max(5))?;
        let st = with_bytes(stage("stream", runs), bytes, None);
        stream_rate = st.gbps;
        stages.push(st);
        tracing::info!("stream done");
    }

    let x1 = embeds.narrow(0, 0, 1)?;
    if setup.wants("t5_encoder") {
        reset_peak_rss();
        let runs = time_runs(&dev, reps, || {
            model.encode(T5Input::Embeds(&x1), None, route, false)?;
            Ok(())
        })?;
        stages.push(with_flops(
            stage("t5_encoder", runs),
            encoder_flops(cfg, 1, s),
            gemm_rate,
        ));
        tracing::info!("t5_encoder done");
    }

    if setup.wants("decode_token") {
        reset_peak_rss();
        let states = model.encode(T5Input::Embeds(&x1), None, route, false)?;
        let rows = setup.beams;
        let ids = Tensor::zeros((rows, 1), DType::U32, &dev)?;
        let steps = setup.new_tokens;
        // per token: the steps alone (the cross K/V set-up belongs to caption latency)
        let mut per_token = vec![];
        for rep in 0..=reps {
            // the first step untimed, as on the PyTorch side (whose cache set-up happens there);
            // the beams share the input's cross-attention K/V, as in beam search (`generate`)
            let mut cache = model.start_decoding(&states, None)?;
            cache.share_inputs(rows)?;
            model.decode_step(&ids, &mut cache, route)?;
            dev.synchronize()?;
            let t0 = Instant::now();
            for _ in 1..steps {
                model.decode_step(&ids, &mut cache, route)?;
            }
            dev.synchronize()?;
            if rep > 0 {
                per_token.push(t0.elapsed().as_secs_f64() / (steps - 1).max(1) as f64);
            }
        }
        let flop = (1..steps)
            .map(|p| decode_step_flops(cfg, rows, p, s))
            .sum::<f64>()
            / (steps - 1).max(1) as f64;
        // the bytes the weights are kept in: bf16 under `--dtype bf16`, and in an f32 model
        // where the checkpoint stores bf16 (kept as stored, `linear::get_weight`)
        let dense = match (setup.dtype, model.lm_head().map(|w| w.dtype())) {
            (WeightDtype::Bf16, _) | (_, Some(DType::BF16)) => 2.0,
            _ => 4.0,
        };
        let block = setup.quantize.map_or(dense, |q| q.mean_bytes_per_weight());
        stages.push(with_bytes(
            with_flops(stage("decode_token", per_token), flop, gemm_rate),
            decode_step_weight_bytes(cfg, block, dense),
            stream_rate,
        ));
        tracing::info!("decode_token done");
    }

    let gen = setup.generation();
    if setup.wants("caption_beam5") {
        reset_peak_rss();
        let runs = time_runs(&dev, reps, || {
            let out = generate(model, T5Input::Embeds(&x1), None, route, &gen)?;
            if out[0].len() != setup.new_tokens {
                input_err!(
                    "beam search made {} tokens, not {}",
                    out[0].len(),
                    setup.new_tokens
                )
            }
            Ok(())
        })?;
        let mut st = stage("caption_beam5", runs);
        st.items_per_s = Some(1.0 / st.median_s);
        stages.push(st);
        tracing::info!("caption_beam5 done");
    }

    if setup.wants("caption_batch") {
        reset_peak_rss();
        let xb = embeds.narrow(0, 0, setup.batch)?;
        let runs = time_runs(&dev, reps, || {
            generate(model, T5Input::Embeds(&xb), None, route, &gen)?;
            Ok(())
        })?;
        let mut st = stage("caption_batch", runs);
        st.items_per_s = Some(setup.batch as f64 / st.median_s);
        stages.push(st);
        tracing::info!("caption_batch done");
    }

    if setup.wants("train_step") {
        reset_peak_rss();
        // as in every training run (lion_core::alloc)
        let _keep = lion_core::alloc::KeepLargeBlocks::new(lion_core::alloc::TRAINING_CACHE);
        let xt = embeds.narrow(0, 0, setup.train_batch)?;
        let params = ParamsAdamW {
            lr: 1e-4,
            weight_decay: 0.05,
            ..ParamsAdamW::default()
        };
        let vm = VarMap::new();
        let loader = WeightLoader::new(vec![t5_checkpoint()?])
            .with_trainable(vm.clone(), |k| k.contains(".adapter."));
        let model = T5ForConditionalGeneration::new(cfg, loader.var_builder(DType::F32, &dev))?;
        loader.finish(LoadMode::Strict)?;
        let mut opt = AdamW::new(vm.all_vars(), params)?;
        let (mut fwd, mut bwd, mut upd) = (vec![], vec![], vec![]);
        let runs = time_runs(&dev, reps, || {
            let t0 = Instant::now();
            let out = model.forward_train(T5Input::Embeds(&xt), None, &labels, route, true)?;
            let _ = out.loss.to_scalar::<f32>()?;
            let t1 = Instant::now();
            let grads = out.loss.backward()?;
            dev.synchronize()?;
            let t2 = Instant::now();
            opt.step(&grads)?;
            dev.synchronize()?;
            let t3 = Instant::now();
            fwd.push((t1 - t0).as_secs_f64());
            bwd.push((t2 - t1).as_secs_f64());
            upd.push((t3 - t2).as_secs_f64());
            Ok(())
        })?;
        let mut st = stage("train_step", runs);
        // drop the warm-up's parts
        for (k, v) in [("forward", fwd), ("backward", bwd), ("adamw", upd)] {
            st.parts_s.insert(k.into(), median(&v[1..]));
        }
        stages.push(st);
        tracing::info!("train_step done");
    }

    if setup.wants("tagenc_triplet") {
        match &setup.tagenc_dir {
            Some(d) if d.join("config.json").exists() => {
                reset_peak_rss();
                let _keep =
                    lion_core::alloc::KeepLargeBlocks::new(lion_core::alloc::TRAINING_CACHE);
                stages.push(tagenc_stage(d, setup.tagenc_batch, reps, &dev)?);
                tracing::info!("tagenc_triplet done");
            }
            _ => tracing::warn!("tagenc_triplet skipped: no tag-encoder model folder"),
        }
    }

    if let Some(lion) = &lion {
        stages.extend(lion_stages(lion, &setup, &inputs, gemm_rate, &dev)?);
    }
    stages.extend(tagger_stage(&setup, dir, &dev)?);

    Ok(BenchReport {
        implementation: "lion-rs (candle)".into(),
        cpu: lion_core::cpu::summary(),
        dtype: setup.dtype.name().into(),
        device: lion_core::device::name(&dev),
        threads: candle_core::utils::get_num_threads(),
        candle_num_threads: std::env::var("CANDLE_NUM_THREADS").ok(),
        load_before,
        load_after: load_average(),
        setup,
        load_s: Some(load_s),
        load_peak_rss_mib,
        stages,
    })
}

/// The vision and end-to-end stages on the LION model.
pub(crate) fn lion_stages(
    lion: &LionModel,
    setup: &BenchSetup,
    inputs: &Checkpoint,
    gemm_rate: Option<f64>,
    dev: &Device,
) -> Result<Vec<StageResult>> {
    let dev = dev.clone();
    let cfg = lion.config();
    let reps = setup.repeats;
    let px = inputs.get("pixel_values", &dev)?;
    let prompt_ids = inputs.get("prompt_ids", &dev)?;
    if px.dim(0)? < setup.batch || prompt_ids.dims() != [px.dim(0)?, setup.text_tokens] {
        input_err!(
            "inputs.safetensors: pixel_values {:?} / prompt_ids {:?} do not fit batch {} and {} text tokens (rerun with --fresh)",
            px.dims(),
            prompt_ids.dims(),
            setup.batch,
            setup.text_tokens
        )
    }
    let px1 = px.narrow(0, 0, 1)?;
    let n = cfg.vit.num_tokens();
    let mut stages = vec![];
    // the ViT outputs the Q-Former and aggregator stages start from (untimed)
    let layers = lion.vit_layers(&px1)?;
    let wanted = cfg.vit_layers();

    if setup.wants("vit") {
        reset_peak_rss();
        let runs = time_runs(&dev, reps, || {
            lion.vit_layers(&px1)?;
            Ok(())
        })?;
        let blocks = wanted.iter().max().map_or(0, |m| m + 1);
        let mut st = with_flops(
            stage("vit", runs),
            vit_flops(&cfg.vit, blocks, 1),
            gemm_rate,
        );
        for (l, t) in wanted.iter().zip(&layers) {
            st.check.insert(format!("block{l}"), check_sample(t)?);
        }
        stages.push(st);
        tracing::info!("vit done");
    }

    if let (true, Some(q)) = (setup.wants("qformer"), lion.qformer()) {
        reset_peak_rss();
        let runs = time_runs(&dev, reps, || {
            q.forward(&layers[0], None, None, false)?;
            Ok(())
        })?;
        let mut st = with_flops(
            stage("qformer", runs),
            qformer_flops(q.config(), n, 1),
            gemm_rate,
        );
        st.check.insert(
            "output".into(),
            check_sample(&q.forward(&layers[0], None, None, false)?)?,
        );
        stages.push(st);
        tracing::info!("qformer done");
    }

    if let (true, Some(a)) = (setup.wants("aggregator"), lion.aggregator()) {
        reset_peak_rss();
        let pick = lion.aggregator_sources(&layers);
        let runs = time_runs(&dev, reps, || {
            a.forward(&pick, false)?;
            Ok(())
        })?;
        let mut st = with_flops(
            stage("aggregator", runs),
            aggregator_flops(a.config(), n, 1),
            gemm_rate,
        );
        st.check
            .insert("output".into(), check_sample(&a.forward(&pick, false)?)?);
        stages.push(st);
        tracing::info!("aggregator done");
    }

    let gen = setup.generation();
    let batch_of = |rows: usize| -> Result<LionBatch> {
        let ids = prompt_ids.narrow(0, 0, rows)?.to_dtype(DType::U32)?;
        let rows_ids: Vec<Vec<u32>> = ids.to_vec2()?;
        Ok(LionBatch {
            pixel_values: px.narrow(0, 0, rows)?,
            qformer_text: None,
            prompt: Encoded {
                ids: rows_ids,
                attention_mask: ids.ones_like()?,
                input_ids: ids,
            },
            tag_embedding: None,
            route: Route::ImageLevel,
        })
    };
    for (name, rows) in [("caption_e2e", 1), ("caption_e2e_batch", setup.batch)] {
        if !setup.wants(name) {
            continue;
        }
        reset_peak_rss();
        let batch = batch_of(rows)?;
        let mut tokens = vec![];
        let runs = time_runs(&dev, reps, || {
            let out = lion.generate(&batch, &gen)?;
            if let Some(bad) = out.iter().find(|o| o.len() != setup.new_tokens) {
                input_err!(
                    "beam search made {} tokens, not {}",
                    bad.len(),
                    setup.new_tokens
                )
            }
            tokens = out;
            Ok(())
        })?;
        let mut st = stage(name, runs);
        st.items_per_s = Some(rows as f64 / st.median_s);
        // the T5 encoder states of the whole pipeline: a float check of every weight on the way
        let visual = lion.encode_image(&batch.pixel_values, None, false)?;
        let (embeds, mask) = lion.encoder_input(&visual, &batch.prompt, None)?;
        let states = lion
            .t5()
            .encode(T5Input::Embeds(&embeds), Some(&mask), batch.route, false)?;
        st.check.insert("encoder".into(), check_sample(&states)?);
        for (i, t) in tokens.iter().enumerate() {
            st.check
                .insert(format!("tokens{i}"), t.iter().map(|&x| x as f64).collect());
        }
        stages.push(st);
        tracing::info!("{name} done");
    }
    Ok(stages)
}

/// The tag strings of the tag-encoder stage (also built by `bench_torch.py`): "word: 0.xxxx, ...".
pub fn tag_texts(batch: usize) -> Vec<String> {
    let words = [
        "person", "shirt", "table", "cup", "dog", "grass", "sky", "tree", "car", "road",
        "building", "window", "plate", "food", "man", "woman",
    ];
    (0..batch)
        .map(|i| {
            (0..5 + i % 2)
                .map(|j| {
                    let w = words[(i * 7 + j * 3) % words.len()];
                    format!("{w}: 0.{}", 9999 - (i * 131 + j * 977) % 5000)
                })
                .collect::<Vec<_>>()
                .join(", ")
        })
        .collect()
}

pub(crate) fn tagenc_stage(
    dir: &Path,
    batch: usize,
    reps: usize,
    dev: &Device,
) -> Result<StageResult> {
    use lion_train::tag_encoder::TagEncoder;
    use lion_train::triplet_trainer::{TripletConfig, TripletTrainer};
    let dev = dev.clone();
    let enc = TagEncoder::load(dir, &dev)?;
    let d = enc.embedder().hidden_size();
    let texts = tag_texts(batch);
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let pos = lion_core::bert::l2_normalize(&Tensor::randn(0f32, 1., (batch, d), &dev)?)?;
    let neg = lion_core::bert::l2_normalize(&Tensor::randn(0f32, 1., (batch, d), &dev)?)?;
    let mut trainer = TripletTrainer::new(enc, TripletConfig::default())?;
    let runs = time_runs(&dev, reps, || {
        let (loss, _) = trainer.loss(&refs, &pos, &neg, true)?;
        let grads = loss.backward()?;
        trainer.apply(&grads)
    })?;
    Ok(stage("tagenc_triplet", runs))
}

/// The `tagger` stage: RAM pixels -> tag probabilities, batch 1 ([`Ram::probabilities`], the
/// forward of `lion tag`), loaded strictly from `tagger.safetensors`. `check["probs"]`: every
/// `num_tags / 64`-th probability.
pub(crate) fn tagger_stage(
    setup: &BenchSetup,
    dir: &Path,
    dev: &Device,
) -> Result<Option<StageResult>> {
    if !setup.wants("tagger") {
        return Ok(None);
    }
    let Some(cfg) = &setup.tagger else {
        tracing::warn!("tagger skipped: setup.json has no tagger config (rerun with --fresh)");
        return Ok(None);
    };
    let dev = dev.clone();
    let (ram, _) = Ram::load(cfg, dir.join("tagger.safetensors"), &dev)?;
    let px = Checkpoint::open(dir.join("tagger_input.safetensors"))?.get("pixel_values", &dev)?;
    let img = cfg.img_size();
    if px.dims() != [1, cfg.in_chans(), img, img] {
        input_err!(
            "tagger_input.safetensors: pixel_values {:?}, expected (1, {}, {img}, {img}) (rerun with --fresh)",
            px.dims(),
            cfg.in_chans()
        )
    }
    reset_peak_rss();
    let mut probs = None;
    let runs = time_runs(&dev, setup.repeats, || {
        probs = Some(ram.probabilities(&px)?);
        Ok(())
    })?;
    let mut st = stage("tagger", runs);
    if let Some(p) = probs {
        st.check.insert("probs".into(), check_sample(&p)?);
    }
    tracing::info!("tagger done");
    Ok(Some(st))
}
