//! Checks of what a batch holds, with errors that say what was expected.

use kiln_tensor::{DType, Tensor};
use kiln_zoo::{Error, Result};

fn input_err(model: &str, reason: String) -> Error {
    Error::Input {
        model: model.into(),
        reason,
    }
}

/// `ids` must be integer token ids `[B, T]` (B, T > 0) below `vocab_size`. Returns `[B, T]`.
pub(crate) fn token_ids(model: &str, what: &str, ids: &Tensor, vocab_size: usize) -> Result<[usize; 2]> {
    let &[b, t] = ids.dims() else {
        return Err(input_err(
            model,
            format!(
                "expected {what} as token ids [batch, time], got shape {:?}",
                ids.shape()
            ),
        ));
    };
    if ids.dtype().is_float() || b == 0 || t == 0 {
        return Err(input_err(
            model,
            format!(
                "expected {what} as a non-empty integer tensor [batch, time], got {:?} {}",
                ids.shape(),
                ids.dtype()
            ),
        ));
    }
    check_range(model, what, ids, vocab_size, t)?;
    Ok([b, t])
}

/// Every value of the integer tensor `ids` (rows of `width`) in `0..limit`; the error gives the
/// position `[row, column]` of the first one that is not.
fn check_range(model: &str, what: &str, ids: &Tensor, limit: usize, width: usize) -> Result<()> {
    let v = ids.to_dtype(DType::I64)?.to_vec::<i64>()?;
    if let Some(i) = v.iter().position(|&x| x < 0 || x as usize >= limit) {
        return Err(input_err(
            model,
            format!(
                "{what}: value {} at [{}, {}] is outside 0..{limit}",
                v[i],
                i / width,
                i % width
            ),
        ));
    }
    Ok(())
}

/// `targets` must be integer class indices of exactly `shape`, each in `0..classes`.
pub(crate) fn targets(model: &str, targets: &Tensor, shape: &[usize], classes: usize) -> Result<Tensor> {
    if targets.dims() != shape || targets.dtype().is_float() {
        return Err(input_err(
            model,
            format!(
                "expected integer targets of shape {shape:?}, got {:?} {}",
                targets.shape(),
                targets.dtype()
            ),
        ));
    }
    let width = shape.last().copied().unwrap_or(1).max(1);
    check_range(model, "targets", targets, classes, width)?;
    Ok(targets.to_dtype(DType::I64)?)
}

/// Mean cross-entropy of logits `[N, C]` against class indices `[N]`.
pub(crate) fn cross_entropy(logits: &kiln_autograd::Var, targets: &Tensor) -> Result<kiln_autograd::Var> {
    Ok(kiln_nn::loss::cross_entropy(
        logits,
        &kiln_nn::loss::Target::Indices(targets.clone()),
        &Default::default(),
    )?)
}

/// The error for a config value out of range.
pub(crate) fn config_err(model: &str, reason: String) -> Error {
    Error::Config {
        model: model.into(),
        reason,
    }
}
