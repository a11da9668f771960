//! Element storage: one typed buffer per dtype, owned or memory-mapped from a file.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use half::{bf16, f16};

use crate::backend::DeviceStorage;
use crate::cuda::CudaStorage;
use crate::{DType, Device, WithDType};

/// A typed element buffer: an owned `Vec`, or a zero-copy window into a memory-mapped file.
pub enum Buffer<T> {
    /// Elements owned by this buffer.
    Owned(Vec<T>),
    /// `len` elements starting `byte_offset` bytes into a mapping (the offset is aligned for `T`).
    Mapped {
        /// The mapping, shared by every tensor loaded from the same file.
        map: Arc<memmap2::Mmap>,
        /// Start of the elements within the mapping.
        byte_offset: usize,
        /// Number of elements.
        len: usize,
    },
}

impl<T: WithDType> Buffer<T> {
    /// The elements.
    #[inline]
    pub fn as_slice(&self) -> &[T] {
        match self {
            Buffer::Owned(v) => v,
            Buffer::Mapped {
                map,
                byte_offset,
                len,
            } => bytemuck::cast_slice(&map[*byte_offset..*byte_offset + len * std::mem::size_of::<T>()]),
        }
    }
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.as_slice().len()
    }
    /// Whether the buffer holds no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// CPU storage: a buffer of one of the supported element types.
#[allow(missing_docs)]
pub enum CpuStorage {
    U8(Buffer<u8>),
    U32(Buffer<u32>),
    I64(Buffer<i64>),
    F16(Buffer<f16>),
    BF16(Buffer<bf16>),
    F32(Buffer<f32>),
    F64(Buffer<f64>),
}

impl CpuStorage {
    /// The element type.
    pub fn dtype(&self) -> DType {
        match self {
            CpuStorage::U8(_) => DType::U8,
            CpuStorage::U32(_) => DType::U32,
            CpuStorage::I64(_) => DType::I64,
            CpuStorage::F16(_) => DType::F16,
            CpuStorage::BF16(_) => DType::BF16,
            CpuStorage::F32(_) => DType::F32,
            CpuStorage::F64(_) => DType::F64,
        }
    }
    /// Owned storage from a `Vec`.
    pub fn from_vec<T: WithDType>(v: Vec<T>) -> Self {
        T::into_storage(Buffer::Owned(v))
    }
    /// Number of elements.
    pub fn len(&self) -> usize {
        crate::map_storage!(self, b => b.len())
    }
    /// Whether the storage holds no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The raw bytes of the elements (little-endian on every supported target).
    pub fn as_bytes(&self) -> &[u8] {
        crate::map_storage!(self, b => bytemuck::cast_slice(b.as_slice()))
    }
}

/// Apply an expression to the typed buffer inside a [`CpuStorage`], whatever its dtype.
#[macro_export]
#[doc(hidden)]
macro_rules! map_storage {
    ($s:expr, $b:ident => $e:expr) => {
        match $s {
            $crate::storage::CpuStorage::U8($b) => $e,
            $crate::storage::CpuStorage::U32($b) => $e,
            $crate::storage::CpuStorage::I64($b) => $e,
            $crate::storage::CpuStorage::F16($b) => $e,
            $crate::storage::CpuStorage::BF16($b) => $e,
            $crate::storage::CpuStorage::F32($b) => $e,
            $crate::storage::CpuStorage::F64($b) => $e,
        }
    };
}

/// Storage on some device: host memory, or a device backend behind [`DeviceStorage`].
pub enum Storage {
    /// Host memory.
    Cpu(CpuStorage),
    /// CUDA device memory (uninhabited in builds without the `cuda` feature).
    Cuda(CudaStorage),
}

/// Bytes held by all live tensor storages of this process (owned, mapped and on devices).
static LIVE_BYTES: AtomicUsize = AtomicUsize::new(0);

/// Bytes of element storage currently alive in this process, host and devices together: a leak
/// detector for tests ("after a training step, memory returns to where it was").
pub fn live_storage_bytes() -> usize {
    LIVE_BYTES.load(Ordering::Relaxed)
}

impl Storage {
    /// Wrap CPU storage, counting its bytes as live until it is dropped.
    pub(crate) fn new_cpu(s: CpuStorage) -> Storage {
        LIVE_BYTES.fetch_add(s.as_bytes().len(), Ordering::Relaxed);
        Storage::Cpu(s)
    }
    /// Wrap CUDA storage, counting its bytes as live until it is dropped.
    pub(crate) fn new_cuda(s: CudaStorage) -> Storage {
        LIVE_BYTES.fetch_add(s.byte_len(), Ordering::Relaxed);
        Storage::Cuda(s)
    }
    fn byte_len(&self) -> usize {
        match self {
            Storage::Cpu(s) => s.as_bytes().len(),
            Storage::Cuda(s) => s.byte_len(),
        }
    }
}

impl Drop for Storage {
    fn drop(&mut self) {
        LIVE_BYTES.fetch_sub(self.byte_len(), Ordering::Relaxed);
    }
}

impl Storage {
    /// The element type.
    pub fn dtype(&self) -> DType {
        match self {
            Storage::Cpu(s) => s.dtype(),
            Storage::Cuda(s) => s.dtype(),
        }
    }
    /// The device the elements live on.
    pub fn device(&self) -> Device {
        match self {
            Storage::Cpu(_) => Device::Cpu,
            Storage::Cuda(s) => s.device(),
        }
    }
}
