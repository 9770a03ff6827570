//! RAM (Recognize Anything, `ram_swin_large_14m`): image tagging with per-tag confidence scores.
//!
//! Reference: `recognize-anything` `ram/models/ram.py` (`RAM.generate_tag`), `bert.py`
//! (`mode='tagging'`), `utils.py` (`load_checkpoint_swinlarge`). The model:
//! - `visual_encoder`: a Swin Transformer ([`crate::swin`]) -> `(b, 1 + hw, C)` (pooled token first);
//! - `image_proj`: Linear(C -> 512) on all tokens, pooled one included (no LayerNorm, nothing else);
//! - label queries: `relu(wordvec_proj(label_embed))`, `label_embed` `(num_tags, 512)`,
//!   `wordvec_proj` Linear(512 -> hidden) (identity when hidden is 512);
//! - `tagging_head`: a BERT encoder whose layers have no embeddings and no self-attention, only
//!   cross-attention to the image tokens (keys/values of width 512; mask all ones) and the FFN,
//!   both post-LN (`tagging_head.encoder.layer.{i}.{crossattention, intermediate, output}`);
//! - `fc`: Linear(hidden -> 1): one logit per tag; `sigmoid` gives the tag's probability.
//!
//! Upstream keeps tag `c` when `sigmoid(logit_c) > class_threshold[c]` (per-class thresholds from
//! `ram_tag_list_threshold.txt`; the `threshold` argument is ignored) and returns the tag names
//! only. Here every tag's probability is returned, and the kept set can be chosen by per-class
//! thresholds (the upstream default), one global threshold, or top-k ([`TagSelection`]).
//!
//! Checkpoint: `torch.load(...)["model"]`, with the head stored as `vision_multi.*` (renamed to
//! `tagging_head.*` by [`crate::weights::KEY_RENAMES`], as upstream does). Where a checkpoint has
//! no head keys under either name, the head is read from the tied `tag_encoder.encoder.layer.{i}`
//! (upstream ties the two). The Tag2Text parts (`tag_encoder`, `text_decoder`) and the Swin
//! buffers (`relative_position_index`, `attn_mask`) are known and ignored ([`RAM_IGNORED_KEYS`]).

use std::path::Path;

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use crate::bert::{linear, BertAttention, BertConfig, BertFeedForward};
use crate::convnet::{ConvNet, ConvNetConfig};
use crate::linear::Linear;
use crate::ops::Activation;
use crate::swin::{SwinConfig, SwinTransformer};
use crate::tags::ScoredTag;
use crate::weights::{Checkpoint, LoadMode, LoadReport, WeightLoader};

/// The 4585 RAM tags, one a line, in `label_embed` / logit order (`ram/data/ram_tag_list.txt`).
pub const RAM_TAG_LIST: &str = include_str!("../data/ram/ram_tag_list.txt");
/// Per-class thresholds, same order (`ram/data/ram_tag_list_threshold.txt`).
pub const RAM_TAG_THRESHOLDS: &str = include_str!("../data/ram/ram_tag_list_threshold.txt");

/// Checkpoint keys of an official RAM checkpoint that the tagger does not use (substrings).
pub const RAM_IGNORED_KEYS: &[&str] = &[
    "relative_position_index",
    "attn_mask",
    "tag_encoder.",
    "text_decoder.",
    // deleted upstream by `del_selfattention` (absent from released checkpoints, harmless if there)
    "tagging_head.embeddings.",
    "tagging_head.pooler.",
    // PyTorch BatchNorm's step counter (the world tagger's CNN; unused with a fixed momentum)
    "num_batches_tracked",
];

fn default_head_heads() -> usize {
    4
}
fn default_head_layers() -> usize {
    2
}
fn default_head_eps() -> f64 {
    1e-12
}
fn default_label_dim() -> usize {
    512
}

/// The tagging head (`configs/q2l_config.json`, with `encoder_width = 512`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaggingHeadConfig {
    pub hidden_size: usize,
    #[serde(default = "default_head_heads")]
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "default_head_layers")]
    pub num_hidden_layers: usize,
    #[serde(default = "default_head_eps")]
    pub layer_norm_eps: f64,
}

