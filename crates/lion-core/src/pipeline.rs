//! Requests in, answers out: image preprocessing, prompt text, tokenization, tag embeddings,
//! batching by route, generation, decoding and REC box parsing around a [`LionModel`].
//!
//! A model folder is described by a manifest, `lion.json` (paths relative to it):
//!
//! ```json
//! {
//!   "config": "lion-4b",            // a preset name, or a full LionConfig object
//!   "prompt": {"kind": "static"},   // with a preset: static | dynamic | gated (k) | null (no tags)
//!   "weights": [
//!     {"file": "eva_vit_g.pth", "prefix": "visual_encoder."},
//!     {"file": "flan-t5-xl", "prefix": "t5_model."},
//!     {"file": "LION-FlanT5-XL.pth"}
//!   ],
//!   "t5_tokenizer": "flan-t5-xl/tokenizer.json",
//!   "qformer_tokenizer": "bert-base-uncased/tokenizer.json",
//!   "tag_encoder": "all-MiniLM-L6-v2"
//! }
//! ```
//! A tokenizer or tag-encoder entry that is no path in the folder but a Hub id
//! (`"sentence-transformers/all-MiniLM-L6-v2"`) is looked up as [`crate::hub`] describes.
//! A weight entry may name a file or a folder (every `*.safetensors` in it, for sharded
//! checkpoints). Later entries win on repeated keys. Loading is strict unless asked otherwise:
//! every missing, unexpected or mis-shaped key is named.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use image::RgbImage;
use serde::{Deserialize, Serialize};

use crate::adapter::Route;
use crate::generate::GenerationConfig;
use crate::lion::{LionBatch, LionConfig, LionModel};
use crate::preprocess::ImageTransform;
use crate::prompt::{format_tag_scores, format_tags, PromptKind, Task};
use crate::sentence::{BertTokenizer, SentenceEmbedder};
use crate::text::T5Tokenizer;
use crate::weights::{Checkpoint, LoadMode, LoadReport};
use crate::{Error, Result};

/// One request: a task, its text (question or expression; empty for captions) and the image's
/// tags with scores (from RAM, or given).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub task: Task,
    #[serde(default)]
    pub text: String,
    #[serde(default)]
    pub tags: Vec<(String, f32)>,
}

/// One answer: the decoded text, and for REC the box in pixels of the original image
/// (`None` when the text holds no valid box: counted as a miss).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Answer {
    pub text: String,
    #[serde(rename = "box", skip_serializing_if = "Option::is_none")]
    pub bbox: Option<[f32; 4]>,
    /// Tokens of the request's T5 text prompt (instruction and tags; the image's query tokens
    /// not counted).
    #[serde(skip)]
    pub prompt_tokens: usize,
    /// Tokens generated (the final `</s>` included when the text ended with one).
    #[serde(skip)]
    pub tokens: usize,
    /// The text ended with `</s>` (not cut at `max_new_tokens`).
    #[serde(skip)]
    pub finished: bool,
}

/// A weight file of the manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WeightEntry {
    pub file: PathBuf,
    #[serde(default)]
    pub prefix: String,
}

/// `config` of the manifest: a preset name or a full config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ConfigRef {
    Preset(String),
    Full(Box<LionConfig>),
}

/// The model folder manifest (`lion.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub config: ConfigRef,
    /// With a preset: the soft prompt (default static).
    #[serde(default = "default_prompt")]
    pub prompt: Option<PromptKind>,
    #[serde(default)]
    pub weights: Vec<WeightEntry>,
    pub t5_tokenizer: PathBuf,
    #[serde(default)]
    pub qformer_tokenizer: Option<PathBuf>,
    #[serde(default)]
    pub tag_encoder: Option<PathBuf>,
    /// The ViT's and T5's linear weights are stored quantized in this format (a folder written
    /// by `lion convert --quantize`); they load as stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantize: Option<crate::cpu::Quantize>,
}

fn default_prompt() -> Option<PromptKind> {
    Some(PromptKind::Static)
}

impl Manifest {
    pub fn read(path: &Path) -> Result<Self> {
        crate::util::read_json(path)
    }

    pub fn lion_config(&self) -> Result<LionConfig> {
        match &self.config {
            ConfigRef::Preset(name) => crate::presets::preset(name, self.prompt),
            ConfigRef::Full(cfg) => {
                cfg.validate()
                    .map_err(|e| Error::config("lion.json config", e))?;
                Ok((**cfg).clone())
            }
        }
    }
}

