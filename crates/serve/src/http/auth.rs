//! The API key check: `Authorization: Bearer <key>` on every `/v1/*` route when a key is set,
//! compared in constant time.

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use super::error::ApiError;
use super::router::App;

/// Whether `header` (an `Authorization` value) carries `key` as a bearer token.
fn bearer_matches(header: &[u8], key: &str) -> bool {
    let Some(scheme) = header.get(..7) else {
        return false;
    };
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return false;
    }
    let token = header[7..].trim_ascii();
    // `ct_eq` on slices of different lengths is false at once: only the length leaks.
    token.ct_eq(key.as_bytes()).into()
}

/// Middleware: 401 for a `/v1/*` request without the configured key.
pub(crate) async fn require_key(State(app): State<App>, request: Request, next: Next) -> Response {
    let Some(key) = app.api_key.as_deref() else {
        return next.run(request).await;
    };
    if !request.uri().path().starts_with("/v1/") {
        return next.run(request).await;
    }
    match request.headers().get(header::AUTHORIZATION) {
        None => ApiError::unauthorized(
            "You didn't provide an API key. Send it in the Authorization header as `Bearer YOUR_KEY`.",
        )
        .into_response(),
        Some(value) if bearer_matches(value.as_bytes(), key) => next.run(request).await,
        Some(_) => ApiError::unauthorized("Incorrect API key provided.").into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::bearer_matches;

    #[test]
    fn bearer_tokens() {
        assert!(bearer_matches(b"Bearer sk-1", "sk-1"));
        assert!(bearer_matches(b"bearer  sk-1 ", "sk-1"));
        assert!(!bearer_matches(b"Bearer sk-2", "sk-1"));
        assert!(!bearer_matches(b"Bearer sk-11", "sk-1"));
        assert!(!bearer_matches(b"Basic sk-1", "sk-1"));
        assert!(!bearer_matches(b"sk-1", "sk-1"));
        assert!(!bearer_matches(b"Bearer ", "sk-1"));
    }
}
