//! Checks, before any CUDA call, that the driver, the libraries and the GPU exist: `cudarc`
//! panics when a library is missing, kiln returns [`Error::CudaUnavailable`] naming it.

use cudarc::driver::CudaContext;

use crate::{Device, Error, Result};

/// Whether each library kiln's CUDA backend loads can be found: the first missing one, by name
/// and with a hint for providing it, or `Ok`.
pub fn probe_libraries() -> std::result::Result<(), String> {
    // SAFETY: each probe only tries to open a shared library by name and closes it again.
    let present = unsafe {
        [
            ("the NVIDIA driver (libcuda.so)", cudarc::driver::sys::is_culib_present(), "install the NVIDIA driver"),
            (
                "NVRTC (libnvrtc.so)",
                cudarc::nvrtc::sys::is_culib_present(),
                "install the CUDA toolkit or `pip install nvidia-cuda-nvrtc-cu12` and add its lib folder to LD_LIBRARY_PATH",
            ),
            (
                "cuBLAS (libcublas.so)",
                cudarc::cublas::sys::is_culib_present(),
                "install the CUDA toolkit or `pip install nvidia-cublas-cu12` and add its lib folder to LD_LIBRARY_PATH",
            ),
            (
                "cuRAND (libcurand.so)",
                cudarc::curand::sys::is_culib_present(),
                "install the CUDA toolkit or `pip install nvidia-curand-cu12` and add its lib folder to LD_LIBRARY_PATH",
            ),
        ]
    };
    match present.iter().find(|(_, ok, _)| !ok) {
        Some((name, _, hint)) => Err(format!("{name} was not found: {hint}")),
        None => Ok(()),
    }
}

/// Whether tensors can be placed on `device`: the libraries load and the GPU exists.
pub fn probe(device: Device) -> Result<()> {
    let Device::Cuda(ordinal) = device else {
        return Ok(());
    };
    let unavailable = |reason: String| Error::CudaUnavailable { device, reason };
    probe_libraries().map_err(unavailable)?;
    let count = CudaContext::device_count().map_err(|e| {
        unavailable(format!(
            "the driver could not list GPUs ({e}); is a GPU present and its driver loaded?"
        ))
    })?;
    if count <= 0 {
        return Err(unavailable("the driver found no CUDA GPU on this machine".into()));
    }
    if ordinal >= count as usize {
        return Err(unavailable(format!(
            "this machine has {count} CUDA GPU(s), cuda:0 to cuda:{}",
            count - 1
        )));
    }
    Ok(())
}

/// Whether NVRTC alone can be loaded (all that compiling kernels to PTX needs: no driver, no GPU).
pub fn nvrtc_available() -> std::result::Result<(), String> {
    // SAFETY: only tries to open the shared library by name.
    if unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        Ok(())
    } else {
        Err("NVRTC (libnvrtc.so) was not found: `pip install nvidia-cuda-nvrtc-cu12` and add its lib folder to LD_LIBRARY_PATH".into())
    }
}
