//! The OpenAI-compatible HTTP server over an [`Engine`](crate::Engine).
//!
//! [`serve`] runs it on a listener with graceful shutdown; [`router`] is the bare
//! [`axum::Router`]. The server's [`ServerState`] may start *loading* (listening before the model
//! is ready: `/health` answers 503 until [`ServerState::set_ready`]).
//!
//! Endpoints (OpenAI's request and response formats; vLLM's extra sampling parameters):
//!
//! | route                       | what                                                        |
//! |-----------------------------|-------------------------------------------------------------|
//! | `POST /v1/completions`      | text completion of a prompt (text or token ids), SSE stream |
//! | `POST /v1/chat/completions` | chat through the model's chat template, SSE stream          |
//! | `POST /v1/embeddings`       | embeddings, when the state has an [`Embedder`]              |
//! | `GET /v1/models`            | the one served model                                        |
//! | `GET /health`               | 200 when ready, 503 while loading or after an engine failure |
//! | `GET /metrics`              | Prometheus text: engine gauges, counters, latency histograms |
//!
//! Errors are OpenAI's body, `{"error": {"message", "type", "param", "code"}}`. With an API key
//! configured, every `/v1/*` route needs `Authorization: Bearer <key>`; `/health` and `/metrics`
//! stay open (for probes and scrapers).
//!
//! Cancellation: a client that disconnects cancels its generation (the request's
//! [`Submission`](crate::Submission) is dropped, which frees its KV blocks).

mod auth;
mod body;
mod chat;
mod completions;
mod config;
mod embeddings;
mod error;
mod fields;
mod generation;
mod health;
mod ids;
mod logprobs;
mod metrics;
mod models;
mod request;
mod router;
mod server;
mod sse;
mod state;
mod text;

pub use config::ServerConfig;
pub use router::router;
pub use server::serve;
pub use state::{Embedder, Ready, ServerState};
