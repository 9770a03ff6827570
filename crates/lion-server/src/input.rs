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

/// `POST /v1/caption` (besides `image`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptionBody {
    /// Listed so that "unknown field" messages name it; taken out before parsing.
    #[serde(default)]
    #[allow(dead_code)]
    image: Option<IgnoredAny>,
    pub prompt: Option<String>,
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
gen_fields!(CaptionBody);

/// `POST /v1/vqa` (besides `image`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VqaBody {
    #[serde(default)]
    #[allow(dead_code)]
    image: Option<IgnoredAny>,
    pub question: String,
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
gen_fields!(VqaBody);

/// `POST /v1/ground` (besides `image`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroundBody {
    #[serde(default)]
    #[allow(dead_code)]
    image: Option<IgnoredAny>,
    pub expression: String,
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
gen_fields!(GroundBody);

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

/// Parses a JSON body into an object. Malformed JSON is 400; valid JSON that is not an object,
/// or an object with a key given twice (at any depth), is 422 naming the key.
pub fn json_object(bytes: &[u8]) -> Result<Map<String, Value>, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let StrictValue(v) = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.classify() != serde_json::error::Category::Data {
            ApiError::bad_request(format!("invalid JSON: {inner}"))
        } else if path == "." || path.is_empty() {
            ApiError::validation(format!("invalid request: {inner}"))
        } else {
            ApiError::validation(format!("invalid request: in `{path}`: {inner}"))
        }
    })?;
    de.end()
        .map_err(|e| ApiError::bad_request(format!("invalid JSON: {e}")))?;
    match v {
        Value::Object(m) => Ok(m),
        other => Err(ApiError::validation(format!(
            "expected a JSON object, got {}",
            json_kind(&other)
        ))),
    }
}

/// A JSON value whose objects never repeat a key (serde_json's `Value` keeps the last silently).
struct StrictValue(Value);

impl<'de> Deserialize<'de> for StrictValue {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(StrictValue)
    }
}

struct StrictVisitor;

impl<'de> de::Visitor<'de> for StrictVisitor {
    type Value = Value;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        StrictValue::deserialize(d).map(|v| v.0)
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut v = Vec::new();
        while let Some(StrictValue(x)) = seq.next_element()? {
            v.push(x);
        }
        Ok(Value::Array(v))
    }
    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut m = Map::new();
        while let Some(k) = map.next_key::<String>()? {
            if m.contains_key(&k) {
                return Err(de::Error::custom(format!("field `{k}` is given twice")));
            }
            let StrictValue(v) = map.next_value()?;
            m.insert(k, v);
        }
        Ok(Value::Object(m))
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Typed fields from a JSON object: unknown fields, missing fields and wrong types are 422
/// errors naming the field.
pub fn typed<T: DeserializeOwned>(map: Map<String, Value>) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(Value::Object(map)).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." || path.is_empty() {
            ApiError::validation(format!("invalid request: {inner}"))
        } else {
            ApiError::validation(format!("invalid request: field `{path}`: {inner}"))
        }
    })
}

/// The `image` field of a JSON body: base64 (standard alphabet, padding optional), with an
/// optional `data:image/...;base64,` prefix.
pub fn take_base64_image(map: &mut Map<String, Value>) -> Result<Vec<u8>, ApiError> {
    let v = map.remove("image").ok_or_else(|| {
        ApiError::validation(
            "missing field `image` (base64 in JSON, or a file part in multipart/form-data)",
        )
    })?;
    let Value::String(s) = v else {
        return Err(ApiError::validation(format!(
            "field `image`: expected a base64 string, got {}",
            json_kind(&v)
        )));
    };
    let data = match s.strip_prefix("data:") {
        Some(rest) => data_url_payload(rest)?,
        None => s.as_str(),
    };
    base64_bytes("image", data)
}

/// Standard base64 (padding optional, whitespace ignored) of the field `name`.
pub fn base64_bytes(name: &str, data: &str) -> Result<Vec<u8>, ApiError> {
    let data: String = data.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    engine
        .decode(data.as_bytes())
        .map_err(|e| ApiError::bad_request(format!("field `{name}`: invalid base64: {e}")))
}

