//! The contract between the HTTP layer and the models: plain-data requests and responses per task
//! kind, no tensors (the shape of text-embeddings-inference's `backends/core`).
//!
//! A [`Backend`] lives on the worker thread (see [`crate::queue`]) and is called with batches of
//! requests of one kind. Every task method has a default that answers
//! [`BackendError::NotLoaded`], so a backend implements only what it has a model for and says so in
//! [`Backend::capabilities`]; the HTTP layer checks the capabilities before queueing and answers
//! 501 with a JSON error for the rest, never a made-up result.

use std::fmt;

use candle_core::Device;
use image::RgbImage;
use lion_core::generate::{GenerationConfig, Sampling};
use lion_core::pipeline::{Answer, LionPipeline, Request, TextDelta};
use lion_core::preprocess::ImageTransform;
use lion_core::prompt::Task;
use lion_core::sentence::SentenceEmbedder;
use lion_core::tagger::{select_tags, TagOrder, TagSelection, Tagger};
use serde::Serialize;

/// The kinds of work a backend can be asked to do, one per endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TaskKind {
    /// Sentence embeddings (`POST /v1/embed`).
    Embed,
    /// Image captioning (`POST /v1/caption`).
    Caption,
    /// Visual question answering (`POST /v1/vqa`).
    Vqa,
    /// Referring-expression grounding (`POST /v1/ground`).
    Ground,
    /// Image tagging with RAM (`POST /v1/tags`).
    Tags,
}

impl From<lion_core::Task> for TaskKind {
    /// The route of a LION task (REC is `/v1/ground`).
    fn from(t: lion_core::Task) -> Self {
        match t {
            lion_core::Task::Caption => TaskKind::Caption,
            lion_core::Task::Vqa => TaskKind::Vqa,
            lion_core::Task::Rec => TaskKind::Ground,
        }
    }
}

impl TaskKind {
    pub const ALL: [TaskKind; 5] = [
        TaskKind::Embed,
        TaskKind::Caption,
        TaskKind::Vqa,
        TaskKind::Ground,
        TaskKind::Tags,
    ];

    /// Lower-case name, used in JSON, metric labels and messages.
    pub fn name(self) -> &'static str {
        match self {
            TaskKind::Embed => "embed",
            TaskKind::Caption => "caption",
            TaskKind::Vqa => "vqa",
            TaskKind::Ground => "ground",
            TaskKind::Tags => "tags",
        }
    }

    /// What model the task needs, for "not loaded" messages.
    pub fn needs(self) -> &'static str {
        match self {
            TaskKind::Embed => "a sentence-embedding model (--embed-model DIR)",
            TaskKind::Caption | TaskKind::Vqa | TaskKind::Ground => {
                "a LION model (--model DIR or --preset P)"
            }
            TaskKind::Tags => "a RAM tagger (part of a LION model: --model DIR or --preset P)",
        }
    }
}

impl fmt::Display for TaskKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which task kinds a backend has a model for. Fixed once the backend is built.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Capabilities {
    pub embed: bool,
    pub caption: bool,
    pub vqa: bool,
    pub ground: bool,
    pub tags: bool,
}

impl Capabilities {
    pub fn supports(&self, kind: TaskKind) -> bool {
        match kind {
            TaskKind::Embed => self.embed,
            TaskKind::Caption => self.caption,
            TaskKind::Vqa => self.vqa,
            TaskKind::Ground => self.ground,
            TaskKind::Tags => self.tags,
        }
    }
}

/// Options of text generation (beam search over the T5 decoder). The HTTP layer fills the
/// defaults and checks them against the server's limits; the batcher only puts requests with
/// equal options into one batch, so a backend may use `batch[0].options` for all of them.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct GenerationOptions {
    /// Beam width (1 = greedy).
    pub num_beams: usize,
    /// Most tokens to generate.
    pub max_new_tokens: usize,
    /// Fewest tokens to generate before `</s>` may end the text (0: `</s>` may come first, as
    /// upstream LION's `min_length=1`, which counts the decoder start token).
    pub min_new_tokens: usize,
    /// > 1 penalises tokens already generated (upstream LION: 1.5).
    pub repetition_penalty: f32,
    /// Exponent of the length normalisation of beam scores (upstream LION: 1.0).
    pub length_penalty: f32,
    /// Sample (temperature, top-p, top-k, seed) instead of greedy / beam search; needs
    /// `num_beams` 1.
    pub sampling: Option<Sampling>,
    /// Sequences per request: the `n` best beams (`n <= num_beams`) or `n` samples.
    pub n: usize,
}

