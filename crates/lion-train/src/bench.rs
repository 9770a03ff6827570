//! `lion bench`: per-stage timing of the model with random weights, written so that
//! `scripts/bench_torch.py` can run the same workloads in PyTorch eager on the same weights and
//! inputs.
//!
//! [`prepare`] writes a random-init checkpoint (`t5.safetensors`, HF key names), the inputs
//! (`inputs.safetensors`) and the settings (`setup.json`) into a folder; [`run`] loads the model
//! back from that checkpoint and times each stage, with a warm-up run first. The inference stages
//! run it frozen (no autograd graph, as `lion caption`); the training step runs a T5 over the
//! same weight storage whose adapters are trainable copies. Stages:
//!
//! | stage | what |
//! |---|---|
//! | `gemm` | one (n x n) @ (n x n) f32 matmul: the machine's GEMM rate |
//! | `t5_encoder` | T5 encoder, batch 1, `visual_tokens + text_tokens` input embeddings |
//! | `decode_token` | one KV-cached decoder step for `beams` rows (mean over steps 2..=`new_tokens`) |
//! | `caption_beam5` | encoder + beam search of exactly `new_tokens` tokens, batch 1 (EOS banned) |
//! | `caption_batch` | the same at batch `batch` (throughput = batch / time) |
//! | `train_step` | PEFT step: forward, masked CE, backward, AdamW over the adapters only |
//! | `tagenc_triplet` | one triplet step of the MiniLM tag encoder (when the model folder exists) |
//! | `vit` | the preset's EVA ViT, batch 1, up to the blocks LION needs (last; aggregator sources) |
//! | `qformer` | ln_vision + Q-Former (queries only, no instruction text) + t5_proj, batch 1 |
//! | `aggregator` | vision aggregator + ln_adapter + adapter_proj, batch 1 |
//! | `caption_e2e` | [`LionModel::generate`]: pixels -> ViT -> Q-Former + aggregator -> T5 beam search |
//! | `caption_e2e_batch` | the same at batch `batch` (throughput) |
//! | `tagger` | RAM pixels -> 4585 tag probabilities, batch 1 (`tagger.safetensors`, upstream keys) |
//!
//! The vision stages and the end-to-end captions run a [`LionModel`] (the `lion caption` code)
//! built from `vision.safetensors` (LION key names: `visual_encoder.*`, `Qformer.bert.*`,
//! `query_tokens`, `ln_vision`, `t5_proj`, `fusion_adapter.*`, `ln_adapter`, `adapter_proj`) and
//! the same `t5.safetensors` under `t5_model.`; when any of them is asked for, the T5 stages use
//! that model's T5 (so peak memory includes the vision weights on both sides). The end-to-end
//! input is `pixel_values` (a fixed random preprocessed batch) and `prompt_ids` (`text_tokens`
//! random prompt tokens after the visual tokens). Their outputs (a strided sample of each) and
//! the generated tokens go into the report's `check` so `bench_torch.py --check` can compare.
//!
//! GEMM-heavy stages report their matmul GFLOP count, the achieved GFLOP/s and its fraction of
//! the `gemm` rate. Peak memory per stage is the resident-set high-water mark (Linux
//! `/proc/self/status` `VmHWM`, reset before each stage through `/proc/self/clear_refs`).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::{ParamsAdamW, VarMap};
use lion_core::adapter::Route;
use lion_core::aggregator::{AggregatorConfig, VisionAggregator};
use lion_core::cpu::WeightDtype;
use lion_core::eva_vit::{EvaVit, EvaVitConfig};
use lion_core::generate::{generate, GenerationConfig};
use lion_core::lion::{LionBatch, LionConfig, LionModel};
use lion_core::qformer::{QFormer, QFormerConfig};
use lion_core::t5::{T5Config, T5ForConditionalGeneration, T5Input};
use lion_core::tagger::{Ram, RamConfig, TaggingHeadConfig};
use lion_core::text::Encoded;
use lion_core::weights::{save_safetensors, Checkpoint, LoadMode, WeightLoader};
use lion_core::{input_err, Error, Result};
use serde::{Deserialize, Serialize};

