//! Errors of kiln-autograd.

use kiln_tensor::Shape;

/// What can go wrong while recording or differentiating.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A tensor operation failed (shapes, dtypes, devices...).
    #[error(transparent)]
    Tensor(#[from] kiln_tensor::Error),
    /// `backward` on a non-scalar output without a seed gradient.
    #[error("backward: the output has shape {0:?}; backward without a seed gradient needs a scalar (one element). Reduce it first (e.g. .sum_all() or .mean_all()) or call backward_with(seed)")]
    NonScalarLoss(Shape),
    /// `backward` on a value that no gradient flows into.
    #[error("backward: the output does not require grad: no input of its graph was created with requires_grad (or it was computed under no_grad)")]
    NoGraph,
    /// A gradient was asked for a variable that does not require grad.
    #[error(
        "{op}: variable {id} does not require grad; create it with Var::parameter / requires_grad(true)"
    )]
    NotRequiringGrad {
        /// The call that asked.
        op: &'static str,
        /// The variable's id.
        id: u64,
    },
    /// The seed gradient does not fit the output.
    #[error("backward_with: seed gradient has shape {seed:?} and dtype {seed_dtype}, the output has shape {out:?} and dtype {out_dtype}")]
    SeedMismatch {
        /// The seed's shape.
        seed: Shape,
        /// The seed's dtype.
        seed_dtype: kiln_tensor::DType,
        /// The output's shape.
        out: Shape,
        /// The output's dtype.
        out_dtype: kiln_tensor::DType,
    },
    /// gradcheck found analytic and numeric gradients that disagree.
    #[error("gradcheck: input {input}, element {index}: analytic {analytic} vs numeric {numeric} (tolerance {tol})")]
    GradcheckFailed {
        /// Which input.
        input: usize,
        /// Flat index of the element.
        index: usize,
        /// Gradient from backward.
        analytic: f64,
        /// Central finite difference.
        numeric: f64,
        /// The tolerance that was exceeded.
        tol: f64,
    },
    /// An argument is invalid.
    #[error("{op}: {reason}")]
    Invalid {
        /// The call.
        op: &'static str,
        /// What was wrong and what was expected.
        reason: String,
    },
}

/// Result with kiln-autograd's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
