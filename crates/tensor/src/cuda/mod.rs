//! The CUDA backend (feature `cuda`): device memory behind [`CudaStorage`], kernels written in
//! CUDA C and compiled at run time by NVRTC for the GPU's compute capability (cached on disk),
//! matrix products through cuBLAS.
//!
//! Every library is loaded when first needed (`cudarc` with `dynamic-loading`), so a build with
//! this feature runs on machines with no GPU: [`probe`] says what is missing instead of the
//! panic `cudarc` would raise. Kernel sources are in `cuda/kernels/`; [`kernel_sources`] lists
//! them so CI can compile every one to PTX without a GPU.

mod context;
mod kernels;
mod matmul;
mod probe;
mod storage;

pub use kernels::{compile_ptx, kernel_sources, KernelSource};
pub use probe::{nvrtc_available, probe, probe_libraries};
pub use storage::CudaStorage;