use crate::optim::AdamW;

/// Preset names [`t5_preset`] knows.
pub const BENCH_PRESETS: &[&str] = &["tiny", "base"];

/// The T5 of a preset: `base` is flan-t5-base (d 768, d_ff 2048, 12+12 layers, 12 heads, vocab
/// 32128, gated exact GELU, untied head) with LION's 2 adapters; `tiny` a small model for tests.
pub fn t5_preset(name: &str) -> Result<T5Config> {
    let (vocab, d, d_ff, layers, heads, d_kv) = match name {
        "base" => (32128, 768, 2048, 12, 12, 64),
        "tiny" => (200, 64, 128, 2, 4, 16),
        _ => input_err!(
            "unknown bench preset {name:?} (known: {})",
            BENCH_PRESETS.join(", ")
        ),
    };
    Ok(lion_core::presets::flan_t5(
        vocab, d, d_ff, layers, heads, d_kv,
    ))
}

/// Stage names, in run order.
pub const STAGES: &[&str] = &[
    "gemm",
    "t5_encoder",
    "decode_token",
    "caption_beam5",
    "caption_batch",
    "train_step",
    "tagenc_triplet",
    "vit",
    "qformer",
    "aggregator",
    "caption_e2e",
    "caption_e2e_batch",
    "tagger",
];

/// The stages that need the whole LION model (vision weights).
pub const LION_STAGES: &[&str] = &[
    "vit",
    "qformer",
    "aggregator",
    "caption_e2e",
    "caption_e2e_batch",
];

/// The LION model of a bench preset: `lion_core::presets::preset(name)` without a soft prompt,
/// with the bench T5 (`tiny`: the Q-Former and aggregator project to the bench T5's width).
pub fn lion_preset(name: &str, t5: &T5Config) -> Result<LionConfig> {
    let mut cfg = lion_core::presets::preset(name, None)?;
    cfg.t5 = t5.clone();
    if let Some(q) = &mut cfg.qformer {
        q.d_model = t5.d_model;
    }
    if let Some(a) = &mut cfg.aggregator {
        a.d_model = t5.d_model;
    }
    cfg.validate()
        .map_err(|m| Error::config(format!("bench preset {name}"), m))?;
    Ok(cfg)
}

/// Workload sizes; `setup.json` holds them for the PyTorch side.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchSetup {
    pub preset: String,
    pub t5: T5Config,
    /// The whole model of the vision and end-to-end stages (its `t5` is `t5` above).
    #[serde(default)]
    pub lion: Option<LionConfig>,
    /// LION: 257 ViT tokens + 32 aggregated queries.
    pub visual_tokens: usize,
    /// Instruction / tag text after the visual tokens.
    pub text_tokens: usize,
    pub new_tokens: usize,
    pub beams: usize,
    pub repetition_penalty: f32,
    /// Rows of the throughput stage.
    pub batch: usize,
    pub train_batch: usize,
    /// Target tokens per training row.
    pub train_target: usize,
    /// Timed runs per stage (after one warm-up).
    pub repeats: usize,
    /// Side of the square GEMM of the `gemm` stage.
    pub gemm_n: usize,
    /// A sentence-transformers folder for the tag-encoder stage; skipped when absent.
    pub tagenc_dir: Option<PathBuf>,
    pub tagenc_batch: usize,
    /// Stage names to run (empty = all).
    #[serde(default)]
    pub stages: Vec<String>,
    /// The RAM tagger of the `tagger` stage ([`tagger_preset`]).
    #[serde(default)]
    pub tagger: Option<RamConfig>,
    /// Linear weights of the inference stages and the `gemm` stage's right operand (`--dtype`);
    /// training stages run f32 either way.
    #[serde(default = "f32_weights")]
    pub dtype: WeightDtype,
}

