//! The OpenAI-compatible chat API: `POST /v1/chat/completions` (text and `image_url` content
//! parts, non-streaming or server-sent events) and `GET /v1/models`, in the shape vLLM, TGI and
//! mistral.rs serve, so that OpenAI clients can talk to LION.
//!
//! A chat request becomes one caption, VQA or grounding job on the same queue as the LION
//! endpoints: the task comes from `lion.task` or is inferred from the last user message
//! ([`infer_task`]); the image is the last `image_url` of the conversation ([`crate::image_url`]);
//! `max_tokens`, `n`, `temperature`, `top_p`, `seed` map to the generation options, the `lion`
//! extension adds the rest and the image's tags. Streaming answers come as
//! `chat.completion.chunk` events: with greedy search or sampling (`num_beams` 1) a content
//! delta per word while the text is generated; beam search knows its text only at the end and
//! sends it as one delta per choice. Then the finish chunks and `data: [DONE]`; an error after
//! the first piece comes as an `{"error": ...}` event before `[DONE]`. Every error on these routes is OpenAI's
//! `{"error": {"message", "type", "param", "code"}}`.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use lion_core::Task;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::backend::{
    CaptionRequest, GenerationInfo, GroundRequest, GroundResponse, TagScore, TaskKind, VqaRequest,
};
use crate::error::{json_response, ApiError, ErrorType};
use crate::http::{body_bytes, content_type, decode, is_json, Shared};
use crate::input::{self, GenFields};
use crate::queue::Job;

mod stream;

use stream::*;
/// The one model this server lists and answers as.
pub const MODEL_ID: &str = "lion";

/// An [`ApiError`] answered in OpenAI's error shape, with the same status.
pub struct OpenAiError(pub ApiError);

impl From<ApiError> for OpenAiError {
    fn from(e: ApiError) -> Self {
        Self(e)
    }
}

impl OpenAiError {
    /// `{"error": {"message", "type", "param", "code"}}`.
    fn body(&self) -> Value {
        let e = &self.0;
        let kind = if e.status().is_server_error() {
            "server_error"
        } else {
            "invalid_request_error"
        };
        json!({"error": {
            "message": e.error,
            "type": kind,
            "param": null,
            "code": e.error_type.name(),
        }})
    }
}

impl IntoResponse for OpenAiError {
    fn into_response(self) -> Response {
        json_response(self.0.status(), &self.body())
    }
}

/// `GET /v1/models`: the LION model when one is loaded.
pub(crate) async fn models(State(s): State<Shared>) -> Response {
    let data: Vec<Value> = if s.caps.caption {
        vec![json!({"id": MODEL_ID, "object": "model", "created": 0, "owned_by": "lion-rs"})]
    } else {
        vec![]
    };
    json_response(StatusCode::OK, &json!({"object": "list", "data": data}))
}

/// Any other method on the chat routes.
pub async fn method_not_allowed(req: Request) -> OpenAiError {
    OpenAiError(ApiError::new(
        ErrorType::MethodNotAllowed,
        format!("{} is not allowed on {}", req.method(), req.uri().path()),
    ))
}

/// The task `lion.task` names: the server's route names (`caption`, `vqa`, `ground`) or
/// LION's (`rec` for grounding).
fn parse_chat_task(s: &str) -> Result<Task, ApiError> {
    match s {
        "ground" => Ok(Task::Rec),
        other => other.parse().map_err(|_| {
            ApiError::validation(format!(
                "field `lion.task`: expected caption, vqa or ground, got {other:?}"
            ))
        }),
    }
}

/// Phrases that ask for a box, longest first: the expression is the text after them.
const GROUND_PREFIXES: [&str; 14] = [
    "find the bounding box of",
    "give the bounding box of",
    "bounding box of",
    "bounding box for",
    "box around",
    "where is",
    "where are",
    "where's",
    "point to",
    "ground:",
    "locate:",
    "ground",
    "locate",
    "find",
];

