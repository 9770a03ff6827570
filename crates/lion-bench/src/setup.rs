//! The bench presets (T5, LION, RAM) and the workload sizes ([`BenchSetup`], `setup.json`).

use std::path::PathBuf;

use lion_core::cpu::{Quantize, WeightDtype};
use lion_core::generate::GenerationConfig;
use lion_core::lion::LionConfig;
use lion_core::t5::T5Config;
use lion_core::tagger::{RamConfig, TaggingHeadConfig};
use lion_core::{input_err, Error, Result};
use serde::{Deserialize, Serialize};

/// Preset names [`t5_preset`] knows.
pub const BENCH_PRESETS: &[&str] = &["tiny", "base", "lion-4b", "lion-12b"];

/// The presets at the published sizes: their random weights are written streamed, in bf16
/// ([`crate::prepare`]), and they have no PyTorch cross-check, tagger or training stage.
pub const REAL_SIZE_PRESETS: &[&str] = &["lion-4b", "lion-12b"];

/// The T5 of a bench preset: the LION preset's own ([`lion_core::presets::preset`]): `base`
/// flan-t5-base (d 768, d_ff 2048, 12+12 layers, 12 heads, vocab 32128, gated exact GELU,
/// untied head) with LION's 2 adapters; `lion-4b` flan-t5-xl (d 2048, d_ff 5120, 24+24 layers, 32
/// heads); `lion-12b` flan-t5-xxl (d 4096, d_ff 10240, 64 heads); `tiny` the tests' small model.
pub fn t5_preset(name: &str) -> Result<T5Config> {
    if !BENCH_PRESETS.contains(&name) {
        input_err!(
            "unknown bench preset {name:?} (known: {})",
            BENCH_PRESETS.join(", ")
        )
    }
    Ok(lion_core::presets::preset(name, None)?.t5)
}

fn default_stream_mib() -> usize {
    1024
}

/// Stage names, in run order.
pub const STAGES: &[&str] = &[
    "gemm",
    "stream",
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
    /// MiB the `stream` stage reads (far more than the last-level cache).
    #[serde(default = "default_stream_mib")]
    pub stream_mib: usize,
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
    /// Weight-only quantisation of the ViT's and T5's linear layers (`--quantize`).
    #[serde(default)]
    pub quantize: Option<Quantize>,
}

pub(crate) fn f32_weights() -> WeightDtype {
    WeightDtype::F32
}

impl BenchSetup {
    /// Defaults for a preset: LION's sequence (289 visual + 60 text tokens), beam 5, 20 tokens.
    pub fn new(preset: &str) -> Result<Self> {
        let t5 = t5_preset(preset)?;
        let lion = Some(lion_preset(preset, &t5)?);
        let tiny = preset == "tiny";
        let real = REAL_SIZE_PRESETS.contains(&preset);
        // at the published sizes: the inference stages of one caption (no batch, training,
        // tag-encoder or tagger stages)
        let stages = match real {
            true => [
                "gemm",
                "stream",
                "t5_encoder",
                "decode_token",
                "caption_beam5",
                "vit",
                "qformer",
                "aggregator",
                "caption_e2e",
            ]
            .map(String::from)
            .to_vec(),
            false => vec![],
        };
        Ok(Self {
            preset: preset.into(),
            t5,
            lion,
            visual_tokens: if tiny { 12 } else { 289 },
            text_tokens: if tiny { 4 } else { 60 },
            new_tokens: if tiny { 4 } else { 20 },
            beams: 5,
            repetition_penalty: 1.5,
            batch: if tiny {
                2
            } else if real {
                1
            } else {
                8
            },
            train_batch: 2,
            train_target: if tiny { 4 } else { 20 },
            repeats: 3,
            gemm_n: if tiny { 128 } else { 2048 },
            stream_mib: if tiny { 16 } else { default_stream_mib() },
            tagenc_dir: None,
            tagenc_batch: 32,
            stages,
            tagger: if real {
                None
            } else {
                Some(tagger_preset(preset)?)
            },
            dtype: WeightDtype::F32,
            quantize: None,
        })
    }

    /// A preset at a published size ([`REAL_SIZE_PRESETS`]).
    pub fn real_size(&self) -> bool {
        REAL_SIZE_PRESETS.contains(&self.preset.as_str())
    }

    pub fn seq_len(&self) -> usize {
        self.visual_tokens + self.text_tokens
    }

    pub(crate) fn wants(&self, stage: &str) -> bool {
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
        if self.wants("stream") && self.stream_mib == 0 {
            input_err!("setup.json: stream_mib must be positive (the MiB the stream stage reads)")
        }
        if self.real_size() {
            let big = ["caption_batch", "train_step", "caption_e2e_batch", "tagger"];
            if let Some(s) = self.stages.iter().find(|s| big.contains(&s.as_str())) {
                input_err!(
                    "stage {s:?} is not run at the {} size (the one-caption inference stages are)",
                    self.preset
                )
            }
            if self.stages.is_empty() {
                input_err!("give the stages to run at the {} size", self.preset)
            }
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
                convnet: None,
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
