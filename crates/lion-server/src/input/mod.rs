//! Request bodies: strict JSON (unknown fields rejected, every error naming the field), multipart
//! uploads, base64 and image checks (format, pixel count from the header before any decoding,
//! then a full decode), and the range checks of every option.

use std::io::Cursor;

use base64::Engine;
use image::{ImageDecoder, ImageError, ImageReader, RgbImage};
use serde::de::{self, DeserializeOwned, IgnoredAny};
use serde::Deserialize;
use serde_json::{Map, Value};

use lion_core::generate::Sampling;

use crate::backend::{GenerationOptions, TagScore, TaskKind};
use crate::config::{default_max_new_tokens, Limits};
use crate::error::{ApiError, ErrorType};

mod image_bytes;
mod json;

pub use image_bytes::*;
pub use json::*;

/// Texts to embed: `"text"` or `["a", "b"]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Inputs(pub Vec<String>);

impl<'de> Deserialize<'de> for Inputs {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> de::Visitor<'de> for V {
            type Value = Inputs;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string or an array of strings")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Inputs, E> {
                Ok(Inputs(vec![s.to_string()]))
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<Inputs, E> {
                Ok(Inputs(vec![s]))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Inputs, A::Error> {
                let mut v = Vec::new();
                while let Some(s) = seq.next_element::<String>()? {
                    v.push(s);
                }
                Ok(Inputs(v))
            }
        }
        d.deserialize_any(V)
    }
}

/// `POST /v1/embed`, as in text-embeddings-inference.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbedBody {
    pub inputs: Inputs,
}

/// The generation options every generating endpoint accepts (all optional).
pub trait GenFields {
    fn num_beams(&self) -> Option<usize>;
    fn max_new_tokens(&self) -> Option<usize>;
    fn min_new_tokens(&self) -> Option<usize>;
    fn repetition_penalty(&self) -> Option<f32>;
    fn length_penalty(&self) -> Option<f32>;
    /// > 0 samples; absent or 0: greedy / beam search.
    fn temperature(&self) -> Option<f32>;
    fn top_p(&self) -> Option<f32>;
    fn top_k(&self) -> Option<usize>;
    fn seed(&self) -> Option<u64>;
    /// Sequences per request (the chat API's `n`); 1 elsewhere.
    fn n(&self) -> Option<usize> {
        None
    }
}

macro_rules! gen_fields {
    ($t:ty) => {
        impl GenFields for $t {
            fn num_beams(&self) -> Option<usize> {
                self.num_beams
            }
            fn max_new_tokens(&self) -> Option<usize> {
                self.max_new_tokens
            }
            fn min_new_tokens(&self) -> Option<usize> {
                self.min_new_tokens
            }
            fn repetition_penalty(&self) -> Option<f32> {
                self.repetition_penalty
            }
            fn length_penalty(&self) -> Option<f32> {
                self.length_penalty
            }
            fn temperature(&self) -> Option<f32> {
                self.temperature
            }
            fn top_p(&self) -> Option<f32> {
                self.top_p
            }
            fn top_k(&self) -> Option<usize> {
                self.top_k
            }
            fn seed(&self) -> Option<u64> {
                self.seed
            }
        }
    };
}

/// The body of a LION endpoint: `image` (taken out before parsing), the task's own text field,
/// the decoding fields and `tags`, in this order (the order "unknown field" messages list them).
macro_rules! lion_body {
    ($(#[$doc:meta])* $name:ident { $field:ident: $ty:ty }) => {
        $(#[$doc])*
        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            /// Listed so that "unknown field" messages name it; taken out before parsing.
            #[serde(default)]
            #[allow(dead_code)]
            image: Option<IgnoredAny>,
            pub $field: $ty,
            pub num_beams: Option<usize>,
            pub max_new_tokens: Option<usize>,
            pub min_new_tokens: Option<usize>,
            pub repetition_penalty: Option<f32>,
            pub length_penalty: Option<f32>,
            pub temperature: Option<f32>,
            pub top_p: Option<f32>,
            pub top_k: Option<usize>,
            pub seed: Option<u64>,
            /// Tags with scores for LION's prompt, instead of the tagger's.
            pub tags: Option<Vec<TagScore>>,
        }
        gen_fields!($name);
    };
}

lion_body!(
    /// `POST /v1/caption` (besides `image`).
    CaptionBody { prompt: Option<String> }
);
lion_body!(
    /// `POST /v1/vqa` (besides `image`).
    VqaBody { question: String }
);
lion_body!(
    /// `POST /v1/ground` (besides `image`).
    GroundBody { expression: String }
);

/// `POST /v1/tags` (besides `image`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TagsBody {
    #[serde(default)]
    #[allow(dead_code)]
    image: Option<IgnoredAny>,
    pub threshold: Option<f32>,
    pub max_tags: Option<usize>,
}