/// The task a message asks for, and its text (question or expression; empty for a caption):
/// a grounding phrase ("where is", "locate", "find", "bounding box of", "ground:" ...) at the
/// start -> grounding of the rest; "bounding box" anywhere -> grounding of the text after it;
/// else a question mark -> VQA of the whole text; else (also no text) -> caption.
pub fn infer_task(text: &str) -> (Task, String) {
    let t = text.trim();
    // ASCII lower case keeps byte offsets
    let lower = t.to_ascii_lowercase();
    let clean = |rest: &str| {
        rest.trim_start_matches(|c: char| c.is_whitespace() || c == ':' || c == ',')
            .trim_end_matches(|c: char| c.is_whitespace() || matches!(c, '?' | '.' | '!'))
            .to_string()
    };
    for p in GROUND_PREFIXES {
        let boundary = lower[p.len().min(lower.len())..]
            .chars()
            .next()
            .is_none_or(|c| !c.is_alphanumeric());
        if lower.starts_with(p) && boundary {
            return (Task::Rec, clean(&t[p.len()..]));
        }
    }
    if let Some(i) = lower.find("bounding box") {
        let mut rest = &t[i + "bounding box".len()..];
        for w in [" of ", " for ", " around "] {
            if rest.to_ascii_lowercase().starts_with(w) {
                rest = &rest[w.len()..];
                break;
            }
        }
        return (Task::Rec, clean(rest));
    }
    if t.contains('?') {
        (Task::Vqa, t.to_string())
    } else {
        (Task::Caption, String::new())
    }
}

/// The `lion` extension of a chat request.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LionExt {
    task: Option<String>,
    tags: Option<Vec<TagScore>>,
    num_beams: Option<usize>,
    min_new_tokens: Option<usize>,
    repetition_penalty: Option<f32>,
    length_penalty: Option<f32>,
    top_k: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

/// The fields of a chat request this server reads (the rest: see [`IGNORED`], [`UNSUPPORTED`]).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChatBody {
    #[allow(dead_code)]
    model: Option<String>,
    messages: Vec<Value>,
    max_tokens: Option<usize>,
    max_completion_tokens: Option<usize>,
    n: Option<usize>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    seed: Option<u64>,
    #[serde(default)]
    stream: bool,
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    lion: LionExt,
}

impl GenFields for ChatBody {
    fn num_beams(&self) -> Option<usize> {
        self.lion.num_beams
    }
    fn max_new_tokens(&self) -> Option<usize> {
        self.max_completion_tokens.or(self.max_tokens)
    }
    fn min_new_tokens(&self) -> Option<usize> {
        self.lion.min_new_tokens
    }
    fn repetition_penalty(&self) -> Option<f32> {
        self.lion.repetition_penalty
    }
    fn length_penalty(&self) -> Option<f32> {
        self.lion.length_penalty
    }
    fn temperature(&self) -> Option<f32> {
        self.temperature
    }
    fn top_p(&self) -> Option<f32> {
        self.top_p
    }
    fn top_k(&self) -> Option<usize> {
        self.lion.top_k
    }
    fn seed(&self) -> Option<u64> {
        self.seed
    }
    fn n(&self) -> Option<usize> {
        self.n
    }
}

/// OpenAI fields that change nothing here and are accepted: bookkeeping, and the penalties at
/// their neutral 0.
const IGNORED: [&str; 6] = [
    "user",
    "metadata",
    "store",
    "service_tier",
    "frequency_penalty",
    "presence_penalty",
];

/// OpenAI fields this server cannot honour: an error when they ask for something.
const UNSUPPORTED: [&str; 11] = [
    "tools",
    "tool_choice",
    "functions",
    "function_call",
    "logprobs",
    "top_logprobs",
    "logit_bias",
    "stop",
    "response_format",
    "audio",
    "modalities",
];

