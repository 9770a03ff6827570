//! [`prepare`]: random-init weights (HF / LION / RAM key names) and inputs written to a folder
//! for both sides.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use lion_core::aggregator::VisionAggregator;
use lion_core::eva_vit::EvaVit;
use lion_core::lion::LionConfig;
use lion_core::qformer::QFormer;
use lion_core::t5::T5ForConditionalGeneration;
use lion_core::tagger::Ram;
use lion_core::weights::{record_keys, save_safetensors, write_random_safetensors, WeightLoader};
use lion_core::{Error, Result};

use crate::*;

/// Random LION vision weights (ViT, Q-Former, aggregator) with LION key names. Tensors that the
/// upstream init leaves at zero (the aggregator's output projections, biases) get small noise so
/// that the PyTorch cross-check exercises them.
pub(crate) fn random_vision(cfg: &LionConfig, dev: &Device) -> Result<HashMap<String, Tensor>> {
    let vm = VarMap::new();
    let loader = WeightLoader::random().with_trainable(vm.clone(), |_| true);
    let vb = loader.var_builder(DType::F32, dev);
    // a frozen ViT makes constants, not variables: build it unfrozen to collect its weights
    let mut vit = cfg.vit.clone();
    vit.frozen = false;
    let _vit = EvaVit::new(&vit, vb.pp("visual_encoder"))?;
    if let Some(q) = &cfg.qformer {
        let _q = QFormer::new(q, vb.clone())?;
    }
    if let Some(a) = &cfg.aggregator {
        let _a = VisionAggregator::new(a, vb.clone())?;
    }
    let mut out = HashMap::new();
    for (k, t) in lion_core::weights::varmap_tensors(&vm) {
        let zero = t.abs()?.max_all()?.to_scalar::<f32>()? == 0.0;
        let t = if zero {
            (t.randn_like(0., 1.)? * 0.02)?
        } else {
            t
        };
        out.insert(k, t);
    }
    Ok(out)
}

/// The seed of the streamed random weights of the real-size presets.
pub const REAL_SIZE_SEED: u64 = 0x4c49_4f4e;

/// Random weights at a published size: the keys of the T5 (`t5.safetensors`) and of the vision
/// side (`vision.safetensors`) recorded without allocating, then drawn tensor by tensor (seeded,
/// in parallel chunks) and streamed to disk in bf16, so that neither memory nor time grows with
/// more than one tensor (LION-12B's T5 alone is 45 GB in f32).
pub(crate) fn prepare_real_size(setup: &BenchSetup, dir: &Path) -> Result<()> {
    let cfg = setup.t5.clone();
    let t5_keys = record_keys(|vb| T5ForConditionalGeneration::new(&cfg, vb).map(|_| ()))?;
    let mut files = vec![("t5.safetensors", t5_keys)];
    if let Some(l) = &setup.lion {
        let l = l.clone();
        files.push((
            "vision.safetensors",
            record_keys(|vb| {
                let mut vit = l.vit.clone();
                vit.frozen = false;
                EvaVit::new(&vit, vb.pp("visual_encoder"))?;
                if let Some(q) = &l.qformer {
                    QFormer::new(q, vb.clone())?;
                }
                if let Some(a) = &l.aggregator {
                    VisionAggregator::new(a, vb.clone())?;
                }
                Ok(())
            })?,
        ));
    }
    for (name, keys) in files {
        let elems: usize = keys.iter().map(|k| k.shape.elem_count()).sum();
        tracing::info!(
            "writing {name}: {} tensors, {:.2} G weights in bf16",
            keys.len(),
            elems as f64 / 1e9
        );
        let mut last = std::time::Instant::now();
        write_random_safetensors(
            &dir.join(name),
            &keys,
            DType::BF16,
            REAL_SIZE_SEED,
            |i, n| {
                if last.elapsed().as_secs_f64() > 10.0 || i == n {
                    tracing::info!("{name}: {i}/{n} tensors");
                    last = std::time::Instant::now();
                }
            },
        )?;
    }
    Ok(())
}

