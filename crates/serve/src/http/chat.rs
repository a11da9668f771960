//! `POST /v1/chat/completions`: chat through the model's chat template.
//!
//! `messages` (`[{role, content}]`, content a string or an array of `{"type": "text"}` parts)
//! are rendered with the template and `add_generation_prompt`, then tokenized. `max_tokens`
//! (or `max_completion_tokens`) defaults to what is left of the context (and of the KV pool)
//! after the prompt. `logprobs` is a boolean with `top_logprobs` in `0..=20`. Tools, function
//! calls and response formats other than text are not supported (400).

use std::time::Instant;

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use kiln_data::text::ChatMessage;
use kiln_zoo::generate::MAX_LOGPROBS;
use serde_json::{json, Value};

use super::body::read_object;
use super::error::ApiError;
use super::fields::{type_name, Fields};
use super::generation::{Ask, Job, Update, Usage};
use super::ids::{self, Head};
use super::logprobs;
use super::request::{check_model, parse_sampling, reject_logit_bias};
use super::router::App;
use super::sse::{self, Chunks};
use super::state::Ready;

/// `POST /v1/chat/completions`.
pub(crate) async fn handle(State(app): State<App>, request: Request) -> Response {
    chat(app, request)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

/// The text of a message's `content`: a string, `null`, or an array of text parts.
fn content_text(i: usize, v: Option<&Value>) -> Result<String, ApiError> {
    let param = format!("messages[{i}].content");
    match v {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for (j, part) in parts.iter().enumerate() {
                let kind = part.get("type").and_then(Value::as_str);
                match (kind, part.get("text")) {
                    (Some("text"), Some(Value::String(t))) => text.push_str(t),
                    (Some("text"), _) => {
                        return Err(ApiError::invalid_type(
                            &param,
                            format!("{param}[{j}].text must be a string"),
                        ))
                    }
                    (Some(other), _) => {
                        return Err(ApiError::unsupported(
                            &param,
                            format!("{param}[{j}] is of type {other:?}; only text parts are supported"),
                        ))
                    }
                    (None, _) => {
                        return Err(ApiError::invalid_type(
                            &param,
                            format!("{param}[{j}] must be an object with a \"type\""),
                        ))
                    }
                }
            }
            Ok(text)
        }
        Some(v) => Err(ApiError::invalid_type(
            &param,
            format!(
                "{param} must be a string or an array of content parts, got {}",
                type_name(v)
            ),
        )),
    }
}

/// `messages` as chat messages.
fn parse_messages(f: &Fields) -> Result<Vec<ChatMessage>, ApiError> {
    let items = match f.get("messages") {
        None => {
            return Err(ApiError::bad_request("messages is required")
                .param("messages")
                .code("missing_required_parameter"))
        }
        Some(Value::Array(items)) if items.is_empty() => {
            return Err(ApiError::invalid_value("messages", "messages must not be empty"))
        }
        Some(Value::Array(items)) => items,
        Some(v) => {
            return Err(ApiError::invalid_type(
                "messages",
                format!(
                    "messages must be an array of {{role, content}} objects, got {}",
                    type_name(v)
                ),
            ))
        }
    };
    items
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let Value::Object(m) = m else {
                return Err(ApiError::invalid_type(
                    &format!("messages[{i}]"),
                    format!("messages[{i}] must be an object, got {}", type_name(m)),
                ));
            };
            let role = match m.get("role") {
                Some(Value::String(r)) => r.clone(),
                Some(v) => {
                    return Err(ApiError::invalid_type(
                        &format!("messages[{i}].role"),
                        format!("messages[{i}].role must be a string, got {}", type_name(v)),
                    ))
                }
                None => {
                    return Err(ApiError::bad_request(format!("messages[{i}].role is required"))
                        .param(format!("messages[{i}].role"))
                        .code("missing_required_parameter"))
                }
            };
            Ok(ChatMessage::new(role, content_text(i, m.get("content"))?))
        })
        .collect()
}

/// Parameters this server does not implement, refused rather than ignored.
fn reject_unsupported(f: &Fields) -> Result<(), ApiError> {
    for name in ["tools", "functions"] {
        if let Some(Value::Array(a)) = f.get(name) {
            if !a.is_empty() {
                return Err(ApiError::unsupported(name, format!("{name} are not supported")));
            }
        }
    }
    if let Some(rf) = f.get("response_format") {
        let kind = rf.get("type").and_then(Value::as_str);
        if kind != Some("text") {
            return Err(ApiError::unsupported(
                "response_format",
                "response_format other than {\"type\": \"text\"} is not supported",
            ));
        }
    }
    reject_logit_bias(f)
}

