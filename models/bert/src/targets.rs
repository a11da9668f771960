//! Reading integer targets and counting correct predictions, shared by the pre-training and
//! classification models.

use kiln_autograd::Var;
use kiln_tensor::{DType, Tensor};
use kiln_zoo::Result;

/// Targets with this value are not learned (PyTorch's default `ignore_index`).
pub(crate) const IGNORE_INDEX: i64 = -100;

/// The values of integer `targets` of shape `dims`, or what is wrong (`layout` describes the
/// expected layout).
pub(crate) fn integer_targets(
    targets: &Tensor,
    dims: &[usize],
    layout: &str,
) -> std::result::Result<Vec<i64>, String> {
    if targets.dtype().is_float() || targets.dims() != dims {
        return Err(format!(
            "targets must be integers of shape {dims:?} ({layout}); got {:?} {}",
            targets.dims(),
            targets.dtype()
        ));
    }
    targets
        .to_dtype(DType::I64)
        .and_then(|t| t.to_vec::<i64>())
        .map_err(|e| e.to_string())
}

/// How many rows of `logits` `[N, C]` have their highest score at the target (ties to the lower
/// index, as `argmax`).
pub(crate) fn argmax_hits(logits: &Tensor, targets: &[i64]) -> Result<usize> {
    let best = logits
        .argmax(1usize, false)?
        .to_dtype(DType::I64)?
        .to_vec::<i64>()?;
    Ok(best.iter().zip(targets).filter(|(a, b)| a == b).count())
}

/// The value of a scalar loss.
pub(crate) fn scalar(loss: &Var) -> Result<f64> {
    let v = loss.value().to_dtype(DType::F64)?.to_vec::<f64>()?;
    Ok(v.first().copied().unwrap_or(f64::NAN))
}
