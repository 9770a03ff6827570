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
use crate::generate::GenerationConfig;
use crate::prompt::{insert_soft_prompt, PromptKind, PromptTemplates, SoftPrompt};
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

    /// Checks every part (sizes, epsilons, dropouts) and that the parts fit each other, naming
    /// the field, its value and the rule; also that the weight count fits in 64 bits.
    pub fn validate(&self) -> crate::rules::Check {
        use crate::rules::{all_positive, Invalid};
        self.vit.validate().map_err(|e| e.within("vit"))?;
        self.t5.validate().map_err(|e| e.within("t5"))?;
        all_positive(&[
            ("max_txt_len", self.max_txt_len),
            ("max_output_txt_len", self.max_output_txt_len),
        ])?;
        if self.prompt.is_some_and(|p| p.needs_tag_embedding()) {
            crate::rules::positive("tag_dim", self.tag_dim)?;
        }
        if let Some(p) = self.prompt {
            crate::rules::positive("prompt.k", p.slots())?;
        }
        let d = self.t5.d_model;
        if self.qformer.is_none() && self.aggregator.is_none() {
            return Err(Invalid::new(
                "qformer, aggregator",
                "null, null",
                "at least one of them is needed",
            ));
        }
        if let Some(q) = &self.qformer {
            q.validate().map_err(|e| e.within("qformer"))?;
            if q.encoder_width != self.vit.width {
                return Err(Invalid::new(
                    "qformer.encoder_width",
                    q.encoder_width,
                    format!("must equal vit.width ({})", self.vit.width),
                ));
            }
            if q.d_model != d {
                return Err(Invalid::new(
                    "qformer.d_model",
                    q.d_model,
                    format!("must equal t5.d_model ({d})"),
                ));
            }
        }
        if let Some(a) = &self.aggregator {
            a.validate().map_err(|e| e.within("aggregator"))?;
            if a.width != self.vit.width {
                return Err(Invalid::new(
                    "aggregator.width",
                    a.width,
                    format!("must equal vit.width ({})", self.vit.width),
                ));
            }
            if a.d_model != d {
                return Err(Invalid::new(
                    "aggregator.d_model",
                    a.d_model,
                    format!("must equal t5.d_model ({d})"),
                ));
            }
            if let Some(bad) = a.source_layers.iter().find(|&&l| l >= self.vit.depth) {
                return Err(Invalid::new(
                    "aggregator.source_layers",
                    bad,
                    format!("must name a ViT block below vit.depth ({})", self.vit.depth),
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
                return Err(Invalid::new(
                    "t5.adapter.num_adapters",
                    a.num_adapters,
                    format!("{:?} needs {want}", self.visual_input()),
                ))
            }
            None => {
                return Err(Invalid::new(
                    "t5.adapter",
                    "null",
                    "LION puts adapters in every FFN",
                ))
            }
        }
        self.param_count()?;
        Ok(())
    }

    /// Weights of the model (the large matrices and embeddings; biases and norms are a rounding
    /// error), with checked arithmetic: an overflow names the part.
    pub fn param_count(&self) -> std::result::Result<u64, crate::rules::Invalid> {
        use crate::rules::product;
        let add = |parts: &[u64], field: &str| {
            parts
                .iter()
                .try_fold(0u64, |a, &b| a.checked_add(b))
                .ok_or_else(|| {
                    crate::rules::Invalid::new(field, "", "the weight count overflows 64 bits")
                })
        };
        let v = &self.vit;
        let vit_block = add(
            &[
                product("vit.width", &[4, v.width, v.width])?,
                product("vit.mlp_dim", &[2, v.width, v.mlp_dim])?,
            ],
            "vit",
        )?;
        let vit = add(
            &[
                product(
                    "vit.patch_size",
                    &[v.in_chans, v.patch_size, v.patch_size, v.width],
                )?,
                product("vit.img_size", &[v.num_tokens(), v.width])?,
                product("vit.depth", &[v.depth])?
                    .checked_mul(vit_block)
                    .ok_or_else(|| {
                        crate::rules::Invalid::new(
                            "vit.depth",
                            v.depth,
                            "the weight count overflows",
                        )
                    })?,
            ],
            "vit",
        )?;
        let t = &self.t5;
        let ff = if t.feed_forward_proj.starts_with("gated") {
            3
        } else {
            2
        };
        let attn = product("t5.num_heads", &[4, t.d_model, t.num_heads, t.d_kv])?;
        let ffn = product("t5.d_ff", &[ff, t.d_model, t.d_ff])?;
        let enc = product("t5.num_layers", &[t.num_layers])?.checked_mul(attn.saturating_add(ffn));
        let dec = product("t5.num_decoder_layers", &[t.num_decoder_layers()])?
            .checked_mul(attn.saturating_mul(2).saturating_add(ffn));
        let heads = if t.tie_word_embeddings { 1 } else { 2 };
        let t5 = add(
            &[
                product("t5.vocab_size", &[heads, t.vocab_size, t.d_model])?,
                enc.ok_or_else(|| {
                    crate::rules::Invalid::new(
                        "t5.num_layers",
                        t.num_layers,
                        "the weight count overflows",
                    )
                })?,
                dec.ok_or_else(|| {
                    crate::rules::Invalid::new(
                        "t5.num_decoder_layers",
                        t.num_decoder_layers(),
                        "the weight count overflows",
                    )
                })?,
            ],
            "t5",
        )?;
        let mut parts = vec![vit, t5];
        if let Some(q) = &self.qformer {
            let b = &q.bert;
            let h = b.hidden_size;
            let layer = add(
                &[
                    product("qformer.bert.hidden_size", &[4, h, h])?,
                    product(
                        "qformer.bert.intermediate_size",
                        &[4, h, b.intermediate_size],
                    )?,
                    product("qformer.encoder_width", &[2, h, q.encoder_width])?,
                    product("qformer.bert.hidden_size", &[2, h, h])?,
                ],
                "qformer",
            )?;
            parts.push(product("qformer.bert.vocab_size", &[b.vocab_size, h])?);
            parts.push(product(
                "qformer.bert.max_position_embeddings",
                &[b.max_position_embeddings, h],
            )?);
            parts.push(
                product("qformer.bert.num_hidden_layers", &[b.num_hidden_layers])?
                    .checked_mul(layer)
                    .ok_or_else(|| {
                        crate::rules::Invalid::new(
                            "qformer.bert.num_hidden_layers",
                            b.num_hidden_layers,
                            "the weight count overflows",
                        )
                    })?,
            );
            parts.push(product("qformer.d_model", &[h, q.d_model])?);
            parts.push(product("qformer.num_query_token", &[q.num_query_token, h])?);
        }
        if let Some(a) = &self.aggregator {
            let w = a.width;
            let block = add(
                &[
                    product("aggregator.width", &[8, w, w])?,
                    product("aggregator.intermediate_size", &[2, w, a.intermediate_size])?,
                ],
                "aggregator",
            )?;
            parts.push(
                product("aggregator.num_blocks", &[a.num_blocks])?
                    .checked_mul(block)
                    .ok_or_else(|| {
                        crate::rules::Invalid::new(
                            "aggregator.num_blocks",
                            a.num_blocks,
                            "the weight count overflows",
                        )
                    })?,
            );
            parts.push(product("aggregator.proj_hidden", &[a.proj_hidden, w])?);
            parts.push(product(
                "aggregator.proj_hidden",
                &[a.proj_hidden, a.d_model],
            )?);
        }
        if self.prompt.is_some_and(|p| p.needs_tag_embedding()) {
            parts.push(product("tag_dim", &[self.tag_dim, t.d_model])?);
        }
        if let Some(p) = self.prompt {
            parts.push(product("prompt", &[p.slots(), t.d_model])?);
        }
        parts.push(product(
            "t5.relative_attention_num_buckets",
            &[2, t.relative_attention_num_buckets, t.num_heads],
        )?);
        if let Some(q) = &self.qformer {
            parts.push(product(
                "qformer.bert.type_vocab_size",
                &[q.bert.type_vocab_size, q.bert.hidden_size],
            )?);
        }
        add(&parts, "config")
    }

    /// Rough bytes of an inference (`training` false) or training step over `batch` images: the
    /// weights (f32 for training; inference in the current `--dtype` / `--quantize`) plus the activations: per sample, every ViT block's token stream and attention scores, and the T5
    /// stream over the visual tokens and text. An estimate to refuse hopeless runs early, not an
    /// accounting.
    pub fn memory_estimate(
        &self,
        batch: usize,
        training: bool,
    ) -> std::result::Result<u64, crate::rules::Invalid> {
        // In f64: an estimate, and no product can overflow.
        let f = |x: usize| x as f64;
        let weights = self.param_count()? as f64;
        let t = &self.t5;
        let per_sample = self.activations_per_sample(training);
        // Weights as the current settings store them ([`crate::linear::bytes_per_weight`]:
        // `--dtype`, `--quantize`): the T5 embedding and LM head are never quantized.
        let (bpw, dense) = if training {
            (4.0, 4.0)
        } else {
            (
                crate::linear::bytes_per_weight(),
                crate::linear::dense_bytes_per_weight(),
            )
        };
        let heads = if t.tie_word_embeddings { 1.0 } else { 2.0 };
        let embed = (heads * f(t.vocab_size) * f(t.d_model)).min(weights);
        let total = bpw * (weights - embed) + dense * embed + 4.0 * per_sample * f(batch);
        Ok(if total >= u64::MAX as f64 {
            u64::MAX
        } else {
            total as u64
        })
    }

    /// Activation values kept per sample (see [`Self::memory_estimate`]).
    fn activations_per_sample(&self, training: bool) -> f64 {
        let f = |x: usize| x as f64;
        let v = &self.vit;
        let n = f(v.grid()) * f(v.grid()) + 1.0;
        let vit_layer = n * (4.0 * f(v.width) + f(v.mlp_dim)) + f(v.num_heads) * n * n;
        let t = &self.t5;
        let s = f(self.qformer.as_ref().map_or(0, |q| q.num_query_token))
            + if self.aggregator.is_some() { n } else { 0.0 }
            + f(self.max_txt_len);
        let t5_layer = s * (4.0 * f(t.d_model) + f(t.d_ff)) + f(t.num_heads) * s * s;
        // Training keeps every layer's activations for the backward pass; inference one at a time.
        let layers = if training {
            f(v.depth) + f(t.num_layers) + f(t.num_decoder_layers())
        } else {
            2.0
        };
        let logits = f(t.vocab_size)
            * if training {
                f(self.max_output_txt_len)
            } else {
                8.0
            };
        (vit_layer + t5_layer) * layers + logits
    }

    /// The check a loaded model makes before running `batch` requests at once: their activations
    /// (f32) against the memory still available, the weights being resident already.
    pub fn check_batch_memory(&self, batch: usize) -> crate::rules::Check {
        let need = 4.0 * self.activations_per_sample(false) * batch as f64;
        crate::rules::check_memory(
            &format!("activation memory (batch {batch})"),
            need.min(u64::MAX as f64) as u64,
        )
    }

    /// [`crate::rules::check_memory`] of [`Self::memory_estimate`].
    pub fn check_memory(&self, batch: usize, training: bool) -> crate::rules::Check {
        let need = self.memory_estimate(batch, training)?;
        let what = if training {
            format!("training memory (batch_size {batch})")
        } else {
            format!("model memory (batch {batch})")
        };
        crate::rules::check_memory(&what, need)
    }
}

/// One batch of prepared inputs (made by [`crate::pipeline::LionPipeline::prepare`]).
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
        self.generate_streaming(batch, gen, None)
    }

    /// [`Self::generate`] with a per-step callback ([`crate::generate::OnStep`]: greedy search
    /// and sampling only).
    pub fn generate_streaming(
        &self,
        batch: &LionBatch,
        gen: &GenerationConfig,
        on_step: Option<crate::generate::OnStep>,
    ) -> Result<Vec<Vec<u32>>> {
        let visual = self.encode_image(&batch.pixel_values, batch.qformer_text.as_ref(), false)?;
        let (embeds, mask) =
            self.encoder_input(&visual, &batch.prompt, batch.tag_embedding.as_ref())?;
        crate::generate::generate_streaming(
            &self.t5,
            T5Input::Embeds(&embeds),
            Some(&mask),
            batch.route,
            gen,
            on_step,
        )
    }
}
