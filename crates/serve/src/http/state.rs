//! [`ServerState`]: what the handlers share — the model once loaded, its tokenizer, template,
//! optional embedder, and the metrics.

use kiln_data::text::{ChatTemplate, TextTokenizer};
use std::sync::{Arc, OnceLock};

use super::error::ApiError;
use super::metrics::Metrics;
use crate::Engine;

/// A model that turns texts into vectors, for `/v1/embeddings`.
pub trait Embedder: Send + Sync {
    /// One vector of [`dims`](Embedder::dims) numbers per input, in order; the error is a message
    /// for the client.
    fn embed(&self, inputs: &[String]) -> Result<Vec<Vec<f32>>, String>;
    /// The length of every vector.
    fn dims(&self) -> usize;
    /// The id clients name it by (`model` of `/v1/embeddings`, listed by `/v1/models`).
    fn model_id(&self) -> &str;
}

/// Everything the server needs once the model is loaded.
pub struct Ready {
    /// The engine running the model.
    pub engine: Engine,
    /// The model's tokenizer: prompts to ids, ids to text; its end-of-sequence id stops generation.
    pub tokenizer: Arc<dyn TextTokenizer>,
    /// The chat template for `/v1/chat/completions` (without one that route answers 400).
    pub template: Option<ChatTemplate>,
    /// The embedding model for `/v1/embeddings` (without one that route answers 400).
    pub embedder: Option<Arc<dyn Embedder>>,
}

impl Ready {
    /// An engine and its tokenizer, without chat template nor embedder.
    pub fn new(engine: Engine, tokenizer: Arc<dyn TextTokenizer>) -> Ready {
        Ready {
            engine,
            tokenizer,
            template: None,
            embedder: None,
        }
    }

    /// Sets the chat template.
    pub fn with_template(mut self, template: Option<ChatTemplate>) -> Ready {
        self.template = template;
        self
    }

    /// Sets the embedder.
    pub fn with_embedder(mut self, embedder: Arc<dyn Embedder>) -> Ready {
        self.embedder = Some(embedder);
        self
    }
}

struct Inner {
    model_id: String,
    ready: OnceLock<Ready>,
    metrics: Metrics,
    created: u64,
}

/// The server's shared state; cheap to clone (clones share everything).
///
/// It starts either loading ([`ServerState::loading`], then [`ServerState::set_ready`] once the
/// model is loaded) or ready ([`ServerState::new`]).
#[derive(Clone)]
pub struct ServerState {
    inner: Arc<Inner>,
}

impl ServerState {
    /// A state whose model `model_id` is still loading: `/health` answers 503 and generation
    /// routes 503 until [`ServerState::set_ready`].
    pub fn loading(model_id: impl Into<String>) -> ServerState {
        ServerState {
            inner: Arc::new(Inner {
                model_id: model_id.into(),
                ready: OnceLock::new(),
                metrics: Metrics::default(),
                created: super::ids::unix_now(),
            }),
        }
    }

    /// A state serving `ready` as model `model_id` (the id responses and `/v1/models` carry).
    pub fn new(model_id: impl Into<String>, ready: Ready) -> ServerState {
        let state = Self::loading(model_id);
        // A fresh OnceLock is empty, so this cannot fail.
        let _ = state.inner.ready.set(ready);
        state
    }

    /// Marks the model loaded. Gives `ready` back when the state was already ready.
    pub fn set_ready(&self, ready: Ready) -> Result<(), Box<Ready>> {
        self.inner.ready.set(ready).map_err(Box::new)
    }

    /// The loaded model, if it is loaded.
    pub fn ready(&self) -> Option<&Ready> {
        self.inner.ready.get()
    }

    /// The served model's id.
    pub fn model_id(&self) -> &str {
        &self.inner.model_id
    }

    /// When the state was made, in Unix seconds (the `created` time of `/v1/models`).
    pub(crate) fn created(&self) -> u64 {
        self.inner.created
    }

    pub(crate) fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// The loaded model with a running engine, or the 503 to answer.
    pub(crate) fn ready_engine(&self) -> Result<&Ready, ApiError> {
        let ready = self.ready().ok_or_else(|| {
            ApiError::unavailable(format!(
                "the model {} is still loading; retry shortly",
                self.model_id()
            ))
        })?;
        if !ready.engine.is_alive() {
            let why = ready
                .engine
                .failure()
                .unwrap_or_else(|| "it was shut down".into());
            return Err(ApiError::unavailable(format!("the engine is not running: {why}")));
        }
        Ok(ready)
    }
}
