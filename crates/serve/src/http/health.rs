//! `GET /health`: 200 when the model is loaded and its engine runs; 503 while loading or after
//! the engine stopped.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::router::App;

/// `GET /health`.
pub(crate) async fn handle(State(app): State<App>) -> Response {
    match app.state.ready() {
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "loading"})),
        )
            .into_response(),
        Some(r) if !r.engine.is_alive() => {
            let error = r
                .engine
                .failure()
                .unwrap_or_else(|| "the engine was shut down".into());
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"status": "error", "error": error})),
            )
                .into_response()
        }
        Some(_) => (StatusCode::OK, Json(json!({"status": "ok"}))).into_response(),
    }
}
