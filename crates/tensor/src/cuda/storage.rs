//! [`CudaStorage`]: a typed buffer in GPU memory, and the element-wise, row and index kernels
//! behind the [`DeviceStorage`] seam. Memory comes from the driver's stream-ordered pool
//! (`cuMemAllocAsync` where the GPU supports it), which caches freed blocks for reuse.

use std::sync::Arc;

use cudarc::driver::{CudaSlice, DeviceRepr, LaunchArgs, LaunchConfig, PushKernelArg};
use half::{bf16, f16};

use super::context::GpuContext;
use super::kernels::{CONV, ELEMENTWISE, ROWS};
use crate::backend::{ConvGeometry, DeviceStorage, ElementMap, RowReduce};
use crate::ops::binary::{BinaryOp, CmpOp};
use crate::ops::unary::UnaryOp;
use crate::storage::CpuStorage;
use crate::{DType, Device, Error, Layout, Result, Shape};

/// A typed device buffer.
pub(crate) enum CudaBuf {
    U8(CudaSlice<u8>),
    U32(CudaSlice<u32>),
    I64(CudaSlice<i64>),
    F16(CudaSlice<f16>),
    BF16(CudaSlice<bf16>),
    F32(CudaSlice<f32>),
    F64(CudaSlice<f64>),
}

/// Apply an expression to the typed slice inside a [`CudaBuf`], whatever its dtype.
macro_rules! with_buf {
    ($b:expr, $s:ident => $e:expr) => {
        match $b {
            CudaBuf::U8($s) => $e,
            CudaBuf::U32($s) => $e,
            CudaBuf::I64($s) => $e,
            CudaBuf::F16($s) => $e,
            CudaBuf::BF16($s) => $e,
            CudaBuf::F32($s) => $e,
            CudaBuf::F64($s) => $e,
        }
    };
}

/// Elements on one GPU.
pub struct CudaStorage {
    pub(crate) buf: CudaBuf,
    pub(crate) ctx: Arc<GpuContext>,
}

/// The kernels' view descriptor (`Strided` in `prelude.cuh`): passed by value.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct StridedArgs {
    rank: u32,
    pad: u32,
    offset: u64,
    dims: [u64; MAX_RANK],
    strides: [u64; MAX_RANK],
}
// SAFETY: plain `repr(C)` data matching the kernels' `Strided` struct field for field.
unsafe impl DeviceRepr for StridedArgs {}

/// The most dimensions a kernel view describes.
const MAX_RANK: usize = 8;

impl StridedArgs {
    /// The descriptor of `layout`; an error for more than [`MAX_RANK`] dimensions.
    pub(crate) fn of(layout: &Layout, ctx: &GpuContext) -> Result<StridedArgs> {
        let rank = layout.dims().len();
        if rank > MAX_RANK {
            return Err(ctx.error(
                "describing a view",
                format!(
                    "CUDA kernels take tensors of at most {MAX_RANK} dimensions, got {rank}; reshape first"
                ),
            ));
        }
        let mut a = StridedArgs {
            rank: rank as u32,
            pad: 0,
            offset: layout.offset() as u64,
            dims: [1; MAX_RANK],
            strides: [0; MAX_RANK],
        };
        for (d, (&n, &s)) in layout.dims().iter().zip(layout.strides()).enumerate() {
            a.dims[d] = n as u64;
            a.strides[d] = s as u64;
        }
        Ok(a)
    }
}

impl StridedArgs {
    /// The region of the contiguous `whole` holding a block of `dims` that starts at `start`
    /// along `dim`.
    pub(crate) fn region(
        whole: &Layout,
        dims: &[usize],
        dim: usize,
        start: usize,
        ctx: &GpuContext,
    ) -> Result<StridedArgs> {
        let mut a = StridedArgs::of(whole, ctx)?;
        for (d, &n) in dims.iter().enumerate() {
            a.dims[d] = n as u64;
        }
        a.offset = (start * whole.strides()[dim]) as u64;
        Ok(a)
    }
}

