//! The OpenAPI 3.0 document served at `GET /openapi.json`, written by hand. Limits in it are the
//! running server's, and each endpoint says whether this server has a model for it.

use serde_json::{json, Value};

use crate::backend::{Capabilities, TaskKind};
use crate::config::{default_max_new_tokens, ServerConfig};
use crate::error::ErrorType;

fn error_response(desc: &str) -> Value {
    json!({
        "description": desc,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
    })
}

/// Standard error answers of an endpoint that runs a model.
fn model_errors() -> Value {
    json!({
        "400": error_response("malformed JSON or multipart, bad base64, undecodable image"),
        "408": error_response("the request body did not arrive within the body timeout"),
        "413": error_response("body larger than the body limit, or image over the pixel limit or the whole decoded-image budget"),
        "415": error_response("unsupported Content-Type, or a data: URL that is not an image"),
        "422": error_response("unknown, missing, duplicated or invalid field (the message names it)"),
        "429": error_response("the model queue is full, or the decoded-image budget is in use"),
        "500": error_response("the model failed on this batch"),
        "501": error_response("this server has no model for this endpoint"),
        "503": error_response("the model worker has stopped"),
        "504": error_response("the request took longer than the request timeout"),
    })
}

fn merge(mut a: Value, b: Value) -> Value {
    if let (Some(a), Value::Object(b)) = (a.as_object_mut(), b) {
        a.extend(b);
    }
    a
}

fn generation_properties(cfg: &ServerConfig, kind: TaskKind) -> Value {
    let l = &cfg.limits;
    json!({
        "num_beams": {"type": "integer", "minimum": 1, "maximum": l.max_num_beams,
            "default": 5.min(l.max_num_beams), "description": "beam width (1 = greedy)"},
        "max_new_tokens": {"type": "integer", "minimum": 1, "maximum": l.max_new_tokens,
            "default": default_max_new_tokens(kind, l.max_new_tokens)},
        "min_new_tokens": {"type": "integer", "minimum": 0, "default": 0,
            "description": "at most max_new_tokens"},
        "repetition_penalty": {"type": "number", "minimum": 0.01, "maximum": 10.0, "default": 1.5},
        "length_penalty": {"type": "number", "minimum": -10.0, "maximum": 10.0, "default": 1.0},
        "temperature": {"type": "number", "minimum": 0, "maximum": 100, "default": 0,
            "description": "> 0 samples (with num_beams 1); 0 or absent: greedy / beam search"},
        "top_p": {"type": "number", "exclusiveMinimum": 0, "maximum": 1, "default": 1,
            "description": "nucleus sampling (with temperature > 0)"},
        "top_k": {"type": "integer", "minimum": 1, "description": "keep the k most likely tokens (with temperature > 0); off when absent"},
        "seed": {"type": "integer", "minimum": 0, "description": "sampling seed; a fresh one when absent"},
        "tags": {"type": "array", "maxItems": crate::input::MAX_TAGS, "description": "tags with scores for LION's prompt, instead of the tagger's",
            "items": {"type": "object", "additionalProperties": false, "required": ["tag", "score"],
                "properties": {"tag": {"type": "string"}, "score": {"type": "number", "minimum": 0, "maximum": 1}}}},
    })
}

fn image_property() -> Value {
    json!({"type": "string", "format": "byte",
        "description": "the image (PNG, JPEG, WebP, GIF, BMP, TIFF) as base64, optionally with a data: URL prefix"})
}

fn image_schema(
    name: &str,
    text: Option<(&str, bool, &str)>,
    extra: Value,
    cfg: &ServerConfig,
) -> Value {
    let mut props = json!({"image": image_property()});
    let mut required = vec![json!("image")];
    if let Some((field, req, desc)) = text {
        props[field] = json!({"type": "string", "maxLength": cfg.limits.max_prompt_chars, "description": desc});
        if req {
            required.push(json!(field));
        }
    }
    let props = merge(props, extra);
    json!({
        "title": name,
        "type": "object",
        "additionalProperties": false,
        "required": required,
        "properties": props,
    })
}

/// The multipart variant of an image schema: `image` is a file part, the rest are text parts.
fn multipart_schema(json_schema: &Value) -> Value {
    let mut s = json_schema.clone();
    s["properties"]["image"] = json!({"type": "string", "format": "binary"});
    s
}