/// The base64 payload of a `data:` URL (after `data:`): the media type must be `image/...` (415
/// otherwise, naming it) and the data base64 (`;base64,`).
fn data_url_payload(rest: &str) -> Result<&str, ApiError> {
    let (meta, data) = rest.split_once(',').ok_or_else(|| {
        ApiError::bad_request("field `image`: a data: URL needs a comma before its data")
    })?;
    let mut params = meta.split(';').map(str::trim);
    let media = params.next().unwrap_or("").to_ascii_lowercase();
    if !media.starts_with("image/") {
        let shown = if media.is_empty() {
            "none (text/plain by default)".to_string()
        } else {
            format!("{media:?}")
        };
        return Err(ApiError::new(
            ErrorType::UnsupportedMediaType,
            format!("field `image`: the data: URL's media type is {shown}; expected image/..."),
        ));
    }
    if !params.any(|p| p.eq_ignore_ascii_case("base64")) {
        return Err(ApiError::bad_request(format!(
            "field `image`: the data: URL ({media}) is not base64; use data:{media};base64,..."
        )));
    }
    Ok(data)
}

/// What an image's header says, read before any pixel is decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageHeader {
    pub format: image::ImageFormat,
    pub width: u32,
    pub height: u32,
    /// Bytes per pixel of the decoder's output (before conversion to RGB).
    pub bytes_per_pixel: u8,
}

impl ImageHeader {
    pub fn pixels(&self) -> u64 {
        self.width as u64 * self.height as u64
    }

    /// Bytes of the RGB image the request keeps until it is answered.
    pub fn rgb_bytes(&self) -> u64 {
        self.pixels() * 3
    }

    /// Most bytes decoding holds at once: the decoder's buffer, plus the RGB copy when the
    /// decoder's output is not already RGB.
    pub fn decode_bytes(&self) -> u64 {
        let decoded = self.pixels() * self.bytes_per_pixel as u64;
        if self.bytes_per_pixel == 3 {
            decoded
        } else {
            decoded + self.rgb_bytes()
        }
    }

    fn name(&self) -> String {
        format!("{:?}", self.format).to_uppercase()
    }
}

fn image_reader(bytes: &[u8]) -> Result<ImageReader<Cursor<&[u8]>>, ApiError> {
    ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| ApiError::bad_request(format!("image: cannot read: {e}")))
}

/// Reads an encoded image's format, size and colour type from its header and checks the pixel
/// count, so a small file claiming a huge image costs nothing.
pub fn probe_image(bytes: &[u8], max_pixels: u64) -> Result<ImageHeader, ApiError> {
    if bytes.is_empty() {
        return Err(ApiError::bad_request("field `image` is empty"));
    }
    let r = image_reader(bytes)?;
    let Some(format) = r.format() else {
        return Err(ApiError::bad_request(
            "image: unrecognised format (send PNG, JPEG, WebP, GIF, BMP or TIFF)",
        ));
    };
    let corrupt = |e: ImageError| {
        ApiError::bad_request(format!(
            "image: corrupt {} header: {e}",
            format!("{format:?}").to_uppercase()
        ))
    };
    let decoder = r.into_decoder().map_err(corrupt)?;
    let (width, height) = decoder.dimensions();
    let header = ImageHeader {
        format,
        width,
        height,
        bytes_per_pixel: decoder.color_type().bytes_per_pixel(),
    };
    let pixels = header.pixels();
    if pixels > max_pixels {
        return Err(ApiError::too_large(format!(
            "image: {width}x{height} = {pixels} pixels is more than the limit of {max_pixels} pixels"
        )));
    }
    if pixels == 0 {
        return Err(ApiError::bad_request(format!(
            "image: {width}x{height} has no pixels"
        )));
    }
    Ok(header)
}

