//! `POST /v1/completions`: OpenAI's (legacy) text completions.
//!
//! `prompt` is a string, an array of token ids, or a one-element array of either (several
//! prompts in one request are not supported). `max_tokens` defaults to 16 (OpenAI's default),
//! `logprobs` is an integer in `0..=20`. `echo`, `suffix` and `best_of` other than `n` are not
//! supported (400).

use std::time::Instant;

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use kiln_data::text::TextTokenizer;
use kiln_zoo::generate::MAX_LOGPROBS;
use serde_json::{json, Value};

use super::body::read_object;
use super::error::ApiError;
use super::fields::{as_integer, show, type_name, Fields};
use super::generation::{Ask, Job, Update, Usage};
use super::ids::{self, Head};
use super::logprobs;
use super::request::{check_model, parse_sampling, reject_logit_bias};
use super::router::App;
use super::sse::{self, Chunks};

/// The `object` of completions and their chunks.
const OBJECT: &str = "text_completion";

/// OpenAI's default `max_tokens` for completions.
const DEFAULT_MAX_TOKENS: usize = 16;

/// `POST /v1/completions`.
pub(crate) async fn handle(State(app): State<App>, request: Request) -> Response {
    complete(app, request)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

/// Token ids of a JSON array, if every element is an integer id.
fn token_ids(items: &[Value]) -> Result<Vec<u32>, ApiError> {
    items
        .iter()
        .map(|v| match as_integer(v) {
            Some(i) if (0..=u32::MAX as i128).contains(&i) => Ok(i as u32),
            _ => Err(ApiError::invalid_value(
                "prompt",
                format!(
                    "prompt token ids must be integers from 0 to {}, got {}",
                    u32::MAX,
                    show(v)
                ),
            )),
        })
        .collect()
}

/// The prompt's token ids.
fn parse_prompt(f: &Fields, tokenizer: &dyn TextTokenizer) -> Result<Vec<u32>, ApiError> {
    let encode = |text: &str| {
        tokenizer
            .encode(text)
            .map_err(|e| ApiError::invalid_value("prompt", format!("the prompt cannot be tokenized: {e}")))
    };
    let bad_type = |v: &Value| {
        ApiError::invalid_type(
            "prompt",
            format!(
                "prompt must be a string, an array of token ids, or an array holding one of those; got {}",
                type_name(v)
            ),
        )
    };
    match f.get("prompt") {
        None => Err(ApiError::bad_request("prompt is required")
            .param("prompt")
            .code("missing_required_parameter")),
        Some(Value::String(s)) => encode(s),
        Some(Value::Array(items)) if items.is_empty() => {
            Err(ApiError::invalid_value("prompt", "prompt is an empty array"))
        }
        Some(Value::Array(items)) if items.iter().all(Value::is_number) => token_ids(items),
        Some(Value::Array(items)) if items.len() == 1 => match &items[0] {
            Value::String(s) => encode(s),
            Value::Array(ids) => token_ids(ids),
            v => Err(bad_type(v)),
        },
        Some(Value::Array(items)) if items.iter().all(|v| v.is_string() || v.is_array()) => {
            Err(ApiError::unsupported(
                "prompt",
                format!(
                    "several prompts in one request ({}) are not supported; send one request per prompt",
                    items.len()
                ),
            ))
        }
        Some(v @ Value::Array(_)) => Err(bad_type(v)),
        Some(v) => Err(bad_type(v)),
    }
}

/// Parameters this server does not implement, refused rather than ignored.
fn reject_unsupported(f: &Fields, n: usize) -> Result<(), ApiError> {
    if f.bool("echo")? == Some(true) {
        return Err(ApiError::unsupported("echo", "echo is not supported"));
    }
    if f.string("suffix")?.is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::unsupported("suffix", "suffix is not supported"));
    }
    if let Some(b) = f.count("best_of", 1, super::request::MAX_N)? {
        if b != n {
            return Err(ApiError::unsupported(
                "best_of",
                format!("best_of other than n is not supported (best_of {b}, n {n})"),
            ));
        }
    }
    reject_logit_bias(f)
}

async fn complete(app: App, request: Request) -> Result<Response, ApiError> {
    let arrived = Instant::now();
    let body = read_object(request.into_body(), app.body_limit).await?;
    let f = Fields::new(&body);
    check_model(&f, app.state.model_id())?;
    let sampling = parse_sampling(&f, &["max_tokens"])?;
    let logprobs = f.count("logprobs", 0, MAX_LOGPROBS)?;
    reject_unsupported(&f, sampling.params.n)?;
    let ready = app.state.ready_engine()?;
    let prompt = parse_prompt(&f, ready.tokenizer.as_ref())?;
    let mut params = sampling.params.clone();
    params.max_new_tokens = sampling.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS);
    params.logprobs = logprobs;
    let n = params.n;
    let job = Job::submit(
        &app.state,
        ready,
        prompt,
        Ask {
            params,
            stop: sampling.stop.clone(),
            prompt_param: "prompt",
            arrived,
        },
    )?;
    let head = Head {
        id: ids::new_id("cmpl-"),
        created: ids::unix_now(),
        model: app.state.model_id().to_string(),
    };
    if sampling.stream {
        let chunks = CompletionChunks {
            head,
            offsets: vec![0; n],
        };
        return Ok(sse::respond(job, chunks, sampling.include_usage));
    }
    let (samples, usage) = job.collect().await?;
    let choices: Vec<Value> = samples
        .iter()
        .enumerate()
        .map(|(index, s)| {
            json!({
                "index": index,
                "text": s.text,
                "logprobs": logprobs.map(|_| logprobs::completion(&s.logprobs, 0).0),
                "finish_reason": s.finish_reason,
            })
        })
        .collect();
    let mut body = head.object(OBJECT, choices);
    body["usage"] = usage.json();
    Ok(Json(body).into_response())
}

/// Completion chunks (`object: "text_completion"`).
struct CompletionChunks {
    head: Head,
    /// Per choice, the characters streamed so far (for `text_offset`).
    offsets: Vec<usize>,
}

impl Chunks for CompletionChunks {
    fn opening(&mut self) -> Vec<Value> {
        Vec::new()
    }

    fn update(&mut self, update: Update) -> Option<Value> {
        let choice = match update {
            Update::Text {
                sample,
                text,
                logprobs,
            } => {
                let lp = (!logprobs.is_empty()).then(|| {
                    let (v, end) = logprobs::completion(&logprobs, self.offsets[sample]);
                    self.offsets[sample] = end;
                    v
                });
                json!({"index": sample, "text": text, "logprobs": lp, "finish_reason": null})
            }
            Update::Finish { sample, reason } => {
                json!({"index": sample, "text": "", "logprobs": null, "finish_reason": reason})
            }
        };
        Some(self.head.object(OBJECT, vec![choice]))
    }

    fn usage(&self, usage: Usage) -> Value {
        let mut v = self.head.object(OBJECT, Vec::new());
        v["usage"] = usage.json();
        v
    }
}