impl TaggingHeadConfig {
    /// RAM's: hidden 768, 4 heads, FFN 3072, 2 layers.
    pub fn ram() -> Self {
        Self {
            hidden_size: 768,
            num_attention_heads: 4,
            intermediate_size: 3072,
            num_hidden_layers: 2,
            layer_norm_eps: 1e-12,
        }
    }

    fn bert(&self) -> BertConfig {
        BertConfig {
            vocab_size: 0,
            hidden_size: self.hidden_size,
            num_hidden_layers: self.num_hidden_layers,
            num_attention_heads: self.num_attention_heads,
            intermediate_size: self.intermediate_size,
            hidden_act: Activation::Gelu,
            hidden_dropout_prob: 0.1,
            attention_probs_dropout_prob: 0.1,
            max_position_embeddings: 0,
            type_vocab_size: 0,
            layer_norm_eps: self.layer_norm_eps,
            pad_token_id: 0,
            position_embedding_type: "absolute".into(),
        }
    }
}

/// RAM sizes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RamConfig {
    pub swin: SwinConfig,
    pub num_tags: usize,
    pub head: TaggingHeadConfig,
    /// Width of `label_embed`, of `image_proj`'s output and of the head's keys/values (512 in RAM,
    /// hard-coded upstream).
    #[serde(default = "default_label_dim")]
    pub label_dim: usize,
    /// When set, the visual encoder is this BatchNorm CNN ([`crate::convnet`]) instead of the
    /// Swin, and `swin` is not used (the world tagger; RAM itself: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub convnet: Option<ConvNetConfig>,
}

impl RamConfig {
    /// `ram_swin_large_14m`: Swin-L 384, 4585 tags.
    pub fn swin_l() -> Self {
        Self {
            swin: SwinConfig::swin_l_384(),
            num_tags: 4585,
            head: TaggingHeadConfig::ram(),
            label_dim: 512,
            convnet: None,
        }
    }

    /// A tiny RAM over the full 4585-tag vocabulary (smoke tests, benchmarks): tiny Swin at 64 px,
    /// head hidden 64. With `num_tags` other than 4585 use [`RamConfig::tiny_with_tags`].
    pub fn tiny() -> Self {
        Self::tiny_with_tags(4585)
    }

    pub fn tiny_with_tags(num_tags: usize) -> Self {
        Self {
            swin: SwinConfig::tiny(),
            num_tags,
            head: TaggingHeadConfig {
                hidden_size: 64,
                num_attention_heads: 4,
                intermediate_size: 128,
                num_hidden_layers: 2,
                layer_norm_eps: 1e-12,
            },
            label_dim: 512,
            convnet: None,
        }
    }

    /// `tiny`, `swin-l` (also `ram_swin_large_14m`), or a JSON file of this struct.
    pub fn from_name_or_file(spec: &str) -> crate::Result<Self> {
        let cfg = match spec {
            "tiny" => Self::tiny(),
            "swin-l" | "swin_l" | "ram_swin_large_14m" => Self::swin_l(),
            path => crate::util::read_json(path)?,
        };
        cfg.validate().map_err(|m| crate::Error::config(spec, m))?;
        Ok(cfg)
    }

    /// Input side in pixels of the visual encoder.
    pub fn img_size(&self) -> usize {
        match &self.convnet {
            Some(c) => c.img_size,
            None => self.swin.img_size,
        }
    }

    /// Input channels of the visual encoder.
    pub fn in_chans(&self) -> usize {
        match &self.convnet {
            Some(c) => c.in_chans,
            None => self.swin.in_chans,
        }
    }

    /// Width of the visual encoder's tokens (`image_proj`'s input).
    pub fn num_features(&self) -> usize {
        match &self.convnet {
            Some(c) => c.num_features(),
            None => self.swin.num_features(),
        }
    }