/// Drops the ignorable fields and rejects the unsupported ones that ask for something.
fn strip_openai_extras(map: &mut Map<String, Value>) -> Result<(), ApiError> {
    for k in IGNORED {
        match map.remove(k) {
            Some(Value::Number(x)) if k.ends_with("_penalty") && x.as_f64() != Some(0.0) => {
                return Err(ApiError::validation(format!(
                    "field `{k}` is not supported (only 0); use `lion.repetition_penalty`"
                )));
            }
            _ => {}
        }
    }
    for k in UNSUPPORTED {
        let Some(v) = map.remove(k) else { continue };
        let neutral = match &v {
            Value::Null | Value::Bool(false) => true,
            Value::Array(a) => a.is_empty(),
            Value::Object(o) => k == "response_format" && o.get("type") == Some(&json!("text")),
            Value::String(s) => k == "tool_choice" && s == "none",
            _ => false,
        };
        if !neutral {
            return Err(ApiError::validation(format!(
                "field `{k}` is not supported by this server"
            )));
        }
    }
    Ok(())
}

/// The conversation's last image URL and the last user message's text.
fn read_messages(messages: &[Value]) -> Result<(String, String), ApiError> {
    if messages.is_empty() {
        return Err(ApiError::validation("field `messages` is empty"));
    }
    let mut image: Option<String> = None;
    let mut last_user_text: Option<String> = None;
    for (i, m) in messages.iter().enumerate() {
        let obj = m
            .as_object()
            .ok_or_else(|| ApiError::validation(format!("messages[{i}]: expected an object")))?;
        let role = obj.get("role").and_then(Value::as_str).ok_or_else(|| {
            ApiError::validation(format!("messages[{i}].role: missing or not a string"))
        })?;
        if !matches!(role, "system" | "developer" | "user" | "assistant") {
            return Err(ApiError::validation(format!(
                "messages[{i}].role: {role:?} is not supported (system, developer, user, assistant)"
            )));
        }
        let mut texts = Vec::new();
        let mut images_here = 0;
        match obj.get("content") {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) => texts.push(s.clone()),
            Some(Value::Array(parts)) => {
                for (j, p) in parts.iter().enumerate() {
                    let at = format!("messages[{i}].content[{j}]");
                    let ty = p.get("type").and_then(Value::as_str).ok_or_else(|| {
                        ApiError::validation(format!("{at}.type: missing or not a string"))
                    })?;
                    match ty {
                        "text" => texts.push(
                            p.get("text")
                                .and_then(Value::as_str)
                                .ok_or_else(|| ApiError::validation(format!("{at}.text: missing")))?
                                .to_string(),
                        ),
                        "image_url" => {
                            let url = match p.get("image_url") {
                                Some(Value::String(u)) => Some(u.clone()),
                                Some(Value::Object(o)) => {
                                    o.get("url").and_then(Value::as_str).map(str::to_string)
                                }
                                _ => None,
                            };
                            let url = url.ok_or_else(|| {
                                ApiError::validation(format!("{at}.image_url.url: missing"))
                            })?;
                            if role != "user" {
                                return Err(ApiError::validation(format!(
                                    "{at}: images belong in user messages"
                                )));
                            }
                            images_here += 1;
                            if images_here > 1 {
                                return Err(ApiError::validation(format!(
                                    "messages[{i}]: LION answers about one image; this \
                                     message has more"
                                )));
                            }
                            image = Some(url);
                        }
                        other => {
                            return Err(ApiError::validation(format!(
                                "{at}.type: {other:?} is not supported (text, image_url)"
                            )))
                        }
                    }
                }
            }
            Some(_) => {
                return Err(ApiError::validation(format!(
                    "messages[{i}].content: expected a string or an array of parts"
                )))
            }
        }
        if role == "user" {
            last_user_text = Some(texts.join("\n"));
        }
    }
    let text = last_user_text
        .ok_or_else(|| ApiError::validation("field `messages` has no user message"))?;
    let image = image.ok_or_else(|| {
        ApiError::validation(
            "no image: add an image_url content part (a data: URL, or file:// / http:// where \
             the server allows them) to a user message",
        )
    })?;
    Ok((image, text))
}

