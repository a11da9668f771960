//! The CUDA backend of a build without the `cuda` feature: a storage type with no values, so
//! every dispatch arm for it compiles away, and a probe that names the feature to enable.

use crate::backend::{ConvGeometry, DeviceStorage, ElementMap, RowReduce};
use crate::ops::binary::{BinaryOp, CmpOp};
use crate::storage::CpuStorage;
use crate::{DType, Device, Error, Layout, Result, Shape};

/// CUDA device memory. Uninhabited: this build has no CUDA backend.
pub enum CudaStorage {}

/// Whether `device` can be used: never, in this build.
pub fn probe(device: Device) -> Result<()> {
    Err(Error::NotCompiledWithCuda(device))
}

impl DeviceStorage for CudaStorage {
    fn device(&self) -> Device {
        match *self {}
    }
    fn dtype(&self) -> DType {
        match *self {}
    }
    fn byte_len(&self) -> usize {
        match *self {}
    }
    fn upload(_: &CpuStorage, device: Device) -> Result<Self> {
        Err(Error::NotCompiledWithCuda(device))
    }
    fn download(&self) -> Result<CpuStorage> {
        match *self {}
    }
    fn copy_strided(&self, _: &Layout) -> Result<Self> {
        match *self {}
    }
    fn cat(&self, _: &Layout, _: &[(&Self, &Layout)], _: usize, _: &Shape) -> Result<Self> {
        match *self {}
    }
    fn map(&self, _: &Layout, _: ElementMap) -> Result<Self> {
        match *self {}
    }
    fn binary(&self, _: &Layout, _: &Self, _: &Layout, _: &Shape, _: BinaryOp) -> Result<Self> {
        match *self {}
    }
    fn cmp(&self, _: &Layout, _: &Self, _: &Layout, _: &Shape, _: CmpOp) -> Result<Self> {
        match *self {}
    }
    fn where_cond(&self, _: &Layout, _: (&Self, &Layout), _: (&Self, &Layout), _: &Shape) -> Result<Self> {
        match *self {}
    }
    fn cast(&self, _: &Layout, _: DType) -> Result<Self> {
        match *self {}
    }
    fn reduce_rows(&self, _: &Layout, _: usize, _: usize, _: RowReduce) -> Result<Self> {
        match *self {}
    }
    fn softmax_rows(&self, _: &Layout, _: usize, _: bool) -> Result<Self> {
        match *self {}
    }
    fn matmul(&self, _: &Layout, _: &Self, _: &Layout, _: [usize; 3]) -> Result<Self> {
        match *self {}
    }
    fn gather(&self, _: &Layout, _: &[i64], _: usize) -> Result<Self> {
        match *self {}
    }
    fn im2col(&self, _: &Layout, _: &ConvGeometry) -> Result<Self> {
        match *self {}
    }
    fn col2im(&self, _: &ConvGeometry) -> Result<Self> {
        match *self {}
    }
    fn max_pool2d(&self, _: &Layout, _: &ConvGeometry) -> Result<(Self, Self)> {
        match *self {}
    }
    fn max_pool2d_backward(
        &self,
        _: &Layout,
        _: (&Self, &Layout),
        _: usize,
        _: usize,
        _: usize,
    ) -> Result<Self> {
        match *self {}
    }
    fn index_select(&self, _: &Layout, _: &[i64], _: [usize; 3]) -> Result<Self> {
        match *self {}
    }
}
