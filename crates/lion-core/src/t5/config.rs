//! T5 configuration: HF `config.json` fields plus LION's adapter settings.

use serde::{Deserialize, Serialize};

use crate::adapter::AdapterConfig;
use crate::ops::Activation;

fn default_d_kv() -> usize {
    64
}
fn default_buckets() -> usize {
    32
}
fn default_max_distance() -> usize {
    128
}
fn default_dropout() -> f64 {
    0.1
}
fn default_eps() -> f64 {
    1e-6
}
fn default_ffp() -> String {
    "relu".to_string()
}
fn default_true() -> bool {
    true
}
fn default_eos() -> u32 {
    1
}

/// T5 configuration, read from HF `config.json` (plus LION's adapter settings, which are not HF
/// fields).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct T5Config {
    pub vocab_size: usize,
    pub d_model: usize,
    #[serde(default = "default_d_kv")]
    pub d_kv: usize,
    pub d_ff: usize,
    pub num_layers: usize,
    /// Defaults to `num_layers`.
    #[serde(default)]
    pub num_decoder_layers: Option<usize>,
    pub num_heads: usize,
    #[serde(default = "default_buckets")]
    pub relative_attention_num_buckets: usize,
    #[serde(default = "default_max_distance")]
    pub relative_attention_max_distance: usize,
    #[serde(default = "default_dropout")]
    pub dropout_rate: f64,
    #[serde(default = "default_eps")]
    pub layer_norm_epsilon: f64,
    /// `"relu"` (T5) or `"gated-gelu"` (T5 v1.1 / Flan-T5); `"gated-<act>"` in general.
    #[serde(default = "default_ffp")]
    pub feed_forward_proj: String,
    /// Activation inside the FFN. When absent it is derived as HF does: from `feed_forward_proj`,
    /// with `gated-gelu` meaning the tanh approximation (`gelu_new`). LION sets it to exact
    /// `gelu` ([`T5Config::with_exact_gelu`]).
    #[serde(default)]
    pub dense_act_fn: Option<Activation>,
    /// True: `lm_head` is `shared` and the decoder output is scaled by `d_model^-0.5` (original T5).
    /// False: a separate `lm_head.weight`, no scaling (T5 v1.1 / Flan-T5).
    #[serde(default = "default_true")]
    pub tie_word_embeddings: bool,
    /// Defaults to `pad_token_id` (0 for T5).
    #[serde(default)]
    pub decoder_start_token_id: Option<u32>,
    #[serde(default)]
    pub pad_token_id: u32,
    #[serde(default = "default_eos")]
    pub eos_token_id: u32,
    /// LION's parallel adapters in every FFN; None for plain T5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapter: Option<AdapterConfig>,
}

impl T5Config {
    /// Reads and checks HF `config.json`.
    pub fn from_file(path: impl AsRef<std::path::Path>) -> crate::Result<Self> {
        let path = path.as_ref();
        let cfg: Self = crate::util::read_json(path)?;
        cfg.validate()
            .map_err(|m| crate::Error::config(path.display(), m))?;
        Ok(cfg)
    }

    /// LION's override (`lion_t5.py`: `llm_config.dense_act_fn = "gelu"`): exact erf GELU.
    pub fn with_exact_gelu(mut self) -> Self {
        self.dense_act_fn = Some(Activation::Gelu);
        self
    }

    /// Adds LION's adapters (bottleneck 64) with `num_adapters` = 1 or 2 to every FFN.
    pub fn with_adapters(mut self, num_adapters: usize) -> Self {
        self.adapter = Some(AdapterConfig {
            d_model: self.d_model,
            bottleneck: 64,
            num_adapters,
        });
        self
    }

    pub fn validate(&self) -> crate::rules::Check {
        use crate::rules::{all_positive, dropout, epsilon, Invalid};
        all_positive(&[
            ("vocab_size", self.vocab_size),
            ("d_model", self.d_model),
            ("d_kv", self.d_kv),
            ("d_ff", self.d_ff),
            ("num_layers", self.num_layers),
            ("num_decoder_layers", self.num_decoder_layers()),
            ("num_heads", self.num_heads),
            (
                "relative_attention_num_buckets",
                self.relative_attention_num_buckets,
            ),
        ])?;
        if self.relative_attention_num_buckets < 4 {
            return Err(Invalid::new(
                "relative_attention_num_buckets",
                self.relative_attention_num_buckets,
                "must be at least 4",
            ));
        }
        epsilon("layer_norm_epsilon", self.layer_norm_epsilon)?;
        dropout("dropout_rate", self.dropout_rate)?;
        self.ffn_kind()
            .map_err(|m| Invalid::new("feed_forward_proj", &self.feed_forward_proj, m))?;
        for (name, id) in [
            ("pad_token_id", self.pad_token_id),
            ("eos_token_id", self.eos_token_id),
            ("decoder_start_token_id", self.decoder_start_token_id()),
        ] {
            if id as usize >= self.vocab_size {
                return Err(Invalid::new(
                    name,
                    id,
                    format!(
                        "must be inside the vocabulary (vocab_size {})",
                        self.vocab_size
                    ),
                ));
            }
        }
        if let Some(a) = &self.adapter {
            a.validate().map_err(|e| e.within("adapter"))?;
            if a.d_model != self.d_model {
                return Err(Invalid::new(
                    "adapter.d_model",
                    a.d_model,
                    format!("must equal d_model ({})", self.d_model),
                ));
            }
        }
        Ok(())
    }

    /// (gated, activation) from `feed_forward_proj` and `dense_act_fn`.
    pub(crate) fn ffn_kind(&self) -> std::result::Result<(bool, Activation), String> {
        let parts: Vec<&str> = self.feed_forward_proj.split('-').collect();
        let (gated, act) = match parts.as_slice() {
            [act] => (false, *act),
            ["gated", act] => (true, *act),
            _ => {
                return Err(format!(
                    "feed_forward_proj `{}` is not `<act>` or `gated-<act>`",
                    self.feed_forward_proj
                ))
            }
        };
        if let Some(a) = self.dense_act_fn {
            return Ok((gated, a));
        }
        let act = match act {
            // HF: "for backwards compatibility", gated-gelu means the tanh approximation
            "gelu" if gated => Activation::GeluNew,
            "gelu" => Activation::Gelu,
            "relu" => Activation::Relu,
            "silu" => Activation::Silu,
            "gelu_new" => Activation::GeluNew,
            other => {
                return Err(format!(
                    "unsupported feed_forward_proj activation `{other}`"
                ))
            }
        };
        Ok((gated, act))
    }

    pub fn num_decoder_layers(&self) -> usize {
        self.num_decoder_layers.unwrap_or(self.num_layers)
    }

    pub fn decoder_start_token_id(&self) -> u32 {
        self.decoder_start_token_id.unwrap_or(self.pad_token_id)
    }
}
