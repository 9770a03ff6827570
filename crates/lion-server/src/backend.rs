//! The contract between the HTTP layer and the models: plain-data requests and responses per task
//! kind, no tensors (the shape of text-embeddings-inference's `backends/core`).
//!
//! A [`Backend`] lives on the worker thread (see [`crate::queue`]) and is called with batches of
//! requests of one kind. Every task method has a default that answers
//! [`BackendError::NotLoaded`], so a backend implements only what it has a model for and says so in
//! [`Backend::capabilities`]; the HTTP layer checks the capabilities before queueing and answers
//! 501 with a JSON error for the rest, never a made-up result.

use std::fmt;

use image::RgbImage;
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
    /// Fewest tokens to generate before `</s>` may end the text.
    pub min_new_tokens: usize,
    /// > 1 penalises tokens already generated (upstream LION: 1.5).
    pub repetition_penalty: f32,
    /// Exponent of the length normalisation of beam scores (upstream LION: 1.0).
    pub length_penalty: f32,
}

impl GenerationOptions {
    /// Upstream LION's defaults (`lion_t5.py` `generate`), with `max_new_tokens` given per task.
    pub fn lion_defaults(max_new_tokens: usize) -> Self {
        Self {
            num_beams: 5,
            max_new_tokens,
            min_new_tokens: 1,
            repetition_penalty: 1.5,
            length_penalty: 1.0,
        }
    }
}

