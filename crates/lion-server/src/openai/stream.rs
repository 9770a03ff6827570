//! `stream: true`: the server-sent events of an answer (`chat.completion.chunk` per piece, the
//! finish reason, the usage chunk, `data: [DONE]`) and the response body that carries them.

use super::*;

/// The events of a streamed answer, already formatted (`data: ...` and a blank line).
pub(super) struct SseBody(pub(super) tokio::sync::mpsc::Receiver<String>);

impl http_body::Body for SseBody {
    type Data = axum::body::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|e| e.map(|e| Ok(http_body::Frame::data(e.into()))))
    }
}

pub(super) fn sse_response(body: Body) -> Response {
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(body)
        .unwrap_or_else(|e| {
            OpenAiError(ApiError::new(ErrorType::Backend, e.to_string())).into_response()
        })
}

/// The `chat.completion.chunk` events of one streamed answer.
pub(super) struct Chunks {
    pub(super) id: String,
    pub(super) created: u64,
    /// `stream_options.include_usage`: a last chunk with the usage and no choices.
    pub(super) usage: bool,
}

impl Chunks {
    pub(super) fn chunk(&self, choices: Value, extra: Option<(&str, Value)>) -> String {
        let mut c = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": MODEL_ID,
            "choices": choices,
        });
        if let Some((k, v)) = extra {
            c[k] = v;
        }
        format!("data: {c}\n\n")
    }

    pub(super) fn choice(i: usize, delta: Value, finish: Value) -> Value {
        json!([{"index": i, "delta": delta, "finish_reason": finish, "logprobs": null}])
    }

    /// The role delta of each of the `n` choices.
    pub(super) fn role(&self, n: usize) -> String {
        (0..n)
            .map(|i| {
                let delta = json!({"role": "assistant", "content": ""});
                self.chunk(Self::choice(i, delta, Value::Null), None)
            })
            .collect()
    }

    /// A piece of choice `i`'s text.
    pub(super) fn piece(&self, (i, text): (usize, String)) -> String {
        self.chunk(Self::choice(i, json!({"content": text}), Value::Null), None)
    }

    /// Each choice's finish chunk (the last one carrying `lion`), then the usage chunk when
    /// asked for.
    pub(super) fn end(&self, g: &Generated, lion: Value) -> String {
        let last = g.texts.len() - 1;
        let mut out = String::new();
        for i in 0..g.texts.len() {
            let extra = (i == last).then(|| ("lion", lion.clone()));
            let finish = json!(g.finish_reason(i));
            out += &self.chunk(Self::choice(i, json!({}), finish), extra);
        }
        if self.usage {
            out += &self.chunk(json!([]), Some(("usage", g.usage())));
        }
        out
    }

    /// A whole answer at once (beam search): per choice a role delta and the text as one
    /// content delta, then the finish chunks and `[DONE]`.
    pub(super) fn whole(&self, g: &Generated, lion: Value) -> String {
        let mut out = String::new();
        for (i, t) in g.texts.iter().enumerate() {
            out += &self.chunk(
                Self::choice(i, json!({"role": "assistant", "content": ""}), Value::Null),
                None,
            );
            out += &self.piece((i, t.clone()));
        }
        out + &self.end(g, lion) + "data: [DONE]\n\n"
    }
}