/// The prompt's token ids.
fn encode(ready: &Ready, model: &str, messages: &[ChatMessage]) -> Result<Vec<u32>, ApiError> {
    let template = ready.template.as_ref().ok_or_else(|| {
        ApiError::bad_request(format!("model {model} has no chat template; use /v1/completions"))
            .param("messages")
    })?;
    let text = template
        .render(messages, true)
        .map_err(|e| ApiError::invalid_value("messages", e.to_string()))?;
    ready
        .tokenizer
        .encode(&text)
        .map_err(|e| ApiError::invalid_value("messages", format!("the messages cannot be tokenized: {e}")))
}

/// The default `max_tokens`: what the context and the KV pool leave after the prompt (at least 1,
/// so that a prompt filling the context is reported as too long).
fn default_max_tokens(ready: &Ready, prompt_len: usize) -> usize {
    let engine = &ready.engine;
    let pool = engine.stats().blocks_total * engine.config().block_size;
    let room = engine.context_len().min(if pool > 0 { pool } else { usize::MAX });
    room.saturating_sub(prompt_len).max(1)
}

async fn chat(app: App, request: Request) -> Result<Response, ApiError> {
    let arrived = Instant::now();
    let body = read_object(request.into_body(), app.body_limit).await?;
    let f = Fields::new(&body);
    check_model(&f, app.state.model_id())?;
    let messages = parse_messages(&f)?;
    let sampling = parse_sampling(&f, &["max_completion_tokens", "max_tokens"])?;
    let want_logprobs = f.bool("logprobs")?.unwrap_or(false);
    let top_logprobs = f.count("top_logprobs", 0, MAX_LOGPROBS)?;
    if top_logprobs.is_some() && !want_logprobs {
        return Err(ApiError::invalid_value(
            "top_logprobs",
            "top_logprobs needs logprobs set to true",
        ));
    }
    reject_unsupported(&f)?;
    let ready = app.state.ready_engine()?;
    let prompt = encode(ready, app.state.model_id(), &messages)?;
    let mut params = sampling.params.clone();
    params.max_new_tokens = sampling
        .max_tokens
        .unwrap_or_else(|| default_max_tokens(ready, prompt.len()));
    params.logprobs = want_logprobs.then(|| top_logprobs.unwrap_or(0));
    let n = params.n;
    let job = Job::submit(
        &app.state,
        ready,
        prompt,
        Ask {
            params,
            stop: sampling.stop.clone(),
            prompt_param: "messages",
            arrived,
        },
    )?;
    let head = Head {
        id: ids::new_id("chatcmpl-"),
        created: ids::unix_now(),
        model: app.state.model_id().to_string(),
    };
    if sampling.stream {
        return Ok(sse::respond(job, ChatChunks { head, n }, sampling.include_usage));
    }
    let (samples, usage) = job.collect().await?;
    let choices: Vec<Value> = samples
        .iter()
        .enumerate()
        .map(|(index, s)| {
            json!({
                "index": index,
                "message": {"role": "assistant", "content": s.text},
                "logprobs": want_logprobs.then(|| logprobs::chat(&s.logprobs)),
                "finish_reason": s.finish_reason,
            })
        })
        .collect();
    let mut body = head.object("chat.completion", choices);
    body["usage"] = usage.json();
    Ok(Json(body).into_response())
}

/// Chat chunks (`object: "chat.completion.chunk"`): first the role of each choice, then content
/// deltas, then a chunk with the choice's `finish_reason` and an empty delta.
struct ChatChunks {
    head: Head,
    n: usize,
}

impl Chunks for ChatChunks {
    fn opening(&mut self) -> Vec<Value> {
        (0..self.n)
            .map(|i| {
                self.head.object(
                    "chat.completion.chunk",
                    vec![json!({
                        "index": i,
                        "delta": {"role": "assistant", "content": ""},
                        "logprobs": null,
                        "finish_reason": null,
                    })],
                )
            })
            .collect()
    }

    fn update(&mut self, update: Update) -> Option<Value> {
        let choice = match update {
            Update::Text {
                sample,
                text,
                logprobs,
            } => json!({
                "index": sample,
                "delta": {"content": text},
                "logprobs": (!logprobs.is_empty()).then(|| logprobs::chat(&logprobs)),
                "finish_reason": null,
            }),
            Update::Finish { sample, reason } => json!({
                "index": sample,
                "delta": {},
                "logprobs": null,
                "finish_reason": reason,
            }),
        };
        Some(self.head.object("chat.completion.chunk", vec![choice]))
    }

    fn usage(&self, usage: Usage) -> Value {
        let mut v = self.head.object("chat.completion.chunk", Vec::new());
        v["usage"] = usage.json();
        v
    }
}
