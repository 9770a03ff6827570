//! How every LION command gets its model: `--model DIR` (a folder with `lion.json`) or
//! `--preset P --random-weights`.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use lion_core::cpu::{Quantize, WeightDtype};
use lion_core::generate::{GenerationConfig, Sampling};
use lion_core::hub::{resolve_file, resolve_model};
use lion_core::model_spec::ModelSpec;
use lion_core::pipeline::LionPipeline;
use lion_core::presets::PRESETS;
use lion_core::prompt::PromptKind;
use lion_core::weights::LoadMode;

#[derive(clap::Args, Debug, Clone)]
pub struct ModelArgs {
    /// Model folder holding `lion.json` (config, weight files, tokenizers), or a Hub id
    /// `org/name` found under $LION_HOME/models or in the Hugging Face cache.
    #[arg(long, conflicts_with = "preset")]
    pub model: Option<String>,
    /// A preset (tiny, base, lion-4b, lion-12b); needs --random-weights.
    #[arg(long)]
    pub preset: Option<String>,
    /// Build the preset with random weights (smoke tests, benchmarks).
    #[arg(long, requires = "preset")]
    pub random_weights: bool,
    /// With --random-weights: draw them from this seed, the same weights on every run and
    /// machine (without it, an unseeded draw that differs from run to run).
    #[arg(long, requires = "random_weights")]
    pub init_seed: Option<u64>,
    /// Soft prompt with --preset: static, dynamic, gated, gated:K or none.
    #[arg(long, default_value = "static")]
    pub prompt: String,
    /// T5 tokenizer.json with --preset (default: the bundled small tokenizer).
    #[arg(long)]
    pub t5_tokenizer: Option<PathBuf>,
    /// BERT tokenizer for the Q-Former with --preset (bert-base-uncased vocabulary): a
    /// tokenizer.json, or a model folder or Hub id holding one.
    #[arg(long, default_value = lion_core::hub::DEFAULT_MINILM)]
    pub qformer_tokenizer: String,
    /// Tag encoder with --preset (dynamic and gated prompts): a folder or a Hub id.
    #[arg(long, default_value = lion_core::hub::DEFAULT_MINILM)]
    pub tag_encoder: String,
    /// Accept a checkpoint that does not fit exactly (missing keys keep their initialisation).
    #[arg(long)]
    pub lenient: bool,
    /// Linear-layer weights: f32, bf16 (stored in bf16, f32 activations and accumulation) or
    /// auto (bf16 where the CPU has native bf16 dot products, else f32; `lion doctor` says).
    /// Default: auto (f32 for `lion forward`; bf16 with `--device cuda`).
    #[arg(long, value_parser = parse_dtype)]
    pub dtype: Option<WeightDtype>,
    /// Weight-only quantisation of the ViT's and T5's linear layers: q8_0 (9 bits per weight)
    /// or q4_0 (5), GGML's schemes, or q4k (6: 4-bit with a fitted scale and minimum per 32
    /// weights, as K-quants), quantized at load. Embeddings, norms, the Q-Former and the
    /// LM head stay in --dtype. CPU only.
    #[arg(long, value_parser = parse_quantize)]
    pub quantize: Option<Quantize>,
    #[command(flatten)]
    pub device: super::DeviceArgs,
}

/// Parses `--dtype`.
pub fn parse_dtype(s: &str) -> std::result::Result<WeightDtype, String> {
    WeightDtype::parse(s).ok_or_else(|| format!("`{s}`: expected f32, bf16 or auto"))
}

/// Parses `--quantize`.
pub fn parse_quantize(s: &str) -> std::result::Result<Quantize, String> {
    Quantize::parse(s).ok_or_else(|| format!("`{s}`: expected {}", Quantize::NAMES))
}

/// Parses `--prompt` ([`PromptKind::parse_name`]).
pub fn parse_prompt(s: &str) -> Result<Option<PromptKind>> {
    PromptKind::parse_name(s).map_err(|e| anyhow::anyhow!("--prompt {e}"))
}

