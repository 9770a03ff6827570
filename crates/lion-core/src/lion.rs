//! LION assembled: EVA ViT -> {Q-Former (32 tokens), vision aggregator (257 tokens)} -> Flan-T5
//! with LION's mixture of adapters, and a soft prompt at `<extra_id_0>`.
//!
//! Key tree as the upstream LION state dict (`lion_t5.py`): `visual_encoder.*`, `Qformer.bert.*`,
//! `query_tokens`, `ln_vision`, `t5_proj`, `fusion_adapter.blocks.{0,1}.*`, `ln_adapter`,
//! `adapter_proj.{0,2}`, `t5_model.*` (adapters at `t5_model.{encoder,decoder}.block.{i}.layer.
//! {1,2}.adapter.*`), `soft_prompt_hint` (static prompt) or `dynamic_prompt_*` (ours).
//!
//! Data flow of one request (`encode_img` L257-301, `forward` L303-343, `generate` L345-392):
//! pixels (224, CLIP norm) -> ViT blocks 38, 28, 18 -> [t5_proj(Q-Former(ln_vision(x38), question))
//! | adapter_proj(ln_adapter(aggregator(x38; x28, x18)))] ++ embed(prompt) with the placeholder
//! row replaced by the soft prompt -> T5 encoder (all-ones mask over the visual tokens) -> decoder.

use candle_core::{DType, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use crate::adapter::Route;
use crate::aggregator::{AggregatorConfig, VisionAggregator};
use crate::eva_vit::{EvaVit, EvaVitConfig};
use crate::generate::{generate, GenerationConfig};
use crate::prompt::{insert_soft_prompt, PromptKind, PromptTemplates, SoftPrompt, Task};
use crate::qformer::{QFormer, QFormerConfig};
use crate::sentence::TokenBatch;
use crate::t5::{T5Config, T5ForConditionalGeneration, T5Input, T5Output};
use crate::text::Encoded;
use crate::{Error, Result};

fn default_txt_len() -> usize {
    128
}

/// Which visual paths feed the language model (upstream `visual_input`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VisualInput {
    /// Both paths, two adapters and the router (LION's released models).
    All,
    QFormer,
    Aggregator,
}

/// Everything that defines a LION model's shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LionConfig {
    pub vit: EvaVitConfig,
    /// Present unless `visual_input` is `aggregator`.
    pub qformer: Option<QFormerConfig>,
    /// Present unless `visual_input` is `qformer`.
    pub aggregator: Option<AggregatorConfig>,
    /// Flan-T5 with LION's adapters (2 for both paths, else 1) and exact GELU.
    pub t5: T5Config,
    /// The soft prompt; None switches the semantic tags off (`enable_semantic_tags=False`).
    pub prompt: Option<PromptKind>,
    /// Width of the tag encoder's embedding (dynamic and gated prompts; 384 for MiniLM).
    pub tag_dim: usize,
    /// Encoder text budget (tokens, left-truncated).
    #[serde(default = "default_txt_len")]
    pub max_txt_len: usize,
    /// Target budget (tokens, right-truncated).
    #[serde(default = "default_txt_len")]
    pub max_output_txt_len: usize,
    #[serde(default)]
    pub templates: PromptTemplates,
}

impl LionConfig {
    pub fn visual_input(&self) -> VisualInput {
        match (&self.qformer, &self.aggregator) {
            (Some(_), Some(_)) => VisualInput::All,
            (Some(_), None) => VisualInput::QFormer,
            _ => VisualInput::Aggregator,
        }
    }

    /// ViT blocks to run: the last one (Q-Former input) and the aggregator's sources.
    pub fn vit_layers(&self) -> Vec<usize> {
        let mut layers = vec![self.vit.depth - 1];
        if let Some(a) = &self.aggregator {
            for &l in &a.source_layers {
                if !layers.contains(&l) {
                    layers.push(l);
                }
            }
        }
        layers
    }

