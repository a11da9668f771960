//! The one error type of kiln-tensor: every user mistake is a structured variant, never a panic.

use crate::{DType, Device, Shape};

/// Everything that can go wrong in a tensor operation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Two operands (or an operand and a request) have shapes that do not fit together.
    #[error("{op}: shape mismatch between {lhs:?} and {rhs:?}: {reason}")]
    ShapeMismatch {
        /// The operation that failed.
        op: &'static str,
        /// The first shape involved.
        lhs: Shape,
        /// The second shape involved.
        rhs: Shape,
        /// What was expected.
        reason: String,
    },
    /// A tensor's shape is not acceptable for the operation.
    #[error("{op}: invalid shape {shape:?}: {reason}")]
    InvalidShape {
        /// The operation that failed.
        op: &'static str,
        /// The offending shape.
        shape: Shape,
        /// What was expected.
        reason: String,
    },
    /// Two operands have different dtypes where one dtype is required.
    #[error("{op}: dtype mismatch: {lhs:?} vs {rhs:?} (both operands must have the same dtype)")]
    DTypeMismatch {
        /// The operation that failed.
        op: &'static str,
        /// The first dtype.
        lhs: DType,
        /// The second dtype.
        rhs: DType,
    },
    /// The dtype is not supported by this operation.
    #[error("{op}: unsupported dtype {dtype:?}: expected {expected}")]
    UnsupportedDType {
        /// The operation that failed.
        op: &'static str,
        /// The dtype received.
        dtype: DType,
        /// Which dtypes work.
        expected: &'static str,
    },
    /// Two operands live on different devices.
    #[error("{op}: operands on different devices, {lhs} and {rhs}: move one with .to_device(..)")]
    DeviceMismatch {
        /// The operation that failed.
        op: &'static str,
        /// The first device.
        lhs: Device,
        /// The second device.
        rhs: Device,
    },
    /// A dimension index is out of range for the tensor's rank.
    #[error("{op}: dimension {dim} out of range for a tensor of rank {rank}")]
    DimOutOfRange {
        /// The operation that failed.
        op: &'static str,
        /// The requested dimension (possibly negative).
        dim: i64,
        /// The rank of the tensor.
        rank: usize,
    },
    /// An index or range exceeds a dimension's size.
    #[error("{op}: index {index} out of range for dimension {dim} of size {size}")]
    IndexOutOfRange {
        /// The operation that failed.
        op: &'static str,
        /// The offending index.
        index: i64,
        /// The dimension indexed.
        dim: usize,
        /// The size of that dimension.
        size: usize,
    },
    /// The number of elements does not match the requested shape.
    #[error("{op}: {got} elements cannot fill shape {shape:?} ({expected} elements)")]
    ElementCount {
        /// The operation that failed.
        op: &'static str,
        /// The shape requested.
        shape: Shape,
        /// Elements the shape needs.
        expected: usize,
        /// Elements provided.
        got: usize,
    },
    /// The device exists in kiln but this build cannot use it.
    #[error("device {0} needs kiln built with the `cuda` feature (cargo build --features cuda)")]
    NotCompiledWithCuda(Device),
    /// The build has CUDA but this machine cannot run it: no driver, no GPU, or a missing library.
    #[error("device {device} is unavailable: {reason}")]
    CudaUnavailable {
        /// The device asked for.
        device: Device,
        /// What is missing (the library or the GPU) and how to provide it.
        reason: String,
    },
    /// A CUDA driver, NVRTC or cuBLAS call failed.
    #[error("{op} on {device}: {reason}")]
    Cuda {
        /// The operation that failed.
        op: &'static str,
        /// The device it ran on.
        device: Device,
        /// The library's error.
        reason: String,
    },
    /// The operation has no kernel for the tensor's device.
    #[error(
        "{op} has no kernel on {device}: copy the tensor to the host first with .to_device(Device::Cpu)"
    )]
    UnsupportedDevice {
        /// The operation (or the host read) that was attempted.
        op: &'static str,
        /// The tensor's device.
        device: Device,
    },
    /// An argument is out of its valid domain (e.g. a zero step, a negative size).
    #[error("{op}: invalid argument: {reason}")]
    InvalidArgument {
        /// The operation that failed.
        op: &'static str,
        /// What was wrong and what was expected.
        reason: String,
    },
    /// A linear-algebra routine failed (singular matrix, not positive definite, ...).
    #[error("{op}: {reason}")]
    Linalg {
        /// The operation that failed.
        op: &'static str,
        /// The backend's explanation.
        reason: String,
    },
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file involved.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A file's contents are not in the expected format.
    #[error("{path}: invalid {format} file: {reason}")]
    Format {
        /// The file involved.
        path: String,
        /// The format expected (safetensors, npy, ...).
        format: &'static str,
        /// What was wrong.
        reason: String,
    },
}

/// Result with kiln-tensor's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Shorthand for an [`Error::InvalidArgument`].
    pub fn invalid(op: &'static str, reason: impl Into<String>) -> Self {
        Error::InvalidArgument {
            op,
            reason: reason.into(),
        }
    }
}