/// A grid-stride launch over `n` elements: 256 threads a block, enough blocks to fill a GPU.
fn elementwise_config(n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (n.div_ceil(256).clamp(1, 65_535 * 4) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// One block of 256 threads per row (the row kernels' shared arrays have that size).
fn rows_config(rows: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows.clamp(1, 65_535 * 4) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Push a buffer as a kernel argument (read).
fn push<'a>(b: &mut LaunchArgs<'a>, buf: &'a CudaBuf) {
    with_buf!(buf, s => { b.arg(s); })
}
/// Push a buffer as a kernel argument (written).
fn push_mut<'a>(b: &mut LaunchArgs<'a>, buf: &'a mut CudaBuf) {
    with_buf!(buf, s => { b.arg(s); })
}

/// The map kernels' op code and parameters (kept in step with `elementwise.cu`).
fn map_code(op: ElementMap) -> (u32, f64, f64) {
    match op {
        ElementMap::Unary(u) => match u {
            UnaryOp::Exp => (0, 0.0, 0.0),
            UnaryOp::Log => (1, 0.0, 0.0),
            UnaryOp::Sqrt => (2, 0.0, 0.0),
            UnaryOp::Rsqrt => (3, 0.0, 0.0),
            UnaryOp::Sin => (4, 0.0, 0.0),
            UnaryOp::Cos => (5, 0.0, 0.0),
            UnaryOp::Tanh => (6, 0.0, 0.0),
            UnaryOp::Sigmoid => (7, 0.0, 0.0),
            UnaryOp::Relu => (8, 0.0, 0.0),
            UnaryOp::Erf => (9, 0.0, 0.0),
            UnaryOp::Gelu => (10, 0.0, 0.0),
            UnaryOp::GeluTanh => (11, 0.0, 0.0),
            UnaryOp::Silu => (12, 0.0, 0.0),
            UnaryOp::Powf(p) => (13, p, 0.0),
            UnaryOp::Recip => (14, 0.0, 0.0),
            UnaryOp::Sqr => (15, 0.0, 0.0),
            UnaryOp::Affine { mul, add } => (16, mul, add),
            UnaryOp::Clamp { lo, hi } => (17, lo, hi),
        },
        ElementMap::Neg => (18, 0.0, 0.0),
        ElementMap::Abs => (19, 0.0, 0.0),
        ElementMap::CmpScalar(op, _) => (cmp_code(op), 0.0, 0.0),
    }
}

fn cmp_code(op: CmpOp) -> u32 {
    match op {
        CmpOp::Eq => 0,
        CmpOp::Ne => 1,
        CmpOp::Lt => 2,
        CmpOp::Le => 3,
        CmpOp::Gt => 4,
        CmpOp::Ge => 5,
    }
}

fn binary_code(op: BinaryOp) -> u32 {
    match op {
        BinaryOp::Add => 0,
        BinaryOp::Sub => 1,
        BinaryOp::Mul => 2,
        BinaryOp::Div => 3,
        BinaryOp::Pow => 4,
        BinaryOp::Maximum => 5,
        BinaryOp::Minimum => 6,
    }
}

impl CudaStorage {
    /// An uninitialised buffer of `n` elements of `dtype` on this storage's GPU.
    pub(crate) fn alloc(ctx: &Arc<GpuContext>, dtype: DType, n: usize) -> Result<CudaStorage> {
        let s = &ctx.stream;
        let fail = |e: cudarc::driver::DriverError| {
            ctx.error(
                "allocating device memory",
                format!("{n} elements of {dtype:?}: {e}"),
            )
        };
        // SAFETY: every kernel writing into a fresh buffer writes all of its elements before
        // anything reads them (outputs are dense and each launch covers them).
        let buf = unsafe {
            match dtype {
                DType::U8 => CudaBuf::U8(s.alloc(n).map_err(fail)?),
                DType::U32 => CudaBuf::U32(s.alloc(n).map_err(fail)?),
                DType::I64 => CudaBuf::I64(s.alloc(n).map_err(fail)?),
                DType::F16 => CudaBuf::F16(s.alloc(n).map_err(fail)?),
                DType::BF16 => CudaBuf::BF16(s.alloc(n).map_err(fail)?),
                DType::F32 => CudaBuf::F32(s.alloc(n).map_err(fail)?),
                DType::F64 => CudaBuf::F64(s.alloc(n).map_err(fail)?),
            }
        };
        Ok(CudaStorage {
            buf,
            ctx: ctx.clone(),
        })
    }

    /// Error unless `other` is on the same GPU.
    fn same_gpu(&self, other: &CudaStorage, op: &'static str) -> Result<()> {
        if Arc::ptr_eq(&self.ctx, &other.ctx) {
            return Ok(());
        }
        Err(Error::DeviceMismatch {
            op,
            lhs: self.ctx.device,
            rhs: other.ctx.device,
        })
    }

    /// Launch a kernel whose arguments `args` holds.
    fn run(&self, mut args: LaunchArgs<'_>, cfg: LaunchConfig, kernel: &str) -> Result<()> {
        // SAFETY: each kernel's parameter list is what its call site pushed, in order and type
        // (the sources and the call sites are kept in step; the conformance suite runs them all).
        unsafe { args.launch(cfg) }
            .map(|_| ())
            .map_err(|e| self.ctx.error("launching a kernel", format!("{kernel}: {e}")))
    }
}

impl DeviceStorage for CudaStorage {
    fn device(&self) -> Device {
        self.ctx.device
    }

    fn dtype(&self) -> DType {
        match self.buf {
            CudaBuf::U8(_) => DType::U8,
            CudaBuf::U32(_) => DType::U32,
            CudaBuf::I64(_) => DType::I64,
            CudaBuf::F16(_) => DType::F16,
            CudaBuf::BF16(_) => DType::BF16,
            CudaBuf::F32(_) => DType::F32,
            CudaBuf::F64(_) => DType::F64,
        }
    }

    fn byte_len(&self) -> usize {
        with_buf!(&self.buf, s => s.num_bytes())
    }

    fn upload(cpu: &CpuStorage, device: Device) -> Result<Self> {
        let ctx = GpuContext::get(device)?;
        let s = &ctx.stream;
        let fail = |e: cudarc::driver::DriverError| ctx.error("copying to the device", e.to_string());
        let buf = match cpu {
            CpuStorage::U8(b) => CudaBuf::U8(s.clone_htod(b.as_slice()).map_err(fail)?),
            CpuStorage::U32(b) => CudaBuf::U32(s.clone_htod(b.as_slice()).map_err(fail)?),
            CpuStorage::I64(b) => CudaBuf::I64(s.clone_htod(b.as_slice()).map_err(fail)?),
            CpuStorage::F16(b) => CudaBuf::F16(s.clone_htod(b.as_slice()).map_err(fail)?),
            CpuStorage::BF16(b) => CudaBuf::BF16(s.clone_htod(b.as_slice()).map_err(fail)?),
            CpuStorage::F32(b) => CudaBuf::F32(s.clone_htod(b.as_slice()).map_err(fail)?),
            CpuStorage::F64(b) => CudaBuf::F64(s.clone_htod(b.as_slice()).map_err(fail)?),
        };
        Ok(CudaStorage { buf, ctx })
    }

    fn download(&self) -> Result<CpuStorage> {
        let s = &self.ctx.stream;
        let fail = |e: cudarc::driver::DriverError| self.ctx.error("copying to the host", e.to_string());
        Ok(with_buf!(&self.buf, b => CpuStorage::from_vec(s.clone_dtoh(b).map_err(fail)?)))
    }

    fn copy_strided(&self, layout: &Layout) -> Result<Self> {
        let n = layout.shape().elem_count();
        let mut out = CudaStorage::alloc(&self.ctx, self.dtype(), n)?;
        if n > 0 {
            let args = StridedArgs::of(layout, &self.ctx)?;
            let n64 = n as u64;
            let kernel = format!("copy_{}", self.dtype().as_str());
            let f = self.ctx.function(&ELEMENTWISE, &kernel)?;
            let mut builder = self.ctx.stream.launch_builder(&f);
            let b = &mut builder;
            push(b, &self.buf);
            b.arg(&args);
            push_mut(b, &mut out.buf);
            b.arg(&n64);
            self.run(builder, elementwise_config(n), &kernel)?;
        }
        Ok(out)
    }

    fn cat(&self, layout: &Layout, rest: &[(&Self, &Layout)], dim: usize, out_shape: &Shape) -> Result<Self> {
        let dtype = self.dtype();
        let mut out = CudaStorage::alloc(&self.ctx, dtype, out_shape.elem_count())?;
        let whole = Layout::contiguous(out_shape.clone());
        let kernel = format!("copy_into_{}", dtype.as_str());
        let mut start = 0;
        for (part, part_layout) in std::iter::once((self, layout)).chain(rest.iter().copied()) {
            self.same_gpu(part, "cat")?;
            let n = part_layout.shape().elem_count();
            let len = part_layout.dims()[dim];
            if n > 0 {
                // The part's region of the output: its dims at the output's strides.
                let region = StridedArgs::region(&whole, part_layout.dims(), dim, start, &self.ctx)?;
                let src = StridedArgs::of(part_layout, &self.ctx)?;
                let n64 = n as u64;
                let f = self.ctx.function(&ELEMENTWISE, &kernel)?;
                let mut builder = self.ctx.stream.launch_builder(&f);
                let b = &mut builder;
                push(b, &part.buf);
                b.arg(&src);
                push_mut(b, &mut out.buf);
                b.arg(&region);
                b.arg(&n64);
                self.run(builder, elementwise_config(n), &kernel)?;
            }
            start += len;
        }
        Ok(out)
    }

    fn map(&self, layout: &Layout, op: ElementMap) -> Result<Self> {
        let dtype = self.dtype();
        if let ElementMap::Unary(u) = op {
            let int_ok = matches!(u, UnaryOp::Affine { .. } | UnaryOp::Clamp { .. });
            if !dtype.is_float() && !int_ok {
                return Err(Error::UnsupportedDType {
                    op: u.name(),
                    dtype,
                    expected: "a float dtype (f16, bf16, f32, f64)",
                });
            }
        }
        let n = layout.shape().elem_count();
        let (kernel, out_dtype) = match op {
            ElementMap::CmpScalar(..) => (format!("cmp_scalar_{}", dtype.as_str()), DType::U8),
            _ => (format!("map_{}", dtype.as_str()), dtype),
        };
        let mut out = CudaStorage::alloc(&self.ctx, out_dtype, n)?;
        if n == 0 {
            return Ok(out);
        }
        let args = StridedArgs::of(layout, &self.ctx)?;
        let (code, p0, p1) = map_code(op);
        let n64 = n as u64;
        let value = match op {
            ElementMap::CmpScalar(_, v) => v,
            _ => 0.0,
        };
        let f = self.ctx.function(&ELEMENTWISE, &kernel)?;
        let mut builder = self.ctx.stream.launch_builder(&f);
        let b = &mut builder;
        push(b, &self.buf);
        b.arg(&args);
        push_mut(b, &mut out.buf);
        b.arg(&n64);
        b.arg(&code);
        if matches!(op, ElementMap::CmpScalar(..)) {
            b.arg(&value);
        } else {
            b.arg(&p0);
            b.arg(&p1);
        }
        self.run(builder, elementwise_config(n), &kernel)?;
        Ok(out)
    }

    fn binary(
        &self,
        lhs: &Layout,
        rhs: &Self,
        rhs_layout: &Layout,
        shape: &Shape,
        op: BinaryOp,
    ) -> Result<Self> {
        self.same_gpu(rhs, op.name())?;
        self.zip_kernel(
            "binary",
            self.dtype(),
            lhs,
            rhs,
            rhs_layout,
            shape,
            binary_code(op),
        )
    }

    fn cmp(&self, lhs: &Layout, rhs: &Self, rhs_layout: &Layout, shape: &Shape, op: CmpOp) -> Result<Self> {
        self.same_gpu(rhs, "cmp")?;
        self.zip_kernel("cmp", DType::U8, lhs, rhs, rhs_layout, shape, cmp_code(op))
    }

    fn where_cond(
        &self,
        mask: &Layout,
        on_true: (&Self, &Layout),
        on_false: (&Self, &Layout),
        shape: &Shape,
    ) -> Result<Self> {
        self.same_gpu(on_true.0, "where")?;
        self.same_gpu(on_false.0, "where")?;
        let n = shape.elem_count();
        let dtype = on_true.0.dtype();
        let mut out = CudaStorage::alloc(&self.ctx, dtype, n)?;
        if n == 0 {
            return Ok(out);
        }
        let (sm, st, sf) = (
            StridedArgs::of(mask, &self.ctx)?,
            StridedArgs::of(on_true.1, &self.ctx)?,
            StridedArgs::of(on_false.1, &self.ctx)?,
        );
        let n64 = n as u64;
        let kernel = format!("where_{}", dtype.as_str());
        let f = self.ctx.function(&ELEMENTWISE, &kernel)?;
        let mut builder = self.ctx.stream.launch_builder(&f);
        let b = &mut builder;
        push(b, &self.buf);
        b.arg(&sm);
        push(b, &on_true.0.buf);
        b.arg(&st);
        push(b, &on_false.0.buf);
        b.arg(&sf);
        push_mut(b, &mut out.buf);
        b.arg(&n64);
        self.run(builder, elementwise_config(n), &kernel)?;
        Ok(out)
    }

    fn cast(&self, layout: &Layout, dtype: DType) -> Result<Self> {
        let n = layout.shape().elem_count();
        let mut out = CudaStorage::alloc(&self.ctx, dtype, n)?;
        if n == 0 {
            return Ok(out);
        }
        let args = StridedArgs::of(layout, &self.ctx)?;
        let n64 = n as u64;
        let kernel = format!("cast_{}_{}", self.dtype().as_str(), dtype.as_str());
        let f = self.ctx.function(&ELEMENTWISE, &kernel)?;
        let mut builder = self.ctx.stream.launch_builder(&f);
        let b = &mut builder;
        push(b, &self.buf);
        b.arg(&args);
        push_mut(b, &mut out.buf);
        b.arg(&n64);
        self.run(builder, elementwise_config(n), &kernel)?;
        Ok(out)
    }

    fn reduce_rows(&self, layout: &Layout, rows: usize, len: usize, op: RowReduce) -> Result<Self> {
        let (code, out_dtype) = match op {
            RowReduce::Sum => (0u32, self.dtype()),
            RowReduce::Max => (1, self.dtype()),
            RowReduce::Min => (2, self.dtype()),
            RowReduce::ArgMax => (3, DType::I64),
            RowReduce::ArgMin => (4, DType::I64),
        };
        let mut out = CudaStorage::alloc(&self.ctx, out_dtype, rows)?;
        if rows == 0 {
            return Ok(out);
        }
        let args = StridedArgs::of(layout, &self.ctx)?;
        let (rows64, len64) = (rows as u64, len as u64);
        let kernel = format!("reduce_{}", self.dtype().as_str());
        let f = self.ctx.function(&ROWS, &kernel)?;
        let mut builder = self.ctx.stream.launch_builder(&f);
        let b = &mut builder;
        push(b, &self.buf);
        b.arg(&args);
        push_mut(b, &mut out.buf);
        b.arg(&rows64);
        b.arg(&len64);
        b.arg(&code);
        self.run(builder, rows_config(rows), &kernel)?;
        Ok(out)
    }

    fn softmax_rows(&self, layout: &Layout, len: usize, log: bool) -> Result<Self> {
        let dtype = self.dtype();
        if !dtype.is_float() {
            return Err(Error::UnsupportedDType {
                op: "softmax",
                dtype,
                expected: "a float dtype (f16, bf16, f32, f64)",
            });
        }
        let n = layout.shape().elem_count();
        let rows = n.checked_div(len).unwrap_or(0);
        let mut out = CudaStorage::alloc(&self.ctx, dtype, n)?;
        if n == 0 {
            return Ok(out);
        }
        let args = StridedArgs::of(layout, &self.ctx)?;
        let (rows64, len64, log32) = (rows as u64, len as u64, log as u32);
        let kernel = format!("softmax_{}", dtype.as_str());
        let f = self.ctx.function(&ROWS, &kernel)?;
        let mut builder = self.ctx.stream.launch_builder(&f);
        let b = &mut builder;
        push(b, &self.buf);
        b.arg(&args);
        push_mut(b, &mut out.buf);
        b.arg(&rows64);
        b.arg(&len64);
        b.arg(&log32);
        self.run(builder, rows_config(rows), &kernel)?;
        Ok(out)
    }

    fn matmul(&self, lhs: &Layout, rhs: &Self, rhs_layout: &Layout, mnk: [usize; 3]) -> Result<Self> {
        self.same_gpu(rhs, "matmul")?;
        super::matmul::matmul(self, lhs, rhs, rhs_layout, mnk)
    }

    fn gather(&self, src: &Layout, ids: &[i64], stride_d: usize) -> Result<Self> {
        let n = ids.len();
        let mut out = CudaStorage::alloc(&self.ctx, self.dtype(), n)?;
        if n == 0 {
            return Ok(out);
        }
        let dev_ids = self.upload_ids(ids)?;
        let args = StridedArgs::of(src, &self.ctx)?;
        let (stride64, n64) = (stride_d as u64, n as u64);
        let kernel = format!("gather_{}", self.dtype().as_str());
        let f = self.ctx.function(&CONV, &kernel)?;
        let mut builder = self.ctx.stream.launch_builder(&f);
        let b = &mut builder;
        push(b, &self.buf);
        b.arg(&args);
        b.arg(&dev_ids);
        b.arg(&stride64);
        push_mut(b, &mut out.buf);
        b.arg(&n64);
        self.run(builder, elementwise_config(n), &kernel)?;
        Ok(out)
    }

    fn im2col(&self, layout: &Layout, geom: &ConvGeometry) -> Result<Self> {
        let g = ConvArgs::of(geom);
        let n = geom.n * geom.c * geom.kh * geom.kw * geom.oh * geom.ow;
        let mut out = CudaStorage::alloc(&self.ctx, self.dtype(), n)?;
        if n == 0 {
            return Ok(out);
        }
        let args = StridedArgs::of(layout, &self.ctx)?;
        let kernel = format!("im2col_{}", self.float_dtype("conv2d")?.as_str());
        let f = self.ctx.function(&CONV, &kernel)?;
        let mut builder = self.ctx.stream.launch_builder(&f);
        let b = &mut builder;
        push(b, &self.buf);
        b.arg(&args);
        push_mut(b, &mut out.buf);
        b.arg(&g);
        self.run(builder, elementwise_config(n), &kernel)?;
        Ok(out)
    }

    fn col2im(&self, geom: &ConvGeometry) -> Result<Self> {
        let g = ConvArgs::of(geom);
        let n = geom.n * geom.c * geom.h * geom.w;
        let mut out = CudaStorage::alloc(&self.ctx, self.dtype(), n)?;
        if n == 0 {
            return Ok(out);
        }
        let kernel = format!("col2im_{}", self.float_dtype("conv2d")?.as_str());
        let f = self.ctx.function(&CONV, &kernel)?;
        let mut builder = self.ctx.stream.launch_builder(&f);
        let b = &mut builder;
        push(b, &self.buf);
        push_mut(b, &mut out.buf);
        b.arg(&g);
        self.run(builder, elementwise_config(n), &kernel)?;
        Ok(out)
    }

    fn max_pool2d(&self, layout: &Layout, geom: &ConvGeometry) -> Result<(Self, Self)> {
        let g = ConvArgs::of(geom);
        let n = geom.n * geom.c * geom.oh * geom.ow;
        let dtype = self.float_dtype("max_pool2d")?;
        let mut out = CudaStorage::alloc(&self.ctx, dtype, n)?;
        let mut idx = CudaStorage::alloc(&self.ctx, DType::I64, n)?;
        if n == 0 {
            return Ok((out, idx));
        }
        let args = StridedArgs::of(layout, &self.ctx)?;
        let kernel = format!("max_pool_{}", dtype.as_str());
        let f = self.ctx.function(&CONV, &kernel)?;
        let mut builder = self.ctx.stream.launch_builder(&f);
        let b = &mut builder;
        push(b, &self.buf);
        b.arg(&args);
        push_mut(b, &mut out.buf);
        push_mut(b, &mut idx.buf);
        b.arg(&g);
        self.run(builder, elementwise_config(n), &kernel)?;
        Ok((out, idx))
    }

    fn max_pool2d_backward(
        &self,
        layout: &Layout,
        indices: (&Self, &Layout),
        planes: usize,
        out_hw: usize,
        in_hw: usize,
    ) -> Result<Self> {
        self.same_gpu(indices.0, "max_pool2d_backward")?;
        let dtype = self.float_dtype("max_pool2d_backward")?;
        let mut out = CudaStorage::alloc(&self.ctx, dtype, planes * in_hw)?;
        if planes * in_hw == 0 {
            return Ok(out);
        }
        // The kernel reads both operands densely from their first element.
        let dense = |s: &CudaStorage, l: &Layout| -> Result<Option<CudaStorage>> {
            Ok(match l.contiguous_range() {
                Some(r) if r.start == 0 => None,
                _ => Some(s.copy_strided(l)?),
            })
        };
        let (g_copy, i_copy) = (dense(self, layout)?, dense(indices.0, indices.1)?);
        let (grad, ids) = (
            g_copy.as_ref().unwrap_or(self),
            i_copy.as_ref().unwrap_or(indices.0),
        );
        let dims = [planes as u64, out_hw as u64, in_hw as u64];
        let kernel = format!("max_pool_backward_{}", dtype.as_str());
        let f = self.ctx.function(&CONV, &kernel)?;
        let mut builder = self.ctx.stream.launch_builder(&f);
        let b = &mut builder;
        push(b, &grad.buf);
        push(b, &ids.buf);
        push_mut(b, &mut out.buf);
        for d in &dims {
            b.arg(d);
        }
        self.run(builder, elementwise_config(planes), &kernel)?;
        Ok(out)
    }

    fn index_select(&self, layout: &Layout, ids: &[i64], [outer, size, inner]: [usize; 3]) -> Result<Self> {
        let n = outer * ids.len() * inner;
        let mut out = CudaStorage::alloc(&self.ctx, self.dtype(), n)?;
        if n == 0 {
            return Ok(out);
        }
        let dev_ids = self.upload_ids(ids)?;
        let args = StridedArgs::of(layout, &self.ctx)?;
        let dims = [outer as u64, ids.len() as u64, size as u64, inner as u64];
        let kernel = format!("index_select_{}", self.dtype().as_str());
        let f = self.ctx.function(&ROWS, &kernel)?;
        let mut builder = self.ctx.stream.launch_builder(&f);
        let b = &mut builder;
        push(b, &self.buf);
        b.arg(&args);
        b.arg(&dev_ids);
        push_mut(b, &mut out.buf);
        for d in &dims {
            b.arg(d);
        }
        self.run(builder, elementwise_config(n), &kernel)?;
        Ok(out)
    }
}

/// The conv kernels' geometry (`ConvArgs` in `conv.cu`): passed by value.
#[repr(C)]
#[derive(Clone, Copy)]
struct ConvArgs([u64; 15]);
// SAFETY: plain `repr(C)` data matching the kernels' `ConvArgs` struct (15 u64 fields, in order).
unsafe impl DeviceRepr for ConvArgs {}

impl ConvArgs {
    fn of(g: &ConvGeometry) -> ConvArgs {
        let f = [
            g.n, g.c, g.h, g.w, g.oh, g.ow, g.kh, g.kw, g.sh, g.sw, g.ph, g.pw, g.dh, g.dw, g.groups,
        ];
        ConvArgs(f.map(|v| v as u64))
    }
}

impl CudaStorage {
    /// Indices copied to the device.
    fn upload_ids(&self, ids: &[i64]) -> Result<CudaSlice<i64>> {
        self.ctx
            .stream
            .clone_htod(ids)
            .map_err(|e| self.ctx.error("copying indices to the device", e.to_string()))
    }

    /// The dtype, or an error naming `op` for an integer one.
    fn float_dtype(&self, op: &'static str) -> Result<DType> {
        let dtype = self.dtype();
        if dtype.is_float() {
            Ok(dtype)
        } else {
            Err(Error::UnsupportedDType {
                op,
                dtype,
                expected: "a float dtype (f16, bf16, f32, f64)",
            })
        }
    }

    /// A two-operand kernel `<family>_<dtype>(a, sa, b, sb, out, n, code)` over `shape`.
    #[allow(clippy::too_many_arguments)]
    fn zip_kernel(
        &self,
        family: &str,
        out_dtype: DType,
        lhs: &Layout,
        rhs: &Self,
        rhs_layout: &Layout,
        shape: &Shape,
        code: u32,
    ) -> Result<Self> {
        let n = shape.elem_count();
        let mut out = CudaStorage::alloc(&self.ctx, out_dtype, n)?;
        if n == 0 {
            return Ok(out);
        }
        let (sa, sb) = (
            StridedArgs::of(lhs, &self.ctx)?,
            StridedArgs::of(rhs_layout, &self.ctx)?,
        );
        let n64 = n as u64;
        let kernel = format!("{family}_{}", self.dtype().as_str());
        let f = self.ctx.function(&ELEMENTWISE, &kernel)?;
        let mut builder = self.ctx.stream.launch_builder(&f);
        let b = &mut builder;
        push(b, &self.buf);
        b.arg(&sa);
        push(b, &rhs.buf);
        b.arg(&sb);
        push_mut(b, &mut out.buf);
        b.arg(&n64);
        b.arg(&code);
        self.run(builder, elementwise_config(n), &kernel)?;
        Ok(out)
    }
}