    /// Visual tokens per image in the encoder input (289 for LION).
    pub fn num_visual_tokens(&self) -> usize {
        self.qformer.as_ref().map_or(0, |q| q.num_query_token)
            + self
                .aggregator
                .as_ref()
                .map_or(0, |_| self.vit.num_tokens())
    }

    /// Checks that the parts fit each other, naming the mismatching fields.
    pub fn validate(&self) -> std::result::Result<(), String> {
        self.vit.validate()?;
        self.t5.validate()?;
        let d = self.t5.d_model;
        if self.qformer.is_none() && self.aggregator.is_none() {
            return Err("at least one of `qformer` and `aggregator` is needed".into());
        }
        if let Some(q) = &self.qformer {
            q.validate()?;
            if q.encoder_width != self.vit.width {
                return Err(format!(
                    "qformer.encoder_width {} != vit.width {}",
                    q.encoder_width, self.vit.width
                ));
            }
            if q.d_model != d {
                return Err(format!("qformer.d_model {} != t5.d_model {d}", q.d_model));
            }
        }
        if let Some(a) = &self.aggregator {
            a.validate()?;
            if a.width != self.vit.width {
                return Err(format!(
                    "aggregator.width {} != vit.width {}",
                    a.width, self.vit.width
                ));
            }
            if a.d_model != d {
                return Err(format!(
                    "aggregator.d_model {} != t5.d_model {d}",
                    a.d_model
                ));
            }
            if let Some(bad) = a.source_layers.iter().find(|&&l| l >= self.vit.depth) {
                return Err(format!(
                    "aggregator.source_layers names block {bad}, the ViT has {}",
                    self.vit.depth
                ));
            }
        }
        let want = if self.visual_input() == VisualInput::All {
            2
        } else {
            1
        };
        match &self.t5.adapter {
            Some(a) if a.num_adapters == want => {}
            Some(a) => {
                return Err(format!(
                    "t5.adapter.num_adapters is {}, {:?} needs {want}",
                    a.num_adapters,
                    self.visual_input()
                ))
            }
            None => return Err("t5.adapter is missing: LION puts adapters in every FFN".into()),
        }
        Ok(())
    }
}

/// One batch of prepared inputs (see `LionProcessor` in `pipeline`).
#[derive(Debug, Clone)]
pub struct LionBatch {
    /// (b, 3, img, img), LION eval or train transform.
    pub pixel_values: Tensor,
    /// Q-Former text (the instruction), BERT-tokenized; None when there is no Q-Former.
    pub qformer_text: Option<TokenBatch>,
    /// T5 encoder text with the soft-prompt placeholders.
    pub prompt: Encoded,
    /// (b, tag_dim) tag-encoder embeddings of "tag: score, ..." (dynamic / gated prompts).
    pub tag_embedding: Option<Tensor>,
    /// Router row: one task type per batch, as upstream.
    pub route: Route,
}

impl Task {
    /// LION's router row for the task.
    pub fn route(&self) -> Route {
        if self.is_region_level() {
            Route::RegionLevel
        } else {
            Route::ImageLevel
        }
    }
}

/// Checkpoint keys every LION load accepts without the model reading them: buffers the model
/// recomputes (BERT `position_ids`, Swin `relative_position_index` / `attn_mask`).
pub const RECOMPUTED_BUFFERS: &[&str] = &["position_ids", "relative_position_index", "attn_mask"];

/// The weight loader for a LION model of `cfg` over `checkpoints` (later ones win on repeated
/// keys), with LION's rules for what an upstream file holds beyond the model: recomputed buffers
/// ([`RECOMPUTED_BUFFERS`]), the ViT blocks past `cfg.vit.depth` that the config says the ViT
/// file has ([`EvaVitConfig::checkpoint_depth`]: `eva_vit_g.pth`'s 40th block), and tie aliases
/// equal to their source ([`crate::weights::TIED_KEYS`]: T5's `embed_tokens`). Anything else the
/// model does not read is an unexpected key.
pub fn checkpoint_loader(
    cfg: &LionConfig,
    checkpoints: Vec<crate::weights::Checkpoint>,
) -> crate::weights::WeightLoader {
    crate::weights::WeightLoader::new(checkpoints)
        .ignore_unexpected(RECOMPUTED_BUFFERS)
        .skip_unused(&cfg.vit.unused_checkpoint_prefixes("visual_encoder."))
}

