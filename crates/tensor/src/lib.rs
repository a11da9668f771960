//! # kiln-tensor
//!
//! The n-dimensional array at the bottom of kiln: runtime [`DType`]s, strided [`Layout`]s whose
//! views never copy, a [`Device`] enum, and fast CPU kernels (GEMM through the `gemm` crate,
//! convolution as im2col + GEMM). It knows nothing of gradients or models and can be used alone:
//!
//! ```
//! use kiln_tensor::{Tensor, DType, Device};
//! let a = Tensor::arange(0.0, 6.0, 1.0, DType::F32, Device::Cpu)?.reshape([2, 3])?;
//! let b = a.transpose(0, 1)?;            // a view: no copy
//! let c = a.matmul(&b)?;                 // [2, 2]
//! assert_eq!(c.to_vec::<f32>()?, vec![5.0, 14.0, 14.0, 50.0]);
//! # Ok::<(), kiln_tensor::Error>(())
//! ```
//!
//! Every user mistake (shapes, dtypes, devices, files) is an [`Error`], never a panic.

pub mod backend;
mod creation;
#[cfg(feature = "cuda")]
pub mod cuda;
/// The CUDA backend: this build has none (enable the `cuda` feature).
#[cfg(not(feature = "cuda"))]
#[path = "cuda_dummy.rs"]
pub mod cuda;
mod device;
mod dtype;
mod error;
pub mod fast_math;
pub mod io;
mod layout;
#[cfg(feature = "linalg")]
pub mod linalg;
pub mod ops;
mod precision;
pub mod quant;
mod random;
mod shape;
pub mod simd;
pub mod storage;
mod tensor;
mod threads;

pub use device::Device;
pub use dtype::{DType, FloatDType, WithDType};
pub use error::{Error, Result};
pub use layout::Layout;
pub use ops::PackedRhs;
pub use precision::{matmul_precision, set_matmul_precision, MatmulPrecision, MatmulPrecisionGuard};

pub use random::TensorRng;
pub use shape::{AllDims, Dim, Dims, Shape};
pub use storage::live_storage_bytes;
pub use tensor::Tensor;
pub use threads::{in_pool, num_threads, set_num_threads, THREADS_ENV};

pub use half::{bf16, f16};