    pub fn validate(&self) -> std::result::Result<(), String> {
        match &self.convnet {
            Some(c) => c.validate()?,
            None => self.swin.validate()?,
        }
        let h = &self.head;
        if h.num_attention_heads == 0 || h.hidden_size % h.num_attention_heads != 0 {
            return Err(format!(
                "head.hidden_size {} is not divisible by head.num_attention_heads {}",
                h.hidden_size, h.num_attention_heads
            ));
        }
        if self.num_tags == 0 || self.label_dim == 0 {
            return Err("num_tags and label_dim must be > 0".into());
        }
        Ok(())
    }
}

/// One layer of the tagging head: cross-attention + FFN (no self-attention).
#[derive(Debug, Clone)]
struct TaggingLayer {
    crossattention: BertAttention,
    ffn: BertFeedForward,
}

impl TaggingLayer {
    fn new(cfg: &BertConfig, kv_dim: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            crossattention: BertAttention::new(cfg, kv_dim, vb.pp("crossattention"))?,
            ffn: BertFeedForward::new(cfg, vb.pp("intermediate"), vb.pp("output"))?,
        })
    }

    /// queries: (b, tags, hidden); image: (b, tokens, kv_dim) -> (b, tags, hidden)
    fn forward(&self, queries: &Tensor, image: &Tensor, train: bool) -> Result<Tensor> {
        let h = self
            .crossattention
            .forward(queries, Some(image), None, train)?;
        self.ffn.forward(&h, train)
    }
}

/// Images per pass through the tagging head in [`Ram::forward`].
const HEAD_CHUNK: usize = 4;

/// RAM's visual encoder: its Swin, or the world tagger's CNN.
#[derive(Debug, Clone)]
enum VisualEncoder {
    Swin(SwinTransformer),
    ConvNet(ConvNet),
}

/// The RAM tagger.
#[derive(Debug, Clone)]
pub struct Ram {
    visual_encoder: VisualEncoder,
    image_proj: Linear,
    label_embed: Tensor,
    wordvec_proj: Option<Linear>,
    tagging_head: Vec<TaggingLayer>,
    fc: Linear,
    cfg: RamConfig,
}