/// One generated answer of any task, as the chat API reports it.
struct Generated {
    texts: Vec<String>,
    info: GenerationInfo,
    boxes: Option<Vec<Value>>,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `POST /v1/chat/completions`.
pub(crate) async fn chat(State(s): State<Shared>, req: Request) -> Response {
    match chat_inner(&s, req).await {
        Ok(r) => r,
        Err(e) => OpenAiError(e).into_response(),
    }
}

async fn chat_inner(s: &Shared, req: Request) -> Result<Response, ApiError> {
    let deadline = s.deadline();
    let ct = content_type(req.headers());
    if !is_json(&ct) {
        return Err(ApiError::new(
            ErrorType::UnsupportedMediaType,
            format!("expected application/json, got {ct:?}"),
        ));
    }
    let bytes = body_bytes(req, s.cfg.limits.max_body_bytes).await?;
    let mut map = input::json_object(&bytes)?;
    strip_openai_extras(&mut map)?;
    let body: ChatBody = input::typed(map)?;
    let (url, text) = read_messages(&body.messages)?;
    let (task, text) = match &body.lion.task {
        Some(t) => (parse_chat_task(t)?, text.trim().to_string()),
        None => infer_task(&text),
    };
    let kind = TaskKind::from(task);
    let options = input::generation_options(kind, &body, &s.cfg.limits)?;
    let tags = input::check_tags(body.lion.tags.clone(), &s.cfg.limits)?;
    let limits = &s.cfg.limits;
    let text = match task {
        Task::Caption if text.is_empty() => None,
        Task::Caption => input::check_text("prompt", Some(text), false, limits)?,
        Task::Vqa => input::check_text("question", Some(text), true, limits)?,
        Task::Rec => input::check_text("expression", Some(text), true, limits)?,
    };
    let encoded = crate::image_url::load(&url, &s.cfg.images, limits.max_body_bytes).await?;
    let crate::http::Decoded { image, hold } = decode(s, encoded).await?;
    let (w, h) = image.dimensions();
    let input_text = text.clone().unwrap_or_default();
    let (sink, pieces) = match body.stream {
        true => {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            (Some(tx), Some(rx))
        }
        false => (None, None),
    };
    // the job, owning what it needs, so that a stream's body can drive it
    let shared = s.clone();
    let work = async move {
        let s = &shared;
        Ok::<_, ApiError>(match task {
            Task::Caption => {
                let req = CaptionRequest {
                    image,
                    prompt: text,
                    tags,
                    options,
                    stream: sink,
                };
                let r = s
                    .submit(kind, deadline, Some(hold), |reply| Job::Caption {
                        req,
                        reply,
                    })
                    .await?;
                Generated::new(r.caption, r.info, None)
            }
            Task::Vqa => {
                let req = VqaRequest {
                    image,
                    question: text.unwrap_or_default(),
                    tags,
                    options,
                    stream: sink,
                };
                let r = s
                    .submit(kind, deadline, Some(hold), |reply| Job::Vqa { req, reply })
                    .await?;
                Generated::new(r.answer, r.info, None)
            }
            Task::Rec => {
                let req = GroundRequest {
                    image,
                    expression: text.unwrap_or_default(),
                    tags,
                    options,
                    stream: sink,
                };
                let r = s
                    .submit(kind, deadline, Some(hold), |reply| Job::Ground {
                        req,
                        reply,
                    })
                    .await?;
                let mut g = Generated::new(r.text, r.info, None);
                let boxes = g
                    .texts
                    .iter()
                    .map(|t| {
                        let b = GroundResponse::from_text(t.clone(), w, h);
                        json!({"bbox": b.bbox, "bbox_normalized": b.bbox_normalized})
                    })
                    .collect();
                g.boxes = Some(boxes);
                g
            }
        })
    };
    let lion = move |g: &Generated| {
        json!({
            "task": kind.name(),
            "input": input_text,
            "seed": options.sampling.map(|x| x.seed),
            "num_beams": options.num_beams,
            "boxes": g.boxes,
        })
    };
    let chunks = Chunks {
        id: format!("chatcmpl-{:016x}", input::fresh_seed()),
        created: unix_now(),
        usage: body
            .stream_options
            .as_ref()
            .is_some_and(|o| o.include_usage),
    };
    let Some(mut pieces) = pieces else {
        let g = work.await?;
        return Ok(json_response(
            StatusCode::OK,
            &completion(&chunks.id, &g, lion(&g)),
        ));
    };
    // Stream: wait for the first piece of text or the end. Until then an error is an HTTP error
    // status (a full queue, a timeout); beam search has no pieces and sends its text at the end.
    let mut work = Box::pin(work);
    let first = tokio::select! {
        biased;
        Some(piece) = pieces.recv() => piece,
        r = &mut work => {
            let g = r?;
            return Ok(sse_response(Body::from(chunks.whole(&g, lion(&g)))));
        }
    };
    let (out, body_rx) = tokio::sync::mpsc::channel::<String>(64);
    let n = options.n;
    tokio::spawn(async move {
        let mut events = vec![chunks.role(n), chunks.piece(first)];
        let result = loop {
            for e in events.drain(..) {
                if out.send(e).await.is_err() {
                    // the client is gone: dropping the job abandons it (the worker stops
                    // generating once no request of its batch listens)
                    return;
                }
            }
            tokio::select! {
                biased;
                () = out.closed() => return,
                Some(piece) = pieces.recv() => events.push(chunks.piece(piece)),
                r = &mut work => break r,
            }
        };
        // the worker sent every piece before its answer
        while let Ok(piece) = pieces.try_recv() {
            events.push(chunks.piece(piece));
        }
        match result {
            Ok(g) => events.push(chunks.end(&g, lion(&g))),
            Err(e) => {
                tracing::warn!(error = %e.error, "streamed chat answer failed after its first piece");
                let err = OpenAiError(e).body();
                events.push(format!("data: {err}\n\n"));
            }
        }
        events.push("data: [DONE]\n\n".to_string());
        for e in events {
            if out.send(e).await.is_err() {
                return;
            }
        }
    });
    Ok(sse_response(Body::new(SseBody(body_rx))))
}

impl Generated {
    fn new(first: String, info: GenerationInfo, boxes: Option<Vec<Value>>) -> Self {
        let mut texts = vec![first];
        texts.extend(info.alternatives.iter().cloned());
        Self { texts, info, boxes }
    }

    fn finish_reason(&self, i: usize) -> &'static str {
        if self.info.finished.get(i).copied().unwrap_or(true) {
            "stop"
        } else {
            "length"
        }
    }

    fn usage(&self) -> Value {
        let completion: usize = self.info.completion_tokens.iter().sum();
        json!({
            "prompt_tokens": self.info.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": self.info.prompt_tokens + completion,
        })
    }
}

/// The non-streaming answer (`chat.completion`).
fn completion(id: &str, g: &Generated, lion: Value) -> Value {
    let choices: Vec<Value> = g
        .texts
        .iter()
        .enumerate()
        .map(|(i, t)| {
            json!({
                "index": i,
                "message": {"role": "assistant", "content": t},
                "finish_reason": g.finish_reason(i),
                "logprobs": null,
            })
        })
        .collect();
    json!({
        "id": id,
        "object": "chat.completion",
        "created": unix_now(),
        "model": MODEL_ID,
        "choices": choices,
        "usage": g.usage(),
        "lion": lion,
    })
}

#[cfg(test)]
mod tests;