impl GenerationOptions {
    /// Upstream LION's defaults (`lion_t5.py` `generate`), with `max_new_tokens` given per task.
    pub fn lion_defaults(max_new_tokens: usize) -> Self {
        Self {
            num_beams: 5,
            max_new_tokens,
            min_new_tokens: 0,
            repetition_penalty: 1.5,
            length_penalty: 1.0,
            sampling: None,
            n: 1,
        }
    }

    /// The decoder's settings. `min_length` counts the decoder start token (HF convention).
    pub fn generation_config(&self) -> GenerationConfig {
        GenerationConfig {
            num_beams: self.num_beams,
            max_new_tokens: self.max_new_tokens,
            min_length: self.min_new_tokens + 1,
            repetition_penalty: self.repetition_penalty,
            length_penalty: self.length_penalty,
            sampling: self.sampling,
            num_return_sequences: self.n,
            ..GenerationConfig::default()
        }
    }
}

/// Where a streaming request's text goes while it is generated: `(sequence, piece)` pairs, the
/// pieces of one sequence joining to its text ([`lion_core::pipeline::TextDelta`]). Dropping
/// the receiver asks the worker to stop generating once no request of the batch listens.
pub type TextSink = tokio::sync::mpsc::UnboundedSender<(usize, String)>;

/// `POST /v1/caption`: describe an image.
#[derive(Debug, Clone)]
pub struct CaptionRequest {
    /// The decoded image, original size (the model resizes).
    pub image: RgbImage,
    /// Instruction replacing the default captioning prompt, if given.
    pub prompt: Option<String>,
    /// Tags with scores for LION's prompt, used instead of the tagger's.
    pub tags: Option<Vec<(String, f32)>>,
    pub options: GenerationOptions,
    /// The text in pieces while it is generated (the chat API's streaming), if wanted.
    pub stream: Option<TextSink>,
}

/// What a generating answer leaves out of its JSON and the chat API reports: token counts and,
/// with `n` > 1, the other sequences.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GenerationInfo {
    /// Tokens of the T5 text prompt (instruction and tags).
    pub prompt_tokens: usize,
    /// Tokens generated for each returned sequence, best (or first) first.
    pub completion_tokens: Vec<usize>,
    /// Whether each sequence ended with `</s>` (else it was cut at `max_new_tokens`).
    pub finished: Vec<bool>,
    /// The texts of sequences 2..=n (the response holds the first).
    pub alternatives: Vec<String>,
}

