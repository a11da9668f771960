//! The request parameters the completion and chat routes share: `model`, the sampling
//! parameters (OpenAI's and vLLM's `top_k`, `min_p`, `repetition_penalty`), `n`, `seed`, `stop`,
//! `stream` and `stream_options`.

use std::hash::{BuildHasher, Hasher};

use kiln_zoo::generate::SamplingParams;
use serde_json::Value;

use super::error::ApiError;
use super::fields::{type_name, Fields};

/// The most samples one request may ask for (OpenAI's limit).
pub(crate) const MAX_N: usize = 128;
/// The most stop strings (OpenAI's limit).
pub(crate) const MAX_STOP: usize = 4;
/// The largest `max_tokens` read (larger values are rejected outright; anything above the
/// context is a context-length error anyway).
pub(crate) const MAX_TOKENS_LIMIT: usize = u32::MAX as usize;

/// The shared parameters of a generation request.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Sampling {
    /// Sampling parameters (`max_new_tokens`, `logprobs` and stop tokens are set later).
    pub params: SamplingParams,
    /// `max_tokens` (or `max_completion_tokens`), when given.
    pub max_tokens: Option<usize>,
    /// Stop strings.
    pub stop: Vec<String>,
    /// Answer as server-sent events.
    pub stream: bool,
    /// With `stream`, end with a chunk carrying `usage` (`stream_options.include_usage`).
    pub include_usage: bool,
}

/// Checks `model` against the served id.
///
/// As OpenAI, a request naming another model gets 404 `model_not_found`; `model` may be left out
/// (the served model is meant), which OpenAI requires but vLLM allows.
pub(crate) fn check_model(f: &Fields, served: &str) -> Result<(), ApiError> {
    match f.string("model")? {
        Some(m) if m != served => Err(ApiError::model_not_found(m, served)),
        _ => Ok(()),
    }
}

/// A fresh random seed (OpenAI samples differently each time unless `seed` is given).
fn random_seed() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(super::ids::unix_now());
    h.finish()
}

/// `stop`: a string or an array of up to [`MAX_STOP`] non-empty strings.
fn parse_stop(f: &Fields) -> Result<Vec<String>, ApiError> {
    let stops = match f.get("stop") {
        None => return Ok(Vec::new()),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => {
            if items.len() > MAX_STOP {
                return Err(ApiError::invalid_value(
                    "stop",
                    format!("stop takes at most {MAX_STOP} sequences, got {}", items.len()),
                ));
            }
            items
                .iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s.clone()),
                    v => Err(ApiError::invalid_type(
                        "stop",
                        format!(
                            "stop must be a string or an array of strings; an element is {}",
                            type_name(v)
                        ),
                    )),
                })
                .collect::<Result<Vec<_>, _>>()?
        }
        Some(v) => {
            return Err(ApiError::invalid_type(
                "stop",
                format!(
                    "stop must be a string or an array of strings, got {}",
                    type_name(v)
                ),
            ))
        }
    };
    if stops.iter().any(String::is_empty) {
        return Err(ApiError::invalid_value(
            "stop",
            "stop sequences must not be empty",
        ));
    }
    Ok(stops)
}

