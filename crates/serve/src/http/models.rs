//! `GET /v1/models` and `GET /v1/models/{model}`: the served model (and the embedding model, when
//! the server has one).

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::error::ApiError;
use super::router::App;

/// The model object (OpenAI's, with vLLM's `max_model_len` once loaded).
fn model_object(app: &App) -> Value {
    let mut m = json!({
        "id": app.state.model_id(),
        "object": "model",
        "created": app.state.created(),
        "owned_by": "kiln",
    });
    if let Some(r) = app.state.ready() {
        m["max_model_len"] = json!(r.engine.context_len());
    }
    m
}

/// The embedding model's object, when the server has one.
fn embedder_object(app: &App) -> Option<Value> {
    let e = app.state.ready()?.embedder.as_ref()?;
    Some(json!({
        "id": e.model_id(),
        "object": "model",
        "created": app.state.created(),
        "owned_by": "kiln",
    }))
}

/// `GET /v1/models`.
pub(crate) async fn list(State(app): State<App>) -> Response {
    let data: Vec<Value> = std::iter::once(model_object(&app))
        .chain(embedder_object(&app))
        .collect();
    Json(json!({"object": "list", "data": data})).into_response()
}

/// `GET /v1/models/{model}`: the model, or 404 `model_not_found` for another id.
pub(crate) async fn retrieve(State(app): State<App>, model: Result<Path<String>, PathRejection>) -> Response {
    let model = match model {
        Ok(Path(model)) => model,
        Err(e) => return ApiError::bad_request(format!("invalid model id in the path: {e}")).into_response(),
    };
    if let Some(e) = embedder_object(&app).filter(|e| e["id"] == model.as_str()) {
        return Json(e).into_response();
    }
    if model != app.state.model_id() {
        return ApiError::model_not_found(&model, app.state.model_id()).into_response();
    }
    Json(model_object(&app)).into_response()
}