impl ModelArgs {
    /// Loads the pipeline the flags describe, its linear weights in `--dtype`.
    pub fn load(&self) -> Result<LionPipeline> {
        Ok(self.spec()?.build()?)
    }

    /// The model the flags describe ([`ModelSpec`]); nothing is loaded yet.
    pub fn spec(&self) -> Result<ModelSpec> {
        // On a GPU the frozen linear weights default to bf16 (norms, softmax and losses stay f32).
        let dtype = self.dtype.unwrap_or(if self.device.device.is_cuda() {
            WeightDtype::Bf16
        } else {
            lion_core::cpu::kernels().auto_dtype
        });
        if self.quantize.is_some() && self.device.device.is_cuda() {
            bail!("--quantize runs on the CPU only (quantized layers use candle's CPU kernels); drop it or use --device cpu");
        }
        let dev = self.device.open()?;
        let mode = if self.lenient {
            LoadMode::Lenient
        } else {
            LoadMode::Strict
        };
        let spec = if let Some(id) = &self.model {
            let dir = resolve_model(id)?;
            ModelSpec::from_folder(&dir, mode)
                .with_context(|| format!("cannot load the model folder {}", dir.display()))?
        } else {
            let Some(name) = &self.preset else {
                bail!(
                    "no model: give --model DIR or --preset P --random-weights ({})",
                    PRESETS.join(", ")
                );
            };
            if !self.random_weights {
                bail!("--preset {name} has no weights of its own: add --random-weights, or use --model DIR");
            }
            tracing::info!(preset = %name, "building the model with random weights");
            let mut spec = ModelSpec::preset(name, parse_prompt(&self.prompt)?)?
                .with_init_seed(self.init_seed)
                .with_mode(mode);
            spec.t5_tokenizer = self.t5_tokenizer.clone();
            // Only what the config uses is looked for (a static prompt needs no tag encoder).
            if spec.config.qformer.is_some() {
                spec.qformer_tokenizer =
                    Some(resolve_file(&self.qformer_tokenizer, "tokenizer.json")?);
            }
            if spec.config.prompt.is_some_and(|p| p.needs_tag_embedding()) {
                spec.tag_encoder = Some(resolve_model(&self.tag_encoder)?);
            }
            // Random weights: the vocabulary sized to the tokenizer, so every generated id decodes.
            spec.vocab_sized_to_tokenizer()?
        };
        // a quantized folder loads in its own format; --quantize may only repeat it
        let quantize = match (spec.quantize, self.quantize) {
            (Some(stored), Some(q)) if stored != q => bail!(
                "--quantize {}: the model folder is stored in {} (convert the dense folder to \
                 get {})",
                q.name(),
                stored.name(),
                q.name()
            ),
            (stored, q) => q.or(stored),
        };
        match quantize {
            Some(q) => tracing::info!(
                "linear weights in {} ({} for the ViT and T5 blocks)",
                dtype.name(),
                q.name()
            ),
            None => tracing::info!("linear weights in {}", dtype.name()),
        }
        Ok(spec
            .with_dtype(dtype)
            .with_quantize(quantize)
            .with_device(dev))
    }
}

