//! [`ServeError`]: what the engine and the server report.

use thiserror::Error;

/// Errors of kiln-serve.
#[derive(Debug, Error)]
pub enum ServeError {
    /// A request parameter is invalid (`param` names it when there is one).
    #[error("{message}")]
    InvalidRequest {
        /// The parameter at fault.
        param: Option<String>,
        /// What was wrong and what was expected.
        message: String,
    },
    /// The prompt and `max_tokens` do not fit in the context.
    #[error("this model's maximum context length is {context} tokens; the request asks for {total} tokens ({prompt_tokens} in the prompt, {max_tokens} for the completion): reduce the prompt or max_tokens", total = prompt_tokens + max_tokens)]
    ContextOverflow {
        /// Tokens in the prompt.
        prompt_tokens: usize,
        /// Tokens asked for.
        max_tokens: usize,
        /// The model's context length.
        context: usize,
    },
    /// Too many requests are queued.
    #[error("the server is busy: {limit} requests are already waiting; retry later")]
    QueueFull {
        /// The queue limit.
        limit: usize,
    },
    /// The engine cannot take requests (shut down or failed).
    #[error("the engine is not running: {0}")]
    EngineDown(String),
    /// A failure inside the engine.
    #[error("engine error: {0}")]
    Engine(String),
    /// The model cannot be served.
    #[error("model {model} cannot be served: {reason}")]
    Unsupported {
        /// The model's name.
        model: String,
        /// Why.
        reason: String,
    },
    /// A bad engine or server configuration.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// An error of a model.
    #[error(transparent)]
    Model(#[from] kiln_zoo::Error),
}

/// Results of kiln-serve.
pub type Result<T> = std::result::Result<T, ServeError>;