impl GenerationInfo {
    /// One request's `n` answers: the first one's text and the info.
    fn from_answers(answers: &[Answer]) -> (String, Self) {
        let first = answers.first().map(|a| a.text.clone()).unwrap_or_default();
        let info = Self {
            prompt_tokens: answers.first().map_or(0, |a| a.prompt_tokens),
            completion_tokens: answers.iter().map(|a| a.tokens).collect(),
            finished: answers.iter().map(|a| a.finished).collect(),
            alternatives: answers.iter().skip(1).map(|a| a.text.clone()).collect(),
        };
        (first, info)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CaptionResponse {
    pub caption: String,
    #[serde(skip)]
    pub info: GenerationInfo,
}

/// `POST /v1/vqa`: answer a question about an image.
#[derive(Debug, Clone)]
pub struct VqaRequest {
    pub image: RgbImage,
    pub question: String,
    /// Tags with scores for LION's prompt, used instead of the tagger's.
    pub tags: Option<Vec<(String, f32)>>,
    pub options: GenerationOptions,
    /// The text in pieces while it is generated (the chat API's streaming), if wanted.
    pub stream: Option<TextSink>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VqaResponse {
    pub answer: String,
    #[serde(skip)]
    pub info: GenerationInfo,
}

/// `POST /v1/ground`: locate the object a referring expression describes.
#[derive(Debug, Clone)]
pub struct GroundRequest {
    pub image: RgbImage,
    pub expression: String,
    /// Tags with scores for LION's prompt, used instead of the tagger's.
    pub tags: Option<Vec<(String, f32)>>,
    pub options: GenerationOptions,
    /// The text in pieces while it is generated (the chat API's streaming), if wanted.
    pub stream: Option<TextSink>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GroundResponse {
    /// `[x1, y1, x2, y2]` in pixels of the original image; `None` when the generated text holds
    /// no parsable box.
    pub bbox: Option<[f32; 4]>,
    /// The same box normalised by the image width and height, as the model writes it.
    pub bbox_normalized: Option<[f32; 4]>,
    /// The generated text (LION writes `[x1,y1,x2,y2]`, 3 decimals).
    pub text: String,
    #[serde(skip)]
    pub info: GenerationInfo,
}

impl GroundResponse {
    /// Reads LION's box text (`[x1,y1,x2,y2]` normalised, e.g.
    /// `"Answer: [0.440,0.060,0.650,0.367]"`) with `lion_core::bbox::parse_normalized`, as
    /// `lion ground` and `lion eval --task rec` do (the last four-number bracket; coordinates in
    /// [0, 1.05], clamped to 1; an inverted box is no box), and scales it to the image. No box
    /// when the text holds none.
    pub fn from_text(text: String, width: u32, height: u32) -> Self {
        let norm = lion_core::bbox::parse_normalized(&text);
        let (w, h) = (width as f64, height as f64);
        Self {
            bbox: norm.map(|n| lion_core::bbox::to_pixels(n, w, h).map(|v| v as f32)),
            bbox_normalized: norm.map(|n| n.map(|v| v as f32)),
            text,
            info: GenerationInfo::default(),
        }
    }
}

/// `POST /v1/tags`: RAM image tags.
#[derive(Debug, Clone)]
pub struct TagsRequest {
    pub image: RgbImage,
    /// One threshold for every tag in (0, 1), replacing RAM's per-class thresholds.
    pub threshold: Option<f32>,
    /// Keep at most this many tags (the highest scores).
    pub max_tags: Option<usize>,
}

/// A tag and its score (`{"tag", "score"}`): `lion_core`'s one scored-tag type.
pub use lion_core::tags::ScoredTag as TagScore;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TagsResponse {
    /// Highest score first.
    pub tags: Vec<TagScore>,
}

/// Why a backend call failed. Cloned to every request of a failed batch.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BackendError {
    /// The server has no model for this kind of task.
    #[error("{kind} is not available: this server was started without {}", kind.needs())]
    NotLoaded { kind: TaskKind },
    /// The model failed on this batch (bad input it could not handle, a numeric error, a panic).
    #[error("inference failed: {0}")]
    Inference(String),
    /// The model cannot serve at all any more.
    #[error("backend unhealthy: {0}")]
    Unhealthy(String),
}

impl From<lion_core::Error> for BackendError {
    fn from(e: lion_core::Error) -> Self {
        BackendError::Inference(e.to_string())
    }
}

pub type BackendResult<T> = std::result::Result<T, BackendError>;

/// A model server's view of its models. Called on the worker thread only, one batch at a time.
///
/// Every batch method gets one or more requests of its kind and returns one response per request,
/// in order (the worker checks the count). Generation batches share their `options`.
pub trait Backend: Send {
    /// The task kinds this backend has models for.
    fn capabilities(&self) -> Capabilities;

    /// texts -> one embedding per text.
    fn embed(&mut self, texts: &[String]) -> BackendResult<Vec<Vec<f32>>> {
        let _ = texts;
        Err(BackendError::NotLoaded {
            kind: TaskKind::Embed,
        })
    }

    fn caption(&mut self, batch: &[CaptionRequest]) -> BackendResult<Vec<CaptionResponse>> {
        let _ = batch;
        Err(BackendError::NotLoaded {
            kind: TaskKind::Caption,
        })
    }

    fn vqa(&mut self, batch: &[VqaRequest]) -> BackendResult<Vec<VqaResponse>> {
        let _ = batch;
        Err(BackendError::NotLoaded {
            kind: TaskKind::Vqa,
        })
    }

    fn ground(&mut self, batch: &[GroundRequest]) -> BackendResult<Vec<GroundResponse>> {
        let _ = batch;
        Err(BackendError::NotLoaded {
            kind: TaskKind::Ground,
        })
    }

    fn tags(&mut self, batch: &[TagsRequest]) -> BackendResult<Vec<TagsResponse>> {
        let _ = batch;
        Err(BackendError::NotLoaded {
            kind: TaskKind::Tags,
        })
    }
}

/// The models `lion serve` loads, each optional: the sentence embedder (`/v1/embed`), the LION
/// pipeline (`/v1/caption`, `/v1/vqa`, `/v1/ground`) and the RAM tagger (`/v1/tags`, and the tags
/// of LION's prompt).
pub struct ModelBackend {
    embedder: Option<SentenceEmbedder>,
    /// Texts per forward pass inside one batch.
    embed_chunk: usize,
    lion: Option<LionPipeline>,
    tagger: Option<RamTagger>,
}

/// RAM with its input transform and device.
struct RamTagger {
    tagger: Tagger,
    transform: ImageTransform,
    device: Device,
}

impl RamTagger {
    /// Every tag's probability, one row per image.
    fn probabilities(&self, images: &[&RgbImage]) -> BackendResult<Vec<Vec<f32>>> {
        let owned: Vec<RgbImage> = images.iter().map(|&i| i.clone()).collect();
        let x = self.transform.apply_batch(&owned, &self.device)?;
        let p = self
            .tagger
            .model
            .probabilities(&x)
            .and_then(|p| p.to_vec2::<f32>())
            .map_err(|e| BackendError::Inference(e.to_string()))?;
        Ok(p)
    }
}

impl ModelBackend {
    /// `embed_chunk`: texts per forward pass (the batcher's max batch size is a good value).
    pub fn new(embedder: Option<SentenceEmbedder>, embed_chunk: usize) -> Self {
        Self {
            embedder,
            embed_chunk: embed_chunk.max(1),
            lion: None,
            tagger: None,
        }
    }

    /// Adds the LION pipeline: captioning, VQA and grounding.
    pub fn with_lion(mut self, pipeline: LionPipeline) -> Self {
        self.lion = Some(pipeline);
        self
    }

    /// Adds the RAM tagger: `/v1/tags`, and the tags (with scores) that LION's prompt gets for
    /// every image. Its `selection` and `order` choose the tags LION sees (upstream: per-class
    /// thresholds, tag-list order).
    pub fn with_tagger(mut self, tagger: Tagger, device: Device) -> Self {
        let transform = ImageTransform {
            size: tagger.model.config().img_size() as u32,
            ..ImageTransform::ram()
        };
        self.tagger = Some(RamTagger {
            tagger,
            transform,
            device,
        });
        self
    }

    /// Runs LION on one batch of one task: each image gets the tags its request gives, else the
    /// tagger's when one is loaded (no tags otherwise); then generates with the batch's shared
    /// options. `n` answers per item, consecutive.
    fn lion_answer(
        &self,
        kind: TaskKind,
        items: Vec<LionItem<'_>>,
        options: &GenerationOptions,
    ) -> BackendResult<Vec<Answer>> {
        let Some(lion) = &self.lion else {
            return Err(BackendError::NotLoaded { kind });
        };
        let untagged: Vec<&RgbImage> = items
            .iter()
            .filter(|it| it.tags.is_none())
            .map(|it| it.image)
            .collect();
        let mut computed = match &self.tagger {
            Some(t) if !untagged.is_empty() => t
                .probabilities(&untagged)?
                .iter()
                .map(|p| {
                    let kept = select_tags(p, &t.tagger.vocab, t.tagger.selection, t.tagger.order)?;
                    Ok(kept.into_iter().map(|s| s.scored.into_pair()).collect())
                })
                .collect::<lion_core::Result<Vec<Vec<(String, f32)>>>>()?,
            _ => vec![vec![]; untagged.len()],
        }
        .into_iter();
        let reqs: Vec<Request> = items
            .iter()
            .map(|it| Request {
                task: it.task,
                text: it.text.clone(),
                tags: match it.tags {
                    Some(t) => t.clone(),
                    None => computed.next().unwrap_or_default(),
                },
            })
            .collect();
        let owned: Vec<RgbImage> = items.iter().map(|it| it.image.clone()).collect();
        let gen = options.generation_config();
        let sinks: Vec<Option<&TextSink>> = items.iter().map(|it| it.stream).collect();
        if sinks.iter().all(Option::is_none) {
            return Ok(lion.answer(&owned, &reqs, &gen)?);
        }
        let mut on_text = |d: TextDelta| {
            if let Some(Some(tx)) = sinks.get(d.request) {
                // a gone listener is seen below
                let _ = tx.send((d.sequence, d.text.to_string()));
            }
            // stop only once every request of the batch streams and none listens any more
            !sinks.iter().all(|s| s.is_some_and(|tx| tx.is_closed()))
        };
        Ok(lion.answer_streaming(&owned, &reqs, &gen, Some(&mut on_text))?)
    }
}

/// One LION request of a batch, borrowed from its typed request.
struct LionItem<'a> {
    image: &'a RgbImage,
    task: Task,
    text: String,
    tags: Option<&'a Vec<(String, f32)>>,
    stream: Option<&'a TextSink>,
}

/// `n` answers per request -> one (text, info) per request.
fn per_request(answers: Vec<Answer>, n: usize) -> Vec<(String, GenerationInfo)> {
    answers
        .chunks(n.max(1))
        .map(GenerationInfo::from_answers)
        .collect()
}

/// The options a batch shares (the batcher guarantees it); an empty batch is a caller bug.
fn shared_options<'a>(
    mut all: impl Iterator<Item = &'a GenerationOptions>,
) -> BackendResult<GenerationOptions> {
    let first = *all
        .next()
        .ok_or_else(|| BackendError::Inference("empty batch".into()))?;
    if all.any(|o| *o != first) {
        return Err(BackendError::Inference(
            "a batch mixes generation options".into(),
        ));
    }
    Ok(first)
}

impl Backend for ModelBackend {
    fn capabilities(&self) -> Capabilities {
        let lion = self.lion.is_some();
        Capabilities {
            embed: self.embedder.is_some(),
            caption: lion,
            vqa: lion,
            ground: lion,
            tags: self.tagger.is_some(),
        }
    }

