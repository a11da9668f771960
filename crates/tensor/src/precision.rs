//! The arithmetic f32 matrix products and convolutions use on this thread: full f32, or bf16
//! operands with f32 accumulation (mixed precision, as `torch.autocast(dtype=torch.bfloat16)`
//! does for matmuls and convolutions).
//!
//! The setting is read once when an op starts, on the calling thread, and travels with the op
//! into its worker threads; so it covers exactly the ops called inside the guard's scope, never
//! another thread's work sharing rayon's pool. Reductions, norms, softmax, element-wise math,
//! the fused attention kernel and f64 products are unaffected.

use std::cell::Cell;

/// How f32 matrix products (matmul, `matmul_bias`, convolutions and their gradients) compute.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MatmulPrecision {
    /// f32 operands, f32 accumulation (the default).
    #[default]
    F32,
    /// Operands rounded to bf16 (round to nearest even; subnormals flushed to zero), products
    /// accumulated in f32: AVX-512 BF16 dot products where the CPU has them, else the same
    /// arithmetic in f32 instructions (same bits, see `ops/bgemm`). Outputs stay f32.
    Bf16,
}

impl MatmulPrecision {
    /// The name used in configs and on the command line (`f32`, `bf16`).
    pub fn name(self) -> &'static str {
        match self {
            MatmulPrecision::F32 => "f32",
            MatmulPrecision::Bf16 => "bf16",
        }
    }
}

impl std::fmt::Display for MatmulPrecision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for MatmulPrecision {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "f32" | "fp32" => Ok(MatmulPrecision::F32),
            "bf16" => Ok(MatmulPrecision::Bf16),
            other => Err(format!("unknown precision `{other}`: expected `f32` or `bf16`")),
        }
    }
}

thread_local! {
    static PRECISION: Cell<MatmulPrecision> = const { Cell::new(MatmulPrecision::F32) };
}

/// The precision f32 products started on this thread use now.
pub fn matmul_precision() -> MatmulPrecision {
    PRECISION.with(|p| p.get())
}

/// Restores the previous precision when dropped.
#[must_use = "the previous precision returns as soon as the guard is dropped"]
pub struct MatmulPrecisionGuard {
    previous: MatmulPrecision,
}

impl Drop for MatmulPrecisionGuard {
    fn drop(&mut self) {
        PRECISION.with(|p| p.set(self.previous));
    }
}

/// Sets the precision of f32 products on this thread until the guard is dropped.
///
/// ```
/// use kiln_tensor::{matmul_precision, set_matmul_precision, MatmulPrecision, Tensor};
/// let a = Tensor::from_vec(vec![1.0f32 + 1.0 / 512.0, 2.0], [1, 2]).unwrap();
/// let b = Tensor::from_vec(vec![1.0f32, 1.0], [2, 1]).unwrap();
/// {
///     let _bf16 = set_matmul_precision(MatmulPrecision::Bf16);
///     // 1 + 2^-9 has no bf16 form (8 significant bits): it rounds to 1.
///     assert_eq!(a.matmul(&b).unwrap().to_vec::<f32>().unwrap(), vec![3.0]);
/// }
/// assert_eq!(matmul_precision(), MatmulPrecision::F32);
/// assert_eq!(a.matmul(&b).unwrap().to_vec::<f32>().unwrap(), vec![3.0 + 1.0 / 512.0]);
/// ```
pub fn set_matmul_precision(precision: MatmulPrecision) -> MatmulPrecisionGuard {
    let previous = PRECISION.with(|p| p.replace(precision));
    MatmulPrecisionGuard { previous }
}
