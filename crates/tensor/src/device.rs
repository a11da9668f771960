//! [`Device`]: where a tensor's memory lives.

use crate::{Error, Result};

/// A compute device. CPU is always available; CUDA needs the `cuda` feature and a GPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Device {
    /// Host memory, kernels in Rust.
    #[default]
    Cpu,
    /// The n-th CUDA GPU.
    Cuda(usize),
}

impl Device {
    /// Check that tensors can be placed on the device: the CPU always; a GPU needs a build with
    /// the `cuda` feature, a driver, the CUDA libraries and the GPU itself (the error names what
    /// is missing).
    pub fn ensure_available(self) -> Result<()> {
        match self {
            Device::Cpu => Ok(()),
            Device::Cuda(_) => crate::cuda::probe(self),
        }
    }

    /// Parse `cpu`, `cuda` or `cuda:N`.
    pub fn parse(s: &str) -> Result<Device> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Device::Cuda)
                .ok_or_else(|| {
                    Error::invalid(
                        "Device::parse",
                        format!("unknown device {s:?}: expected cpu, cuda or cuda:N"),
                    )
                }),
        }
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}
