//! File formats: [safetensors](https://github.com/huggingface/safetensors) (memory-mapped,
//! zero-copy when aligned) and NumPy `.npy`.
//!
//! Loading never panics on a bad file: truncated, corrupt or foreign files are an
//! [`Error::Format`] naming the path; unreadable ones an [`Error::Io`]. Saving writes a temporary
//! file in the destination's directory, syncs it and renames it into place, so a crash leaves
//! either the old file or the new one, never a torn one.
//!
//! ```
//! use kiln_tensor::{io, Tensor};
//! let dir = std::env::temp_dir().join(format!("kiln-io-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir).unwrap();
//! let w = Tensor::from_vec(vec![1f32, 2., 3., 4.], [2, 2])?;
//! io::save_safetensors([("w", &w)], dir.join("m.safetensors"))?;
//! let loaded = io::load_safetensors(dir.join("m.safetensors"))?;
//! assert_eq!(loaded["w"].to_vec::<f32>()?, vec![1., 2., 3., 4.]);
//! io::save_npy(&w.t()?, dir.join("w.npy"))?;
//! assert_eq!(io::load_npy(dir.join("w.npy"))?.to_vec::<f32>()?, vec![1., 3., 2., 4.]);
//! # std::fs::remove_dir_all(&dir).unwrap();
//! # Ok::<(), kiln_tensor::Error>(())
//! ```

pub mod npy;
pub mod safetensors;

pub use self::npy::{load_npy, load_npy_from_bytes, save_npy, save_npy_to_bytes};
pub use self::safetensors::{
    load as load_safetensors, load_from_bytes as load_safetensors_from_bytes, save as save_safetensors,
    save_to_bytes as save_safetensors_to_bytes, NamedTensor,
};

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::storage::{Buffer, CpuStorage};
use crate::{DType, Error, Layout, Result, Shape, Tensor, WithDType};

/// The name errors use for data that did not come from a file.
pub(crate) const IN_MEMORY: &str = "<memory>";

/// An [`Error::Io`] for `path`.
pub(crate) fn io_error(path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        path: path.display().to_string(),
        source,
    }
}

/// An [`Error::Format`] for `path`.
pub(crate) fn format_error(path: &str, format: &'static str, reason: impl Into<String>) -> Error {
    Error::Format {
        path: path.to_string(),
        format,
        reason: reason.into(),
    }
}

/// Memory-map a whole file read-only.
pub(crate) fn map_file(path: &Path) -> Result<Arc<memmap2::Mmap>> {
    let file = File::open(path).map_err(|e| io_error(path, e))?;
    // SAFETY: the mapping is read-only and private to this process. As with every memory-mapped
    // loader, the file must not be truncated or modified by another process while tensors
    // borrowed from it are alive; kiln itself only ever replaces files by renaming new ones over
    // them (see `write_atomically`), which leaves existing mappings of the old file intact.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| io_error(path, e))?;
    Ok(Arc::new(map))
}

/// A contiguous tensor of `shape` from the little-endian bytes `map[byte_offset..][..n * size]`:
/// zero-copy ([`Buffer::Mapped`]) when the bytes are aligned for the dtype, copied otherwise.
/// The caller has checked that the range lies inside the mapping.
pub(crate) fn tensor_from_map(
    map: &Arc<memmap2::Mmap>,
    byte_offset: usize,
    dtype: DType,
    shape: Shape,
) -> Tensor {
    crate::with_dtype!(dtype, T => {
        let len = shape.elem_count();
        let bytes = &map[byte_offset..byte_offset + len * std::mem::size_of::<T>()];
        let buffer = if bytes.as_ptr() as usize & (std::mem::align_of::<T>() - 1) == 0 {
            Buffer::Mapped { map: map.clone(), byte_offset, len }
        } else {
            Buffer::Owned(bytemuck::pod_collect_to_vec::<u8, T>(bytes))
        };
        Tensor::from_storage(T::into_storage(buffer), Layout::contiguous(shape))
    })
}

/// A contiguous tensor copied from little-endian bytes (any alignment). The caller has checked
/// that `bytes` holds exactly `shape.elem_count()` elements.
pub(crate) fn tensor_from_bytes(bytes: &[u8], dtype: DType, shape: Shape) -> Tensor {
    crate::with_dtype!(dtype, T => {
        let v: Vec<T> = bytemuck::pod_collect_to_vec(bytes);
        Tensor::from_storage(CpuStorage::from_vec(v), Layout::contiguous(shape))
    })
}

/// The little-endian bytes of `t`'s elements in row-major order: borrowed from the storage when
/// `t` is contiguous, gathered otherwise.
pub(crate) fn row_major_bytes(t: &Tensor) -> Result<std::borrow::Cow<'_, [u8]>> {
    use std::borrow::Cow;
    Ok(
        crate::with_dtype!(t.dtype(), T => match t.contiguous_slice::<T>()? {
            Cow::Borrowed(s) => Cow::Borrowed(bytemuck::cast_slice::<T, u8>(s)),
            Cow::Owned(v) => Cow::Owned(bytemuck::cast_slice::<T, u8>(&v).to_vec()),
        }),
    )
}

/// A fresh name in `path`'s directory for a temporary file that will be renamed to `path`.
fn temp_path(path: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    path.with_file_name(format!(
        ".{name}.{}.{}.{nonce:08x}.tmp",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Write a file atomically: `write` fills a temporary file in `path`'s directory, which is then
/// synced to disk and renamed over `path` (and the directory synced, where supported). On any
/// error the temporary file is removed and `path` is untouched.
pub(crate) fn write_atomically(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    if path.file_name().is_none() {
        return Err(io_error(
            path,
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file path"),
        ));
    }
    let tmp = temp_path(path);
    let result = write(&tmp).and_then(|()| {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&tmp)
            .map_err(|e| io_error(&tmp, e))?;
        f.sync_all().map_err(|e| io_error(&tmp, e))?;
        drop(f);
        std::fs::rename(&tmp, path).map_err(|e| io_error(path, e))
    });
    match result {
        Ok(()) => {
            sync_parent_dir(path);
            Ok(())
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Make a rename durable by syncing the directory that holds `path` (best effort: some
/// platforms and filesystems cannot open or sync directories).
fn sync_parent_dir(path: &Path) {
    #[cfg(unix)]
    {
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
    #[cfg(not(unix))]
    let _ = path;
}

impl Tensor {
    /// Load a NumPy `.npy` file; see [`load_npy`].
    pub fn read_npy(path: impl AsRef<Path>) -> Result<Tensor> {
        load_npy(path)
    }

    /// Save as a NumPy `.npy` file; see [`save_npy`].
    pub fn write_npy(&self, path: impl AsRef<Path>) -> Result<()> {
        save_npy(self, path)
    }
}