/// The shared parameters; `max_token_fields` are the names `max_tokens` goes by, the first
/// present one wins (chat: `max_completion_tokens`, then `max_tokens`).
pub(crate) fn parse_sampling(f: &Fields, max_token_fields: &[&str]) -> Result<Sampling, ApiError> {
    let mut max_tokens = None;
    for name in max_token_fields {
        if let Some(m) = f.count(name, 1, MAX_TOKENS_LIMIT)? {
            max_tokens.get_or_insert(m);
        }
    }
    let top_k = match f.integer("top_k", -1, u32::MAX as i128)? {
        // vLLM: -1 (or 0) keeps every token.
        None | Some(-1) | Some(0) => None,
        Some(k) => Some(k as usize),
    };
    let seed = match f.integer("seed", i64::MIN as i128, u64::MAX as i128)? {
        // OpenAI's seeds are signed 64-bit; a negative seed is used as its two's complement.
        Some(s) if s < 0 => s as i64 as u64,
        Some(s) => s as u64,
        None => random_seed(),
    };
    let top_p = f.number("top_p", 0.0, 1.0)?.unwrap_or(1.0);
    if top_p == 0.0 {
        return Err(ApiError::invalid_value(
            "top_p",
            "top_p must be greater than 0 and at most 1 (use temperature 0 for greedy decoding), got 0",
        ));
    }
    let repetition_penalty = f.number("repetition_penalty", 0.0, 100.0)?.unwrap_or(1.0);
    if repetition_penalty == 0.0 {
        return Err(ApiError::invalid_value(
            "repetition_penalty",
            "repetition_penalty must be greater than 0 (1 = off), got 0",
        ));
    }
    let params = SamplingParams {
        max_new_tokens: 0,
        temperature: f.number("temperature", 0.0, 2.0)?.unwrap_or(1.0),
        top_k,
        top_p,
        seed,
        stop_tokens: Vec::new(),
        min_p: f.number("min_p", 0.0, 1.0)?.unwrap_or(0.0),
        repetition_penalty,
        presence_penalty: f.number("presence_penalty", -2.0, 2.0)?.unwrap_or(0.0),
        frequency_penalty: f.number("frequency_penalty", -2.0, 2.0)?.unwrap_or(0.0),
        stop: Vec::new(),
        logprobs: None,
        n: f.count("n", 1, MAX_N)?.unwrap_or(1),
    };
    let stream = f.bool("stream")?.unwrap_or(false);
    let include_usage = match f.get("stream_options") {
        None => false,
        Some(Value::Object(o)) => Fields::new(o)
            .bool("include_usage")
            .map_err(|e| ApiError {
                param: Some("stream_options.include_usage".into()),
                message: format!("stream_options.{}", e.message),
                ..e
            })?
            .unwrap_or(false),
        Some(v) => {
            return Err(ApiError::invalid_type(
                "stream_options",
                format!("stream_options must be an object, got {}", type_name(v)),
            ))
        }
    };
    f.string("user")?;
    Ok(Sampling {
        params,
        max_tokens,
        stop: parse_stop(f)?,
        stream,
        include_usage,
    })
}

/// Rejects `logit_bias` with entries (not supported); an empty map or `null` is fine.
pub(crate) fn reject_logit_bias(f: &Fields) -> Result<(), ApiError> {
    match f.get("logit_bias") {
        None => Ok(()),
        Some(Value::Object(m)) if m.is_empty() => Ok(()),
        Some(Value::Object(_)) => Err(ApiError::unsupported("logit_bias", "logit_bias is not supported")),
        Some(v) => Err(ApiError::invalid_type(
            "logit_bias",
            format!("logit_bias must be an object, got {}", type_name(v)),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<Sampling, ApiError> {
        parse_sampling(
            &Fields::new(v.as_object().unwrap()),
            &["max_completion_tokens", "max_tokens"],
        )
    }

    #[test]
    fn parameters_and_their_errors() {
        let s = parse(json!({
            "max_tokens": 5, "max_completion_tokens": 7, "temperature": 0, "top_k": -1, "seed": -1,
            "stop": ["a", "b"], "stream": true, "stream_options": {"include_usage": true}, "n": 3,
            "unknown_field": {"x": 1}
        }))
        .unwrap();
        assert_eq!(s.max_tokens, Some(7));
        assert_eq!(s.params.top_k, None);
        assert_eq!(s.params.seed, u64::MAX);
        assert_eq!(s.params.n, 3);
        assert!(s.stream && s.include_usage);
        assert_eq!(s.stop, ["a", "b"]);
        for (body, param) in [
            (json!({"temperature": "hot"}), "temperature"),
            (json!({"temperature": 3}), "temperature"),
            (json!({"top_p": 0}), "top_p"),
            (json!({"n": 0}), "n"),
            (json!({"n": 18446744073709551616u128 as f64}), "n"),
            (json!({"max_tokens": 1e30}), "max_tokens"),
            (json!({"max_tokens": -1}), "max_tokens"),
            (json!({"stop": ["a", "b", "c", "d", "e"]}), "stop"),
            (json!({"stop": [""]}), "stop"),
            (json!({"stop": 3}), "stop"),
            (json!({"stream": "yes"}), "stream"),
            (
                json!({"stream_options": {"include_usage": 1}}),
                "stream_options.include_usage",
            ),
            (json!({"seed": 1.5}), "seed"),
            (json!({"presence_penalty": 2.5}), "presence_penalty"),
        ] {
            let e = parse(body.clone()).unwrap_err();
            assert_eq!(e.status, 400, "{body}");
            assert_eq!(e.param.as_deref(), Some(param), "{body}");
            assert!(e.message.contains(param), "{body}: {}", e.message);
        }
    }
}