impl Ram {
    /// Builds RAM from a `VarBuilder` rooted at the checkpoint's top level.
    pub fn new(cfg: &RamConfig, vb: VarBuilder) -> crate::Result<Self> {
        cfg.validate().map_err(|m| crate::Error::config("ram", m))?;
        let visual_encoder = match &cfg.convnet {
            Some(c) => VisualEncoder::ConvNet(ConvNet::new(c, vb.pp("visual_encoder"))?),
            None => VisualEncoder::Swin(SwinTransformer::new(&cfg.swin, vb.pp("visual_encoder"))?),
        };
        let h = cfg.head.hidden_size;
        let d = cfg.label_dim;
        let wordvec_proj = if h != d {
            Some(linear(d, h, vb.pp("wordvec_proj"))?)
        } else {
            None
        };
        let label_embed = vb.get_with_hints(
            (cfg.num_tags, d),
            "label_embed",
            candle_nn::Init::Randn {
                mean: 0.,
                stdev: 1.,
            },
        )?;
        // The head's weights live under `tagging_head` (`vision_multi` in the file); upstream ties
        // them to `tag_encoder.encoder.layer.{0,1}`, which some checkpoints may carry instead.
        let probe = "tagging_head.encoder.layer.0.crossattention.self.query.weight";
        let tied = "tag_encoder.encoder.layer.0.crossattention.self.query.weight";
        let head_vb = if !vb.contains_tensor(probe) && vb.contains_tensor(tied) {
            tracing::info!("RAM: tagging head read from the tied tag_encoder layers");
            vb.pp("tag_encoder")
        } else {
            vb.pp("tagging_head")
        };
        let bert = cfg.head.bert();
        let tagging_head = (0..cfg.head.num_hidden_layers)
            .map(|i| TaggingLayer::new(&bert, d, head_vb.pp(format!("encoder.layer.{i}"))))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            visual_encoder,
            image_proj: linear(cfg.num_features(), d, vb.pp("image_proj"))?,
            label_embed,
            wordvec_proj,
            tagging_head,
            fc: linear(h, 1, vb.pp("fc"))?,
            cfg: cfg.clone(),
        })
    }

    /// Loads a RAM checkpoint (`.pth` with `{"model": ...}` or safetensors), strictly: every key
    /// the model needs must be there with its shape, and every other key must be a known unused
    /// one ([`RAM_IGNORED_KEYS`]).
    pub fn load(
        cfg: &RamConfig,
        path: impl AsRef<Path>,
        dev: &Device,
    ) -> crate::Result<(Self, LoadReport)> {
        let ckpt = Checkpoint::open(path)?;
        let loader = WeightLoader::new(vec![ckpt]).ignore_unexpected(RAM_IGNORED_KEYS);
        let model = Self::new(cfg, loader.var_builder(DType::F32, dev))?;
        let report = loader.finish(LoadMode::Strict)?;
        Ok((model, report))
    }

    /// A RAM of the sizes `config` names (`swin-l`, `tiny` or a RamConfig JSON file), from the
    /// checkpoint `weights`, or with random weights (warned) when None: drawn from `init_seed`
    /// when given (the same weights on every run), else unseeded.
    pub fn from_spec(
        weights: Option<&Path>,
        config: &str,
        init_seed: Option<u64>,
        dev: &Device,
    ) -> crate::Result<Self> {
        let cfg = RamConfig::from_name_or_file(config)?;
        match weights {
            Some(w) => {
                let (model, report) = Self::load(&cfg, w, dev)?;
                tracing::info!("loaded {}: {report}", w.display());
                Ok(model)
            }
            None => {
                tracing::warn!("random weights: the tags mean nothing");
                Self::random_seeded(&cfg, init_seed, dev)
            }
        }
    }

    /// A randomly initialised RAM (smoke tests, benchmarks), unseeded.
    pub fn random(cfg: &RamConfig, dev: &Device) -> crate::Result<Self> {
        Self::random_seeded(cfg, None, dev)
    }

    /// A randomly initialised RAM drawn from `seed` (the same weights on every run), or
    /// unseeded when None.
    pub fn random_seeded(cfg: &RamConfig, seed: Option<u64>, dev: &Device) -> crate::Result<Self> {
        let loader = match seed {
            Some(s) => WeightLoader::random().with_init_seed(s),
            None => WeightLoader::random(),
        };
        Self::new(cfg, loader.var_builder(DType::F32, dev))
    }

    pub fn config(&self) -> &RamConfig {
        &self.cfg
    }

    /// images: (b, 3, img, img) -> (b, 1 + hw, C): the visual encoder's features (before
    /// `image_proj`), at inference.
    pub fn image_features(&self, images: &Tensor) -> Result<Tensor> {
        self.image_features_t(images, false)
    }

    /// [`Ram::image_features`]; `train` runs the CNN's BatchNorm on batch statistics and updates
    /// the running ones (the Swin has no such state and ignores it).
    pub fn image_features_t(&self, images: &Tensor, train: bool) -> Result<Tensor> {
        match &self.visual_encoder {
            VisualEncoder::Swin(s) => s.forward(images),
            VisualEncoder::ConvNet(c) => c.forward_t(images, train),
        }
    }

    /// The label queries: `relu(wordvec_proj(label_embed))`, (num_tags, hidden).
    pub fn label_queries(&self) -> Result<Tensor> {
        let q = match &self.wordvec_proj {
            Some(p) => p.forward(&self.label_embed)?,
            None => self.label_embed.clone(),
        };
        q.relu()
    }

    /// images: (b, 3, img, img), normalised -> logits (b, num_tags). `train`: dropout in the
    /// head (BatchNorm stays on its running statistics; see [`Ram::forward_training`]).
    pub fn forward(&self, images: &Tensor, train: bool) -> Result<Tensor> {
        let feats = self.image_features(images)?;
        self.head(&feats, train)
    }

    /// The world tagger's training forward: BatchNorm on the batch's statistics (updating the
    /// running ones), no dropout. images: (b, 3, img, img) -> logits (b, num_tags)
    pub fn forward_training(&self, images: &Tensor) -> Result<Tensor> {
        let feats = self.image_features_t(images, true)?;
        self.head(&feats, false)
    }

    /// feats: (b, 1 + hw, C) -> logits (b, num_tags)
    fn head(&self, feats: &Tensor, train: bool) -> Result<Tensor> {
        let image = self.image_proj.forward(feats)?;
        let b = image.dim(0)?;
        let q = self.label_queries()?;
        let (t, h) = q.dims2()?;
        // The head's activations are (images, num_tags, hidden) and larger: run it a few images at
        // a time so they stay small (same result; measured faster than one big batch).
        let mut logits = Vec::with_capacity(b.div_ceil(HEAD_CHUNK));
        for start in (0..b).step_by(HEAD_CHUNK) {
            let n = HEAD_CHUNK.min(b - start);
            let img = image.narrow(0, start, n)?;
            let mut xs = q.unsqueeze(0)?.broadcast_as((n, t, h))?.contiguous()?;
            for layer in &self.tagging_head {
                xs = layer.forward(&xs, &img, train)?;
            }
            logits.push(self.fc.forward(&xs)?.squeeze(2)?);
        }
        Tensor::cat(&logits, 0)
    }

    /// images: (b, 3, img, img) -> per-tag probabilities `sigmoid(logits)`, (b, num_tags)
    pub fn probabilities(&self, images: &Tensor) -> Result<Tensor> {
        candle_nn::ops::sigmoid(&self.forward(images, false)?)
    }
}

