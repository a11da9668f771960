//! kiln-serve: serving kiln's causal language models.
//!
//! - [`engine`]: the batching engine (no HTTP): continuous batching, a paged KV cache with
//!   preemption, prefix caching, per-request sampling;
//! - [`http`]: an OpenAI-compatible HTTP server (axum) on top of it.

pub mod engine;
mod error;
pub mod http;

pub use engine::{Engine, EngineConfig, EngineStats, Event, FinishReason, RequestId, Submission};
pub use error::{Result, ServeError};