fn image_endpoint(
    summary: &str,
    schema: &str,
    response: &str,
    caps: &Capabilities,
    kind: TaskKind,
) -> Value {
    let loaded = caps.supports(kind);
    json!({
        "post": {
            "summary": summary,
            "description": format!(
                "Model loaded on this server: {}. The image comes as base64 in JSON or as a file part `image` in multipart/form-data; its pixel count is checked from the header before decoding.",
                if loaded { "yes" } else { "no (answers 501)" }
            ),
            "operationId": kind.name(),
            "requestBody": {
                "required": true,
                "content": {
                    "application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}},
                    "multipart/form-data": {"schema": {"$ref": format!("#/components/schemas/{schema}Multipart")}},
                }
            },
            "responses": merge(json!({
                "200": {"description": "the result", "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{response}")}}}}
            }), model_errors()),
        }
    })
}

/// Builds the document for a server with these settings and models.
pub fn document(cfg: &ServerConfig, caps: &Capabilities) -> Value {
    let l = &cfg.limits;
    let caption = image_schema(
        "CaptionRequest",
        Some((
            "prompt",
            false,
            "instruction replacing the default captioning prompt",
        )),
        generation_properties(cfg, TaskKind::Caption),
        cfg,
    );
    let vqa = image_schema(
        "VqaRequest",
        Some(("question", true, "the question about the image")),
        generation_properties(cfg, TaskKind::Vqa),
        cfg,
    );
    let ground = image_schema(
        "GroundRequest",
        Some((
            "expression",
            true,
            "a referring expression naming one object",
        )),
        generation_properties(cfg, TaskKind::Ground),
        cfg,
    );
    let tags = image_schema(
        "TagsRequest",
        None,
        json!({
            "threshold": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1,
                "description": "one threshold for all tags instead of RAM's per-class thresholds"},
            "max_tags": {"type": "integer", "minimum": 1, "description": "keep the highest-scoring tags only"},
        }),
        cfg,
    );
    let box4 = json!({"type": "array", "items": {"type": "number"}, "minItems": 4, "maxItems": 4, "nullable": true});
    let error_types: Vec<&str> = ErrorType::ALL.iter().map(|t| t.name()).collect();
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "LION-rs server",
            "version": env!("CARGO_PKG_VERSION"),
            "description": format!(
                "Captioning, VQA, grounding and tagging with LION, and sentence embeddings. Requests are batched dynamically on one model worker (max batch {}, max wait {} ms, queue {}); request timeout {} ms.",
                cfg.batching.max_batch, cfg.batching.max_wait.as_millis(), cfg.batching.queue_capacity, cfg.request_timeout.as_millis()
            ),
        },
        "paths": {
            "/v1/embed": {"post": {
                "summary": "Sentence embeddings (text-embeddings-inference style)",
                "operationId": "embed",
                "description": format!("Model loaded on this server: {}.", if caps.embed { "yes" } else { "no (answers 501)" }),
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/EmbedRequest"}}}},
                "responses": merge(json!({
                    "200": {"description": "one embedding per input, in order",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/EmbedResponse"}}}}
                }), model_errors()),
            }},
            "/v1/caption": image_endpoint("Caption an image", "CaptionRequest", "CaptionResponse", caps, TaskKind::Caption),
            "/v1/vqa": image_endpoint("Answer a question about an image", "VqaRequest", "VqaResponse", caps, TaskKind::Vqa),
            "/v1/ground": image_endpoint("Locate the object a referring expression describes", "GroundRequest", "GroundResponse", caps, TaskKind::Ground),
            "/v1/tags": image_endpoint("Tag an image (RAM)", "TagsRequest", "TagsResponse", caps, TaskKind::Tags),
            "/health": {"get": {
                "summary": "Liveness and loaded models",
                "operationId": "health",
                "responses": {
                    "200": {"description": "serving", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Health"}}}},
                    "503": {"description": "the model worker has stopped", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Health"}}}},
                }
            }},
            "/metrics": {"get": {
                "summary": "Prometheus metrics (text format 0.0.4)",
                "operationId": "metrics",
                "responses": {"200": {"description": "metrics", "content": {"text/plain": {"schema": {"type": "string"}}}}}
            }},
            "/v1/chat/completions": {"post": {
                "summary": "OpenAI-compatible chat completion (text and image_url parts; stream: true for server-sent events)",
                "operationId": "chat_completions",
                "description": format!(
                    "LION model loaded on this server: {}. The task comes from `lion.task` or is inferred from the last user message; see the README. file:// image URLs: {}; http:// image URLs: {}. Errors come as {{\"error\": {{\"message\", \"type\", \"param\", \"code\"}}}}.",
                    if caps.caption { "yes" } else { "no (answers 501)" },
                    if cfg.images.file_root.is_some() { "under the server's image root" } else { "off" },
                    if cfg.images.allow_http { "on" } else { "off" },
                ),
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object", "required": ["messages"]}}}},
                "responses": {
                    "200": {"description": "a chat.completion object, or text/event-stream of chat.completion.chunk objects ending with data: [DONE]",
                        "content": {"application/json": {"schema": {"type": "object"}}, "text/event-stream": {"schema": {"type": "string"}}}},
                    "4XX": {"description": "OpenAI error object", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/OpenAiError"}}}},
                    "5XX": {"description": "OpenAI error object", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/OpenAiError"}}}},
                }
            }},
            "/v1/models": {"get": {
                "summary": "OpenAI-compatible model list",
                "operationId": "models",
                "responses": {"200": {"description": "the LION model when loaded", "content": {"application/json": {"schema": {"type": "object"}}}}}
            }},
            "/": {"get": {
                "summary": "The playground page (HTML)",
                "operationId": "playground",
                "responses": {"200": {"description": "HTML", "content": {"text/html": {"schema": {"type": "string"}}}}}
            }},
            "/openapi.json": {"get": {
                "summary": "This document",
                "operationId": "openapi",
                "responses": {"200": {"description": "OpenAPI 3 document", "content": {"application/json": {"schema": {"type": "object"}}}}}
            }},
        },
        "components": {"schemas": {
            "EmbedRequest": {
                "type": "object",
                "additionalProperties": false,
                "required": ["inputs"],
                "properties": {"inputs": {"oneOf": [
                    {"type": "string", "maxLength": l.max_embed_chars},
                    {"type": "array", "items": {"type": "string", "maxLength": l.max_embed_chars}, "minItems": 1, "maxItems": l.max_embed_inputs},
                ]}},
            },
            "EmbedResponse": {"type": "array", "items": {"type": "array", "items": {"type": "number"}}},
            "CaptionRequestMultipart": multipart_schema(&caption),
            "CaptionRequest": caption,
            "VqaRequestMultipart": multipart_schema(&vqa),
            "VqaRequest": vqa,
            "GroundRequestMultipart": multipart_schema(&ground),
            "GroundRequest": ground,
            "TagsRequestMultipart": multipart_schema(&tags),
            "TagsRequest": tags,
            "CaptionResponse": {"type": "object", "required": ["caption"], "properties": {"caption": {"type": "string"}}},
            "VqaResponse": {"type": "object", "required": ["answer"], "properties": {"answer": {"type": "string"}}},
            "GroundResponse": {"type": "object", "required": ["bbox", "bbox_normalized", "text"], "properties": {
                "bbox": merge(box4.clone(), json!({"description": "[x1, y1, x2, y2] in pixels; null if the text holds no box"})),
                "bbox_normalized": merge(box4, json!({"description": "the box divided by width and height"})),
                "text": {"type": "string", "description": "the generated text"},
            }},
            "TagsResponse": {"type": "object", "required": ["tags"], "properties": {"tags": {"type": "array", "items": {
                "type": "object", "required": ["tag", "score"],
                "properties": {"tag": {"type": "string"}, "score": {"type": "number"}}
            }}}},
            "Health": {"type": "object", "properties": {
                "status": {"type": "string", "enum": ["ok", "unhealthy"]},
                "tasks": {"type": "object", "additionalProperties": {"type": "boolean"}},
                "queue": {"type": "object", "properties": {"depth": {"type": "integer"}, "capacity": {"type": "integer"}}},
                "version": {"type": "string"},
            }},
            "OpenAiError": {"type": "object", "required": ["error"], "properties": {"error": {
                "type": "object", "required": ["message", "type", "code"], "properties": {
                    "message": {"type": "string"},
                    "type": {"type": "string", "enum": ["invalid_request_error", "server_error"]},
                    "param": {"type": "string", "nullable": true},
                    "code": {"type": "string", "enum": error_types.clone()},
                }}}},
            "ErrorResponse": {"type": "object", "required": ["error", "error_type"], "properties": {
                "error": {"type": "string"},
                "error_type": {"type": "string", "enum": error_types},
            }},
        }},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `$ref` points at a schema that exists.
    fn refs(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    if k == "$ref" {
                        out.push(x.as_str().unwrap().to_string());
                    } else {
                        refs(x, out);
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
            _ => {}
        }
    }

    #[test]
    fn refs_resolve_and_limits_are_the_servers() {
        let mut cfg = ServerConfig::default();
        cfg.limits.max_new_tokens = 77;
        let doc = document(&cfg, &Capabilities::default());
        let mut r = Vec::new();
        refs(&doc, &mut r);
        assert!(r.len() > 10);
        for x in r {
            let name = x.strip_prefix("#/components/schemas/").unwrap();
            assert!(doc["components"]["schemas"].get(name).is_some(), "{x}");
        }
        assert_eq!(
            doc["components"]["schemas"]["VqaRequest"]["properties"]["max_new_tokens"]["maximum"],
            77
        );
        assert_eq!(
            doc["components"]["schemas"]["VqaRequest"]["required"],
            json!(["image", "question"])
        );
    }
}