/// The tag vocabulary with per-class thresholds.
#[derive(Debug, Clone, PartialEq)]
pub struct TagVocab {
    pub tags: Vec<String>,
    pub thresholds: Vec<f32>,
}

impl TagVocab {
    /// RAM's 4585 tags and thresholds (embedded in the binary).
    pub fn ram() -> Self {
        Self::parse(RAM_TAG_LIST, RAM_TAG_THRESHOLDS, "embedded RAM tag list")
            .expect("the embedded RAM tag list is valid")
    }

    /// Parses a tag list (one a line) and a threshold list (one number a line), same length.
    pub fn parse(tags: &str, thresholds: &str, origin: &str) -> crate::Result<Self> {
        let tags: Vec<String> = tags
            .lines()
            .map(|l| l.trim_end_matches('\r').to_string())
            .collect();
        let thresholds = thresholds
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| {
                l.trim().parse::<f32>().map_err(|e| {
                    crate::Error::config(origin, format!("threshold line {}: `{l}`: {e}", i + 1))
                })
            })
            .collect::<crate::Result<Vec<_>>>()?;
        if tags.len() != thresholds.len() {
            return Err(crate::Error::config(
                origin,
                format!("{} tags but {} thresholds", tags.len(), thresholds.len()),
            ));
        }
        Ok(Self { tags, thresholds })
    }

    /// Reads a tag list file and a threshold file.
    pub fn from_files(tags: &Path, thresholds: &Path) -> crate::Result<Self> {
        let t = std::fs::read_to_string(tags).map_err(|e| crate::Error::io(tags, e))?;
        let th =
            std::fs::read_to_string(thresholds).map_err(|e| crate::Error::io(thresholds, e))?;
        Self::parse(&t, &th, &tags.display().to_string())
    }

    /// Tags `t0 .. t{n-1}` with one threshold (tests, random models with fewer tags).
    pub fn synthetic(n: usize, threshold: f32) -> Self {
        Self {
            tags: (0..n).map(|i| format!("tag{i}")).collect(),
            thresholds: vec![threshold; n],
        }
    }

    /// The vocabulary of a model with `num_tags` tags: the given (tag list, thresholds) files,
    /// else RAM's own for 4585 tags, else synthetic names `tag0..` with threshold 0.68 (warned).
    pub fn for_model(files: Option<(&Path, &Path)>, num_tags: usize) -> crate::Result<Self> {
        if let Some((t, th)) = files {
            return Self::from_files(t, th);
        }
        if num_tags == RAM_TAG_LIST.lines().count() {
            return Ok(Self::ram());
        }
        tracing::warn!(
            "the model has {num_tags} tags, not RAM's 4585: naming them tag0..tag{} (threshold 0.68); give --tags/--thresholds for real names",
            num_tags.saturating_sub(1)
        );
        Ok(Self::synthetic(num_tags, 0.68))
    }

    pub fn len(&self) -> usize {
        self.tags.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tags.is_empty()
    }
}