/// The assembled model.
pub struct LionModel {
    vit: EvaVit,
    qformer: Option<QFormer>,
    aggregator: Option<VisionAggregator>,
    t5: T5ForConditionalGeneration,
    soft_prompt: Option<SoftPrompt>,
    placeholder_id: u32,
    cfg: LionConfig,
}

impl LionModel {
    /// Builds from a `VarBuilder` at the LION key root. `placeholder_id`: the tokenizer's id of
    /// `<extra_id_0>`.
    pub fn new(cfg: &LionConfig, placeholder_id: u32, vb: VarBuilder) -> Result<Self> {
        cfg.validate().map_err(|m| Error::config("LION model", m))?;
        let qformer = match &cfg.qformer {
            Some(q) => Some(QFormer::new(q, vb.clone())?),
            None => None,
        };
        let aggregator = match &cfg.aggregator {
            Some(a) => Some(VisionAggregator::new(a, vb.clone())?),
            None => None,
        };
        let soft_prompt = match cfg.prompt {
            Some(kind) => Some(SoftPrompt::new(
                kind,
                cfg.t5.d_model,
                cfg.tag_dim,
                vb.clone(),
            )?),
            None => None,
        };
        Ok(Self {
            vit: EvaVit::new(&cfg.vit, vb.pp("visual_encoder"))?,
            qformer,
            aggregator,
            t5: T5ForConditionalGeneration::new(&cfg.t5, vb.pp("t5_model"))?,
            soft_prompt,
            placeholder_id,
            cfg: cfg.clone(),
        })
    }

    pub fn config(&self) -> &LionConfig {
        &self.cfg
    }

    /// The same model (config, placeholder id) over the weights of `vb`.
    pub fn rebuilt(&self, vb: VarBuilder) -> Result<Self> {
        Self::new(&self.cfg, self.placeholder_id, vb)
    }

    pub fn t5(&self) -> &T5ForConditionalGeneration {
        &self.t5
    }

    /// The Q-Former path (ln_vision + Q-Former + t5_proj), when configured.
    pub fn qformer(&self) -> Option<&QFormer> {
        self.qformer.as_ref()
    }

    /// The vision aggregator path (aggregator + ln_adapter + adapter_proj), when configured.
    pub fn aggregator(&self) -> Option<&VisionAggregator> {
        self.aggregator.as_ref()
    }

    /// The ViT block outputs, in [`LionConfig::vit_layers`] order, each (b, n, width).
    pub fn vit_layers(&self, pixel_values: &Tensor) -> Result<Vec<Tensor>> {
        Ok(self.vit.forward(pixel_values, &self.cfg.vit_layers())?)
    }

    /// Any ViT block outputs (debugging, `lion forward --dump`): pixel_values (b, 3, img, img)
    /// -> one (b, n, width) per entry of `layers` (block indices, 0-based), in that order.
    pub fn vit_blocks(&self, pixel_values: &Tensor, layers: &[usize]) -> Result<Vec<Tensor>> {
        if let Some(bad) = layers.iter().find(|&&l| l >= self.cfg.vit.depth) {
            return Err(Error::Input(format!(
                "ViT block {bad} requested, the ViT has blocks 0..{}",
                self.cfg.vit.depth - 1
            )));
        }
        Ok(self.vit.forward(pixel_values, layers)?)
    }

    /// Visual tokens (`encode_img`): pixel_values (b, 3, img, img) and the Q-Former text
    /// -> (b, 32 + 257, d_model) for LION (fewer with one path).
    pub fn encode_image(
        &self,
        pixel_values: &Tensor,
        qformer_text: Option<&TokenBatch>,
        train: bool,
    ) -> Result<Tensor> {
        let layers = self.vit_layers(pixel_values)?;
        self.encode_layers(&layers, qformer_text, train)
    }