/// Multipart text fields that hold integers / floats (multipart values are all text).
const INT_FIELDS: [&str; 6] = [
    "num_beams",
    "max_new_tokens",
    "min_new_tokens",
    "max_tags",
    "top_k",
    "seed",
];
const FLOAT_FIELDS: [&str; 5] = [
    "repetition_penalty",
    "length_penalty",
    "threshold",
    "temperature",
    "top_p",
];
/// Multipart text fields that hold JSON (`tags`: `[{"tag": "dog", "score": 0.9}]`).
const JSON_FIELDS: [&str; 1] = ["tags"];

/// A multipart text field as the JSON value it stands for.
pub fn multipart_value(name: &str, text: &str) -> Result<Value, ApiError> {
    let t = text.trim();
    if INT_FIELDS.contains(&name) {
        let v: u64 = t.parse().map_err(|_| {
            ApiError::validation(format!(
                "field `{name}`: expected a non-negative integer, got {text:?}"
            ))
        })?;
        Ok(Value::from(v))
    } else if FLOAT_FIELDS.contains(&name) {
        let v: f64 = t.parse().map_err(|_| {
            ApiError::validation(format!("field `{name}`: expected a number, got {text:?}"))
        })?;
        Ok(Value::from(v))
    } else if JSON_FIELDS.contains(&name) {
        serde_json::from_str(t).map_err(|e| {
            ApiError::validation(format!("field `{name}`: expected JSON, got {text:?}: {e}"))
        })
    } else {
        Ok(Value::String(text.to_string()))
    }
}

/// The shared rule's rejection as a 422 naming the field (`lion_core::rules`).
fn invalid(e: lion_core::rules::Invalid) -> ApiError {
    ApiError::validation(format!("field `{}` {}, got {}", e.field, e.rule, e.value))
}

/// The server's limits as the shared rule set's generation limits.
fn generation_limits(limits: &Limits) -> lion_core::rules::GenerationLimits {
    lion_core::rules::GenerationLimits {
        max_new_tokens: limits.max_new_tokens,
        max_num_beams: limits.max_num_beams,
        max_prompt_chars: limits.max_prompt_chars,
    }
}

/// A required or optional text field, checked by the shared rule (not blank, at most
/// `max_prompt_chars` characters), the one `lion vqa` / `lion ground` apply to their text.
pub fn check_text(
    name: &str,
    value: Option<String>,
    required: bool,
    limits: &Limits,
) -> Result<Option<String>, ApiError> {
    match value {
        None if required => Err(ApiError::validation(format!("missing field `{name}`"))),
        None => Ok(None),
        Some(s) => {
            lion_core::rules::text(name, &s, limits.max_prompt_chars).map_err(invalid)?;
            Ok(Some(s))
        }
    }
}

/// Most tags a request may give.
pub const MAX_TAGS: usize = 256;

