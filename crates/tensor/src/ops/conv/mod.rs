//! Convolutions with PyTorch semantics and layouts (NCHW activations, `[C_out, C_in / groups, kH,
//! kW]` weights), computed as im2col + GEMM.
//!
//! * [`Tensor::conv2d`], [`Tensor::conv1d`] (a 2-D convolution of height 1) and
//!   [`Tensor::conv_transpose2d`] (GEMM + col2im) are the forward passes.
//! * [`Tensor::conv2d_grad_input`], [`Tensor::conv2d_grad_weight`],
//!   [`Tensor::conv_transpose2d_grad_input`], [`Tensor::conv_transpose2d_grad_weight`] and the 1-D
//!   counterparts are the backward passes that autograd calls. The gradient with respect to a bias
//!   is the sum of `grad_out` over every dimension except the channels (`grad_out.sum([0, 2, 3])`).
//!
//! f32 and f64 run natively; f16 and bf16 compute in f32 and round back; integer dtypes are an
//! [`Error::UnsupportedDType`].
//!
//! Threading: the batch is split into at most one contiguous chunk per rayon thread; each chunk owns
//! one im2col scratch buffer that it reuses for every image. When the batch is smaller than the
//! thread pool (in particular `N == 1`), each GEMM may itself use the idle threads. A 1x1 convolution
//! with stride 1 and no padding multiplies the input directly, without im2col. On AVX-512, f32
//! stride-1 convolutions that keep the width skip im2col altogether (`implicit.rs`: the GEMM's
//! panels are loaded straight from the image, for all three passes).

use rayon::prelude::*;

mod im2col;
mod implicit;

use im2col::{col2im_channel, im2col, im2col_channel, Taps};

use super::{gemm_into, GemmDType, MatRef};
use crate::{DType, Error, Result, Shape, Tensor};

/// Parameters of a 1-D convolution ([`Tensor::conv1d`]), as in `torch.nn.functional.conv1d`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvParams {
    /// Step between successive windows (> 0).
    pub stride: usize,
    /// Zeros added at both ends of the input.
    pub padding: usize,
    /// Spacing between kernel taps (> 0; 1 is an ordinary convolution).
    pub dilation: usize,
    /// Number of channel groups (> 0); input and output channels must both be divisible by it.
    pub groups: usize,
}

impl Default for ConvParams {
    /// Stride 1, no padding, no dilation, one group.
    fn default() -> Self {
        ConvParams {
            stride: 1,
            padding: 0,
            dilation: 1,
            groups: 1,
        }
    }
}

/// Parameters of a 2-D convolution ([`Tensor::conv2d`]), as in `torch.nn.functional.conv2d`.
/// Pairs are `(height, width)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dParams {
    /// Step between successive windows (each > 0).
    pub stride: (usize, usize),
    /// Zeros added on both sides of each spatial dimension.
    pub padding: (usize, usize),
    /// Spacing between kernel taps (each > 0; 1 is an ordinary convolution).
    pub dilation: (usize, usize),
    /// Number of channel groups (> 0); input and output channels must both be divisible by it.
    pub groups: usize,
}

impl Default for Conv2dParams {
    /// Stride 1, no padding, no dilation, one group.
    fn default() -> Self {
        Conv2dParams {
            stride: (1, 1),
            padding: (0, 0),
            dilation: (1, 1),
            groups: 1,
        }
    }
}

/// Parameters of a 2-D transposed convolution ([`Tensor::conv_transpose2d`]), as in
/// `torch.nn.functional.conv_transpose2d`. Pairs are `(height, width)`.
///
/// The output size is `(in - 1) * stride - 2 * padding + dilation * (kernel - 1) + output_padding + 1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvTranspose2dParams {
    /// Stride of the convolution this op is the transpose of (each > 0).
    pub stride: (usize, usize),
    /// Padding of the convolution this op is the transpose of: `dilation * (kernel - 1) - padding`
    /// zeros are effectively added to the input.
    pub padding: (usize, usize),
    /// Extra rows/columns added to one side of the output to resolve the size ambiguity of strided
    /// convolutions; must be smaller than the stride or the dilation.
    pub output_padding: (usize, usize),
    /// Spacing between kernel taps (each > 0).
    pub dilation: (usize, usize),
    /// Number of channel groups (> 0).
    pub groups: usize,
}

impl Default for ConvTranspose2dParams {
    /// Stride 1, no padding, no output padding, no dilation, one group.
    fn default() -> Self {
        ConvTranspose2dParams {
            stride: (1, 1),
            padding: (0, 0),
            output_padding: (0, 0),
            dilation: (1, 1),
            groups: 1,
        }
    }
}

impl From<ConvParams> for Conv2dParams {
    /// The 2-D parameters of a 1-D convolution seen as a convolution of height 1.
    fn from(p: ConvParams) -> Self {
        Conv2dParams {
            stride: (1, p.stride),
            padding: (0, p.padding),
            dilation: (1, p.dilation),
            groups: p.groups,
        }
    }
}

/// The geometry shared by every kernel in this file, in terms of a forward convolution: an "image"
/// `[n, c, h, w]` is convolved with a weight `[co, c / groups, kh, kw]` into "columns"
/// `[n, co, oh, ow]`. A transposed convolution swaps the roles (its input is the column side).
#[derive(Clone, Copy, Debug)]
struct Geom {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    co: usize,
    oh: usize,
    ow: usize,
    kh: usize,
    kw: usize,
    sh: usize,
    sw: usize,
    ph: usize,
    pw: usize,
    dh: usize,
    dw: usize,
    groups: usize,
    /// The precision of the products ([`crate::matmul_precision`] when the op started).
    precision: crate::MatmulPrecision,
}

impl Geom {
    /// Image channels per group.
    fn cig(&self) -> usize {
        self.c / self.groups
    }
    /// Column channels per group.
    fn cog(&self) -> usize {
        self.co / self.groups
    }
    /// Depth of each per-group GEMM: rows of a group's im2col matrix.
    fn k(&self) -> usize {
        self.cig() * self.kh * self.kw
    }
    /// Positions in the column grid.
    fn p(&self) -> usize {
        self.oh * self.ow
    }
    /// Elements of one image.
    fn image_len(&self) -> usize {
        self.c * self.h * self.w
    }
    /// Elements of one image's output/column-side tensor.
    fn cols_len(&self) -> usize {
        self.co * self.p()
    }
    /// Elements of the im2col matrix of one image (all groups).
    fn scratch_len(&self) -> usize {
        if self.is_pointwise() {
            0
        } else {
            self.c * self.kh * self.kw * self.p()
        }
    }
    /// A 1x1, stride-1, unpadded convolution whose im2col matrix is the image itself.
    fn is_pointwise(&self) -> bool {
        self.kh == 1
            && self.kw == 1
            && self.sh == 1
            && self.sw == 1
            && self.ph == 0
            && self.pw == 0
            && self.oh == self.h
            && self.ow == self.w
    }
}

/// Output length of a convolution along one dimension, or `None` when the dilated kernel is longer
/// than the padded input (or empty).
fn conv_out_len(len: usize, k: usize, s: usize, p: usize, d: usize) -> Option<usize> {
    if k == 0 {
        return None;
    }
    let eff = d.checked_mul(k - 1)?.checked_add(1)?;
    let padded = p.checked_mul(2)?.checked_add(len)?;
    (eff <= padded).then(|| (padded - eff) / s + 1)
}

fn mismatch(op: &'static str, lhs: &Shape, rhs: &Shape, reason: impl Into<String>) -> Error {
    Error::ShapeMismatch {
        op,
        lhs: lhs.clone(),
        rhs: rhs.clone(),
        reason: reason.into(),
    }
}

