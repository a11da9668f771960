//! Errors of kiln-zoo.

/// What can go wrong looking up, configuring or running a model.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No model has this name.
    #[error("unknown model {name:?}; known models: {}", known.join(", "))]
    UnknownModel {
        /// The name asked for.
        name: String,
        /// Every registered name.
        known: Vec<String>,
    },
    /// Two plugins registered the same name.
    #[error("model name {0:?} is registered more than once")]
    DuplicateModel(String),
    /// A configuration could not be parsed or is out of range.
    #[error("model {model}: invalid config: {reason}")]
    Config {
        /// The model.
        model: String,
        /// What was wrong.
        reason: String,
    },
    /// A batch does not fit the model.
    #[error("model {model}: {reason}")]
    Input {
        /// The model.
        model: String,
        /// What was wrong and what was expected.
        reason: String,
    },
    /// Generation was asked for something impossible (bad sampling parameters, a prompt token
    /// outside the vocabulary, logits of the wrong length).
    #[error("generation: {0}")]
    Generation(String),
    /// Building or running a layer failed.
    #[error(transparent)]
    Nn(#[from] kiln_nn::Error),
    /// A tensor operation failed.
    #[error(transparent)]
    Tensor(#[from] kiln_tensor::Error),
    /// Recording or differentiating failed.
    #[error(transparent)]
    Autograd(#[from] kiln_autograd::Error),
}

/// Result with kiln-zoo's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