fn f32_weights() -> WeightDtype {
    WeightDtype::F32
}

impl BenchSetup {
    /// Defaults for a preset: LION's sequence (289 visual + 60 text tokens), beam 5, 20 tokens.
    pub fn new(preset: &str) -> Result<Self> {
        let t5 = t5_preset(preset)?;
        let lion = Some(lion_preset(preset, &t5)?);
        let tiny = preset == "tiny";
        Ok(Self {
            preset: preset.into(),
            t5,
            lion,
            visual_tokens: if tiny { 12 } else { 289 },
            text_tokens: if tiny { 4 } else { 60 },
            new_tokens: if tiny { 4 } else { 20 },
            beams: 5,
            repetition_penalty: 1.5,
            batch: if tiny { 2 } else { 8 },
            train_batch: 2,
            train_target: if tiny { 4 } else { 20 },
            repeats: 3,
            gemm_n: if tiny { 128 } else { 2048 },
            tagenc_dir: None,
            tagenc_batch: 32,
            stages: vec![],
            tagger: Some(tagger_preset(preset)?),
            dtype: WeightDtype::F32,
        })
    }

    pub fn seq_len(&self) -> usize {
        self.visual_tokens + self.text_tokens
    }

    fn wants(&self, stage: &str) -> bool {
        self.stages.is_empty() || self.stages.iter().any(|s| s == stage)
    }

    pub fn validate(&self) -> Result<()> {
        if let Some(s) = self.stages.iter().find(|s| !STAGES.contains(&s.as_str())) {
            input_err!("unknown stage {s:?} (known: {})", STAGES.join(", "))
        }
        if let Some(l) = &self.lion {
            l.validate()
                .map_err(|m| Error::config("setup.json lion", m))?;
            if l.t5 != self.t5 {
                input_err!("setup.json: lion.t5 differs from t5 (the model must share the T5)")
            }
        }
        if self.seq_len() == 0 || self.new_tokens == 0 || self.beams == 0 || self.batch == 0 {
            input_err!("sequence length, new tokens, beams and batch must be positive")
        }
        if self.repeats == 0 || self.train_batch == 0 || self.train_target == 0 {
            input_err!("repeats, train batch and train target must be positive")
        }
        Ok(())
    }

    /// Generation settings: exactly `new_tokens` tokens (EOS banned until then).
    pub fn generation(&self) -> GenerationConfig {
        GenerationConfig {
            num_beams: self.beams,
            max_new_tokens: self.new_tokens,
            min_length: self.new_tokens + 1,
            repetition_penalty: self.repetition_penalty,
            ..GenerationConfig::default()
        }
    }
}

/// One stage's timings.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageResult {
    pub name: String,
    /// Seconds of each timed run.
    pub runs_s: Vec<f64>,
    pub median_s: f64,
    /// Matmul work of one run (GEMM-heavy stages).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gflop: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gflops: Option<f64>,
    /// `gflops` / the `gemm` stage's rate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub frac_of_gemm: Option<f64>,
    /// Items per second (throughput stages).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub items_per_s: Option<f64>,
    /// Resident-set high-water mark during the stage, MiB.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak_rss_mib: Option<f64>,
    /// Sub-timings (median seconds), e.g. forward / backward / optimizer.
    #[serde(default, skip_serializing_if = "HashMap::is_empty")]
    pub parts_s: HashMap<String, f64>,
    /// Output samples for the cross-check with PyTorch: name -> a strided sample of at most
    /// [`CHECK_SAMPLES`] values of the flattened output (or the generated token ids).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub check: BTreeMap<String, Vec<f64>>,
}

/// Values kept per checked output.
pub const CHECK_SAMPLES: usize = 64;

/// Every `max(len / CHECK_SAMPLES, 1)`-th value of the flattened tensor, at most
/// [`CHECK_SAMPLES`] (`bench_torch.py` takes the same).
pub fn check_sample(t: &Tensor) -> Result<Vec<f64>> {
    let v: Vec<f32> = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    let stride = (v.len() / CHECK_SAMPLES).max(1);
    Ok(v.iter()
        .step_by(stride)
        .take(CHECK_SAMPLES)
        .map(|&x| x as f64)
        .collect())
}

