//! Reading a request body as a JSON object: size limit (413), UTF-8 and JSON syntax (400).

use axum::body::Body;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde_json::{Map, Value};

use super::error::ApiError;

/// Reads `body` (at most `limit` bytes) and parses it as a JSON object.
///
/// serde_json stops at 128 levels of nesting, so deeply nested input is a 400, not a stack
/// overflow.
pub(crate) async fn read_object(body: Body, limit: usize) -> Result<Map<String, Value>, ApiError> {
    let bytes = match Limited::new(body, limit).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => return Err(ApiError::too_large(limit)),
        Err(e) => {
            return Err(ApiError::bad_request(format!(
                "could not read the request body: {e}"
            )))
        }
    };
    parse_object(&bytes)
}

/// Parses `bytes` as a JSON object.
pub(crate) fn parse_object(bytes: &[u8]) -> Result<Map<String, Value>, ApiError> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        ApiError::bad_request(format!(
            "the request body is not valid UTF-8 (invalid bytes at offset {})",
            e.valid_up_to()
        ))
    })?;
    if text.trim().is_empty() {
        return Err(ApiError::bad_request(
            "the request body is empty; send a JSON object",
        ));
    }
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(ApiError::bad_request(format!(
            "the request body must be a JSON object, got {}",
            super::fields::type_name(&other)
        ))),
        Err(e) => Err(ApiError::bad_request(format!(
            "the request body is not valid JSON: {e}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_object;

    #[test]
    fn bad_bodies_are_400_with_a_reason() {
        for (body, needle) in [
            (&b"\xff\xfe{}"[..], "UTF-8"),
            (b"", "empty"),
            (b"{\"a\": ", "not valid JSON"),
            (b"[1, 2]", "an array"),
        ] {
            let e = parse_object(body).unwrap_err();
            assert_eq!(e.status, 400);
            assert!(e.message.contains(needle), "{}", e.message);
        }
        let deep = "[".repeat(100_000);
        assert_eq!(parse_object(deep.as_bytes()).unwrap_err().status, 400);
        assert!(parse_object(b"{\"model\": \"x\"}").is_ok());
    }
}
