//! The kernel sources and their compilation: NVRTC turns CUDA C into PTX for one compute
//! capability; the PTX is cached on disk, keyed by the source's hash and the architecture.

use std::path::PathBuf;

use cudarc::nvrtc::{compile_ptx_with_opts, CompileOptions};

/// The shared types, conversions and strided indexing every kernel file starts with.
const PRELUDE: &str = include_str!("kernels/prelude.cuh");

/// One compilation unit of kernels.
#[derive(Clone, Copy, Debug)]
pub struct KernelSource {
    /// The module's name (and the file under `cuda/kernels/`).
    pub name: &'static str,
    /// The CUDA C after the prelude.
    pub body: &'static str,
}

impl KernelSource {
    /// The full source handed to NVRTC.
    pub fn source(&self) -> String {
        format!("{PRELUDE}\n{}", self.body)
    }
}

/// Element-wise kernels: copy, maps, binary ops, comparisons, `where`, casts.
pub(crate) const ELEMENTWISE: KernelSource = KernelSource {
    name: "elementwise",
    body: include_str!("kernels/elementwise.cu"),
};
/// Row kernels: reductions, softmax, index_select.
pub(crate) const ROWS: KernelSource = KernelSource {
    name: "reduce",
    body: include_str!("kernels/reduce.cu"),
};

/// Convolution columns (im2col, col2im) and gather.
pub(crate) const CONV: KernelSource = KernelSource {
    name: "conv",
    body: include_str!("kernels/conv.cu"),
};

/// Every kernel source of the backend (CI compiles each one for every supported architecture).
pub fn kernel_sources() -> &'static [KernelSource] {
    &[ELEMENTWISE, ROWS, CONV]
}

/// The NVRTC architecture name of a compute capability, e.g. `compute_90`.
fn arch_name(major: u32, minor: u32) -> &'static str {
    match (major, minor) {
        (7, 0) => "compute_70",
        (7, 5) => "compute_75",
        (8, 0) => "compute_80",
        (8, 6) => "compute_86",
        (8, 9) => "compute_89",
        (9, 0) => "compute_90",
        (10, 0) => "compute_100",
        (12, 0) => "compute_120",
        // A new architecture: leak its name once (it is needed for the process's lifetime).
        _ => Box::leak(format!("compute_{major}{minor}").into_boxed_str()),
    }
}

/// Where compiled PTX is kept: `$KILN_CACHE_DIR/ptx`, else `$XDG_CACHE_HOME/kiln/ptx`, else
/// `$HOME/.cache/kiln/ptx`; `None` when none is set (then nothing is cached).
fn cache_dir() -> Option<PathBuf> {
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    env("KILN_CACHE_DIR")
        .map(|d| d.join("ptx"))
        .or_else(|| env("XDG_CACHE_HOME").map(|d| d.join("kiln/ptx")))
        .or_else(|| env("HOME").map(|d| d.join(".cache/kiln/ptx")))
}

/// FNV-1a of the source: a cache key that changes with any edit.
fn source_hash(src: &str) -> u64 {
    src.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Compile `kernel` to PTX for compute capability `major.minor` with NVRTC, reusing the disk
/// cache. The error carries NVRTC's log. NVRTC must be loadable (see [`super::probe_libraries`]).
pub fn compile_ptx(kernel: &KernelSource, (major, minor): (u32, u32)) -> Result<String, String> {
    let src = kernel.source();
    let arch = arch_name(major, minor);
    let file = format!("{}-{:016x}-{arch}.ptx", kernel.name, source_hash(&src));
    let cached = cache_dir().map(|d| d.join(file));
    if let Some(text) = cached.as_ref().and_then(|p| std::fs::read_to_string(p).ok()) {
        return Ok(text);
    }
    let opts = CompileOptions {
        arch: Some(arch),
        name: Some(format!("{}.cu", kernel.name)),
        ..Default::default()
    };
    let ptx = compile_ptx_with_opts(&src, opts)
        .map_err(|e| {
            format!(
                "NVRTC could not compile kernels '{}' for {arch}: {e}",
                kernel.name
            )
        })?
        .to_src();
    if let Some(path) = cached {
        // A cache that cannot be written only costs a recompilation next time.
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let written = path
            .parent()
            .map(std::fs::create_dir_all)
            .transpose()
            .and_then(|_| std::fs::write(&tmp, &ptx))
            .and_then(|_| std::fs::rename(&tmp, &path));
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
    }
    Ok(ptx)
}