/// Which tags are kept.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TagSelection {
    /// `p > class_threshold[c]` (upstream RAM, and LION).
    ClassThreshold,
    /// `p > t` for every tag.
    Threshold(f32),
    /// The `k` most probable tags (ties broken by tag index).
    TopK(usize),
}

/// Order of the kept tags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TagOrder {
    /// Tag-list order (as upstream RAM returns them and LION puts them in its prompt).
    Index,
    /// Highest probability first (ties by tag index).
    Score,
}

/// A kept tag: its name and probability, and its index in the vocabulary.
#[derive(Debug, Clone, PartialEq)]
pub struct KeptTag {
    pub scored: ScoredTag,
    pub index: usize,
}

/// Chooses the kept tags from one image's probabilities.
pub fn select_tags(
    probs: &[f32],
    vocab: &TagVocab,
    selection: TagSelection,
    order: TagOrder,
) -> crate::Result<Vec<KeptTag>> {
    if probs.len() != vocab.len() {
        crate::input_err!(
            "{} probabilities for a vocabulary of {} tags",
            probs.len(),
            vocab.len()
        );
    }
    let by_score = |a: &usize, b: &usize| probs[*b].total_cmp(&probs[*a]).then(a.cmp(b));
    let mut kept: Vec<usize> = match selection {
        TagSelection::ClassThreshold => (0..probs.len())
            .filter(|&i| probs[i] > vocab.thresholds[i])
            .collect(),
        TagSelection::Threshold(t) => (0..probs.len()).filter(|&i| probs[i] > t).collect(),
        TagSelection::TopK(k) => {
            let mut all: Vec<usize> = (0..probs.len()).collect();
            all.sort_by(by_score);
            all.truncate(k);
            all
        }
    };
    match order {
        TagOrder::Index => kept.sort_unstable(),
        TagOrder::Score => kept.sort_by(by_score),
    }
    Ok(kept
        .into_iter()
        .map(|i| KeptTag {
            scored: ScoredTag::new(vocab.tags[i].clone(), probs[i]),
            index: i,
        })
        .collect())
}

