//! [`Tensor`]: a cheap, shareable handle over storage plus a layout.

use std::borrow::Cow;
use std::sync::Arc;

use crate::backend::DeviceStorage;
use crate::cuda::CudaStorage;
use crate::layout::gather_contiguous;
use crate::storage::{CpuStorage, Storage};
use crate::{DType, Device, Error, Layout, Result, Shape, WithDType};

/// An n-dimensional array of one dtype on one device.
///
/// Cloning is an `Arc` increment. Views (reshape of contiguous data, transpose, permute, narrow,
/// broadcast, squeeze/unsqueeze) share storage with their source and never copy. Tensors are
/// immutable: every operation returns a new tensor.
#[derive(Clone)]
pub struct Tensor(Arc<TensorInner>);

struct TensorInner {
    storage: Arc<Storage>,
    layout: Layout,
}

/// Run `$body` with `$T` bound to the Rust element type of `$dtype`.
#[macro_export]
#[doc(hidden)]
macro_rules! with_dtype {
    ($dtype:expr, $T:ident => $body:expr) => {
        match $dtype {
            $crate::DType::U8 => {
                type $T = u8;
                $body
            }
            $crate::DType::U32 => {
                type $T = u32;
                $body
            }
            $crate::DType::I64 => {
                type $T = i64;
                $body
            }
            $crate::DType::F16 => {
                type $T = half::f16;
                $body
            }
            $crate::DType::BF16 => {
                type $T = half::bf16;
                $body
            }
            $crate::DType::F32 => {
                type $T = f32;
                $body
            }
            $crate::DType::F64 => {
                type $T = f64;
                $body
            }
        }
    };
}

impl Tensor {
    /// A tensor over existing CPU storage with the given layout.
    pub fn from_storage(storage: CpuStorage, layout: Layout) -> Tensor {
        // Every tensor passes here before a kernel runs on it: the pool is sized now.
        crate::threads::init_from_env();
        Tensor(Arc::new(TensorInner {
            storage: Arc::new(Storage::new_cpu(storage)),
            layout,
        }))
    }

    /// A tensor over CUDA storage with the given layout.
    pub(crate) fn from_cuda(storage: CudaStorage, layout: Layout) -> Tensor {
        Tensor(Arc::new(TensorInner {
            storage: Arc::new(Storage::new_cuda(storage)),
            layout,
        }))
    }

    /// A contiguous tensor owning `data`, with the given shape.
    pub fn from_vec<T: WithDType>(data: Vec<T>, shape: impl Into<Shape>) -> Result<Tensor> {
        let shape = shape.into();
        if data.len() != shape.elem_count() {
            return Err(Error::ElementCount {
                op: "from_vec",
                expected: shape.elem_count(),
                got: data.len(),
                shape,
            });
        }
        Ok(Self::from_storage(
            CpuStorage::from_vec(data),
            Layout::contiguous(shape),
        ))
    }

    /// A contiguous tensor copied from a slice.
    pub fn from_slice<T: WithDType>(data: &[T], shape: impl Into<Shape>) -> Result<Tensor> {
        Self::from_vec(data.to_vec(), shape)
    }

    /// A 0-dimensional tensor holding one value.
    pub fn scalar<T: WithDType>(v: T) -> Tensor {
        Self::from_storage(CpuStorage::from_vec(vec![v]), Layout::contiguous(Shape::from(())))
    }

    /// Internal: a new view of the same storage.
    pub(crate) fn with_layout(&self, layout: Layout) -> Tensor {
        Tensor(Arc::new(TensorInner {
            storage: self.0.storage.clone(),
            layout,
        }))
    }