/// Tags a request gives for LION's prompt: non-empty names within the prompt length limit,
/// scores in [0, 1], at most [`MAX_TAGS`].
pub fn check_tags(
    tags: Option<Vec<TagScore>>,
    limits: &Limits,
) -> Result<Option<Vec<(String, f32)>>, ApiError> {
    let Some(tags) = tags else { return Ok(None) };
    if tags.len() > MAX_TAGS {
        return Err(ApiError::validation(format!(
            "field `tags` has {} tags; the limit is {MAX_TAGS}",
            tags.len()
        )));
    }
    tags.into_iter()
        .enumerate()
        .map(|(i, t)| {
            let name = t.tag.trim();
            if name.is_empty() {
                return Err(ApiError::validation(format!("tags[{i}].tag is empty")));
            }
            if name.chars().count() > limits.max_prompt_chars {
                return Err(ApiError::validation(format!(
                    "tags[{i}].tag is longer than the limit of {} characters",
                    limits.max_prompt_chars
                )));
            }
            if !(0.0..=1.0).contains(&t.score) {
                return Err(ApiError::validation(format!(
                    "tags[{i}].score must be between 0 and 1, got {}",
                    t.score
                )));
            }
            Ok((name.to_string(), t.score))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// A seed for a sampling request that gives none: differs between requests.
pub(crate) fn fresh_seed() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let c = COUNTER.fetch_add(1, Ordering::Relaxed);
    lion_core::preprocess::Rng::new(t ^ c.rotate_left(32)).next_u64()
}

fn range(name: &str, v: usize, lo: usize, hi: usize) -> Result<usize, ApiError> {
    if v < lo || v > hi {
        Err(ApiError::validation(format!(
            "field `{name}` must be between {lo} and {hi}, got {v}"
        )))
    } else {
        Ok(v)
    }
}

/// The sampling settings when `temperature` > 0 (`top_p`, `top_k`, `seed` are ignored
/// otherwise, as HF without `do_sample`); a missing seed is drawn fresh.
fn sampling(f: &impl GenFields) -> Result<Option<Sampling>, ApiError> {
    lion_core::rules::SamplingSettings {
        temperature: f.temperature().unwrap_or(0.0),
        top_p: f.top_p().unwrap_or(1.0),
        top_k: f.top_k(),
        seed: f.seed().unwrap_or_else(fresh_seed),
    }
    .check()
    .map_err(invalid)
}

/// Generation options with LION's defaults filled in, then checked by the shared rule set
/// ([`lion_core::rules::GenerationSettings::check`], the same rules as the CLI's flags) against
/// the server's limits. With `temperature` > 0 the request samples with one beam; `n` sequences
/// come from the `n` best beams (the beam count raised to `n` when not given) or `n` samples.
pub fn generation_options(
    kind: TaskKind,
    f: &impl GenFields,
    limits: &Limits,
) -> Result<GenerationOptions, ApiError> {
    let d = GenerationOptions::lion_defaults(default_max_new_tokens(kind, limits.max_new_tokens));
    let sampling = sampling(f)?;
    let n = range("n", f.n().unwrap_or(1), 1, limits.max_num_beams)?;
    let default_beams = if sampling.is_some() {
        1
    } else {
        d.num_beams.min(limits.max_num_beams).max(n)
    };
    let max_new_tokens = f.max_new_tokens().unwrap_or(d.max_new_tokens);
    let o = GenerationOptions {
        num_beams: f.num_beams().unwrap_or(default_beams),
        max_new_tokens,
        min_new_tokens: f
            .min_new_tokens()
            .unwrap_or(d.min_new_tokens.min(max_new_tokens)),
        repetition_penalty: f.repetition_penalty().unwrap_or(d.repetition_penalty),
        length_penalty: f.length_penalty().unwrap_or(d.length_penalty),
        sampling,
        n,
    };
    lion_core::rules::GenerationSettings {
        num_beams: o.num_beams,
        max_new_tokens: o.max_new_tokens,
        min_new_tokens: o.min_new_tokens,
        repetition_penalty: o.repetition_penalty,
        length_penalty: o.length_penalty,
    }
    .check(&generation_limits(limits))
    .map_err(invalid)?;
    lion_core::rules::check_sequences(o.num_beams, n, o.sampling.is_some()).map_err(invalid)?;
    Ok(o)
}

/// Texts of an embed request, checked against the count and length limits.
pub fn check_inputs(inputs: Inputs, limits: &Limits) -> Result<Vec<String>, ApiError> {
    let v = inputs.0;
    if v.is_empty() {
        return Err(ApiError::validation("field `inputs` is empty"));
    }
    if v.len() > limits.max_embed_inputs {
        return Err(ApiError::validation(format!(
            "field `inputs` has {} texts; the limit is {} per request",
            v.len(),
            limits.max_embed_inputs
        )));
    }
    for (i, s) in v.iter().enumerate() {
        let n = s.chars().count();
        if n > limits.max_embed_chars {
            return Err(ApiError::validation(format!(
                "inputs[{i}] is {n} characters long; the limit is {}",
                limits.max_embed_chars
            )));
        }
    }
    Ok(v)
}

#[cfg(test)]
mod tests;
