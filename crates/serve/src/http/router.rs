//! [`router`]: the routes, their middleware and the JSON fallbacks (404, 405).

use std::sync::Arc;

use axum::extract::Request;
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

use super::config::ServerConfig;
use super::error::ApiError;
use super::state::ServerState;
use super::{auth, chat, completions, embeddings, health, metrics, models};

/// What every handler sees: the state and the server's limits.
#[derive(Clone)]
pub(crate) struct App {
    /// The shared state.
    pub state: ServerState,
    /// The largest body accepted, in bytes.
    pub body_limit: usize,
    /// The API key `/v1/*` routes need, if any.
    pub api_key: Option<Arc<str>>,
}

/// The server's routes over `state` with `config`'s API key and body limit (see the
/// [module documentation](super) for the routes). [`serve`](super::serve) runs it.
pub fn router(state: ServerState, config: &ServerConfig) -> Router {
    let app = App {
        state,
        body_limit: config.body_limit_bytes,
        api_key: config.api_key.as_deref().map(Arc::from),
    };
    Router::new()
        .route("/v1/completions", post(completions::handle))
        .route("/v1/chat/completions", post(chat::handle))
        .route("/v1/embeddings", post(embeddings::handle))
        .route("/v1/models", get(models::list))
        .route("/v1/models/{*model}", get(models::retrieve))
        .route("/health", get(health::handle))
        .route("/metrics", get(metrics::handle))
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(from_fn_with_state(app.clone(), auth::require_key))
        .layer(from_fn_with_state(app.clone(), metrics::count_requests))
        .with_state(app)
}

async fn no_route(request: Request) -> Response {
    ApiError::no_route(request.method().as_str(), request.uri().path()).into_response()
}

async fn method_not_allowed(request: Request) -> Response {
    ApiError::method_not_allowed(request.method().as_str(), request.uri().path()).into_response()
}