/// The whole run, as printed with `--json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchReport {
    pub implementation: String,
    /// The CPU features and kernels picked ([`lion_core::cpu::summary`]).
    #[serde(default)]
    pub cpu: String,
    /// The inference stages' weight dtype.
    #[serde(default)]
    pub dtype: String,
    /// Where the stages ran (`cpu`, `cuda:0`).
    #[serde(default)]
    pub device: String,
    pub threads: usize,
    /// `CANDLE_NUM_THREADS` (candle's element-wise thread pool), when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candle_num_threads: Option<String>,
    /// 1-minute load average before and after (the machine may be shared).
    pub load_before: Option<f64>,
    pub load_after: Option<f64>,
    pub setup: BenchSetup,
    pub stages: Vec<StageResult>,
}

pub fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The 1-minute load average (Linux).
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Resets the resident-set high-water mark (Linux >= 4.0; silently nothing elsewhere).
fn reset_peak_rss() {
    // the heap keeps freed memory for reuse (lion_core::util::tune_allocator): give it back
    // first, so a stage's peak is not the previous stage's leftovers
    lion_core::util::release_free_memory();
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// `VmHWM` in MiB.
pub fn peak_rss_mib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Matmul FLOPs of the T5 encoder over `b` rows of `s` tokens.
pub fn encoder_flops(cfg: &T5Config, b: usize, s: usize) -> f64 {
    let (d, f, inner) = (
        cfg.d_model as f64,
        cfg.d_ff as f64,
        (cfg.num_heads * cfg.d_kv) as f64,
    );
    let (b, s) = (b as f64, s as f64);
    let r = cfg
        .adapter
        .map_or(0.0, |a| (a.bottleneck * a.num_adapters) as f64);
    let per_layer = b * s * (8.0 * d * inner + 6.0 * d * f + 4.0 * d * r) + 4.0 * b * s * s * inner;
    per_layer * cfg.num_layers as f64
}

/// Matmul FLOPs of one decoder step for `n` rows with `past` cached positions and `s` encoder
/// positions (LM head included).
pub fn decode_step_flops(cfg: &T5Config, n: usize, past: usize, s: usize) -> f64 {
    let (d, f, inner) = (
        cfg.d_model as f64,
        cfg.d_ff as f64,
        (cfg.num_heads * cfg.d_kv) as f64,
    );
    let n = n as f64;
    let r = cfg
        .adapter
        .map_or(0.0, |a| (a.bottleneck * a.num_adapters) as f64);
    let k = (past + 1) as f64;
    let per_layer = n
        * (8.0 * d * inner
            + 4.0 * k * inner
            + 4.0 * d * inner
            + 4.0 * s as f64 * inner
            + 6.0 * d * f
            + 4.0 * d * r);
    per_layer * cfg.num_decoder_layers() as f64 + 2.0 * n * d * cfg.vocab_size as f64
}

/// Matmul FLOPs of the EVA ViT over `b` images, running `blocks` blocks (patch embedding
/// included).
pub fn vit_flops(cfg: &EvaVitConfig, blocks: usize, b: usize) -> f64 {
    let n = cfg.num_tokens() as f64;
    let (d, m) = (cfg.width as f64, cfg.mlp_dim as f64);
    let patch = 2.0 * (n - 1.0) * d * (cfg.in_chans * cfg.patch_size * cfg.patch_size) as f64;
    let per_block = 8.0 * n * d * d + 4.0 * n * n * d + 4.0 * n * d * m;
    b as f64 * (patch + blocks as f64 * per_block)
}

/// Matmul FLOPs of ln_vision + Q-Former (queries only) + t5_proj over `b` images of `n` ViT
/// tokens.
pub fn qformer_flops(cfg: &QFormerConfig, n: usize, b: usize) -> f64 {
    let (h, i, e) = (
        cfg.bert.hidden_size as f64,
        cfg.bert.intermediate_size as f64,
        cfg.encoder_width as f64,
    );
    let (q, n) = (cfg.num_query_token as f64, n as f64);
    let mut total = 2.0 * q * h * cfg.d_model as f64;
    for l in 0..cfg.bert.num_hidden_layers {
        total += 8.0 * q * h * h + 4.0 * q * q * h + 4.0 * q * h * i;
        if l % cfg.cross_attention_freq == 0 {
            total += 4.0 * q * h * h + 4.0 * n * e * h + 4.0 * q * n * h;
        }
    }
    b as f64 * total
}

/// Matmul FLOPs of the vision aggregator + ln_adapter + adapter_proj over `b` images of `n`
/// tokens.
pub fn aggregator_flops(cfg: &AggregatorConfig, n: usize, b: usize) -> f64 {
    let (w, i, n) = (cfg.width as f64, cfg.intermediate_size as f64, n as f64);
    let per_block = 2.0 * (8.0 * n * w * w + 4.0 * n * n * w) + 4.0 * n * w * i;
    let proj = 2.0 * n * w * cfg.proj_hidden as f64
        + 2.0 * n * cfg.proj_hidden as f64 * cfg.d_model as f64;
    b as f64 * (cfg.num_blocks as f64 * per_block + proj)
}

/// Random LION vision weights (ViT, Q-Former, aggregator) with LION key names. Tensors that the
/// upstream init leaves at zero (the aggregator's output projections, biases) get small noise so
/// that the PyTorch cross-check exercises them.
fn random_vision(cfg: &LionConfig, dev: &Device) -> Result<HashMap<String, Tensor>> {
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

/// Writes `setup.json`, a random-init `t5.safetensors` and `inputs.safetensors` into `dir`.
pub fn prepare(setup: &BenchSetup, dir: &Path) -> Result<()> {
    setup.validate()?;
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let dev = Device::Cpu;
    let cfg = &setup.t5;
    {
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
        save_safetensors(&random_vision(l, &dev)?, dir.join("vision.safetensors"))?;
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

/// Times `f`: one warm-up run, then `repeats` timed runs (seconds).
/// Runs `f` once to warm up, then `repeats` timed times; on a GPU each timing waits for the
/// device to finish (a no-op on the CPU).
fn time_runs(dev: &Device, repeats: usize, mut f: impl FnMut() -> Result<()>) -> Result<Vec<f64>> {
    f()?;
    dev.synchronize()?;
    (0..repeats)
        .map(|_| {
            let t0 = Instant::now();
            f()?;
            dev.synchronize()?;
            Ok(t0.elapsed().as_secs_f64())
        })
        .collect()
}

fn stage(name: &str, runs: Vec<f64>) -> StageResult {
    StageResult {
        name: name.into(),
        median_s: median(&runs),
        runs_s: runs,
        gflop: None,
        gflops: None,
        frac_of_gemm: None,
        items_per_s: None,
        peak_rss_mib: peak_rss_mib(),
        parts_s: HashMap::new(),
        check: BTreeMap::new(),
    }
}

fn with_flops(mut st: StageResult, flop: f64, gemm: Option<f64>) -> StageResult {
    let rate = flop / st.median_s / 1e9;
    st.gflop = Some(flop / 1e9);
    st.gflops = Some(rate);
    st.frac_of_gemm = gemm.map(|g| rate / g);
    st
}

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
    let t5_weights = Checkpoint::open(dir.join("t5.safetensors"))?.load_all(&dev)?;
    let t5_checkpoint = || Checkpoint::from_tensors("t5.safetensors", t5_weights.clone());
    let (lion, t5_only) = lion_core::linear::with_weight_dtype(setup.dtype, || match lion_cfg {
        Some(l) => {
            // the T5 of the T5 stages is the LION model's own (the same weights)
            let loader = WeightLoader::new(vec![
                Checkpoint::open(dir.join("vision.safetensors"))?,
                t5_checkpoint().with_prefix("t5_model."),
            ]);
            let m = LionModel::new(l, 0, loader.var_builder(DType::F32, &dev))?;
            loader.finish(LoadMode::Strict)?;
            Ok((Some(m), None))
        }
        None => {
            let loader = WeightLoader::new(vec![t5_checkpoint()]);
            let m = T5ForConditionalGeneration::new(cfg, loader.var_builder(DType::F32, &dev))?;
            loader.finish(LoadMode::Strict)?;
            Ok::<_, Error>((None, Some(m)))
        }
    })?;
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
        // bf16: f32 activations times a bf16 weight, as the model's linear layers run it
        let bw = match setup.dtype {
            WeightDtype::Bf16 => Some(lion_core::linear::Linear::new(
                b.t()?.contiguous()?.to_dtype(DType::BF16)?,
                None,
            )),
            WeightDtype::F32 => None,
        };
        let runs = time_runs(&dev, reps.max(5), || {
            match &bw {
                Some(l) => candle_core::Module::forward(l, &a)?,
                None => a.matmul(&b)?,
            };
            Ok(())
        })?;
        let st = with_flops(stage("gemm", runs), 2.0 * (n as f64).powi(3), None);
        gemm_rate = st.gflops;
        stages.push(st);
    }
    tracing::info!("gemm done");

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
        let states = states.repeat((rows, 1, 1))?;
        let ids = Tensor::zeros((rows, 1), DType::U32, &dev)?;
        let steps = setup.new_tokens;
        // per token: the steps alone (the cross K/V set-up belongs to caption latency)
        let mut per_token = vec![];
        for rep in 0..=reps {
            // the first step untimed, as on the PyTorch side (whose cache set-up happens there)
            let mut cache = model.start_decoding(&states, None)?;
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
        stages.push(with_flops(
            stage("decode_token", per_token),
            flop,
            gemm_rate,
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
        let xt = embeds.narrow(0, 0, setup.train_batch)?;
        let params = ParamsAdamW {
            lr: 1e-4,
            weight_decay: 0.05,
            ..ParamsAdamW::default()
        };
        let vm = VarMap::new();
        let loader = WeightLoader::new(vec![t5_checkpoint()])
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
        stages,
    })
}

/// The vision and end-to-end stages on the LION model.
fn lion_stages(
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

fn tagenc_stage(dir: &Path, batch: usize, reps: usize, dev: &Device) -> Result<StageResult> {
    use crate::tag_encoder::TagEncoder;
    use crate::triplet_trainer::{TripletConfig, TripletTrainer};
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

/// The report as a table (one row per stage).
pub fn table(r: &BenchReport) -> String {
    let mut out = format!(
        "{} | {} | weights {} | {} threads | load {:.1} -> {:.1} | preset {} | seq {} | beams {} | {} new tokens\ncpu: {}\n",
        r.implementation,
        if r.device.is_empty() { "cpu" } else { &r.device },
        r.dtype,
        r.threads,
        r.load_before.unwrap_or(f64::NAN),
        r.load_after.unwrap_or(f64::NAN),
        r.setup.preset,
        r.setup.seq_len(),
        r.setup.beams,
        r.setup.new_tokens,
        r.cpu,
    );
    out += &format!(
        "{:<16} {:>10} {:>10} {:>9} {:>9} {:>9} {:>9}  {}\n",
        "stage", "median ms", "min ms", "GFLOP", "GFLOP/s", "of GEMM", "peak MiB", "notes"
    );
    for s in &r.stages {
        let min = s.runs_s.iter().copied().fold(f64::INFINITY, f64::min);
        let opt = |x: Option<f64>, p: usize| x.map_or("-".to_string(), |v| format!("{v:.p$}"));
        let mut notes = vec![];
        if let Some(i) = s.items_per_s {
            notes.push(format!("{i:.3} items/s"));
        }
        let mut parts: Vec<_> = s.parts_s.iter().collect();
        parts.sort_by(|a, b| a.0.cmp(b.0));
        for (k, v) in parts {
            notes.push(format!("{k} {:.0} ms", v * 1e3));
        }
        out += &format!(
            "{:<16} {:>10.1} {:>10.1} {:>9} {:>9} {:>9} {:>9}  {}\n",
            s.name,
            s.median_s * 1e3,
            min * 1e3,
            opt(s.gflop, 2),
            opt(s.gflops, 1),
            s.frac_of_gemm
                .map_or("-".to_string(), |f| format!("{:.0}%", f * 100.0)),
            opt(s.peak_rss_mib, 0),
            notes.join(", ")
        );
    }
    out
}

// ---- tagger stage (RAM) ----

/// The RAM of a bench preset. `base`: upstream's Swin-B RAM (`ram(vit='swin_b', image_size=224)`,
/// `configs/swin/config_swinB_224.json`: embed 128, depths 2-2-18-2, heads 4-8-16-32, window 7,
/// vision width 1024) with RAM's tagging head (`q2l_config.json`) over the full 4585 tags. 224 px
/// rather than 384 (both exist upstream) to keep the bench within a 2-core budget. `tiny`:
/// [`RamConfig::tiny`] (64 px, 4585 tags).
pub fn tagger_preset(name: &str) -> Result<RamConfig> {
    let cfg = match name {
        "base" => {
            let mut swin = lion_core::swin::SwinConfig::swin_b_384();
            swin.img_size = 224;
            swin.window_size = 7;
            RamConfig {
                swin,
                num_tags: 4585,
                head: TaggingHeadConfig::ram(),
                label_dim: 512,
            }
        }
        "tiny" => RamConfig::tiny(),
        _ => input_err!(
            "unknown bench preset {name:?} (known: {})",
            BENCH_PRESETS.join(", ")
        ),
    };
    cfg.validate()
        .map_err(|m| Error::config(format!("bench tagger preset {name}"), m))?;
    Ok(cfg)
}

/// Writes `tagger.safetensors` (random RAM weights, upstream key names; tensors the init leaves
/// at zero get small noise so the cross-check exercises them) and `tagger_input.safetensors`
/// (`pixel_values`, (1, 3, img, img)) when the setup has a tagger.
fn prepare_tagger(setup: &BenchSetup, dir: &Path) -> Result<()> {
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
    let img = cfg.swin.img_size;
    let px = Tensor::randn(0f32, 1., (1, cfg.swin.in_chans, img, img), &dev)?;
    save_safetensors(
        &HashMap::from([("pixel_values".to_string(), px)]),
        dir.join("tagger_input.safetensors"),
    )
}

/// The `tagger` stage: RAM pixels -> tag probabilities, batch 1 ([`Ram::probabilities`], the
/// forward of `lion tag`), loaded strictly from `tagger.safetensors`. `check["probs"]`: every
/// `num_tags / 64`-th probability.
fn tagger_stage(setup: &BenchSetup, dir: &Path, dev: &Device) -> Result<Option<StageResult>> {
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
    let img = cfg.swin.img_size;
    if px.dims() != [1, cfg.swin.in_chans, img, img] {
        input_err!(
            "tagger_input.safetensors: pixel_values {:?}, expected (1, {}, {img}, {img}) (rerun with --fresh)",
            px.dims(),
            cfg.swin.in_chans
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flop_counts_match_published_sizes() {
        // ViT-B/16 at 224: ~17.6 G multiply-adds (DeiT/timm), i.e. ~35 GFLOP
        let base = lion_preset("base", &t5_preset("base").unwrap()).unwrap();
        let f = vit_flops(&base.vit, 12, 1) / 1e9;
        assert!((33.0..37.0).contains(&f), "ViT-B/16 {f} GFLOP");
        assert_eq!(
            vit_flops(&base.vit, 12, 2),
            2.0 * vit_flops(&base.vit, 12, 1)
        );
        let q = qformer_flops(base.qformer.as_ref().unwrap(), 257, 1);
        let a = aggregator_flops(base.aggregator.as_ref().unwrap(), 257, 1);
        assert!(
            q > 0.0 && a > q,
            "aggregator (257 tokens) {a} vs Q-Former (32 queries) {q}"
        );
    }

    #[test]
    fn unknown_stage_is_named() {
        let mut s = BenchSetup::new("tiny").unwrap();
        s.stages = vec!["vit".into(), "vitt".into()];
        let e = s.validate().unwrap_err().to_string();
        assert!(
            e.contains("\"vitt\"") && e.contains("caption_e2e_batch"),
            "{e}"
        );
    }

    /// Every stage but the tag encoder's at the tiny preset, through prepare + run.
    #[test]
    fn tiny_bench_runs_every_stage() {
        let dir = tempfile::tempdir().unwrap();
        let mut setup = BenchSetup::new("tiny").unwrap();
        setup.repeats = 1;
        setup.stages = STAGES
            .iter()
            .filter(|s| **s != "tagenc_triplet")
            .map(|s| s.to_string())
            .collect();
        prepare(&setup, dir.path()).unwrap();
        let report = run(dir.path()).unwrap();
        let names: Vec<&str> = report.stages.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, setup.stages);
        for s in &report.stages {
            let want = if s.name == "gemm" { 5 } else { 1 };
            assert!(s.median_s > 0.0 && s.runs_s.len() == want, "{}", s.name);
        }
        let get = |n: &str| report.stages.iter().find(|s| s.name == n).unwrap();
        let lion = setup.lion.as_ref().unwrap();
        let vit = get("vit");
        assert!(vit.frac_of_gemm.is_some());
        // one sample per ViT block LION uses: the last and the aggregator's sources
        assert_eq!(vit.check.len(), lion.vit_layers().len());
        for (k, v) in vit.check.iter().chain(&get("aggregator").check) {
            assert_eq!(v.len(), CHECK_SAMPLES, "{k}");
            assert!(v.iter().all(|x| x.is_finite()), "{k}");
            assert!(v.iter().any(|&x| x != v[0]), "{k} is constant");
        }
        // Q-Former: 4 queries x d_model 64 values = 256 -> 64 samples
        assert_eq!(get("qformer").check["output"].len(), CHECK_SAMPLES);
        let e2e = get("caption_e2e_batch");
        assert_eq!(e2e.check.len(), setup.batch + 1);
        assert_eq!(e2e.check["encoder"].len(), CHECK_SAMPLES);
        for (_, t) in e2e.check.iter().filter(|(k, _)| k.starts_with("tokens")) {
            assert_eq!(t.len(), setup.new_tokens);
            assert!(t
                .iter()
                .all(|&x| x >= 0.0 && x < setup.t5.vocab_size as f64));
        }
        assert_eq!(get("caption_e2e").check.len(), 2);
        assert!(table(&report).contains("caption_e2e_batch"));
        // the tagger: 4585 probabilities -> 64 samples in (0, 1), not all equal
        let probs = &get("tagger").check["probs"];
        assert_eq!(probs.len(), CHECK_SAMPLES);
        assert!(probs.iter().all(|&p| p > 0.0 && p < 1.0), "{probs:?}");
        assert!(
            probs.iter().any(|&p| p != probs[0]),
            "constant tag probabilities"
        );
        // the training step (which ran before) left the shared weights as loaded
        let mut alone = setup.clone();
        alone.stages = vec!["caption_e2e_batch".into()];
        // same weights and inputs, new settings (as `lion bench` reuses a folder)
        std::fs::write(
            dir.path().join("setup.json"),
            serde_json::to_vec(&alone).unwrap(),
        )
        .unwrap();
        let again = run(dir.path()).unwrap();
        assert_eq!(again.stages[0].check, e2e.check);
    }
}
