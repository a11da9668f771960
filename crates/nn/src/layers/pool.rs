//! Pooling layers: `MaxPool2d`, `AvgPool2d` and `AdaptiveAvgPool2d` (parameter-free wrappers of the
//! differentiable ops on [`Var`]). Output sizes round down (PyTorch's `ceil_mode=False`).

use kiln_autograd::{Param, Var};

use crate::{Error, Module, Result};

/// Check a pooling window: positive kernel and stride, padding at most half the kernel (as PyTorch).
fn check_window(
    op: &'static str,
    kernel: (usize, usize),
    stride: (usize, usize),
    padding: (usize, usize),
) -> Result<()> {
    if kernel.0 == 0 || kernel.1 == 0 || stride.0 == 0 || stride.1 == 0 {
        return Err(Error::invalid(
            op,
            format!("kernel {kernel:?} and stride {stride:?} must be positive"),
        ));
    }
    if 2 * padding.0 > kernel.0 || 2 * padding.1 > kernel.1 {
        return Err(Error::invalid(
            op,
            format!("padding {padding:?} must be at most half the kernel {kernel:?}"),
        ));
    }
    Ok(())
}

/// Error unless `x` is a 4-D `[N, C, H, W]` input.
fn check_4d(op: &'static str, x: &Var) -> Result<()> {
    if x.rank() != 4 {
        return Err(Error::invalid(
            op,
            format!("expected a 4-D input [N, C, H, W], got shape {:?}", x.shape()),
        ));
    }
    Ok(())
}

/// `nn.MaxPool2d(kernel, stride, padding)` (no dilation, no ceil mode): the maximum of each window;
/// padding counts as `-inf`. The gradient goes to each window's maximum.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaxPool2d {
    kernel: (usize, usize),
    stride: (usize, usize),
    padding: (usize, usize),
}

impl MaxPool2d {
    /// Non-overlapping windows: the stride is the kernel size (PyTorch's default), no padding.
    pub fn new(kernel: (usize, usize)) -> Result<MaxPool2d> {
        Self::with_stride(kernel, kernel, (0, 0))
    }
    /// Explicit stride and padding (at most half the kernel).
    pub fn with_stride(
        kernel: (usize, usize),
        stride: (usize, usize),
        padding: (usize, usize),
    ) -> Result<MaxPool2d> {
        check_window("MaxPool2d", kernel, stride, padding)?;
        Ok(MaxPool2d {
            kernel,
            stride,
            padding,
        })
    }
    /// `(kernel, stride, padding)`.
    pub fn window(&self) -> ((usize, usize), (usize, usize), (usize, usize)) {
        (self.kernel, self.stride, self.padding)
    }
}

impl Module for MaxPool2d {
    fn forward(&self, x: &Var) -> Result<Var> {
        check_4d("MaxPool2d", x)?;
        Ok(x.max_pool2d(self.kernel, self.stride, self.padding)?)
    }
    fn parameters(&self) -> Vec<Param> {
        Vec::new()
    }
}

/// `nn.AvgPool2d(kernel, stride, padding, count_include_pad)` (no ceil mode, no divisor override):
/// the mean of each window. Padding adds zeros; with `count_include_pad` (PyTorch's default) they
/// count in the divisor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AvgPool2d {
    kernel: (usize, usize),
    stride: (usize, usize),
    padding: (usize, usize),
    count_include_pad: bool,
}

impl AvgPool2d {
    /// Non-overlapping windows: the stride is the kernel size (PyTorch's default), no padding.
    pub fn new(kernel: (usize, usize)) -> Result<AvgPool2d> {
        Self::with_stride(kernel, kernel, (0, 0), true)
    }
    /// Explicit stride, padding (at most half the kernel) and divisor rule.
    pub fn with_stride(
        kernel: (usize, usize),
        stride: (usize, usize),
        padding: (usize, usize),
        count_include_pad: bool,
    ) -> Result<AvgPool2d> {
        check_window("AvgPool2d", kernel, stride, padding)?;
        Ok(AvgPool2d {
            kernel,
            stride,
            padding,
            count_include_pad,
        })
    }
    /// `(kernel, stride, padding)`.
    pub fn window(&self) -> ((usize, usize), (usize, usize), (usize, usize)) {
        (self.kernel, self.stride, self.padding)
    }
    /// Whether padded zeros count in each window's divisor.
    pub fn count_include_pad(&self) -> bool {
        self.count_include_pad
    }
}

impl Module for AvgPool2d {
    fn forward(&self, x: &Var) -> Result<Var> {
        check_4d("AvgPool2d", x)?;
        Ok(x.avg_pool2d(self.kernel, self.stride, self.padding, self.count_include_pad)?)
    }
    fn parameters(&self) -> Vec<Param> {
        Vec::new()
    }
}

/// `nn.AdaptiveAvgPool2d((out_h, out_w))`: output row `i` averages input rows
/// `floor(i·H/out_h) .. ceil((i+1)·H/out_h)` (likewise columns); `(1, 1)` is global average pooling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdaptiveAvgPool2d {
    output: (usize, usize),
}

impl AdaptiveAvgPool2d {
    /// Pool to `output = (out_h, out_w)`, both positive.
    pub fn new(output: (usize, usize)) -> Result<AdaptiveAvgPool2d> {
        if output.0 == 0 || output.1 == 0 {
            return Err(Error::invalid(
                "AdaptiveAvgPool2d",
                format!("output size {output:?} must be positive"),
            ));
        }
        Ok(AdaptiveAvgPool2d { output })
    }
    /// The output size `(out_h, out_w)`.
    pub fn output_size(&self) -> (usize, usize) {
        self.output
    }
}

impl Module for AdaptiveAvgPool2d {
    fn forward(&self, x: &Var) -> Result<Var> {
        check_4d("AdaptiveAvgPool2d", x)?;
        Ok(x.adaptive_avg_pool2d(self.output)?)
    }
    fn parameters(&self) -> Vec<Param> {
        Vec::new()
    }
}