/// Check that every hyper-parameter which must be positive is.
fn check_positive(
    op: &'static str,
    stride: (usize, usize),
    dilation: (usize, usize),
    groups: usize,
    x: &Shape,
    w: &Shape,
) -> Result<()> {
    if stride.0 == 0 || stride.1 == 0 || dilation.0 == 0 || dilation.1 == 0 || groups == 0 {
        return Err(Error::invalid(
            op,
            format!(
                "stride {stride:?}, dilation {dilation:?} and groups {groups} must all be positive \
                 (input {x:?}, weight {w:?})"
            ),
        ));
    }
    Ok(())
}

/// Validate a forward convolution of an input of shape `x` with a weight of shape `w`.
fn conv2d_geom(op: &'static str, x: &Shape, w: &Shape, p: &Conv2dParams) -> Result<Geom> {
    let (&[n, c, h, wd], &[co, cig, kh, kw]) = (x.dims(), w.dims()) else {
        return Err(mismatch(
            op,
            x,
            w,
            "expected a 4-D input [N, C_in, H, W] and a 4-D weight [C_out, C_in / groups, kH, kW]",
        ));
    };
    check_positive(op, p.stride, p.dilation, p.groups, x, w)?;
    let g = p.groups;
    if h == 0 || wd == 0 {
        return Err(mismatch(
            op,
            x,
            w,
            "the input's height and width must be non-zero",
        ));
    }
    if cig.checked_mul(g) != Some(c) {
        return Err(mismatch(
            op,
            x,
            w,
            format!("the input has {c} channels but the weight expects {cig} per group x {g} groups"),
        ));
    }
    if co % g != 0 {
        return Err(mismatch(
            op,
            x,
            w,
            format!("{co} output channels are not divisible by {g} groups"),
        ));
    }
    let oh = conv_out_len(h, kh, p.stride.0, p.padding.0, p.dilation.0);
    let ow = conv_out_len(wd, kw, p.stride.1, p.padding.1, p.dilation.1);
    let (Some(oh), Some(ow)) = (oh, ow) else {
        return Err(mismatch(
            op,
            x,
            w,
            format!(
                "the kernel {kh}x{kw} (dilation {:?}) is empty or larger than the padded input \
                 (padding {:?})",
                p.dilation, p.padding
            ),
        ));
    };
    Ok(Geom {
        n,
        c,
        h,
        w: wd,
        co,
        oh,
        ow,
        kh,
        kw,
        sh: p.stride.0,
        sw: p.stride.1,
        ph: p.padding.0,
        pw: p.padding.1,
        dh: p.dilation.0,
        dw: p.dilation.1,
        groups: g,
        precision: crate::matmul_precision(),
    })
}

/// Output length of a transposed convolution along one dimension, if positive.
fn conv_transpose_out_len(len: usize, k: usize, s: usize, p: usize, d: usize, op: usize) -> Option<usize> {
    let out = (len as i128 - 1) * s as i128 - 2 * p as i128 + (d as i128) * (k as i128 - 1) + op as i128 + 1;
    (k > 0 && out > 0).then_some(out as usize)
}

/// Validate a transposed convolution of `x` `[N, C_in, H, W]` with `w` `[C_in, C_out / groups, kH,
/// kW]`, returning the geometry of the convolution it is the transpose of.
fn conv_transpose2d_geom(op: &'static str, x: &Shape, w: &Shape, p: &ConvTranspose2dParams) -> Result<Geom> {
    let (&[n, ci, ih, iw], &[wci, cog, kh, kw]) = (x.dims(), w.dims()) else {
        return Err(mismatch(
            op,
            x,
            w,
            "expected a 4-D input [N, C_in, H, W] and a 4-D weight [C_in, C_out / groups, kH, kW]",
        ));
    };
    check_positive(op, p.stride, p.dilation, p.groups, x, w)?;
    let g = p.groups;
    if ih == 0 || iw == 0 {
        return Err(mismatch(
            op,
            x,
            w,
            "the input's height and width must be non-zero",
        ));
    }
    if wci != ci {
        return Err(mismatch(
            op,
            x,
            w,
            format!("the input has {ci} channels but the weight's first dimension is {wci}"),
        ));
    }
    if ci % g != 0 {
        return Err(mismatch(
            op,
            x,
            w,
            format!("{ci} input channels are not divisible by {g} groups"),
        ));
    }
    for (o, s, d, name) in [
        (p.output_padding.0, p.stride.0, p.dilation.0, "height"),
        (p.output_padding.1, p.stride.1, p.dilation.1, "width"),
    ] {
        if o >= s && o >= d {
            return Err(Error::invalid(
                op,
                format!(
                    "output_padding {o} ({name}) must be smaller than the stride {s} or the dilation {d} \
                     (input {x:?}, weight {w:?})"
                ),
            ));
        }
    }
    let oh = conv_transpose_out_len(ih, kh, p.stride.0, p.padding.0, p.dilation.0, p.output_padding.0);
    let ow = conv_transpose_out_len(iw, kw, p.stride.1, p.padding.1, p.dilation.1, p.output_padding.1);
    let (Some(oh), Some(ow)) = (oh, ow) else {
        return Err(mismatch(
            op,
            x,
            w,
            format!(
                "the output would be empty (kernel {kh}x{kw}, stride {:?}, padding {:?}, dilation {:?}, \
                 output_padding {:?})",
                p.stride, p.padding, p.dilation, p.output_padding
            ),
        ));
    };
    let Some(c) = cog.checked_mul(g) else {
        return Err(mismatch(
            op,
            x,
            w,
            format!("{cog} x {g} groups output channels overflow"),
        ));
    };
    Ok(Geom {
        n,
        c,
        h: oh,
        w: ow,
        co: ci,
        oh: ih,
        ow: iw,
        kh,
        kw,
        sh: p.stride.0,
        sw: p.stride.1,
        ph: p.padding.0,
        pw: p.padding.1,
        dh: p.dilation.0,
        dw: p.dilation.1,
        groups: g,
        precision: crate::matmul_precision(),
    })
}

/// Error unless `bias` is a 1-D tensor of `channels` elements with the input's dtype.
fn check_bias(op: &'static str, x: &Tensor, bias: Option<&Tensor>, channels: usize) -> Result<()> {
    if let Some(b) = bias {
        x.check_same_dtype(b, op)?;
        if b.dims() != [channels] {
            return Err(mismatch(
                op,
                x.shape(),
                b.shape(),
                format!("the bias must be 1-D with {channels} elements (one per output channel)"),
            ));
        }
    }
    Ok(())
}

/// Error unless `t` has exactly the dims `expected`.
fn check_dims(op: &'static str, t: &Tensor, expected: &[usize], what: &str) -> Result<()> {
    if t.dims() != expected {
        return Err(mismatch(
            op,
            t.shape(),
            &Shape::from(expected),
            format!("{what} has the wrong shape; expected the right-hand shape"),
        ));
    }
    Ok(())
}

/// The three kernels, each a function of contiguous slices.
#[derive(Clone, Copy, Debug)]
enum Kernel {
    /// `[n, c, h, w] (*) weight -> [n, co, oh, ow]`: im2col + GEMM (conv forward).
    Im2colGemm,
    /// `[n, co, oh, ow] (*)^T weight -> [n, c, h, w]`: GEMM + col2im (conv grad input).
    GemmCol2im,
    /// `([n, c, h, w], [n, co, oh, ow]) -> [co, c / groups, kh, kw]` (conv grad weight).
    GradWeight,
}