    /// The shape.
    pub fn shape(&self) -> &Shape {
        self.0.layout.shape()
    }
    /// The dimension sizes.
    pub fn dims(&self) -> &[usize] {
        self.0.layout.dims()
    }
    /// Size of one dimension (negative counts from the end).
    pub fn dim(&self, d: impl crate::Dim) -> Result<usize> {
        Ok(self.dims()[d.to_index(self.rank(), "dim")?])
    }
    /// Number of dimensions.
    pub fn rank(&self) -> usize {
        self.dims().len()
    }
    /// Total number of elements.
    pub fn elem_count(&self) -> usize {
        self.shape().elem_count()
    }
    /// The element type.
    pub fn dtype(&self) -> DType {
        self.0.storage.dtype()
    }
    /// The device.
    pub fn device(&self) -> Device {
        self.0.storage.device()
    }
    /// The layout (shape, strides, offset).
    pub fn layout(&self) -> &Layout {
        &self.0.layout
    }
    /// Element strides.
    pub fn strides(&self) -> &[usize] {
        self.0.layout.strides()
    }
    /// Whether the elements are row-major without gaps.
    pub fn is_contiguous(&self) -> bool {
        self.0.layout.is_contiguous()
    }
    /// The storage behind this tensor (shared with its views).
    pub fn storage(&self) -> &Storage {
        &self.0.storage
    }
    /// The CPU storage behind this tensor (shared with its views); an error naming the device
    /// when the elements are not in host memory.
    pub fn cpu_storage(&self) -> Result<&CpuStorage> {
        match &*self.0.storage {
            Storage::Cpu(s) => Ok(s),
            Storage::Cuda(s) => Err(Error::UnsupportedDevice {
                op: "reading host memory",
                device: s.device(),
            }),
        }
    }
    /// A contiguous tensor of `shape` over a device backend's result.
    pub(crate) fn from_cuda_contiguous(storage: CudaStorage, shape: impl Into<Shape>) -> Tensor {
        Tensor::from_cuda(storage, Layout::contiguous(shape.into()))
    }
    /// The CUDA storage behind this tensor, if it lives on a GPU: the seam where each op family
    /// hands its work to the device backend.
    pub(crate) fn cuda(&self) -> Option<&CudaStorage> {
        match &*self.0.storage {
            Storage::Cpu(_) => None,
            Storage::Cuda(s) => Some(s),
        }
    }
    /// Whether two tensors share the same storage (one is a view of the other).
    pub fn same_storage(&self, other: &Tensor) -> bool {
        Arc::ptr_eq(&self.0.storage, &other.0.storage)
    }

    /// The whole underlying storage as `&[T]` (ignores the layout). Errors on a dtype mismatch.
    pub fn storage_slice<T: WithDType>(&self) -> Result<&[T]> {
        T::storage_slice(self.cpu_storage()?).ok_or(Error::DTypeMismatch {
            op: "storage_slice",
            lhs: self.dtype(),
            rhs: T::DTYPE,
        })
    }

