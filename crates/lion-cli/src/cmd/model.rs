//! How every LION command gets its model: `--model DIR` (a folder with `lion.json`) or
//! `--preset P --random-weights`.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use lion_core::cpu::WeightDtype;
use lion_core::generate::GenerationConfig;
use lion_core::pipeline::{LionPipeline, PipelineSources};
use lion_core::presets::{preset, PRESETS};
use lion_core::prompt::PromptKind;
use lion_core::weights::LoadMode;

#[derive(clap::Args, Debug, Clone)]
pub struct ModelArgs {
    /// Model folder holding `lion.json` (config, weight files, tokenizers).
    #[arg(long, conflicts_with = "preset")]
    pub model: Option<PathBuf>,
    /// A preset (tiny, base, lion-4b, lion-12b); needs --random-weights.
    #[arg(long)]
    pub preset: Option<String>,
    /// Build the preset with random weights (smoke tests, benchmarks).
    #[arg(long, requires = "preset")]
    pub random_weights: bool,
    /// Soft prompt with --preset: static, dynamic, gated, gated:K or none.
    #[arg(long, default_value = "static")]
    pub prompt: String,
    /// T5 tokenizer.json with --preset (default: the bundled small tokenizer).
    #[arg(long)]
    pub t5_tokenizer: Option<PathBuf>,
    /// BERT tokenizer.json for the Q-Former with --preset (bert-base-uncased vocabulary).
    #[arg(long, default_value = "models/all-MiniLM-L6-v2/tokenizer.json")]
    pub qformer_tokenizer: PathBuf,
    /// Tag encoder folder with --preset (dynamic and gated prompts).
    #[arg(long, default_value = super::DEFAULT_MINILM)]
    pub tag_encoder: PathBuf,
    /// Accept a checkpoint that does not fit exactly (missing keys keep their initialisation).
    #[arg(long)]
    pub lenient: bool,
    /// Linear-layer weights: f32, bf16 (stored in bf16, f32 activations and accumulation) or
    /// auto (bf16 where the CPU has native bf16 dot products, else f32; `lion doctor` says).
    /// Default: auto (f32 for `lion forward`).
    #[arg(long, value_parser = parse_dtype)]
    pub dtype: Option<WeightDtype>,
}

/// Parses `--dtype`.
pub fn parse_dtype(s: &str) -> std::result::Result<WeightDtype, String> {
    WeightDtype::parse(s).ok_or_else(|| format!("`{s}`: expected f32, bf16 or auto"))
}

/// Parses `--prompt`.
pub fn parse_prompt(s: &str) -> Result<Option<PromptKind>> {
    Ok(match s {
        "none" => None,
        "static" => Some(PromptKind::Static),
        "dynamic" => Some(PromptKind::Dynamic),
        "gated" => Some(PromptKind::Gated { k: 1 }),
        other => match other.strip_prefix("gated:").map(str::parse::<usize>) {
            Some(Ok(k)) if k > 0 => Some(PromptKind::Gated { k }),
            _ => bail!("--prompt `{other}`: expected static, dynamic, gated, gated:K or none"),
        },
    })
}

impl ModelArgs {
    /// Loads the pipeline the flags describe, its linear weights in `--dtype`.
    pub fn load(&self) -> Result<LionPipeline> {
        let dtype = self.dtype.unwrap_or(lion_core::cpu::kernels().auto_dtype);
        tracing::info!("linear weights in {}", dtype.name());
        lion_core::linear::with_weight_dtype(dtype, || self.load_as_is())
    }

    fn load_as_is(&self) -> Result<LionPipeline> {
        let dev = super::device()?;
        let mode = if self.lenient {
            LoadMode::Lenient
        } else {
            LoadMode::Strict
        };
        if let Some(dir) = &self.model {
            return LionPipeline::from_dir(dir, mode, &dev)
                .with_context(|| format!("cannot load the model folder {}", dir.display()));
        }
        let Some(name) = &self.preset else {
            bail!(
                "no model: give --model DIR or --preset P --random-weights ({})",
                PRESETS.join(", ")
            );
        };
        if !self.random_weights {
            bail!("--preset {name} has no weights of its own: add --random-weights, or use --model DIR");
        }
        let mut cfg = preset(name, parse_prompt(&self.prompt)?)?;
        // Random weights: size the vocabulary to the tokenizer, so every generated id decodes.
        let tok = match &self.t5_tokenizer {
            Some(p) => lion_core::text::T5Tokenizer::from_file(p)?,
            None => lion_core::text::T5Tokenizer::for_preset(name)?,
        };
        if tok.vocab_size() < cfg.t5.vocab_size {
            tracing::info!(
                preset = cfg.t5.vocab_size,
                tokenizer = tok.vocab_size(),
                "random weights: T5 vocabulary sized to the tokenizer"
            );
            cfg.t5.vocab_size = tok.vocab_size();
        }
        tracing::info!(preset = %name, "building the model with random weights");
        let p = LionPipeline::new(
            PipelineSources {
                config: cfg,
                checkpoints: vec![],
                t5_tokenizer: self.t5_tokenizer.as_deref(),
                qformer_tokenizer: Some(&self.qformer_tokenizer),
                tag_encoder: Some(&self.tag_encoder),
                mode,
            },
            &dev,
        )?;
        let mut p = p;
        if self.t5_tokenizer.is_none() {
            p.t5_tokenizer = tok;
        }
        Ok(p)
    }
}

/// Decoding flags shared by the generating commands.
#[derive(clap::Args, Debug, Clone)]
pub struct GenArgs {
    /// Beams (1 = greedy). LION: 5.
    #[arg(long, default_value_t = 5)]
    pub num_beams: usize,
    /// New tokens at most (LION's generate allows 256; captions and boxes need far fewer).
    #[arg(long, default_value_t = 64)]
    pub max_new_tokens: usize,
    /// LION: 1.5.
    #[arg(long, default_value_t = 1.5)]
    pub repetition_penalty: f32,
    #[arg(long, default_value_t = 1.0)]
    pub length_penalty: f32,
    #[arg(long, default_value_t = 1)]
    pub min_length: usize,
}

impl GenArgs {
    pub fn config(&self) -> GenerationConfig {
        GenerationConfig {
            num_beams: self.num_beams,
            max_new_tokens: self.max_new_tokens,
            min_length: self.min_length,
            repetition_penalty: self.repetition_penalty,
            length_penalty: self.length_penalty,
            ..GenerationConfig::default()
        }
    }
}