    /// [`Self::encode_image`] from precomputed ViT outputs (frozen ViT: cache them).
    pub fn encode_layers(
        &self,
        layers: &[Tensor],
        qformer_text: Option<&TokenBatch>,
        train: bool,
    ) -> Result<Tensor> {
        let mut parts = vec![];
        if let Some(q) = &self.qformer {
            let (ids, mask) = match qformer_text {
                Some(t) => (Some(&t.input_ids), Some(&t.attention_mask)),
                None => (None, None),
            };
            parts.push(q.forward(&layers[0], ids, mask, train)?);
        }
        if let Some(a) = &self.aggregator {
            parts.push(a.forward(&self.aggregator_sources(layers), train)?);
        }
        Ok(Tensor::cat(&parts, 1)?)
    }

    /// The aggregator's source layers, in its order, out of [`Self::vit_layers`]' outputs
    /// (empty without an aggregator).
    pub fn aggregator_sources(&self, layers: &[Tensor]) -> Vec<Tensor> {
        let wanted = self.cfg.vit_layers();
        let Some(a) = &self.aggregator else {
            return vec![];
        };
        a.config()
            .source_layers
            .iter()
            .map(|l| {
                let i = wanted
                    .iter()
                    .position(|w| w == l)
                    .expect("vit_layers has every source");
                layers[i].clone()
            })
            .collect()
    }

    /// The T5 encoder input: [visual | embedded prompt with soft-prompt rows] and its mask.
    /// visual: (b, n, d) -> ((b, n + t, d), (b, n + t) u32)
    pub fn encoder_input(
        &self,
        visual: &Tensor,
        prompt: &Encoded,
        tag_embedding: Option<&Tensor>,
    ) -> Result<(Tensor, Tensor)> {
        let (b, n, _) = visual.dims3()?;
        let mut text = self.t5.embed(&prompt.input_ids)?;
        if let Some(sp) = &self.soft_prompt {
            let rows = sp.forward(tag_embedding, b)?;
            text = insert_soft_prompt(&text, &prompt.ids, self.placeholder_id, &rows)?;
        }
        let embeds = Tensor::cat(&[&visual.to_dtype(text.dtype())?, &text], 1)?;
        let ones = Tensor::ones((b, n), DType::U32, visual.device())?;
        let mask = Tensor::cat(&[&ones, &prompt.attention_mask.to_dtype(DType::U32)?], 1)?;
        Ok((embeds, mask))
    }

    /// Training forward (`forward`): labels (b, t) with -100 for padding -> logits and loss.
    pub fn forward_train(
        &self,
        batch: &LionBatch,
        labels: &Tensor,
        train: bool,
    ) -> Result<T5Output> {
        let visual = self.encode_image(&batch.pixel_values, batch.qformer_text.as_ref(), train)?;
        self.forward_from_visual(&visual, batch, labels, train)
    }

    /// [`Self::forward_train`] from precomputed visual tokens (b, n, d).
    pub fn forward_from_visual(
        &self,
        visual: &Tensor,
        batch: &LionBatch,
        labels: &Tensor,
        train: bool,
    ) -> Result<T5Output> {
        let (embeds, mask) =
            self.encoder_input(visual, &batch.prompt, batch.tag_embedding.as_ref())?;
        self.t5.forward_train(
            T5Input::Embeds(&embeds),
            Some(&mask),
            labels,
            batch.route,
            train,
        )
    }

    /// Generation (`generate`): token ids per image, without the decoder start token.
    pub fn generate(&self, batch: &LionBatch, gen: &GenerationConfig) -> Result<Vec<Vec<u32>>> {
        let visual = self.encode_image(&batch.pixel_values, batch.qformer_text.as_ref(), false)?;
        let (embeds, mask) =
            self.encoder_input(&visual, &batch.prompt, batch.tag_embedding.as_ref())?;
        generate(
            &self.t5,
            T5Input::Embeds(&embeds),
            Some(&mask),
            batch.route,
            gen,
        )
    }
}
