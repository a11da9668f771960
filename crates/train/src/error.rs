//! The one error type of kiln-train.

use std::path::PathBuf;

/// What can go wrong configuring, running, logging or checkpointing a training run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration value is out of range (`TrainConfig: invalid batch_size = 0: must be > 0`).
    #[error("{what}: invalid {field} = {value}: {reason}")]
    Config {
        /// What is being configured (`TrainConfig`, `EarlyStopping`, ...).
        what: &'static str,
        /// The field.
        field: String,
        /// The offending value, formatted.
        value: String,
        /// What the value must satisfy.
        reason: String,
    },
    /// A configuration file could not be parsed.
    #[error("{}: cannot parse the training config: {reason}", path.display())]
    ConfigFile {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        reason: String,
    },
    /// A file or directory could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A checkpoint is incomplete, corrupt, or does not fit the model, optimizer or config.
    #[error("checkpoint {}: {reason}", path.display())]
    Checkpoint {
        /// The checkpoint directory (or file).
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// No complete checkpoint was found.
    #[error("no complete checkpoint in {}{}", dir.display(), describe_skipped(skipped))]
    NoCheckpoint {
        /// The directory searched.
        dir: PathBuf,
        /// Incomplete or corrupt candidates that were skipped, with the reason.
        skipped: Vec<(PathBuf, String)>,
    },
    /// Training diverged: a loss, a gradient norm or the weights are not finite.
    #[error("training diverged at step {step}: {what}; no update was applied and no checkpoint holds these values (lower the learning rate, clip gradients, or pass --on-nan skip-batch)")]
    Diverged {
        /// The optimizer step (1-based) that would have been applied.
        step: usize,
        /// What is not finite, with its value.
        what: String,
    },
    /// A batch or a model output does not fit what training needs.
    #[error("{0}")]
    Data(String),
    /// A TensorBoard event file is malformed (bad framing or CRC).
    #[error("{}: {reason}", path.display())]
    EventFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A collective operation (all-reduce, broadcast, barrier) failed.
    #[error("collective {op}: {reason}")]
    Collective {
        /// The operation.
        op: &'static str,
        /// What went wrong.
        reason: String,
    },
    /// A tensor operation failed.
    #[error(transparent)]
    Tensor(#[from] kiln_tensor::Error),
    /// Recording or differentiating failed.
    #[error(transparent)]
    Autograd(#[from] kiln_autograd::Error),
    /// A layer or state-dict operation failed.
    #[error(transparent)]
    Nn(#[from] kiln_nn::Error),
    /// An optimizer, schedule or clipping operation failed.
    #[error(transparent)]
    Optim(#[from] kiln_optim::Error),
    /// Loading data failed.
    #[error(transparent)]
    Dataset(#[from] kiln_data::Error),
    /// The model failed.
    #[error(transparent)]
    Model(#[from] kiln_zoo::Error),
}

fn describe_skipped(skipped: &[(PathBuf, String)]) -> String {
    if skipped.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = skipped
        .iter()
        .map(|(p, r)| format!("{} ({r})", p.display()))
        .collect();
    format!("; skipped incomplete or corrupt: {}", parts.join("; "))
}

/// Result with kiln-train's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// An [`Error::Config`].
    pub(crate) fn config(
        what: &'static str,
        field: impl Into<String>,
        value: impl std::fmt::Display,
        reason: impl Into<String>,
    ) -> Error {
        Error::Config {
            what,
            field: field.into(),
            value: value.to_string(),
            reason: reason.into(),
        }
    }

    /// An [`Error::Io`].
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// An [`Error::Checkpoint`].
    pub(crate) fn checkpoint(path: impl Into<PathBuf>, reason: impl Into<String>) -> Error {
        Error::Checkpoint {
            path: path.into(),
            reason: reason.into(),
        }
    }
}
