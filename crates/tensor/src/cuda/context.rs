//! One context per GPU: the CUDA context, its stream, the cuBLAS handle and the loaded kernel
//! modules. Created on first use and kept for the process's lifetime.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::cublas::CudaBlas;
use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaStream};
use cudarc::nvrtc::Ptx;

use super::kernels::{compile_ptx, KernelSource};
use crate::{Device, Error, Result};

/// Everything kiln keeps for one GPU.
pub(crate) struct GpuContext {
    /// The device, for error messages.
    pub device: Device,
    /// The stream every kernel, copy and cuBLAS call of this device runs on, in order.
    pub stream: Arc<CudaStream>,
    /// cuBLAS, bound to `stream`.
    pub blas: CudaBlas,
    /// Compute capability (major, minor).
    capability: (u32, u32),
    /// Kernel modules by name, compiled and loaded once.
    modules: Mutex<HashMap<&'static str, Arc<CudaModule>>>,
}

impl GpuContext {
    /// The context of `device` (a CUDA device), creating it on first use.
    pub fn get(device: Device) -> Result<Arc<GpuContext>> {
        static CONTEXTS: OnceLock<Mutex<HashMap<usize, Arc<GpuContext>>>> = OnceLock::new();
        let Device::Cuda(ordinal) = device else {
            return Err(Error::invalid("GpuContext::get", "the CPU has no CUDA context"));
        };
        let mut all = CONTEXTS
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(c) = all.get(&ordinal) {
            return Ok(c.clone());
        }
        super::probe(device)?;
        let fail = |what: &'static str| {
            move |e: String| Error::Cuda {
                op: what,
                device,
                reason: e,
            }
        };
        let ctx = CudaContext::new(ordinal).map_err(|e| fail("creating the CUDA context")(e.to_string()))?;
        let (major, minor) = ctx
            .compute_capability()
            .map_err(|e| fail("reading the compute capability")(e.to_string()))?;
        let stream = ctx.default_stream();
        let blas =
            CudaBlas::new(stream.clone()).map_err(|e| fail("creating the cuBLAS handle")(e.to_string()))?;
        let c = Arc::new(GpuContext {
            device,
            stream,
            blas,
            capability: (major as u32, minor as u32),
            modules: Mutex::new(HashMap::new()),
        });
        all.insert(ordinal, c.clone());
        Ok(c)
    }

    /// The kernel `name` of `source`, compiling and loading the module on first use.
    pub fn function(&self, source: &KernelSource, name: &str) -> Result<CudaFunction> {
        let module = {
            let mut modules = self.modules.lock().unwrap_or_else(|e| e.into_inner());
            match modules.get(source.name) {
                Some(m) => m.clone(),
                None => {
                    let ptx = compile_ptx(source, self.capability)
                        .map_err(|reason| self.error("compiling kernels", reason))?;
                    let m = self
                        .stream
                        .context()
                        .load_module(Ptx::from_src(ptx))
                        .map_err(|e| self.error("loading kernels", e.to_string()))?;
                    modules.insert(source.name, m.clone());
                    m
                }
            }
        };
        module
            .load_function(name)
            .map_err(|e| self.error("finding a kernel", format!("{name}: {e}")))
    }

    /// A CUDA error of `op` on this device.
    pub fn error(&self, op: &'static str, reason: impl Into<String>) -> Error {
        Error::Cuda {
            op,
            device: self.device,
            reason: reason.into(),
        }
    }
}
