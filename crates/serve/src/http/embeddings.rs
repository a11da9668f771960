//! `POST /v1/embeddings`: OpenAI's embeddings list, from the state's [`Embedder`](super::Embedder).
//!
//! `input` is a string or an array of strings (token-id inputs are not supported);
//! `encoding_format` is `float` (default) or `base64` (little-endian `f32`s, what the official
//! Python client asks for by default); `dimensions`, if given, must be the embedder's. Without an
//! embedder the route answers 400. `model` is the embedder's id (or the served model's). `usage` counts tokens with the served tokenizer.

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::body::read_object;
use super::error::ApiError;
use super::fields::{type_name, Fields};
use super::request::check_model;
use super::router::App;

/// The most inputs in one request (OpenAI's limit).
const MAX_INPUTS: usize = 2048;

/// `POST /v1/embeddings`.
pub(crate) async fn handle(State(app): State<App>, request: Request) -> Response {
    embed(app, request)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

/// Standard base64 with padding.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> shift) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The inputs as strings.
fn parse_input(f: &Fields) -> Result<Vec<String>, ApiError> {
    let inputs = match f.get("input") {
        None => {
            return Err(ApiError::bad_request("input is required")
                .param("input")
                .code("missing_required_parameter"))
        }
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => {
            if items.is_empty() {
                return Err(ApiError::invalid_value(
                    "input",
                    "input must not be an empty array",
                ));
            }
            if items.len() > MAX_INPUTS {
                return Err(ApiError::invalid_value(
                    "input",
                    format!("input takes at most {MAX_INPUTS} items, got {}", items.len()),
                ));
            }
            items
                .iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s.clone()),
                    Value::Number(_) | Value::Array(_) => Err(ApiError::unsupported(
                        "input",
                        "token-id inputs are not supported; send text",
                    )),
                    v => Err(ApiError::invalid_type(
                        "input",
                        format!(
                            "input must be a string or an array of strings; an element is {}",
                            type_name(v)
                        ),
                    )),
                })
                .collect::<Result<_, _>>()?
        }
        Some(v) => {
            return Err(ApiError::invalid_type(
                "input",
                format!(
                    "input must be a string or an array of strings, got {}",
                    type_name(v)
                ),
            ))
        }
    };
    Ok(inputs)
}

async fn embed(app: App, request: Request) -> Result<Response, ApiError> {
    let body = read_object(request.into_body(), app.body_limit).await?;
    let f = Fields::new(&body);
    // The embedding model answers to its own id (and, as the server's companion, to the
    // served model's); without one, only the served id is known.
    let embedder_id = app
        .state
        .ready()
        .and_then(|r| r.embedder.as_ref())
        .map(|e| e.model_id().to_string());
    match (&embedder_id, f.string("model")?) {
        (Some(id), Some(m)) if m != id && m != app.state.model_id() => {
            return Err(ApiError::model_not_found(m, id))
        }
        (None, _) => check_model(&f, app.state.model_id())?,
        _ => {}
    }
    let inputs = parse_input(&f)?;
    let base64_format = match f.string("encoding_format")? {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::invalid_value(
                "encoding_format",
                format!("encoding_format must be \"float\" or \"base64\", got {other:?}"),
            ))
        }
    };
    let dimensions = f.count("dimensions", 1, usize::MAX >> 1)?;
    f.string("user")?;
    let ready = app.state.ready().ok_or_else(|| {
        ApiError::unavailable(format!(
            "the model {} is still loading; retry shortly",
            app.state.model_id()
        ))
    })?;
    let Some(embedder) = ready.embedder.clone() else {
        return Err(ApiError::bad_request(format!(
            "model {} does not produce embeddings; this server serves a text generation model (use /v1/completions or /v1/chat/completions)",
            app.state.model_id()
        ))
        .param("model")
        .code("model_not_supported"));
    };
    let dims = embedder.dims();
    if let Some(d) = dimensions.filter(|&d| d != dims) {
        return Err(ApiError::unsupported(
            "dimensions",
            format!("this model's embeddings have {dims} dimensions; dimensions {d} is not supported"),
        ));
    }
    let prompt_tokens: usize = inputs
        .iter()
        .map(|s| ready.tokenizer.encode(s).map_or(0, |ids| ids.len()))
        .sum();
    let count = inputs.len();
    let vectors = tokio::task::spawn_blocking(move || embedder.embed(&inputs))
        .await
        .map_err(|e| ApiError::internal(format!("the embedder failed: {e}")))?
        .map_err(ApiError::bad_request)?;
    if vectors.len() != count || vectors.iter().any(|v| v.len() != dims) {
        return Err(ApiError::internal(format!(
            "the embedder returned {} vectors for {count} inputs (or vectors not of {dims} numbers)",
            vectors.len()
        )));
    }
    let data: Vec<Value> = vectors
        .iter()
        .enumerate()
        .map(|(index, v)| {
            let embedding = if base64_format {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                json!(base64(&bytes))
            } else {
                json!(v)
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    Ok(Json(json!({
        "object": "list",
        "data": data,
        "model": app.state.model_id(),
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }))
    .into_response())
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_matches_the_rfc_examples() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(super::base64(plain.as_bytes()), encoded);
        }
    }
}