/// Run `kernel` in the dtype of `a`: natively for f32/f64, through f32 for f16/bf16. The operands
/// are `a` (the first input), `b` (weight or second input) and an optional bias, all of `a`'s dtype.
fn dispatch(
    op: &'static str,
    kernel: Kernel,
    a: &Tensor,
    b: &Tensor,
    bias: Option<&Tensor>,
    g: &Geom,
    out_dims: Vec<usize>,
) -> Result<Tensor> {
    a.check_same_dtype(b, op)?;
    if a.cuda().is_some() {
        return on_device(kernel, a, b, bias, g, out_dims);
    }
    match a.dtype() {
        DType::F32 => {
            let implicit = match kernel {
                Kernel::Im2colGemm => implicit::fits(g),
                Kernel::GemmCol2im => implicit::fits_grad_input(g),
                Kernel::GradWeight => implicit::fits_grad_weight(g),
            };
            if !implicit {
                return run::<f32>(kernel, a, b, bias, g, out_dims);
            }
            let (da, db) = (a.contiguous_slice::<f32>()?, b.contiguous_slice::<f32>()?);
            let bias = bias.map(|t| t.contiguous_slice::<f32>()).transpose()?;
            let out = match kernel {
                Kernel::Im2colGemm => implicit::forward(&da, &db, bias.as_deref(), g),
                Kernel::GemmCol2im => implicit::grad_input(&da, &db, bias.as_deref(), g),
                Kernel::GradWeight => sum_over_batch(g, |images, dw, threaded| {
                    implicit::accumulate_grad_weight(&da, &db, g, images, dw, threaded)
                }),
            };
            Tensor::from_vec(out, out_dims)
        }
        DType::F64 => run::<f64>(kernel, a, b, bias, g, out_dims),
        DType::F16 | DType::BF16 => {
            let bias32 = bias.map(|t| t.to_dtype(DType::F32)).transpose()?;
            dispatch(
                op,
                kernel,
                &a.to_dtype(DType::F32)?,
                &b.to_dtype(DType::F32)?,
                bias32.as_ref(),
                g,
                out_dims,
            )?
            .to_dtype(a.dtype())
        }
        dtype => Err(Error::UnsupportedDType {
            op,
            dtype,
            expected: "a float dtype (f16, bf16, f32, f64)",
        }),
    }
}

/// The three convolution products on a device: columns from the device's im2col, products
/// through its batched matmul (`[groups, co/g, K]` against `[n, groups, K, oh·ow]`), the input
/// gradient folded back by col2im, the weight gradient summed over the batch.
fn on_device(
    kernel: Kernel,
    a: &Tensor,
    b: &Tensor,
    bias: Option<&Tensor>,
    g: &Geom,
    out_dims: Vec<usize>,
) -> Result<Tensor> {
    use crate::backend::{ConvGeometry, DeviceStorage};
    let geom = ConvGeometry {
        n: g.n,
        c: g.c,
        h: g.h,
        w: g.w,
        oh: g.oh,
        ow: g.ow,
        kh: g.kh,
        kw: g.kw,
        sh: g.sh,
        sw: g.sw,
        ph: g.ph,
        pw: g.pw,
        dh: g.dh,
        dw: g.dw,
        groups: g.groups,
    };
    let (groups, k, p) = (g.groups, g.cig() * g.kh * g.kw, g.oh * g.ow);
    let cog = g.co / groups;
    let columns = |x: &Tensor| -> Result<Tensor> {
        let s = x
            .cuda()
            .ok_or_else(|| Error::invalid("conv2d", "internal: the image left the device"))?;
        Ok(Tensor::from_cuda_contiguous(
            s.im2col(x.layout(), &geom)?,
            [g.n, groups, k, p],
        ))
    };
    let out = match kernel {
        Kernel::Im2colGemm => {
            let w = b.contiguous()?.reshape([groups, cog, k])?;
            w.matmul(&columns(a)?)?.reshape(out_dims)?
        }
        Kernel::GemmCol2im => {
            let w = b.contiguous()?.reshape([groups, cog, k])?;
            let dy = a.contiguous()?.reshape([g.n, groups, cog, p])?;
            let cols = w.transpose(1, 2)?.matmul(&dy)?;
            let s = cols
                .cuda()
                .ok_or_else(|| Error::invalid("conv2d", "internal: columns left the device"))?;
            Tensor::from_cuda_contiguous(s.col2im(&geom)?, out_dims)
        }
        Kernel::GradWeight => {
            let dy = b.contiguous()?.reshape([g.n, groups, cog, p])?;
            let per_image = dy.matmul(&columns(a)?.transpose(2, 3)?)?;
            per_image.sum(0usize, false)?.reshape(out_dims)?
        }
    };
    match bias {
        Some(bias) => {
            let channels = bias.elem_count();
            out.add(&bias.reshape([1, channels, 1, 1])?)
        }
        None => Ok(out),
    }
}

fn run<T: GemmDType>(
    kernel: Kernel,
    a: &Tensor,
    b: &Tensor,
    bias: Option<&Tensor>,
    g: &Geom,
    out_dims: Vec<usize>,
) -> Result<Tensor> {
    let (da, db) = (a.contiguous_slice::<T>()?, b.contiguous_slice::<T>()?);
    let bias = bias.map(|t| t.contiguous_slice::<T>()).transpose()?;
    let out = match kernel {
        Kernel::Im2colGemm => im2col_gemm(&da, &db, bias.as_deref(), g),
        Kernel::GemmCol2im => gemm_col2im(&da, &db, bias.as_deref(), g),
        Kernel::GradWeight => grad_weight(&da, &db, g),
    };
    Tensor::from_vec(out, out_dims)
}

/// The weight gradient is summed over the batch in this many partial sums (fewer for a smaller
/// batch), run in parallel; with more threads than partials, each partial's products use the
/// spare threads. Few, because zeroing and adding up the partials is memory traffic.
const GRAD_WEIGHT_PARTIALS: usize = 4;

/// Weight-gradient elements added up per task when the partial sums are reduced.
const REDUCE_CHUNK: usize = 1 << 14;

/// Elements above which a single image's im2col/col2im is split across threads.
const PARALLEL_ELEMS: usize = 1 << 16;

/// Fill `out` (`n` chunks of `per_image` elements) by calling `f(image, out_chunk, scratch,
/// threaded)` for every image. The batch is split into at most one contiguous run of images per
/// rayon thread, each with its own `scratch_len` scratch buffer; `threaded` tells `f` whether it
/// may use more threads (true when the batch is smaller than the thread pool).
fn for_each_image<T: GemmDType>(
    out: &mut [T],
    n: usize,
    per_image: usize,
    scratch_len: usize,
    f: impl Fn(usize, &mut [T], &mut [T], bool) + Sync,
) {
    if n == 0 || per_image == 0 {
        return;
    }
    let threads = rayon::current_num_threads();
    let threaded = n < threads;
    let per_chunk = n.div_ceil(n.min(threads));
    if per_chunk == n {
        let mut scratch = vec![T::ZERO; scratch_len];
        for (i, o) in out.chunks_exact_mut(per_image).enumerate() {
            f(i, o, &mut scratch, threaded);
        }
        return;
    }
    out.par_chunks_mut(per_chunk * per_image)
        .enumerate()
        .for_each(|(ci, chunk)| {
            let mut scratch = vec![T::ZERO; scratch_len];
            for (j, o) in chunk.chunks_exact_mut(per_image).enumerate() {
                f(ci * per_chunk + j, o, &mut scratch, threaded);
            }
        });
}