/// Decodes an image whose header [`probe_image`] has checked, to RGB, holding the decoder to the
/// header's size.
pub fn decode_probed(bytes: &[u8], header: &ImageHeader) -> Result<RgbImage, ApiError> {
    // JPEGs as Pillow decodes them when libjpeg-turbo is there (lion_core::jpeg)
    if let Some(decoded) = lion_core::jpeg::decode(bytes) {
        return decoded.map_err(|e| {
            ApiError::bad_request(format!("image: cannot decode the JPEG data: {e}"))
        });
    }
    let mut r = image_reader(bytes)?;
    let mut lim = image::Limits::default();
    lim.max_image_width = Some(header.width);
    lim.max_image_height = Some(header.height);
    r.limits(lim);
    let img = r.decode().map_err(|e| match e {
        ImageError::Limits(l) => ApiError::too_large(format!(
            "image: decoding it needs more memory than allowed: {l}"
        )),
        e => ApiError::bad_request(format!(
            "image: cannot decode the {} data (corrupt or truncated?): {e}",
            header.name()
        )),
    })?;
    Ok(img.into_rgb8())
}

/// Checks an encoded image and decodes it to RGB ([`probe_image`], then [`decode_probed`]).
pub fn decode_image(bytes: &[u8], max_pixels: u64) -> Result<RgbImage, ApiError> {
    let header = probe_image(bytes, max_pixels)?;
    decode_probed(bytes, &header)
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
mod tests {
    use super::*;
    use crate::error::ErrorType;
    use serde_json::json;

    fn png(w: u32, h: u32) -> Vec<u8> {
        let img = RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8, y as u8, 7]));
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    }

    /// A 54-byte BMP header claiming `w` x `h` pixels, with no pixel data.
    fn bmp_header(w: u32, h: u32) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(b"BM");
        b.extend_from_slice(
            &54u32
                .wrapping_add(w.wrapping_mul(3).wrapping_mul(h))
                .to_le_bytes(),
        );
        b.extend_from_slice(&[0; 4]);
        b.extend_from_slice(&54u32.to_le_bytes());
        b.extend_from_slice(&40u32.to_le_bytes());
        b.extend_from_slice(&(w as i32).to_le_bytes());
        b.extend_from_slice(&(h as i32).to_le_bytes());
        b.extend_from_slice(&1u16.to_le_bytes());
        b.extend_from_slice(&24u16.to_le_bytes());
        b.extend_from_slice(&[0; 24]);
        b
    }

    #[test]
    fn decodes_a_png_with_its_pixels() {
        let img = decode_image(&png(5, 3), 100).unwrap();
        assert_eq!(img.dimensions(), (5, 3));
        assert_eq!(img.get_pixel(4, 2).0, [4, 2, 7]);
    }

    #[test]
    fn pixel_limit_is_checked_from_the_header() {
        // 60000 x 60000 claimed by 54 bytes: rejected before any decoding.
        let e = decode_image(&bmp_header(60000, 60000), 40_000_000).unwrap_err();
        assert_eq!(e.error_type, ErrorType::PayloadTooLarge, "{e}");
        assert!(e.error.contains("60000x60000"), "{e}");
        let e = decode_image(&png(20, 20), 399).unwrap_err();
        assert_eq!(e.error_type, ErrorType::PayloadTooLarge);
        assert!(decode_image(&png(20, 20), 400).is_ok());
    }

    #[test]
    fn corrupt_and_unknown_images_are_bad_requests() {
        let mut p = png(32, 32);
        p.truncate(p.len() / 2);
        let e = decode_image(&p, 10_000).unwrap_err();
        assert_eq!(e.error_type, ErrorType::BadRequest);
        assert!(e.error.contains("PNG"), "{e}");
        let e = decode_image(b"definitely not an image", 10_000).unwrap_err();
        assert!(e.error.contains("unrecognised format"), "{e}");
        let e = decode_image(b"", 10_000).unwrap_err();
        assert!(e.error.contains("empty"), "{e}");
        // The BMP header is fine but the pixels are missing.
        let e = decode_image(&bmp_header(8, 8), 10_000).unwrap_err();
        assert_eq!(e.error_type, ErrorType::BadRequest, "{e}");
    }

    #[test]
    fn base64_with_and_without_data_url_prefix() {
        let raw = png(2, 2);
        let b64 = base64::engine::general_purpose::STANDARD.encode(&raw);
        for s in [b64.clone(), format!("data:image/png;base64,{b64}")] {
            let mut m = Map::new();
            m.insert("image".into(), Value::String(s));
            assert_eq!(take_base64_image(&mut m).unwrap(), raw);
            assert!(m.is_empty());
        }
        let mut m = Map::new();
        m.insert("image".into(), Value::String("@@@".into()));
        assert!(take_base64_image(&mut m)
            .unwrap_err()
            .error
            .contains("invalid base64"));
        let mut m = Map::new();
        m.insert("image".into(), Value::from(3));
        assert_eq!(
            take_base64_image(&mut m).unwrap_err().error_type,
            ErrorType::Validation
        );
        assert!(take_base64_image(&mut Map::new())
            .unwrap_err()
            .error
            .contains("missing field `image`"));
    }

    #[test]
    fn unknown_fields_and_wrong_types_name_the_field() {
        let m = json_object(br#"{"question": "q", "colour": 0.5}"#).unwrap();
        let e = typed::<VqaBody>(m).unwrap_err();
        assert_eq!(e.error_type, ErrorType::Validation);
        assert!(e.error.contains("unknown field `colour`"), "{e}");
        assert!(e.error.contains("question"), "{e}");

        let m = json_object(br#"{"question": "q", "num_beams": "five"}"#).unwrap();
        let e = typed::<VqaBody>(m).unwrap_err();
        assert!(e.error.contains("`num_beams`"), "{e}");

        let m = json_object(br#"{"inputs": 3}"#).unwrap();
        let e = typed::<EmbedBody>(m).unwrap_err();
        assert!(
            e.error.contains("`inputs`") && e.error.contains("array of strings"),
            "{e}"
        );

        let m = json_object(br#"{}"#).unwrap();
        let e = typed::<GroundBody>(m).unwrap_err();
        assert!(e.error.contains("missing field `expression`"), "{e}");
    }

    #[test]
    fn bad_json_is_400_and_non_objects_422() {
        assert_eq!(
            json_object(b"{\"inputs\": ").unwrap_err().error_type,
            ErrorType::BadRequest
        );
        assert_eq!(
            json_object(b"[1, 2]").unwrap_err().error_type,
            ErrorType::Validation
        );
    }

    #[test]
    fn duplicate_keys_are_422_naming_the_key_at_any_depth() {
        let e = json_object(br#"{"image": "a", "question": "q", "image": "b"}"#).unwrap_err();
        assert_eq!(e.error_type, ErrorType::Validation, "{e}");
        assert!(e.error.contains("field `image` is given twice"), "{e}");
        let e = json_object(br#"{"messages": [{"role": "user", "role": "system"}]}"#).unwrap_err();
        assert!(e.error.contains("field `role` is given twice"), "{e}");
        assert!(e.error.contains("messages[0]"), "{e}");
        // Same key in different objects, numbers, nulls, nesting: all fine and unchanged.
        let text =
            r#"{"a": {"k": 1}, "b": {"k": [-2, 3.5, null, true, "s"]}, "c": 18446744073709551615}"#;
        let m = json_object(text.as_bytes()).unwrap();
        let want: Value = serde_json::from_str(text).unwrap();
        assert_eq!(Value::Object(m), want);
        // Malformed JSON and trailing garbage stay 400.
        assert_eq!(
            json_object(br#"{"a": 1} x"#).unwrap_err().error_type,
            ErrorType::BadRequest
        );
    }

    #[test]
    fn data_urls_must_be_base64_images() {
        let raw = png(2, 2);
        let b64 = base64::engine::general_purpose::STANDARD.encode(&raw);
        let take = |s: String| {
            let mut m = Map::new();
            m.insert("image".into(), Value::String(s));
            take_base64_image(&mut m)
        };
        assert_eq!(take(format!("data:IMAGE/PNG;base64,{b64}")).unwrap(), raw);
        for (url, t, needle) in [
            (
                format!("data:text/plain;base64,{b64}"),
                ErrorType::UnsupportedMediaType,
                "\"text/plain\"",
            ),
            (
                format!("data:;base64,{b64}"),
                ErrorType::UnsupportedMediaType,
                "text/plain by default",
            ),
            (
                format!("data:application/pdf;base64,{b64}"),
                ErrorType::UnsupportedMediaType,
                "application/pdf",
            ),
            (
                format!("data:image/png,{b64}"),
                ErrorType::BadRequest,
                "not base64",
            ),
            (
                "data:image/png;base64".to_string(),
                ErrorType::BadRequest,
                "comma",
            ),
        ] {
            let e = take(url.clone()).unwrap_err();
            assert_eq!(e.error_type, t, "{url}: {e}");
            assert!(e.error.contains(needle), "{url}: {e}");
        }
    }

    #[test]
    fn the_header_gives_the_decoding_memory() {
        let h = probe_image(&png(10, 4), 100).unwrap();
        assert_eq!((h.width, h.height, h.bytes_per_pixel), (10, 4, 3));
        assert_eq!((h.rgb_bytes(), h.decode_bytes()), (120, 120));
        // RGBA: the decoder's 4 bytes a pixel plus the RGB copy.
        let rgba = image::RgbaImage::new(10, 4);
        let mut out = Cursor::new(Vec::new());
        rgba.write_to(&mut out, image::ImageFormat::Png).unwrap();
        let h = probe_image(out.get_ref(), 100).unwrap();
        assert_eq!((h.bytes_per_pixel, h.decode_bytes()), (4, 160 + 120));
        assert_eq!(
            decode_probed(out.get_ref(), &h).unwrap().dimensions(),
            (10, 4)
        );
    }

    #[test]
    fn inputs_accept_a_string_or_a_list() {
        let m = json_object(br#"{"inputs": "one"}"#).unwrap();
        assert_eq!(typed::<EmbedBody>(m).unwrap().inputs.0, vec!["one"]);
        let m = json_object(br#"{"inputs": ["a", "b"]}"#).unwrap();
        assert_eq!(typed::<EmbedBody>(m).unwrap().inputs.0, vec!["a", "b"]);
    }

    #[test]
    fn input_limits() {
        let l = Limits {
            max_embed_inputs: 2,
            max_embed_chars: 5,
            ..Limits::default()
        };
        assert!(check_inputs(Inputs(vec![]), &l).is_err());
        assert!(check_inputs(Inputs(vec!["a".into(); 3]), &l)
            .unwrap_err()
            .error
            .contains("limit is 2"));
        assert!(check_inputs(Inputs(vec!["a".into(), "toolong".into()]), &l)
            .unwrap_err()
            .error
            .contains("inputs[1]"));
        assert_eq!(
            check_inputs(Inputs(vec!["ab".into()]), &l).unwrap(),
            vec!["ab"]
        );
    }

    #[test]
    fn generation_options_defaults_and_ranges() {
        let l = Limits {
            max_new_tokens: 20,
            max_num_beams: 4,
            ..Limits::default()
        };
        let m = json_object(br#"{"question": "q"}"#).unwrap();
        let b: VqaBody = typed(m).unwrap();
        let o = generation_options(TaskKind::Vqa, &b, &l).unwrap();
        assert_eq!(o.num_beams, 4); // LION's 5, capped by the server's limit
        assert_eq!(o.max_new_tokens, 10);
        assert_eq!(o.repetition_penalty, 1.5);
        for (body, field) in [
            (
                r#"{"question": "q", "max_new_tokens": 21}"#,
                "max_new_tokens",
            ),
            (
                r#"{"question": "q", "max_new_tokens": 0}"#,
                "max_new_tokens",
            ),
            (r#"{"question": "q", "num_beams": 9}"#, "num_beams"),
            (
                r#"{"question": "q", "min_new_tokens": 15, "max_new_tokens": 12}"#,
                "min_new_tokens",
            ),
            (
                r#"{"question": "q", "repetition_penalty": 0}"#,
                "repetition_penalty",
            ),
        ] {
            let b: VqaBody = typed(json_object(body.as_bytes()).unwrap()).unwrap();
            let e = generation_options(TaskKind::Vqa, &b, &l).unwrap_err();
            assert!(e.error.contains(field), "{body}: {e}");
            assert_eq!(e.error_type, ErrorType::Validation);
        }
    }

    #[test]
    fn sampling_options_and_their_errors() {
        let l = Limits {
            max_num_beams: 4,
            ..Limits::default()
        };
        let opts = |body: &str| {
            let b: VqaBody = typed(json_object(body.as_bytes()).unwrap()).unwrap();
            generation_options(TaskKind::Vqa, &b, &l)
        };
        // temperature 0 or absent: beam search, top_p ignored
        let o = opts(r#"{"question": "q", "temperature": 0, "top_p": 0.5}"#).unwrap();
        assert_eq!((o.sampling, o.num_beams), (None, 4));
        let o =
            opts(r#"{"question": "q", "temperature": 0.7, "top_p": 0.9, "top_k": 5, "seed": 3}"#)
                .unwrap();
        assert_eq!(o.num_beams, 1);
        assert_eq!(
            o.sampling,
            Some(Sampling {
                temperature: 0.7,
                top_p: 0.9,
                top_k: Some(5),
                seed: 3
            })
        );
        // no seed: a fresh one per request
        let a = opts(r#"{"question": "q", "temperature": 1}"#).unwrap();
        let b = opts(r#"{"question": "q", "temperature": 1}"#).unwrap();
        assert_ne!(a.sampling.unwrap().seed, b.sampling.unwrap().seed);
        for (body, field) in [
            (r#"{"question": "q", "temperature": -1}"#, "temperature"),
            (
                r#"{"question": "q", "temperature": 1, "top_p": 0}"#,
                "top_p",
            ),
            (
                r#"{"question": "q", "temperature": 1, "top_p": 1.5}"#,
                "top_p",
            ),
            (
                r#"{"question": "q", "temperature": 1, "top_k": 0}"#,
                "top_k",
            ),
            (
                r#"{"question": "q", "temperature": 1, "num_beams": 3}"#,
                "num_beams",
            ),
        ] {
            let e = opts(body).unwrap_err();
            assert!(e.error.contains(field), "{body}: {e}");
        }
    }

    #[test]
    fn given_tags_are_checked() {
        let l = Limits::default();
        let tags = |v: Value| check_tags(serde_json::from_value(v).unwrap(), &l);
        assert_eq!(
            tags(json!([{"tag": " dog ", "score": 0.9}])).unwrap(),
            Some(vec![("dog".to_string(), 0.9)])
        );
        assert_eq!(tags(Value::Null).unwrap(), None);
        let e = tags(json!([{"tag": "a", "score": 0.5}, {"tag": "", "score": 0.5}])).unwrap_err();
        assert!(e.error.contains("tags[1].tag"), "{e}");
        let e = tags(json!([{"tag": "a", "score": 1.5}])).unwrap_err();
        assert!(e.error.contains("tags[0].score"), "{e}");
        let many: Vec<Value> = (0..MAX_TAGS + 1)
            .map(|i| json!({"tag": format!("t{i}"), "score": 0.5}))
            .collect();
        assert!(tags(Value::Array(many))
            .unwrap_err()
            .error
            .contains("limit"));
        // multipart: JSON text
        assert_eq!(
            multipart_value("tags", r#"[{"tag": "x", "score": 0.1}]"#).unwrap(),
            json!([{"tag": "x", "score": 0.1}])
        );
        assert!(multipart_value("tags", "dog").is_err());
    }

    #[test]
    fn text_fields_are_checked() {
        let l = Limits {
            max_prompt_chars: 4,
            ..Limits::default()
        };
        assert!(check_text("question", None, true, &l).is_err());
        assert_eq!(check_text("prompt", None, false, &l).unwrap(), None);
        assert!(check_text("question", Some("  ".into()), true, &l).is_err());
        let e = check_text("question", Some("héllo".into()), true, &l).unwrap_err();
        assert!(e.error.contains("5 characters"), "{e}");
        assert!(check_text("question", Some("héll".into()), true, &l).is_ok());
    }

    #[test]
    fn multipart_numbers_are_parsed_and_errors_name_the_field() {
        assert_eq!(
            multipart_value("num_beams", " 3 ").unwrap(),
            Value::from(3u64)
        );
        assert_eq!(
            multipart_value("threshold", "0.5").unwrap(),
            Value::from(0.5)
        );
        assert_eq!(
            multipart_value("question", "42").unwrap(),
            Value::from("42")
        );
        let e = multipart_value("max_new_tokens", "lots").unwrap_err();
        assert!(e.error.contains("`max_new_tokens`"), "{e}");
    }
}