    fn embed(&mut self, texts: &[String]) -> BackendResult<Vec<Vec<f32>>> {
        let Some(embedder) = &self.embedder else {
            return Err(BackendError::NotLoaded {
                kind: TaskKind::Embed,
            });
        };
        let refs: Vec<&str> = texts.iter().map(|s| s.as_str()).collect();
        Ok(embedder.embed(&refs, self.embed_chunk)?)
    }

    fn caption(&mut self, batch: &[CaptionRequest]) -> BackendResult<Vec<CaptionResponse>> {
        let options = shared_options(batch.iter().map(|r| &r.options))?;
        let items = batch
            .iter()
            .map(|r| LionItem {
                image: &r.image,
                task: Task::Caption,
                text: r.prompt.clone().unwrap_or_default(),
                tags: r.tags.as_ref(),
                stream: r.stream.as_ref(),
            })
            .collect();
        let answers = self.lion_answer(TaskKind::Caption, items, &options)?;
        Ok(per_request(answers, options.n)
            .into_iter()
            .map(|(caption, info)| CaptionResponse { caption, info })
            .collect())
    }

    fn vqa(&mut self, batch: &[VqaRequest]) -> BackendResult<Vec<VqaResponse>> {
        let options = shared_options(batch.iter().map(|r| &r.options))?;
        let items = batch
            .iter()
            .map(|r| LionItem {
                image: &r.image,
                task: Task::Vqa,
                text: r.question.clone(),
                tags: r.tags.as_ref(),
                stream: r.stream.as_ref(),
            })
            .collect();
        let answers = self.lion_answer(TaskKind::Vqa, items, &options)?;
        Ok(per_request(answers, options.n)
            .into_iter()
            .map(|(answer, info)| VqaResponse { answer, info })
            .collect())
    }

