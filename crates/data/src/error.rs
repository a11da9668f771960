//! Errors of kiln-data.

use std::path::PathBuf;

/// What can go wrong loading a dataset. Every variant names the file involved.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be opened or read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file's contents are not what the format requires (wrong magic number, truncated data,
    /// corrupt compression, ...).
    #[error("{}: {reason}", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// What was wrong, and what was expected.
        reason: String,
    },
    /// Two files that belong together disagree (e.g. image and label counts).
    #[error("{}: {reason}", path.display())]
    Mismatch {
        /// The dataset directory.
        path: PathBuf,
        /// What disagrees.
        reason: String,
    },
    /// Building a tensor failed.
    #[error(transparent)]
    Tensor(#[from] kiln_tensor::Error),
}

/// Result with kiln-data's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