/// Decoding flags shared by the generating commands.
#[derive(clap::Args, Debug, Clone)]
pub struct GenArgs {
    /// Beams (1 = greedy). Default: LION's 5, or 1 when sampling.
    #[arg(long)]
    pub num_beams: Option<usize>,
    /// New tokens at most (LION's generate allows 256; captions and boxes need far fewer).
    #[arg(long, default_value_t = 64)]
    pub max_new_tokens: usize,
    /// LION: 1.5.
    #[arg(long, allow_negative_numbers = true, default_value_t = 1.5)]
    pub repetition_penalty: f32,
    #[arg(long, allow_negative_numbers = true, default_value_t = 1.0)]
    pub length_penalty: f32,
    #[arg(long, default_value_t = 1)]
    pub min_length: usize,
    /// Sample with this temperature instead of searching (0 = no sampling, LION's default;
    /// HF `do_sample=True`); takes one beam.
    #[arg(long, allow_negative_numbers = true, default_value_t = 0.0)]
    pub temperature: f32,
    /// Nucleus sampling: keep the most likely tokens up to this probability mass (1 = all).
    #[arg(long, allow_negative_numbers = true, default_value_t = 1.0)]
    pub top_p: f32,
    /// Sample among the k most likely tokens only.
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Seed of the sampling: the same seed, flags and inputs give the same text.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

impl GenArgs {
    /// The decoder settings after the rules the server applies to the same fields
    /// ([`lion_core::rules::GenerationSettings::check`] with default limits,
    /// [`lion_core::rules::SamplingSettings::check`], [`lion_core::rules::check_sequences`]).
    /// `--min-length` counts the decoder start token, so it is checked as
    /// `min_new_tokens = min_length - 1`.
    pub fn checked_config(&self) -> Result<GenerationConfig> {
        let flags = "decoding flags (--num-beams, --max-new-tokens, --min-length = min_new_tokens + 1, --repetition-penalty, --length-penalty, --temperature, --top-p, --top-k)";
        let sampling = self
            .sampling()
            .map_err(|e| anyhow::anyhow!("{flags}: {e}"))?;
        let c = self.with_sampling(sampling);
        lion_core::rules::GenerationSettings::from_config(&c)
            .check(&lion_core::rules::GenerationLimits::default())
            .and_then(|()| lion_core::rules::check_sequences(c.num_beams, 1, sampling.is_some()))
            .map_err(|e| anyhow::anyhow!("{flags}: {e}"))?;
        Ok(c)
    }

    fn sampling(&self) -> std::result::Result<Option<Sampling>, lion_core::rules::Invalid> {
        lion_core::rules::SamplingSettings {
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            seed: self.seed,
        }
        .check()
    }

    fn with_sampling(&self, sampling: Option<Sampling>) -> GenerationConfig {
        let default_beams = if sampling.is_some() { 1 } else { 5 };
        GenerationConfig {
            num_beams: self.num_beams.unwrap_or(default_beams),
            max_new_tokens: self.max_new_tokens,
            min_length: self.min_length,
            repetition_penalty: self.repetition_penalty,
            length_penalty: self.length_penalty,
            sampling,
            ..GenerationConfig::default()
        }
    }
}

/// A RAM tagger for the LION commands: every image is tagged first (per-class thresholds,
/// tag-list order, as `lion serve` does) unless its request gives tags.
#[derive(clap::Args, Debug, Clone)]
pub struct RamArgs {
    /// RAM checkpoint (`ram_swin_large_14m.pth`) that tags each image for LION's prompt.
    #[arg(long, conflicts_with = "ram_random")]
    pub ram: Option<PathBuf>,
    /// RAM sizes with --ram: `swin-l` (ram_swin_large_14m), `tiny`, or a JSON file (RamConfig).
    #[arg(long, default_value = "swin-l", requires = "ram")]
    pub ram_config: String,
    /// A RAM tagger of these sizes (`tiny`, `swin-l`, JSON file) with random weights (smoke
    /// tests).
    #[arg(long, value_name = "CONFIG")]
    pub ram_random: Option<String>,
    /// With --ram-random: draw its weights from this seed, the same tagger on every run
    /// (without it, an unseeded draw).
    #[arg(long, requires = "ram_random")]
    pub ram_init_seed: Option<u64>,
}

impl RamArgs {
    /// The tagger the flags describe; None without --ram / --ram-random.
    pub fn load(&self, dev: &candle_core::Device) -> Result<Option<lion_core::tagger::Tagger>> {
        let (weights, config) = match (&self.ram, &self.ram_random) {
            (Some(w), _) => (Some(w.as_path()), self.ram_config.as_str()),
            (None, Some(cfg)) => (None, cfg.as_str()),
            (None, None) => return Ok(None),
        };
        let tagger =
            lion_core::tagger::Tagger::from_spec(weights, config, self.ram_init_seed, dev)?;
        tracing::info!(tags = tagger.vocab.len(), "RAM tagger loaded");
        Ok(Some(tagger))
    }
}