/// Forward convolution: `x` `[n, c, h, w]`, `w` `[co, c/g, kh, kw]`, optional bias `[co]`.
fn im2col_gemm<T: GemmDType>(x: &[T], w: &[T], bias: Option<&[T]>, g: &Geom) -> Vec<T> {
    let taps = Taps::new(g);
    let (p, k, cog, cig) = (g.p(), g.k(), g.cog(), g.cig());
    let mut out = vec![T::ZERO; g.n * g.cols_len()];
    let pointwise = g.is_pointwise();
    for_each_image(
        &mut out,
        g.n,
        g.cols_len(),
        g.scratch_len(),
        |i, dst, col, threaded| {
            let img = &x[i * g.image_len()..(i + 1) * g.image_len()];
            if let Some(b) = bias {
                for (plane, &bv) in dst.chunks_exact_mut(p).zip(b) {
                    plane.fill(bv);
                }
            }
            // The im2col matrix (or, pointwise, the image itself) with its per-group offset and row stride.
            let (rhs, rhs_base): (&[T], usize) = if pointwise {
                (x, i * g.image_len())
            } else {
                let per_channel = g.kh * g.kw * p;
                if threaded && col.len() >= PARALLEL_ELEMS {
                    img.par_chunks_exact(g.h * g.w)
                        .zip(col.par_chunks_exact_mut(per_channel))
                        .for_each(|(plane, rows)| im2col_channel(plane, rows, g, &taps));
                } else {
                    im2col(img, col, g, &taps);
                }
                (&*col, 0)
            };
            for grp in 0..g.groups {
                gemm_into(
                    cog,
                    p,
                    k,
                    &mut dst[grp * cog * p..(grp + 1) * cog * p],
                    w,
                    MatRef {
                        offset: grp * cog * k,
                        row_stride: k,
                        col_stride: 1,
                    },
                    rhs,
                    MatRef {
                        offset: rhs_base + grp * cig * g.kh * g.kw * p,
                        row_stride: p,
                        col_stride: 1,
                    },
                    bias.is_some(),
                    threaded,
                    g.precision,
                );
            }
        },
    );
    out
}

/// Adjoint of the forward convolution with respect to its input: `cols` `[n, co, oh, ow]`, `w`
/// `[co, c/g, kh, kw]`, optional bias `[c]` added to the result `[n, c, h, w]`.
fn gemm_col2im<T: GemmDType>(cols: &[T], w: &[T], bias: Option<&[T]>, g: &Geom) -> Vec<T> {
    let taps = Taps::new(g);
    let (p, k, cog, cig, hw) = (g.p(), g.k(), g.cog(), g.cig(), g.h * g.w);
    let mut out = vec![T::ZERO; g.n * g.image_len()];
    let pointwise = g.is_pointwise();
    for_each_image(
        &mut out,
        g.n,
        g.image_len(),
        g.scratch_len(),
        |i, img, col, threaded| {
            let src = &cols[i * g.cols_len()..(i + 1) * g.cols_len()];
            if let Some(b) = bias {
                for (plane, &bv) in img.chunks_exact_mut(hw).zip(b) {
                    plane.fill(bv);
                }
            }
            for grp in 0..g.groups {
                // col_g [K, P] = W_g^T [K, cog] @ cols_g [cog, P]; pointwise, K = cig rows of the image.
                let (dst, accumulate) = if pointwise {
                    (&mut img[grp * cig * hw..(grp + 1) * cig * hw], bias.is_some())
                } else {
                    (&mut col[grp * k * p..(grp + 1) * k * p], false)
                };
                gemm_into(
                    k,
                    p,
                    cog,
                    dst,
                    w,
                    MatRef {
                        offset: grp * cog * k,
                        row_stride: 1,
                        col_stride: k,
                    },
                    src,
                    MatRef {
                        offset: grp * cog * p,
                        row_stride: p,
                        col_stride: 1,
                    },
                    accumulate,
                    threaded,
                    g.precision,
                );
            }
            if !pointwise {
                let per_channel = g.kh * g.kw * p;
                if threaded && col.len() >= PARALLEL_ELEMS {
                    col.par_chunks_exact_mut(per_channel)
                        .zip(img.par_chunks_exact_mut(hw))
                        .for_each(|(rows, plane)| col2im_channel(rows, plane, g, &taps));
                } else {
                    for (rows, plane) in col.chunks_exact_mut(per_channel).zip(img.chunks_exact_mut(hw)) {
                        col2im_channel(rows, plane, g, &taps);
                    }
                }
            }
        },
    );
    out
}

/// Adjoint of the forward convolution with respect to its weight: `x` `[n, c, h, w]`, `cols`
/// `[n, co, oh, ow]` -> `[co, c/g, kh, kw]`, summed over the batch.
fn grad_weight<T: GemmDType>(x: &[T], cols: &[T], g: &Geom) -> Vec<T> {
    let taps = Taps::new(g);
    let (p, k, cog, cig) = (g.p(), g.k(), g.cog(), g.cig());
    let pointwise = g.is_pointwise();
    // Accumulate the images `range` into `dw` with one scratch buffer.
    let accumulate = |range: std::ops::Range<usize>, dw: &mut [T], threaded: bool| {
        let mut col = vec![T::ZERO; g.scratch_len()];
        for i in range {
            let img = &x[i * g.image_len()..(i + 1) * g.image_len()];
            let (rhs, rhs_base): (&[T], usize) = if pointwise {
                (x, i * g.image_len())
            } else {
                im2col(img, &mut col, g, &taps);
                (&col, 0)
            };
            for grp in 0..g.groups {
                // dw_g [cog, K] += cols_g [cog, P] @ col_g^T [P, K]
                gemm_into(
                    cog,
                    k,
                    p,
                    &mut dw[grp * cog * k..(grp + 1) * cog * k],
                    cols,
                    MatRef {
                        offset: i * g.cols_len() + grp * cog * p,
                        row_stride: p,
                        col_stride: 1,
                    },
                    rhs,
                    MatRef {
                        offset: rhs_base + grp * cig * g.kh * g.kw * p,
                        row_stride: 1,
                        col_stride: p,
                    },
                    true,
                    threaded,
                    g.precision,
                );
            }
        }
    };
    sum_over_batch(g, accumulate)
}

/// The weight gradient `[co, c/g, kh, kw]` summed over the batch by `accumulate(images, dw,
/// threaded)`, which adds the gradient of a run of images into `dw` (and may use more threads
/// when `threaded`).
fn sum_over_batch<T: GemmDType>(
    g: &Geom,
    accumulate: impl Fn(std::ops::Range<usize>, &mut [T], bool) + Sync,
) -> Vec<T> {
    let wlen = g.co * g.k();
    let mut dw = vec![T::ZERO; wlen];
    let threads = rayon::current_num_threads();
    // A fixed number of partial sums, whatever the thread count, so that the gradient (and a
    // whole training run) is bit-identical at 1 thread and at 64: each partial sums its run of
    // images in order, and the partials are added in order.
    let chunks = g.n.min(GRAD_WEIGHT_PARTIALS);
    if chunks <= 1 || wlen == 0 {
        accumulate(0..g.n, &mut dw, true);
        return dw;
    }
    let per_chunk = g.n.div_ceil(chunks);
    // The products give the same bits with or without threads (tiles of C, never split over K).
    let threaded = chunks < threads;
    let partials: Vec<Vec<T>> = (0..g.n.div_ceil(per_chunk))
        .into_par_iter()
        .map(|ci| {
            let mut part = vec![T::ZERO; wlen];
            accumulate(
                ci * per_chunk..((ci + 1) * per_chunk).min(g.n),
                &mut part,
                threaded,
            );
            part
        })
        .collect();
    // Each element adds the partials in the same order, whichever task it falls in.
    dw.par_chunks_mut(REDUCE_CHUNK).enumerate().for_each(|(ci, d)| {
        let range = ci * REDUCE_CHUNK..ci * REDUCE_CHUNK + d.len();
        for part in &partials {
            for (x, &v) in d.iter_mut().zip(&part[range.clone()]) {
                *x = x.add(v);
            }
        }
    });
    dw
}