/// Opens a weight entry: a file, or a folder of `*.safetensors` shards.
pub fn open_weights(path: &Path, prefix: &str) -> Result<Vec<Checkpoint>> {
    let files = if path.is_dir() {
        let mut v: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| Error::io(path, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
            .collect();
        v.sort();
        if v.is_empty() {
            return Err(Error::format(path, "folder holds no *.safetensors files"));
        }
        v
    } else {
        vec![path.to_path_buf()]
    };
    files
        .iter()
        .map(|f| Ok(Checkpoint::open(f)?.with_prefix(prefix)))
        .collect()
}

/// Everything around the model that turns requests into answers. Built by
/// [`crate::model_spec::ModelSpec::build`], the one way to assemble it.
pub struct LionPipeline {
    model: LionModel,
    t5_tokenizer: T5Tokenizer,
    qformer_tokenizer: Option<BertTokenizer>,
    tag_encoder: Option<SentenceEmbedder>,
    transform: ImageTransform,
    device: Device,
    /// What loading found (missing / unexpected keys in lenient mode).
    report: LoadReport,
    /// Tag-encoder embeddings by "tag: score" text (the encoder is frozen, and training
    /// revisits the same images every epoch).
    tag_cache: TagCache,
    /// Trainable pipelines only: every loaded tensor by key, sharing storage with the model
    /// (`Var`s detached, so they follow training); empty otherwise.
    weights: HashMap<String, Tensor>,
}

/// The parts [`crate::model_spec::ModelSpec::build`] assembles.
pub(crate) struct Parts {
    pub model: LionModel,
    pub t5_tokenizer: T5Tokenizer,
    pub qformer_tokenizer: Option<BertTokenizer>,
    pub tag_encoder: Option<SentenceEmbedder>,
    pub transform: ImageTransform,
    pub device: Device,
    pub report: LoadReport,
    pub tag_cache: TagCache,
    pub weights: HashMap<String, Tensor>,
}

/// A bounded memo of tag-encoder embeddings (cleared when full).
#[derive(Default)]
pub struct TagCache(std::sync::Mutex<HashMap<String, Vec<f32>>>);

impl TagCache {
    const MAX: usize = 65_536;

    /// The embeddings of `texts`, computing only those not seen before.
    pub fn embed(&self, enc: &SentenceEmbedder, texts: &[String]) -> Result<Vec<Vec<f32>>> {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let mut todo: Vec<&str> = texts
            .iter()
            .filter(|t| !map.contains_key(t.as_str()))
            .map(|t| t.as_str())
            .collect();
        todo.sort_unstable();
        todo.dedup();
        if !todo.is_empty() {
            let e = enc.embed(&todo, todo.len())?;
            if map.len() + todo.len() > Self::MAX {
                map.clear();
            }
            for (t, v) in todo.iter().zip(e) {
                map.insert(t.to_string(), v);
            }
        }
        Ok(texts.iter().map(|t| map[t.as_str()].clone()).collect())
    }

    /// Distinct texts held.
    pub fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl LionPipeline {
    pub(crate) fn assembled(p: Parts) -> Self {
        Self {
            model: p.model,
            t5_tokenizer: p.t5_tokenizer,
            qformer_tokenizer: p.qformer_tokenizer,
            tag_encoder: p.tag_encoder,
            transform: p.transform,
            device: p.device,
            report: p.report,
            tag_cache: p.tag_cache,
            weights: p.weights,
        }
    }

    pub fn model(&self) -> &LionModel {
        &self.model
    }

    pub fn t5_tokenizer(&self) -> &T5Tokenizer {
        &self.t5_tokenizer
    }

    pub fn qformer_tokenizer(&self) -> Option<&BertTokenizer> {
        self.qformer_tokenizer.as_ref()
    }

    pub fn tag_encoder(&self) -> Option<&SentenceEmbedder> {
        self.tag_encoder.as_ref()
    }

    /// The evaluation image transform (resize to the ViT's size, normalise).
    pub fn transform(&self) -> &ImageTransform {
        &self.transform
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// What loading found (missing / unexpected / tied keys).
    pub fn report(&self) -> &LoadReport {
        &self.report
    }

    pub fn tag_cache(&self) -> &TagCache {
        &self.tag_cache
    }

    /// The model as it stands, for inference: the same weights (shared storage, current values)
    /// with no `Var` in it, so its ops build no autograd graph. Decoding with a training model
    /// would record one and keep it alive through the caches. Only for pipelines built with
    /// [`crate::model_spec::Trainable`] weights (the others hold no `Var`: use [`Self::model`]).
    pub fn inference_model(&self) -> Result<LionModel> {
        if self.weights.is_empty() {
            return Err(Error::config(
                "pipeline",
                "inference_model: the pipeline was not built for training (use model())",
            ));
        }
        let weights = Checkpoint::from_tensors("the model (in memory)", self.weights.clone());
        let loader = crate::weights::WeightLoader::new(vec![weights]);
        // the weights follow training (shared storage): nothing derived from them is kept
        let model = crate::adapter::with_live_parameters(|| {
            self.model
                .rebuilt(loader.var_builder(DType::F32, &self.device))
        })?;
        loader.finish(LoadMode::Strict)?;
        Ok(model)
    }

    pub fn config(&self) -> &LionConfig {
        self.model.config()
    }

    /// Prepares one batch; every request must share a route (one task type per batch, as
    /// upstream). `images` are the original images (any size).
    pub fn prepare(&self, images: &[RgbImage], reqs: &[Request]) -> Result<LionBatch> {
        if images.len() != reqs.len() || reqs.is_empty() {
            crate::input_err!("{} images for {} requests", images.len(), reqs.len());
        }
        let route = reqs[0].task.route();
        if reqs.iter().any(|r| r.task.route() != route) {
            crate::input_err!("a batch mixes region-level and image-level tasks");
        }
        let cfg = self.config();
        let templates = &cfg.templates;
        let slots = cfg.prompt.map_or(1, |p| p.slots());
        let instructions: Vec<String> = reqs
            .iter()
            .map(|r| templates.instruction(r.task, &r.text))
            .collect();
        let encoder_texts: Vec<String> = reqs
            .iter()
            .zip(&instructions)
            .map(|(r, ins)| {
                if cfg.prompt.is_some() {
                    let names: Vec<&str> = r.tags.iter().map(|(t, _)| t.as_str()).collect();
                    templates.encoder_text(slots, &format_tags(&names), ins)
                } else {
                    ins.clone()
                }
            })
            .collect();
        let refs: Vec<&str> = encoder_texts.iter().map(|s| s.as_str()).collect();
        let prompt = self
            .t5_tokenizer
            .batch(&refs, Some(cfg.max_txt_len), true, &self.device)?;
        let qformer_text = match &self.qformer_tokenizer {
            Some(tok) => {
                let ins: Vec<&str> = instructions.iter().map(|s| s.as_str()).collect();
                Some(tok.batch(&ins, &self.device)?)
            }
            None => None,
        };
        let tag_embedding = match &self.tag_encoder {
            Some(enc) => {
                let texts: Vec<String> = reqs.iter().map(|r| format_tag_scores(&r.tags)).collect();
                let e = self.tag_cache.embed(enc, &texts)?;
                let dim = enc.hidden_size();
                Some(Tensor::from_vec(
                    e.concat(),
                    (texts.len(), dim),
                    &self.device,
                )?)
            }
            None => None,
        };
        Ok(LionBatch {
            pixel_values: self.transform.apply_batch(images, &self.device)?,
            qformer_text,
            prompt,
            tag_embedding,
            route,
        })
    }

    /// Answers a chunk of requests, one result each; if the batch fails, retries them one by one
    /// so that one bad request cannot sink the others (one answer per request: `gen`'s
    /// `num_return_sequences` is expected to be 1).
    pub fn answer_each(
        &self,
        imgs: &[RgbImage],
        reqs: &[Request],
        gen: &crate::generate::GenerationConfig,
    ) -> Vec<Result<Answer>> {
        match self.answer(imgs, reqs, gen) {
            Ok(a) => a.into_iter().map(Ok).collect(),
            Err(e) if reqs.len() == 1 => vec![Err(e)],
            Err(e) => {
                tracing::warn!("batch failed ({e}); answering its requests one by one");
                imgs.iter()
                    .zip(reqs)
                    .map(|(i, r)| {
                        self.answer(std::slice::from_ref(i), std::slice::from_ref(r), gen)
                            .map(|mut a| a.remove(0))
                    })
                    .collect()
            }
        }
    }

    /// Answers requests, batching those of the same route together (order kept). With
    /// `gen.num_return_sequences` n, n answers per request, consecutive (request i's at
    /// `i * n .. (i + 1) * n`).
    pub fn answer(
        &self,
        images: &[RgbImage],
        reqs: &[Request],
        gen: &GenerationConfig,
    ) -> Result<Vec<Answer>> {
        self.answer_streaming(images, reqs, gen, None)
    }

    /// [`Self::answer`], handing each answer's text to `on_text` in pieces while it is generated
    /// (greedy search and sampling; beam search knows its answer only at the end, so there the
    /// whole text comes as one piece). For every (request, sequence) the pieces joined equal the
    /// answer's `text`. A piece ends before the last space decoded so far, so that
    /// detokenisation can still change the word being generated (T5's clean-up joins `dog 's` into
    /// `dog's`); the rest comes when the sequence ends. `on_text` returning `false` stops
    /// generation; the answers are then cut where they stopped, and requests of the other route
    /// (generated as a second batch) not yet begun get empty answers.
    pub fn answer_streaming(
        &self,
        images: &[RgbImage],
        reqs: &[Request],
        gen: &GenerationConfig,
        mut on_text: Option<OnText>,
    ) -> Result<Vec<Answer>> {
        let n = gen.num_return_sequences.max(1);
        let mut out: Vec<Vec<Answer>> = vec![Vec::new(); reqs.len()];
        let mut stopped = false;
        for route in [Route::ImageLevel, Route::RegionLevel] {
            let idx: Vec<usize> = (0..reqs.len())
                .filter(|&i| reqs[i].task.route() == route)
                .collect();
            if idx.is_empty() {
                continue;
            }
            if stopped {
                // the callback stopped generation: the requests not begun get empty answers
                for &i in &idx {
                    out[i] = vec![Answer::default(); n];
                }
                continue;
            }
            let imgs: Vec<RgbImage> = idx.iter().map(|&i| images[i].clone()).collect();
            let rs: Vec<Request> = idx.iter().map(|&i| reqs[i].clone()).collect();
            let batch = self.prepare(&imgs, &rs)?;
            let mut pieces: Vec<StreamedText> = vec![StreamedText::default(); idx.len() * n];
            let ids = match on_text.as_mut() {
                Some(f) => {
                    let mut on_step = |step: &[Option<u32>]| -> bool {
                        let mut go_on = true;
                        for (r, tok) in step.iter().enumerate() {
                            let Some(tok) = tok else { continue };
                            let Some(p) = pieces.get_mut(r) else { continue };
                            p.ids.push(*tok);
                            let Ok(text) = self.decode(&p.ids) else {
                                continue;
                            };
                            if let Some(piece) = p.stable_piece(&text) {
                                go_on &= f(TextDelta {
                                    request: idx[r / n],
                                    sequence: r % n,
                                    text: piece,
                                });
                            }
                        }
                        stopped |= !go_on;
                        go_on
                    };
                    self.model
                        .generate_streaming(&batch, gen, Some(&mut on_step))?
                }
                None => self.model.generate(&batch, gen)?,
            };
            if ids.len() != idx.len() * n {
                return Err(Error::Input(format!(
                    "generation returned {} sequences for {} requests x {n}",
                    ids.len(),
                    idx.len()
                )));
            }
            let prompts = &batch.prompt.ids;
            let eos = self.model.t5().config().eos_token_id;
            let groups = idx.iter().zip(ids.chunks(n)).zip(&imgs).zip(prompts);
            for (g, (((&i, rows), img), prompt)) in groups.enumerate() {
                for (j, row) in rows.iter().enumerate() {
                    let text = self.decode(row)?;
                    if let Some(f) = on_text.as_mut() {
                        let rest = pieces[g * n + j].rest(&text);
                        if !rest.is_empty() {
                            f(TextDelta {
                                request: i,
                                sequence: j,
                                text: rest,
                            });
                        }
                    }
                    let bbox = if reqs[i].task == Task::Rec {
                        answer_box(&text, img.width(), img.height())
                    } else {
                        None
                    };
                    out[i].push(Answer {
                        text,
                        bbox,
                        prompt_tokens: prompt.len(),
                        tokens: row.len(),
                        finished: row.last() == Some(&eos),
                    });
                }
            }
        }
        Ok(out.into_iter().flatten().collect())
    }

    /// Decoded text of generated ids; ids outside the tokenizer (random-weight models) are
    /// dropped.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        let n = self.t5_tokenizer.vocab_size() as u32;
        let ids: Vec<u32> = ids.iter().copied().filter(|&i| i < n).collect();
        self.t5_tokenizer.decode(&ids)
    }

    /// Training labels for target texts (right-truncated, -100 padded). (b, t) i64.
    pub fn labels(&self, answers: &[&str]) -> Result<Tensor> {
        self.t5_tokenizer
            .labels(answers, self.config().max_output_txt_len, &self.device)
    }
}

/// The box of a REC answer (`lion ground`, `lion ask --task rec`): LION's box text read by
/// [`crate::bbox::parse`], in pixels of the original image (`width` x `height`).
pub fn answer_box(text: &str, width: u32, height: u32) -> Option<[f32; 4]> {
    crate::bbox::parse(text, width as f64, height as f64).map(|b| b.map(|v| v as f32))
}

/// A piece of an answer's text while it is generated ([`LionPipeline::answer_streaming`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TextDelta<'a> {
    /// Index of the request in the call's `reqs`.
    pub request: usize,
    /// Index of the sequence among the request's `num_return_sequences`.
    pub sequence: usize,
    /// Text to append to the pieces before it of the same request and sequence.
    pub text: &'a str,
}

/// Receives the pieces of [`LionPipeline::answer_streaming`]; `false` stops generation.
pub type OnText<'a> = &'a mut dyn FnMut(TextDelta) -> bool;

/// One generated sequence's ids so far and how much of its text was handed out.
#[derive(Debug, Clone, Default)]
struct StreamedText {
    ids: Vec<u32>,
    /// The text handed out so far (always a prefix of the decoded text).
    sent: String,
}

impl StreamedText {
    /// The new stable part of `text` (the decode of `ids`): what lies before its last space and
    /// after what was sent. None when there is nothing new, or when `text` no longer starts with
    /// what was sent (then nothing more is sent until the end).
    fn stable_piece(&mut self, text: &str) -> Option<&str> {
        let end = text.rfind(' ')?;
        if end <= self.sent.len() || !text.starts_with(self.sent.as_str()) {
            return None;
        }
        let from = self.sent.len();
        self.sent.push_str(&text[from..end]);
        Some(&self.sent[from..])
    }

    /// What remains of the final text after the pieces sent. The final decode extends what was
    /// sent (see [`Self::stable_piece`]); should it not, the difference is logged and the text
    /// after the common prefix is returned.
    fn rest<'t>(&mut self, text: &'t str) -> &'t str {
        if let Some(rest) = text.strip_prefix(self.sent.as_str()) {
            self.sent = text.to_string();
            return rest;
        }
        let common = text
            .char_indices()
            .zip(self.sent.chars())
            .take_while(|((_, a), b)| a == b)
            .last()
            .map_or(0, |((i, c), _)| i + c.len_utf8());
        tracing::warn!(sent = %self.sent, text, "streamed text is not a prefix of the answer");
        self.sent = text.to_string();
        &text[common..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pieces end before the last space, so a clean-up that joins the last word to the one
    /// before (`dog 's` -> `dog's`) never contradicts what was sent; the pieces join to the text.
    #[test]
    fn streamed_pieces_are_prefixes_of_the_final_text() {
        let mut s = StreamedText::default();
        let mut sent = String::new();
        for text in [
            "a",
            "a dog",
            "a dog '",
            "a dog's",
            "a dog's ball",
            "a dog's ball.",
        ] {
            if let Some(p) = s.stable_piece(text) {
                sent.push_str(p);
            }
            assert!(text.starts_with(&sent), "{sent:?} vs {text:?}");
        }
        assert_eq!(sent, "a dog's");
        let final_text = "a dog's ball.";
        sent.push_str(s.rest(final_text));
        assert_eq!(sent, final_text);
        // a final text that disagrees with what was sent: the differing tail is what is left
        let mut s = StreamedText::default();
        assert_eq!(s.stable_piece("one two three"), Some("one two"));
        assert_eq!(s.rest("one too"), "oo");
    }
}