/// `POST /v1/caption`: describe an image.
#[derive(Debug, Clone)]
pub struct CaptionRequest {
    /// The decoded image, original size (the model resizes).
    pub image: RgbImage,
    /// Instruction replacing the default captioning prompt, if given.
    pub prompt: Option<String>,
    pub options: GenerationOptions,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CaptionResponse {
    pub caption: String,
}

/// `POST /v1/vqa`: answer a question about an image.
#[derive(Debug, Clone)]
pub struct VqaRequest {
    pub image: RgbImage,
    pub question: String,
    pub options: GenerationOptions,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VqaResponse {
    pub answer: String,
}

/// `POST /v1/ground`: locate the object a referring expression describes.
#[derive(Debug, Clone)]
pub struct GroundRequest {
    pub image: RgbImage,
    pub expression: String,
    pub options: GenerationOptions,
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
}

impl GroundResponse {
    /// Reads LION's box text (`[x1,y1,x2,y2]`, coordinates normalised to [0, 1], e.g.
    /// `"Answer: [0.440,0.060,0.650,0.367]"`; the last bracket with four numbers wins, as in
    /// Dynamic LION's evaluation) and scales it to the image. Coordinates are clamped to [0, 1];
    /// no box when the text has none.
    pub fn from_text(text: String, width: u32, height: u32) -> Self {
        let norm = text.rmatch_indices('[').find_map(|(i, _)| {
            let rest = &text[i + 1..];
            let inner = &rest[..rest.find(']')?];
            let v: Vec<f32> = inner
                .split(',')
                .map(|x| x.trim().parse::<f32>())
                .collect::<Result<_, _>>()
                .ok()?;
            (v.len() == 4 && v.iter().all(|x| x.is_finite()))
                .then(|| [v[0], v[1], v[2], v[3]].map(|x| x.clamp(0.0, 1.0)))
        });
        let (w, h) = (width as f32, height as f32);
        Self {
            bbox: norm.map(|b| [b[0] * w, b[1] * h, b[2] * w, b[3] * h]),
            bbox_normalized: norm,
            text,
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

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TagScore {
    pub tag: String,
    pub score: f32,
}

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

/// The models `lion serve` loads: today the sentence embedder; the LION model (captioning, VQA,
/// grounding) and the RAM tagger plug in here as further optional fields.
pub struct ModelBackend {
    embedder: Option<lion_core::sentence::SentenceEmbedder>,
    /// Texts per forward pass inside one batch.
    embed_chunk: usize,
}

impl ModelBackend {
    /// `embed_chunk`: texts per forward pass (the batcher's max batch size is a good value).
    pub fn new(
        embedder: Option<lion_core::sentence::SentenceEmbedder>,
        embed_chunk: usize,
    ) -> Self {
        Self {
            embedder,
            embed_chunk: embed_chunk.max(1),
        }
    }
}

impl Backend for ModelBackend {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            embed: self.embedder.is_some(),
            ..Capabilities::default()
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
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Nothing;
    impl Backend for Nothing {
        fn capabilities(&self) -> Capabilities {
            Capabilities::default()
        }
    }

    #[test]
    fn defaults_answer_not_loaded_for_every_kind() {
        let mut b = Nothing;
        let img = RgbImage::new(2, 2);
        let opts = GenerationOptions::lion_defaults(10);
        assert_eq!(
            b.embed(&["x".into()]),
            Err(BackendError::NotLoaded {
                kind: TaskKind::Embed
            })
        );
        let cap = CaptionRequest {
            image: img.clone(),
            prompt: None,
            options: opts,
        };
        assert!(matches!(
            b.caption(&[cap]),
            Err(BackendError::NotLoaded {
                kind: TaskKind::Caption
            })
        ));
        let vqa = VqaRequest {
            image: img.clone(),
            question: "q".into(),
            options: opts,
        };
        assert!(matches!(
            b.vqa(&[vqa]),
            Err(BackendError::NotLoaded {
                kind: TaskKind::Vqa
            })
        ));
        let g = GroundRequest {
            image: img.clone(),
            expression: "e".into(),
            options: opts,
        };
        assert!(matches!(
            b.ground(&[g]),
            Err(BackendError::NotLoaded {
                kind: TaskKind::Ground
            })
        ));
        let t = TagsRequest {
            image: img,
            threshold: None,
            max_tags: None,
        };
        assert!(matches!(
            b.tags(&[t]),
            Err(BackendError::NotLoaded {
                kind: TaskKind::Tags
            })
        ));
        for k in TaskKind::ALL {
            assert!(!b.capabilities().supports(k));
        }
    }

    #[test]
    fn not_loaded_message_names_the_task_and_the_flag() {
        let e = BackendError::NotLoaded {
            kind: TaskKind::Vqa,
        };
        let msg = e.to_string();
        assert!(msg.contains("vqa") && msg.contains("--model"), "{msg}");
    }

    #[test]
    fn ground_text_becomes_a_pixel_box() {
        let g = GroundResponse::from_text("Answer: [0.440,0.060,0.650,0.367]".into(), 200, 100);
        let b = g.bbox.unwrap();
        let want = [88.0, 6.0, 130.0, 36.7];
        for (x, y) in b.iter().zip(want) {
            assert!((x - y).abs() < 1e-3, "{b:?}");
        }
        assert_eq!(g.bbox_normalized, Some([0.44, 0.06, 0.65, 0.367]));
        // The last parsable bracket wins; out-of-range values are clamped.
        let g = GroundResponse::from_text("[1,2] then [0.1, 0.2, 1.5, 0.4] [x]".into(), 10, 10);
        assert_eq!(g.bbox_normalized, Some([0.1, 0.2, 1.0, 0.4]));
        for t in ["no box", "[0.1,0.2,0.3]", "[a,b,c,d]", "[0.1,0.2,0.3,0.4"] {
            let g = GroundResponse::from_text(t.into(), 10, 10);
            assert_eq!((g.bbox, g.bbox_normalized), (None, None), "{t}");
            assert_eq!(g.text, t);
        }
    }

    #[test]
    fn model_backend_without_embedder_supports_nothing() {
        let mut b = ModelBackend::new(None, 8);
        assert_eq!(b.capabilities(), Capabilities::default());
        assert!(matches!(
            b.embed(&["x".into()]),
            Err(BackendError::NotLoaded { .. })
        ));
    }
}