    /// The elements in row-major order: borrowed when contiguous, gathered otherwise.
    pub fn contiguous_slice<T: WithDType>(&self) -> Result<Cow<'_, [T]>> {
        let data = self.storage_slice::<T>()?;
        Ok(match self.layout().contiguous_range() {
            Some(r) => Cow::Borrowed(&data[r]),
            None => Cow::Owned(gather_contiguous(data, self.layout())),
        })
    }

    /// Copy the elements into a `Vec` in row-major order (from any device, like `tolist()`).
    pub fn to_vec<T: WithDType>(&self) -> Result<Vec<T>> {
        if self.device() != Device::Cpu {
            return self.to_device(Device::Cpu)?.to_vec();
        }
        Ok(self.contiguous_slice::<T>()?.into_owned())
    }

    /// Rows of a 2-D tensor.
    pub fn to_vec2<T: WithDType>(&self) -> Result<Vec<Vec<T>>> {
        let [r, c] = self.dims2("to_vec2")?;
        let v = self.to_vec::<T>()?;
        Ok((0..r).map(|i| v[i * c..(i + 1) * c].to_vec()).collect())
    }

    /// The single value of a tensor with one element (any rank).
    pub fn to_scalar<T: WithDType>(&self) -> Result<T> {
        if self.elem_count() != 1 {
            return Err(Error::InvalidShape {
                op: "to_scalar",
                shape: self.shape().clone(),
                reason: "expected exactly one element".into(),
            });
        }
        if self.device() != Device::Cpu {
            return self.to_device(Device::Cpu)?.to_scalar();
        }
        Ok(self.storage_slice::<T>()?[self.layout().offset()])
    }

    /// All elements converted to f64, row-major (handy for tests and printing).
    pub fn to_f64_vec(&self) -> Vec<f64> {
        if self.device() != Device::Cpu {
            return self
                .to_device(Device::Cpu)
                .map(|t| t.to_f64_vec())
                .unwrap_or_default();
        }
        crate::with_dtype!(self.dtype(), T => {
            self.contiguous_slice::<T>()
                .map(|s| s.iter().map(|v| v.to_f64()).collect())
                .unwrap_or_default()
        })
    }

    /// The two dimensions of a 2-D tensor, or an error naming `op`.
    pub fn dims2(&self, op: &'static str) -> Result<[usize; 2]> {
        match *self.dims() {
            [a, b] => Ok([a, b]),
            _ => Err(Error::InvalidShape {
                op,
                shape: self.shape().clone(),
                reason: "expected a 2-D tensor".into(),
            }),
        }
    }

    /// The four dimensions of a 4-D tensor, or an error naming `op`.
    pub fn dims4(&self, op: &'static str) -> Result<[usize; 4]> {
        match *self.dims() {
            [a, b, c, d] => Ok([a, b, c, d]),
            _ => Err(Error::InvalidShape {
                op,
                shape: self.shape().clone(),
                reason: "expected a 4-D tensor".into(),
            }),
        }
    }

    /// Error unless `other` has this tensor's dtype.
    pub fn check_same_dtype(&self, other: &Tensor, op: &'static str) -> Result<()> {
        if self.dtype() != other.dtype() {
            return Err(Error::DTypeMismatch {
                op,
                lhs: self.dtype(),
                rhs: other.dtype(),
            });
        }
        if self.device() != other.device() {
            return Err(Error::DeviceMismatch {
                op,
                lhs: self.device(),
                rhs: other.device(),
            });
        }
        Ok(())
    }

    /// Error unless this tensor has a float dtype.
    pub fn check_float(&self, op: &'static str) -> Result<()> {
        if !self.dtype().is_float() {
            return Err(Error::UnsupportedDType {
                op,
                dtype: self.dtype(),
                expected: "a float dtype (f16, bf16, f32, f64)",
            });
        }
        Ok(())
    }

    /// Copy to `device` (a cheap clone when already there). A view that does not span its whole
    /// storage is compacted first, so only the elements it selects travel.
    pub fn to_device(&self, device: Device) -> Result<Tensor> {
        if device == self.device() {
            return Ok(self.clone());
        }
        device.ensure_available()?;
        let spans_storage =
            self.is_contiguous() && self.layout().offset() == 0 && self.elem_count() == self.storage_len();
        if !spans_storage {
            return self.copy_compact()?.to_device(device);
        }
        let layout = self.layout().clone();
        match (&*self.0.storage, device) {
            (Storage::Cpu(_), Device::Cpu) => Ok(self.clone()),
            (Storage::Cpu(s), Device::Cuda(_)) => {
                Ok(Tensor::from_cuda(CudaStorage::upload(s, device)?, layout))
            }
            (Storage::Cuda(s), Device::Cpu) => Ok(Tensor::from_storage(s.download()?, layout)),
            (Storage::Cuda(s), Device::Cuda(_)) => {
                let host = s.download()?;
                Ok(Tensor::from_cuda(CudaStorage::upload(&host, device)?, layout))
            }
        }
    }

    /// Elements in the storage (all views included).
    fn storage_len(&self) -> usize {
        match &*self.0.storage {
            Storage::Cpu(s) => s.len(),
            Storage::Cuda(s) => s.byte_len() / self.dtype().size_in_bytes().max(1),
        }
    }

    /// A fresh row-major copy on the same device, even when `self` is already contiguous.
    fn copy_compact(&self) -> Result<Tensor> {
        let layout = Layout::contiguous(self.shape().clone());
        match &*self.0.storage {
            Storage::Cpu(_) => {
                crate::with_dtype!(self.dtype(), T => Tensor::from_vec(self.to_vec::<T>()?, self.shape().clone()))
            }
            Storage::Cuda(s) => Ok(Tensor::from_cuda(s.copy_strided(self.layout())?, layout)),
        }
    }
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Tensor[{:?}, {}, {}]",
            self.shape(),
            self.dtype(),
            self.device()
        )
    }
}