    fn ground(&mut self, batch: &[GroundRequest]) -> BackendResult<Vec<GroundResponse>> {
        let options = shared_options(batch.iter().map(|r| &r.options))?;
        let items = batch
            .iter()
            .map(|r| LionItem {
                image: &r.image,
                task: Task::Rec,
                text: r.expression.clone(),
                tags: r.tags.as_ref(),
                stream: r.stream.as_ref(),
            })
            .collect();
        let answers = self.lion_answer(TaskKind::Ground, items, &options)?;
        Ok(per_request(answers, options.n)
            .into_iter()
            .zip(batch)
            .map(|((text, info), r)| GroundResponse {
                info,
                ..GroundResponse::from_text(text, r.image.width(), r.image.height())
            })
            .collect())
    }

    fn tags(&mut self, batch: &[TagsRequest]) -> BackendResult<Vec<TagsResponse>> {
        let Some(t) = &self.tagger else {
            return Err(BackendError::NotLoaded {
                kind: TaskKind::Tags,
            });
        };
        let images: Vec<&RgbImage> = batch.iter().map(|r| &r.image).collect();
        let probs = t.probabilities(&images)?;
        batch
            .iter()
            .zip(probs)
            .map(|(r, p)| {
                let selection = r
                    .threshold
                    .map_or(TagSelection::ClassThreshold, TagSelection::Threshold);
                let mut kept = select_tags(&p, &t.tagger.vocab, selection, TagOrder::Score)?;
                if let Some(k) = r.max_tags {
                    kept.truncate(k);
                }
                Ok(TagsResponse {
                    tags: kept.into_iter().map(|s| s.scored).collect(),
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