impl Tensor {
    /// 2-D convolution (`torch.nn.functional.conv2d`): `self` is `[N, C_in, H, W]`, `weight` is
    /// `[C_out, C_in / groups, kH, kW]`, `bias` (optional) is `[C_out]`; the result is `[N, C_out,
    /// H_out, W_out]` with `H_out = (H + 2 * padding - dilation * (kH - 1) - 1) / stride + 1`.
    ///
    /// Computed as im2col + GEMM (a 1x1, stride-1, unpadded convolution skips im2col). f16/bf16
    /// compute in f32; integer dtypes are an error, as are mismatched ranks, channels, groups,
    /// kernels larger than the padded input, zero strides/dilations/groups and a bias of the wrong
    /// length.
    ///
    /// ```
    /// use kiln_tensor::{ops::conv::Conv2dParams, Tensor};
    /// let x = Tensor::from_vec((1..=9).map(|v| v as f32).collect(), [1, 1, 3, 3])?;
    /// let w = Tensor::from_vec(vec![1f32; 4], [1, 1, 2, 2])?;
    /// let y = x.conv2d(&w, None, Conv2dParams::default())?;
    /// assert_eq!(y.to_vec::<f32>()?, vec![12., 16., 24., 28.]);
    /// # Ok::<(), kiln_tensor::Error>(())
    /// ```
    pub fn conv2d(&self, weight: &Tensor, bias: Option<&Tensor>, p: Conv2dParams) -> Result<Tensor> {
        self.conv2d_op("conv2d", weight, bias, p)
    }

    fn conv2d_op(
        &self,
        op: &'static str,
        weight: &Tensor,
        bias: Option<&Tensor>,
        p: Conv2dParams,
    ) -> Result<Tensor> {
        let g = conv2d_geom(op, self.shape(), weight.shape(), &p)?;
        check_bias(op, self, bias, g.co)?;
        dispatch(
            op,
            Kernel::Im2colGemm,
            self,
            weight,
            bias,
            &g,
            vec![g.n, g.co, g.oh, g.ow],
        )
    }

    /// 1-D convolution (`torch.nn.functional.conv1d`): `self` is `[N, C_in, L]`, `weight` is
    /// `[C_out, C_in / groups, k]`, `bias` (optional) is `[C_out]`; the result is `[N, C_out,
    /// L_out]` with `L_out = (L + 2 * padding - dilation * (k - 1) - 1) / stride + 1`. Computed as a
    /// [`Tensor::conv2d`] of height 1, with the same errors.
    pub fn conv1d(&self, weight: &Tensor, bias: Option<&Tensor>, p: ConvParams) -> Result<Tensor> {
        const OP: &str = "conv1d";
        if self.rank() != 3 || weight.rank() != 3 {
            return Err(mismatch(
                OP,
                self.shape(),
                weight.shape(),
                "expected a 3-D input [N, C_in, L] and a 3-D weight [C_out, C_in / groups, k]",
            ));
        }
        self.unsqueeze(2)?
            .conv2d_op(OP, &weight.unsqueeze(2)?, bias, p.into())
            .map_err(|e| rename_shapes(e, self, weight))?
            .squeeze(2)
    }

    /// 2-D transposed convolution (`torch.nn.functional.conv_transpose2d`), the adjoint of
    /// [`Tensor::conv2d`] with respect to its input: `self` is `[N, C_in, H, W]`, `weight` is
    /// `[C_in, C_out / groups, kH, kW]`, `bias` (optional) is `[C_out]`; the result is `[N, C_out,
    /// H_out, W_out]` with `H_out = (H - 1) * stride - 2 * padding + dilation * (kH - 1) +
    /// output_padding + 1`. Computed as GEMM + col2im.
    pub fn conv_transpose2d(
        &self,
        weight: &Tensor,
        bias: Option<&Tensor>,
        p: ConvTranspose2dParams,
    ) -> Result<Tensor> {
        const OP: &str = "conv_transpose2d";
        let g = conv_transpose2d_geom(OP, self.shape(), weight.shape(), &p)?;
        check_bias(OP, self, bias, g.c)?;
        dispatch(
            OP,
            Kernel::GemmCol2im,
            self,
            weight,
            bias,
            &g,
            vec![g.n, g.c, g.h, g.w],
        )
    }

    /// Gradient of [`Tensor::conv2d`] with respect to its input (PyTorch's
    /// `conv2d_input`): `grad_out` `[N, C_out, H_out, W_out]` and `weight` `[C_out, C_in / groups,
    /// kH, kW]` give `[N, C_in, H, W]`, where `input_hw = (H, W)` is the forward input's spatial
    /// size (several sizes give the same output size when the stride is above 1) and `p` are the
    /// forward parameters. Errors unless `grad_out` has the forward output's shape.
    pub fn conv2d_grad_input(
        grad_out: &Tensor,
        weight: &Tensor,
        input_hw: (usize, usize),
        p: Conv2dParams,
    ) -> Result<Tensor> {
        const OP: &str = "conv2d_grad_input";
        let &[n, ..] = grad_out.dims() else {
            return Err(mismatch(
                OP,
                grad_out.shape(),
                weight.shape(),
                "expected a 4-D grad_out [N, C_out, H_out, W_out]",
            ));
        };
        let c = weight
            .dims()
            .get(1)
            .copied()
            .unwrap_or(0)
            .saturating_mul(p.groups);
        let x_shape = Shape::from([n, c, input_hw.0, input_hw.1]);
        let g = conv2d_geom(OP, &x_shape, weight.shape(), &p)?;
        check_dims(OP, grad_out, &[g.n, g.co, g.oh, g.ow], "grad_out")?;
        dispatch(
            OP,
            Kernel::GemmCol2im,
            grad_out,
            weight,
            None,
            &g,
            vec![g.n, g.c, g.h, g.w],
        )
    }

    /// Gradient of [`Tensor::conv2d`] with respect to its weight (PyTorch's `conv2d_weight`):
    /// `input` `[N, C_in, H, W]` and `grad_out` `[N, C_out, H_out, W_out]` give a tensor of
    /// `weight_shape` = `[C_out, C_in / groups, kH, kW]`, summed over the batch; `p` are the forward
    /// parameters. Errors unless `grad_out` has the forward output's shape.
    pub fn conv2d_grad_weight(
        input: &Tensor,
        grad_out: &Tensor,
        weight_shape: [usize; 4],
        p: Conv2dParams,
    ) -> Result<Tensor> {
        const OP: &str = "conv2d_grad_weight";
        let g = conv2d_geom(OP, input.shape(), &Shape::from(weight_shape), &p)?;
        check_dims(OP, grad_out, &[g.n, g.co, g.oh, g.ow], "grad_out")?;
        dispatch(
            OP,
            Kernel::GradWeight,
            input,
            grad_out,
            None,
            &g,
            weight_shape.to_vec(),
        )
    }

    /// Gradient of [`Tensor::conv_transpose2d`] with respect to its input: `grad_out` `[N, C_out,
    /// H_out, W_out]` and `weight` `[C_in, C_out / groups, kH, kW]` give `[N, C_in, H, W]`. This is
    /// the forward convolution of `grad_out` with the same weight and stride/padding/dilation/groups;
    /// the input size is recovered from the output size and `p` (the forward parameters). Errors when
    /// `grad_out`'s size is not one that [`Tensor::conv_transpose2d`] can produce with `p`.
    pub fn conv_transpose2d_grad_input(
        grad_out: &Tensor,
        weight: &Tensor,
        p: ConvTranspose2dParams,
    ) -> Result<Tensor> {
        const OP: &str = "conv_transpose2d_grad_input";
        let (&[n, _, h, w], &[ci, _, kh, kw]) = (grad_out.dims(), weight.dims()) else {
            return Err(mismatch(
                OP,
                grad_out.shape(),
                weight.shape(),
                "expected a 4-D grad_out [N, C_out, H_out, W_out] and a 4-D weight [C_in, C_out / groups, kH, kW]",
            ));
        };
        let (ih, iw) = transpose_input_hw(OP, grad_out, weight, (h, w), (kh, kw), &p)?;
        let g = conv_transpose2d_geom(OP, &Shape::from([n, ci, ih, iw]), weight.shape(), &p)?;
        check_dims(OP, grad_out, &[g.n, g.c, g.h, g.w], "grad_out")?;
        dispatch(
            OP,
            Kernel::Im2colGemm,
            grad_out,
            weight,
            None,
            &g,
            vec![g.n, g.co, g.oh, g.ow],
        )
    }

