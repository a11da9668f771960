//! The one error type of kiln-optim.

/// What can go wrong while building an optimizer, stepping it, or saving and loading its state.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A tensor operation failed (shapes, dtypes, files...).
    #[error(transparent)]
    Tensor(#[from] kiln_tensor::Error),
    /// An autograd operation failed.
    #[error(transparent)]
    Autograd(#[from] kiln_autograd::Error),
    /// A hyperparameter is out of range (`SGD: invalid lr = -0.1: must be >= 0`).
    #[error("{optimizer}: invalid {field} = {value}: {reason}")]
    InvalidConfig {
        /// The optimizer, schedule or function whose configuration is wrong.
        optimizer: &'static str,
        /// The field (`lr`, `betas.0`, `groups[1].weight_decay`...).
        field: String,
        /// The offending value, formatted.
        value: String,
        /// What the value must satisfy.
        reason: String,
    },
    /// Saved optimizer state does not fit the optimizer (a missing key, a misshaped tensor...).
    #[error("optimizer state, key '{key}': {reason}")]
    State {
        /// The state key (`{param_name}.exp_avg`, `__step`).
        key: String,
        /// What is wrong, with the expected and found shapes where they apply.
        reason: String,
    },
    /// A parameter's gradient (or its state) does not fit the parameter.
    #[error("{optimizer}: parameter '{param}': {reason}")]
    Grad {
        /// The optimizer that was stepping.
        optimizer: &'static str,
        /// The parameter's name.
        param: String,
        /// What is wrong, with shapes or dtypes.
        reason: String,
    },
}

/// Result with kiln-optim's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// An [`Error::InvalidConfig`].
    pub(crate) fn config(
        optimizer: &'static str,
        field: impl Into<String>,
        value: impl std::fmt::Display,
        reason: impl Into<String>,
    ) -> Error {
        Error::InvalidConfig {
            optimizer,
            field: field.into(),
            value: value.to_string(),
            reason: reason.into(),
        }
    }

    /// An [`Error::State`].
    pub(crate) fn state(key: impl Into<String>, reason: impl Into<String>) -> Error {
        Error::State {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

/// Check `value >= 0` (false for NaN).
pub(crate) fn check_non_negative(optimizer: &'static str, field: &str, value: f64) -> Result<()> {
    if value >= 0.0 {
        Ok(())
    } else {
        Err(Error::config(optimizer, field, value, "must be >= 0"))
    }
}

/// Check `0 <= value < 1` (false for NaN).
pub(crate) fn check_unit_interval(optimizer: &'static str, field: &str, value: f64) -> Result<()> {
    if (0.0..1.0).contains(&value) {
        Ok(())
    } else {
        Err(Error::config(optimizer, field, value, "must be in [0, 1)"))
    }
}