/// LION's tag string: `"a, b, c"` (upstream joins RAM's `" | "` output and replaces `" |"` by `","`).
pub fn format_tags(tags: &[KeptTag]) -> String {
    tags.iter()
        .map(|t| t.scored.tag.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Dynamic LION's tag-and-score string: `"a: 0.93, b: 0.71"`; `decimals: None` writes each score
/// in full (shortest round-trip form of the f32).
pub fn format_tags_with_scores(tags: &[KeptTag], decimals: Option<usize>) -> String {
    tags.iter()
        .map(|KeptTag { scored: t, .. }| match decimals {
            Some(d) => format!("{}: {:.*}", t.tag, d, t.score),
            None => format!("{}: {}", t.tag, t.score),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// RAM's input normalisation (ImageNet mean / std).
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// Loads one image for RAM: RGB, resized to `size x size` (triangle filter, antialiased when
/// shrinking, like PIL's bilinear), scaled to [0, 1] and normalised with ImageNet mean / std.
/// Returns (3, size, size) f32.
///
/// A stand-in until `preprocess.rs` (the shared RAM / LION transforms) lands; callers go through
/// this one function so it can be swapped.
pub fn load_image(path: &Path, size: usize, dev: &Device) -> crate::Result<Tensor> {
    let img = image::ImageReader::open(path)
        .map_err(|e| crate::Error::io(path, e))?
        .with_guessed_format()
        .map_err(|e| crate::Error::io(path, e))?
        .decode()
        .map_err(|e| crate::Error::format(path, format!("cannot decode image: {e}")))?;
    let rgb = image::imageops::resize(
        &img.to_rgb8(),
        size as u32,
        size as u32,
        image::imageops::FilterType::Triangle,
    );
    let n = size * size;
    let mut data = vec![0f32; 3 * n];
    for (i, p) in rgb.pixels().enumerate() {
        for c in 0..3 {
            data[c * n + i] = (p.0[c] as f32 / 255.0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c];
        }
    }
    Ok(Tensor::from_vec(data, (3, size, size), dev)?)
}

/// One image's result: every tag's probability and the kept tags.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageTags {
    pub probs: Vec<f32>,
    pub tags: Vec<KeptTag>,
}

/// A RAM model with its vocabulary: tags images in batches.
pub struct Tagger {
    pub model: Ram,
    pub vocab: TagVocab,
    pub selection: TagSelection,
    pub order: TagOrder,
    device: Device,
}

impl Tagger {
    pub fn new(model: Ram, vocab: TagVocab, device: Device) -> crate::Result<Self> {
        if vocab.len() != model.config().num_tags {
            return Err(crate::Error::config(
                "tagger",
                format!(
                    "the model has {} tags but the vocabulary {}",
                    model.config().num_tags,
                    vocab.len()
                ),
            ));
        }
        Ok(Self {
            model,
            vocab,
            selection: TagSelection::ClassThreshold,
            order: TagOrder::Index,
            device,
        })
    }

    /// A tagger as LION uses it (per-class thresholds, tag-list order), RAM's tag list or
    /// synthetic names ([`TagVocab::for_model`]); see [`Ram::from_spec`].
    pub fn from_spec(
        weights: Option<&Path>,
        config: &str,
        init_seed: Option<u64>,
        dev: &Device,
    ) -> crate::Result<Self> {
        let model = Ram::from_spec(weights, config, init_seed, dev)?;
        let vocab = TagVocab::for_model(None, model.config().num_tags)?;
        Self::new(model, vocab, dev.clone())
    }

    /// Tags decoded images with RAM's transform (`ImageTransform::ram` at the model's size), as
    /// `lion serve` tags the images of LION requests: the kept tags with their scores.
    pub fn tag_images(&self, images: &[image::RgbImage]) -> crate::Result<Vec<Vec<(String, f32)>>> {
        if images.is_empty() {
            return Ok(vec![]);
        }
        let transform = crate::preprocess::ImageTransform {
            size: self.model.config().img_size() as u32,
            ..crate::preprocess::ImageTransform::ram()
        };
        let x = transform.apply_batch(images, &self.device)?;
        Ok(self
            .tag_tensor(&x)?
            .into_iter()
            .map(|r| r.tags.into_iter().map(|t| t.scored.into_pair()).collect())
            .collect())
    }

    /// Tags preprocessed images: (b, 3, img, img) -> one result per image.
    pub fn tag_tensor(&self, images: &Tensor) -> crate::Result<Vec<ImageTags>> {
        let probs = self.model.probabilities(images)?.to_vec2::<f32>()?;
        probs
            .into_iter()
            .map(|p| {
                let tags = select_tags(&p, &self.vocab, self.selection, self.order)?;
                Ok(ImageTags { probs: p, tags })
            })
            .collect()
    }

    /// Tags image files in one batched forward. An image that cannot be read gives its error in
    /// its slot; the others are tagged.
    pub fn tag_files(&self, paths: &[&Path]) -> crate::Result<Vec<crate::Result<ImageTags>>> {
        let size = self.model.config().img_size();
        let loaded: Vec<crate::Result<Tensor>> = paths
            .iter()
            .map(|p| load_image(p, size, &self.device))
            .collect();
        let good: Vec<&Tensor> = loaded.iter().filter_map(|r| r.as_ref().ok()).collect();
        let mut results = if good.is_empty() {
            vec![]
        } else {
            self.tag_tensor(&Tensor::stack(&good, 0)?)?
        }
        .into_iter();
        Ok(loaded
            .into_iter()
            .map(|r| match r {
                Ok(_) => Ok(results.next().expect("one result per good image")),
                Err(e) => Err(e),
            })
            .collect())
    }
}