    /// Gradient of [`Tensor::conv_transpose2d`] with respect to its weight: `input` `[N, C_in, H,
    /// W]` and `grad_out` `[N, C_out, H_out, W_out]` give a tensor of `weight_shape` = `[C_in, C_out
    /// / groups, kH, kW]`, summed over the batch. This is [`Tensor::conv2d_grad_weight`] with the
    /// roles of input and output swapped; `p` are the forward parameters.
    pub fn conv_transpose2d_grad_weight(
        input: &Tensor,
        grad_out: &Tensor,
        weight_shape: [usize; 4],
        p: ConvTranspose2dParams,
    ) -> Result<Tensor> {
        const OP: &str = "conv_transpose2d_grad_weight";
        let g = conv_transpose2d_geom(OP, input.shape(), &Shape::from(weight_shape), &p)?;
        check_dims(OP, grad_out, &[g.n, g.c, g.h, g.w], "grad_out")?;
        dispatch(
            OP,
            Kernel::GradWeight,
            grad_out,
            input,
            None,
            &g,
            weight_shape.to_vec(),
        )
    }

    /// Gradient of [`Tensor::conv1d`] with respect to its input: `grad_out` `[N, C_out, L_out]` and
    /// `weight` `[C_out, C_in / groups, k]` give `[N, C_in, input_len]`.
    pub fn conv1d_grad_input(
        grad_out: &Tensor,
        weight: &Tensor,
        input_len: usize,
        p: ConvParams,
    ) -> Result<Tensor> {
        if grad_out.rank() != 3 || weight.rank() != 3 {
            return Err(mismatch(
                "conv1d_grad_input",
                grad_out.shape(),
                weight.shape(),
                "expected a 3-D grad_out [N, C_out, L_out] and a 3-D weight [C_out, C_in / groups, k]",
            ));
        }
        Tensor::conv2d_grad_input(
            &grad_out.unsqueeze(2)?,
            &weight.unsqueeze(2)?,
            (1, input_len),
            p.into(),
        )
        .map_err(|e| rename_shapes(e, grad_out, weight))?
        .squeeze(2)
    }

    /// Gradient of [`Tensor::conv1d`] with respect to its weight: `input` `[N, C_in, L]` and
    /// `grad_out` `[N, C_out, L_out]` give a tensor of `weight_shape` = `[C_out, C_in / groups, k]`.
    pub fn conv1d_grad_weight(
        input: &Tensor,
        grad_out: &Tensor,
        weight_shape: [usize; 3],
        p: ConvParams,
    ) -> Result<Tensor> {
        if input.rank() != 3 || grad_out.rank() != 3 {
            return Err(mismatch(
                "conv1d_grad_weight",
                input.shape(),
                grad_out.shape(),
                "expected a 3-D input [N, C_in, L] and a 3-D grad_out [N, C_out, L_out]",
            ));
        }
        let [co, cig, k] = weight_shape;
        Tensor::conv2d_grad_weight(
            &input.unsqueeze(2)?,
            &grad_out.unsqueeze(2)?,
            [co, cig, 1, k],
            p.into(),
        )
        .map_err(|e| rename_shapes(e, input, grad_out))?
        .squeeze(2)
    }
}

/// The input size of a transposed convolution whose output is `out_hw`, or an error when no input
/// size gives that output.
fn transpose_input_hw(
    op: &'static str,
    grad_out: &Tensor,
    weight: &Tensor,
    out_hw: (usize, usize),
    (kh, kw): (usize, usize),
    p: &ConvTranspose2dParams,
) -> Result<(usize, usize)> {
    let solve = |out: usize, k: usize, s: usize, pad: usize, d: usize, o: usize| -> Option<usize> {
        // out = (in - 1) * s - 2 * pad + d * (k - 1) + o + 1
        let num = out as i128 - 1 + 2 * pad as i128 - d as i128 * (k as i128 - 1) - o as i128;
        (s > 0 && k > 0 && num >= 0 && num % s as i128 == 0).then(|| (num / s as i128) as usize + 1)
    };
    let ih = solve(
        out_hw.0,
        kh,
        p.stride.0,
        p.padding.0,
        p.dilation.0,
        p.output_padding.0,
    );
    let iw = solve(
        out_hw.1,
        kw,
        p.stride.1,
        p.padding.1,
        p.dilation.1,
        p.output_padding.1,
    );
    match (ih, iw) {
        (Some(ih), Some(iw)) => Ok((ih, iw)),
        _ => Err(mismatch(
            op,
            grad_out.shape(),
            weight.shape(),
            format!("no input size gives the output size {out_hw:?} with {p:?}"),
        )),
    }
}

