//! Errors of kiln-nn.

use kiln_tensor::Shape;

/// What can go wrong building, running or loading a module.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A tensor operation failed.
    #[error(transparent)]
    Tensor(#[from] kiln_tensor::Error),
    /// Recording or differentiating failed.
    #[error(transparent)]
    Autograd(#[from] kiln_autograd::Error),
    /// A parameter the module needs is not in the loaded weights.
    #[error("missing parameter {name:?} (expected shape {expected:?}) in the loaded weights")]
    MissingKey {
        /// Full dotted name.
        name: String,
        /// The shape the module needs.
        expected: Shape,
    },
    /// A loaded tensor has the wrong shape.
    #[error("parameter {name:?}: the module expects shape {expected:?}, the weights have {got:?}")]
    ShapeMismatch {
        /// Full dotted name.
        name: String,
        /// The shape the module needs.
        expected: Shape,
        /// The shape found.
        got: Shape,
    },
    /// A loaded tensor's dtype cannot stand for the parameter (integer or boolean data for a
    /// float parameter, or the reverse).
    #[error("parameter {name:?}: the module holds {expected} values, the weights have {got} (not converted: a float parameter loads only float weights)")]
    DTypeMismatch {
        /// Full dotted name.
        name: String,
        /// The parameter's dtype.
        expected: kiln_tensor::DType,
        /// The dtype found.
        got: kiln_tensor::DType,
    },
    /// Strict loading found tensors no parameter asked for.
    #[error("unexpected keys in the loaded weights (strict loading): {0:?}")]
    UnexpectedKeys(Vec<String>),
    /// An input or configuration is invalid.
    #[error("{op}: {reason}")]
    Invalid {
        /// The layer or function.
        op: &'static str,
        /// What was wrong and what was expected.
        reason: String,
    },
}

impl Error {
    /// Shorthand for [`Error::Invalid`].
    pub fn invalid(op: &'static str, reason: impl Into<String>) -> Self {
        Error::Invalid {
            op,
            reason: reason.into(),
        }
    }
}

/// Result with kiln-nn's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