/// Writes `setup.json`, a random-init `t5.safetensors` and `inputs.safetensors` into `dir`.
pub fn prepare(setup: &BenchSetup, dir: &Path) -> Result<()> {
    setup.validate()?;
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let dev = Device::Cpu;
    let cfg = &setup.t5;
    if setup.real_size() {
        prepare_real_size(setup, dir)?;
    } else {
        let vm = VarMap::new();
        let loader = WeightLoader::random().with_trainable(vm.clone(), |_| true);
        let _model = T5ForConditionalGeneration::new(cfg, loader.var_builder(DType::F32, &dev))?;
        let tensors: HashMap<String, Tensor> = lion_core::weights::varmap_tensors(&vm);
        save_safetensors(&tensors, dir.join("t5.safetensors"))?;
    }
    let s = setup.seq_len();
    let rows = setup.batch.max(setup.train_batch);
    let embeds = Tensor::randn(0f32, 1., (rows, s, cfg.d_model), &dev)?;
    // random token ids in [2, vocab): no pad, no EOS
    let ids = |r: usize, t: usize| -> Result<Tensor> {
        let u = Tensor::rand(0f32, 1., (r, t), &dev)?;
        Ok(((u * (cfg.vocab_size - 2) as f64)?.floor()? + 2.0)?.to_dtype(DType::I64)?)
    };
    let labels = ids(setup.train_batch, setup.train_target)?;
    let mut inputs = HashMap::from([
        ("embeds".to_string(), embeds),
        ("labels".to_string(), labels),
    ]);
    if let Some(l) = &setup.lion {
        if !setup.real_size() {
            save_safetensors(&random_vision(l, &dev)?, dir.join("vision.safetensors"))?;
        }
        let img = l.vit.img_size;
        let px = Tensor::randn(0f32, 1., (setup.batch, l.vit.in_chans, img, img), &dev)?;
        inputs.insert("pixel_values".into(), px);
        inputs.insert("prompt_ids".into(), ids(setup.batch, setup.text_tokens)?);
    }
    save_safetensors(&inputs, dir.join("inputs.safetensors"))?;
    prepare_tagger(setup, dir)?;
    let json = serde_json::to_vec_pretty(setup).map_err(|e| Error::format(dir, e.to_string()))?;
    lion_core::util::write_atomic(dir.join("setup.json"), &json)
}

/// Writes `tagger.safetensors` (random RAM weights, upstream key names; tensors the init leaves
/// at zero get small noise so the cross-check exercises them) and `tagger_input.safetensors`
/// (`pixel_values`, (1, 3, img, img)) when the setup has a tagger.
pub(crate) fn prepare_tagger(setup: &BenchSetup, dir: &Path) -> Result<()> {
    let Some(cfg) = &setup.tagger else {
        return Ok(());
    };
    let dev = Device::Cpu;
    let vm = VarMap::new();
    let loader = WeightLoader::random().with_trainable(vm.clone(), |_| true);
    let _ram = Ram::new(cfg, loader.var_builder(DType::F32, &dev))?;
    let mut out = HashMap::new();
    for (k, t) in lion_core::weights::varmap_tensors(&vm) {
        let t = if t.abs()?.max_all()?.to_scalar::<f32>()? == 0.0 {
            (t.randn_like(0., 1.)? * 0.02)?
        } else {
            t
        };
        out.insert(k, t);
    }
    save_safetensors(&out, dir.join("tagger.safetensors"))?;
    let img = cfg.img_size();
    let px = Tensor::randn(0f32, 1., (1, cfg.in_chans(), img, img), &dev)?;
    save_safetensors(
        &HashMap::from([("pixel_values".to_string(), px)]),
        dir.join("tagger_input.safetensors"),
    )
}