/// Report the caller's (1-D) shapes in a shape error raised by the 2-D implementation.
fn rename_shapes(e: Error, lhs: &Tensor, rhs: &Tensor) -> Error {
    match e {
        Error::ShapeMismatch { op, reason, .. } => Error::ShapeMismatch {
            op,
            lhs: lhs.shape().clone(),
            rhs: rhs.shape().clone(),
            reason,
        },
        e => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(v: &[f64], shape: &[usize]) -> Tensor {
        Tensor::from_slice(v, shape).unwrap()
    }

    fn seq(n: usize, shape: &[usize]) -> Tensor {
        t(&(0..n).map(|i| (i % 7) as f64 - 3.0).collect::<Vec<_>>(), shape)
    }

    #[test]
    fn all_ones_kernel_sums_windows() {
        // [[1 2 3] [4 5 6] [7 8 9]] with a 2x2 box: [[12 16] [24 28]].
        let x = t(&[1., 2., 3., 4., 5., 6., 7., 8., 9.], &[1, 1, 3, 3]);
        let w = t(&[1.; 4], &[1, 1, 2, 2]);
        let y = x.conv2d(&w, None, Conv2dParams::default()).unwrap();
        assert_eq!(y.dims(), &[1, 1, 2, 2]);
        assert_eq!(y.to_vec::<f64>().unwrap(), vec![12., 16., 24., 28.]);
        // Padding 1: corners see 4 values, edges 6, ... plus a bias of 0.5.
        let b = t(&[0.5], &[1]);
        let p = Conv2dParams {
            padding: (1, 1),
            ..Default::default()
        };
        let y = x.conv2d(&w, Some(&b), p).unwrap();
        assert_eq!(y.dims(), &[1, 1, 4, 4]);
        let expect = [
            1., 3., 5., 3., 5., 12., 16., 9., 11., 24., 28., 15., 7., 15., 17., 9.,
        ];
        assert_eq!(
            y.to_vec::<f64>().unwrap(),
            expect.iter().map(|v| v + 0.5).collect::<Vec<_>>()
        );
        // Stride 2 with padding 1: the four corners.
        let p = Conv2dParams {
            padding: (1, 1),
            stride: (2, 2),
            ..Default::default()
        };
        let y = x.conv2d(&w, None, p).unwrap();
        assert_eq!(y.to_vec::<f64>().unwrap(), vec![1., 5., 11., 28.]);
        // Dilation 2 on the unpadded input: 1 + 3 + 7 + 9.
        let p = Conv2dParams {
            dilation: (2, 2),
            ..Default::default()
        };
        assert_eq!(x.conv2d(&w, None, p).unwrap().to_vec::<f64>().unwrap(), vec![20.]);
    }

    #[test]
    fn pointwise_and_grouped_channels() {
        // 1x1 conv is a per-pixel matrix product over channels.
        let x = seq(2 * 3 * 2 * 2, &[2, 3, 2, 2]);
        let w = t(&[1., 0., 2., -1., 1., 0.5], &[2, 3, 1, 1]);
        let y = x.conv2d(&w, None, Conv2dParams::default()).unwrap();
        let (xv, wv) = (x.to_vec::<f64>().unwrap(), w.to_vec::<f64>().unwrap());
        let mut expect = vec![];
        for n in 0..2 {
            for o in 0..2 {
                for px in 0..4 {
                    expect.push(
                        (0..3)
                            .map(|c| wv[o * 3 + c] * xv[n * 12 + c * 4 + px])
                            .sum::<f64>(),
                    );
                }
            }
        }
        assert_eq!(y.to_vec::<f64>().unwrap(), expect);
        // Depthwise (groups = channels): each channel scaled by its own weight.
        let w = t(&[2., 3., -1.], &[3, 1, 1, 1]);
        let p = Conv2dParams {
            groups: 3,
            ..Default::default()
        };
        let y = x.conv2d(&w, None, p).unwrap();
        let expect: Vec<f64> = xv
            .iter()
            .enumerate()
            .map(|(i, v)| v * [2., 3., -1.][(i / 4) % 3])
            .collect();
        assert_eq!(y.to_vec::<f64>().unwrap(), expect);
    }

    #[test]
    fn conv1d_and_dtypes() {
        let x = t(&[1., 2., 3., 4., 5.], &[1, 1, 5]);
        let w = t(&[1., 0., -1.], &[1, 1, 3]);
        let y = x.conv1d(&w, None, ConvParams::default()).unwrap();
        assert_eq!(y.dims(), &[1, 1, 3]);
        assert_eq!(y.to_vec::<f64>().unwrap(), vec![-2., -2., -2.]);
        let p = ConvParams {
            padding: 1,
            stride: 2,
            ..Default::default()
        };
        assert_eq!(
            x.conv1d(&w, None, p).unwrap().to_vec::<f64>().unwrap(),
            vec![-2., -2., 4.]
        );
        for dt in [DType::F32, DType::F16, DType::BF16] {
            let y = x
                .to_dtype(dt)
                .unwrap()
                .conv1d(&w.to_dtype(dt).unwrap(), None, ConvParams::default())
                .unwrap();
            assert_eq!(y.dtype(), dt);
            assert_eq!(y.to_f64_vec(), vec![-2., -2., -2.]);
        }
        let e = x
            .to_dtype(DType::I64)
            .unwrap()
            .conv1d(&w.to_dtype(DType::I64).unwrap(), None, ConvParams::default())
            .unwrap_err();
        assert!(matches!(e, Error::UnsupportedDType { op: "conv1d", .. }), "{e}");
    }

    #[test]
    fn non_contiguous_input_is_gathered() {
        let x = seq(16, &[1, 1, 4, 4]);
        let xt = x.transpose(2, 3).unwrap();
        let w = t(&[1., 2., 3., 4.], &[1, 1, 2, 2]);
        let wt = t(&[1., 3., 2., 4.], &[1, 1, 2, 2]);
        // conv(x^T, w) == conv(x, w^T)^T
        let a = xt.conv2d(&w, None, Conv2dParams::default()).unwrap();
        let b = x
            .conv2d(&wt, None, Conv2dParams::default())
            .unwrap()
            .transpose(2, 3)
            .unwrap();
        assert_eq!(a.to_vec::<f64>().unwrap(), b.to_vec::<f64>().unwrap());
    }

    #[test]
    fn transposed_conv_upsamples() {
        // Stride-2 2x2 transposed conv of a 2x2 input with an all-ones kernel: each input pixel
        // becomes a 2x2 block.
        let x = t(&[1., 2., 3., 4.], &[1, 1, 2, 2]);
        let w = t(&[1.; 4], &[1, 1, 2, 2]);
        let p = ConvTranspose2dParams {
            stride: (2, 2),
            ..Default::default()
        };
        let y = x.conv_transpose2d(&w, Some(&t(&[10.], &[1])), p).unwrap();
        assert_eq!(y.dims(), &[1, 1, 4, 4]);
        let expect = [1., 1., 2., 2., 1., 1., 2., 2., 3., 3., 4., 4., 3., 3., 4., 4.];
        assert_eq!(
            y.to_vec::<f64>().unwrap(),
            expect.iter().map(|v| v + 10.).collect::<Vec<_>>()
        );
        // Stride 1: overlapping blocks add up; output padding adds a bias-only row/column.
        let p = ConvTranspose2dParams {
            stride: (2, 2),
            output_padding: (1, 1),
            ..Default::default()
        };
        let y = x.conv_transpose2d(&w, None, p).unwrap();
        assert_eq!(y.dims(), &[1, 1, 5, 5]);
        assert_eq!(y.to_vec::<f64>().unwrap()[20..], [0.; 5]);
        let y = x.conv_transpose2d(&w, None, Default::default()).unwrap();
        assert_eq!(
            y.to_vec::<f64>().unwrap(),
            vec![1., 3., 2., 4., 10., 6., 3., 7., 4.]
        );
        // Its input gradient is the forward convolution of grad_out.
        let gx = Tensor::conv_transpose2d_grad_input(&y, &w, Default::default()).unwrap();
        assert_eq!(gx.to_vec::<f64>().unwrap(), vec![18., 21., 24., 27.]);
    }

    #[test]
    fn gradients_match_hand_values() {
        let x = t(&[1., 2., 3., 4., 5., 6., 7., 8., 9.], &[1, 1, 3, 3]);
        let g = t(&[1., 0., 0., 2.], &[1, 1, 2, 2]);
        let gw = Tensor::conv2d_grad_weight(&x, &g, [1, 1, 2, 2], Conv2dParams::default()).unwrap();
        // dL/dw[i,j] = sum g[o] x[o + (i,j)] = x[i,j] + 2 x[i+1, j+1]
        assert_eq!(gw.to_vec::<f64>().unwrap(), vec![11., 14., 20., 23.]);
        let w = t(&[1., 2., 3., 4.], &[1, 1, 2, 2]);
        let gx = Tensor::conv2d_grad_input(&g, &w, (3, 3), Conv2dParams::default()).unwrap();
        assert_eq!(
            gx.to_vec::<f64>().unwrap(),
            vec![1., 2., 0., 3., 6., 4., 0., 6., 8.]
        );
        // grad_out of the wrong size is an error, not a panic.
        assert!(Tensor::conv2d_grad_input(&g, &w, (5, 5), Conv2dParams::default()).is_err());
    }

    /// Direct convolution, for checking the large-image paths.
    fn naive(x: &Tensor, w: &Tensor, p: Conv2dParams) -> Vec<f64> {
        let [n, c, h, wd] = x.dims4("t").unwrap();
        let [co, cig, kh, kw] = w.dims4("t").unwrap();
        let g = conv2d_geom("t", x.shape(), w.shape(), &p).unwrap();
        let (xv, wv) = (x.to_vec::<f64>().unwrap(), w.to_vec::<f64>().unwrap());
        let mut out = vec![0.0; n * co * g.oh * g.ow];
        for (i, o) in out.iter_mut().enumerate() {
            let (ox, oy, oc, b) = (i % g.ow, (i / g.ow) % g.oh, (i / g.p()) % co, i / (co * g.p()));
            for ci in 0..cig {
                let cin = oc / g.cog() * cig + ci;
                for ki in 0..kh {
                    for kj in 0..kw {
                        let iy = (oy * g.sh + ki * g.dh) as isize - g.ph as isize;
                        let ix = (ox * g.sw + kj * g.dw) as isize - g.pw as isize;
                        if (0..h as isize).contains(&iy) && (0..wd as isize).contains(&ix) {
                            *o += xv[((b * c + cin) * h + iy as usize) * wd + ix as usize]
                                * wv[((oc * cig + ci) * kh + ki) * kw + kj];
                        }
                    }
                }
            }
        }
        out
    }

    #[test]
    fn implicit_gemm_paths_match_the_f64_definition_at_any_thread_count() {
        // (input dims, weight dims, params): stride 1 and `ow == w`, ragged position counts,
        // groups, a non-square kernel, dilation with a height that shrinks, one image (threaded).
        let cases = [
            ([3, 16, 7, 9], [24, 16, 3, 3], (1, 1), (1, 1), 1),
            ([2, 8, 6, 10], [32, 4, 3, 5], (1, 2), (1, 1), 2),
            ([2, 16, 9, 8], [16, 16, 3, 3], (0, 2), (2, 2), 1),
            ([1, 16, 12, 12], [16, 16, 3, 3], (1, 1), (1, 1), 1),
        ];
        for (xd, wd, padding, dilation, groups) in cases {
            let p = Conv2dParams {
                padding,
                dilation,
                stride: (1, 1),
                groups,
            };
            let g = conv2d_geom("t", &Shape::from(xd), &Shape::from(wd), &p).unwrap();
            if crate::ops::sgemm::available() {
                let fits = [
                    implicit::fits(&g),
                    implicit::fits_grad_input(&g),
                    implicit::fits_grad_weight(&g),
                ];
                assert_eq!(fits, [true; 3], "{xd:?} {wd:?}");
            }
            let x = seq(xd.iter().product(), &xd).affine(0.25, 0.1).unwrap();
            let w = seq(wd.iter().product(), &wd).affine(0.5, -0.2).unwrap();
            let dy = seq(g.n * g.cols_len(), &[g.n, g.co, g.oh, g.ow])
                .affine(0.3, 0.05)
                .unwrap();
            let b = seq(g.co, &[g.co]);
            let b_in = seq(g.c, &[g.c]);
            let f32s = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
            let all = |x: &Tensor, w: &Tensor, dy: &Tensor, b: &Tensor, b_in: &Tensor| {
                let y = x.conv2d(w, Some(b), p).unwrap();
                let gx = Tensor::conv2d_grad_input(dy, w, (g.h, g.w), p).unwrap();
                let gx = gx.add(&b_in.reshape([1, g.c, 1, 1]).unwrap()).unwrap();
                let gw = Tensor::conv2d_grad_weight(x, dy, wd, p).unwrap();
                [y, gx, gw]
            };
            let want = all(&x, &w, &dy, &b, &b_in);
            let run = |threads: usize| {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                pool.install(|| all(&f32s(&x), &f32s(&w), &f32s(&dy), &f32s(&b), &f32s(&b_in)))
            };
            let (one, three) = (run(1), run(3));
            for ((got, other), want) in one.iter().zip(&three).zip(&want) {
                assert_eq!(got.to_vec::<f32>().unwrap(), other.to_vec::<f32>().unwrap());
                let want = want.to_vec::<f64>().unwrap();
                let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
                for (a, b) in got.to_vec::<f32>().unwrap().iter().zip(&want) {
                    assert!((*a as f64 - b).abs() <= 1e-5 * scale, "{xd:?} {wd:?}: {a} vs {b}");
                }
            }
        }
    }

    #[test]
    fn single_large_image_uses_threaded_paths() {
        // One image whose im2col matrix exceeds PARALLEL_ELEMS: im2col, col2im and the GEMMs may
        // run multi-threaded. Check against direct loops and the adjoint identities.
        let x = seq(8 * 32 * 32, &[1, 8, 32, 32]).affine(0.25, 0.1).unwrap();
        let w = seq(6 * 4 * 9, &[6, 4, 3, 3]).affine(0.5, -0.2).unwrap();
        let p = Conv2dParams {
            padding: (2, 1),
            dilation: (2, 1),
            stride: (1, 1),
            groups: 2,
        };
        assert!(conv2d_geom("t", x.shape(), w.shape(), &p).unwrap().scratch_len() >= PARALLEL_ELEMS);
        let y = x.conv2d(&w, None, p).unwrap();
        let want = naive(&x, &w, p);
        for (a, b) in y.to_vec::<f64>().unwrap().iter().zip(&want) {
            assert!((a - b).abs() < 1e-9, "{a} vs {b}");
        }
        let g = seq(y.elem_count(), y.dims()).affine(0.3, 0.05).unwrap();
        let dot = |a: &Tensor, b: &Tensor| a.mul(b).unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap();
        let lhs = dot(&y, &g);
        let gx = Tensor::conv2d_grad_input(&g, &w, (32, 32), p).unwrap();
        let gw = Tensor::conv2d_grad_weight(&x, &g, [6, 4, 3, 3], p).unwrap();
        assert!((lhs - dot(&x, &gx)).abs() < 1e-9 * lhs.abs().max(1.0));
        assert!((lhs - dot(&w, &gw)).abs() < 1e-9 * lhs.abs().max(1.0));
    }

    #[test]
    fn errors_name_op_and_shapes() {
        let x = Tensor::zeros([1, 4, 5, 5], DType::F32, crate::Device::Cpu).unwrap();
        let w = Tensor::zeros([6, 2, 3, 3], DType::F32, crate::Device::Cpu).unwrap();
        let msg = x
            .conv2d(&w, None, Conv2dParams::default())
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("conv2d") && msg.contains("[1, 4, 5, 5]") && msg.contains("[6, 2, 3, 3]"),
            "{msg}"
        );
        let p = Conv2dParams {
            groups: 2,
            ..Default::default()
        };
        assert!(x.conv2d(&w, None, p).is_ok());
        let p4 = Conv2dParams {
            groups: 4,
            ..Default::default()
        };
        assert!(x.conv2d(&w, None, p4).is_err()); // 4 channels != 2 * 4
        let w5 = Tensor::zeros([5, 2, 3, 3], DType::F32, crate::Device::Cpu).unwrap();
        assert!(x.conv2d(&w5, None, p).is_err()); // 5 outputs not divisible by 2 groups
        let big = Tensor::zeros([6, 2, 7, 3], DType::F32, crate::Device::Cpu).unwrap();
        let msg = x.conv2d(&big, None, p).unwrap_err().to_string();
        assert!(msg.contains("larger than the padded input"), "{msg}");
        let ok_big = Conv2dParams { padding: (1, 0), ..p };
        assert!(x.conv2d(&big, None, ok_big).is_ok());
        let zero_stride = Conv2dParams { stride: (0, 1), ..p };
        assert!(matches!(
            x.conv2d(&w, None, zero_stride).unwrap_err(),
            Error::InvalidArgument { .. }
        ));
        let b = Tensor::zeros([5], DType::F32, crate::Device::Cpu).unwrap();
        let msg = x.conv2d(&w, Some(&b), p).unwrap_err().to_string();
        assert!(msg.contains("bias") && msg.contains("[5]"), "{msg}");
        let x3 = Tensor::zeros([4, 5, 5], DType::F32, crate::Device::Cpu).unwrap();
        assert!(x3.conv2d(&w, None, p).is_err());
        let w1 = Tensor::zeros([6, 2, 3], DType::F32, crate::Device::Cpu).unwrap();
        let msg = x3
            .conv1d(&w1, None, ConvParams::default())
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("conv1d") && msg.contains("[4, 5, 5]") && msg.contains("[6, 2, 3]"),
            "{msg}"
        );
        let wt = Tensor::zeros([3, 2, 3, 3], DType::F32, crate::Device::Cpu).unwrap();
        assert!(x.conv_transpose2d(&wt, None, Default::default()).is_err());
        let bad_op = ConvTranspose2dParams {
            stride: (2, 2),
            output_padding: (2, 0),
            ..Default::default()
        };
        let wt = Tensor::zeros([4, 2, 3, 3], DType::F32, crate::Device::Cpu).unwrap();
        assert!(x.conv_transpose2d(&wt, None, Default::default()).is_ok());
        assert!(x.conv_transpose2d(&wt, None, bad_op).is_err());
    }
}
