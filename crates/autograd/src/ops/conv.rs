//! Convolutions, pooling and upsampling. The tensor crate provides each op's adjoint kernels
//! (`conv2d_grad_input`, `max_pool2d_backward`, ...), which the backward formulas call.

use kiln_tensor::ops::conv::{Conv2dParams, ConvParams, ConvTranspose2dParams};
use kiln_tensor::Tensor;

use crate::{Result, Var};

/// The bias gradient of an `[N, C, ...]` output: sum over every dimension but the channels.
fn bias_grad(g: &Tensor) -> kiln_tensor::Result<Tensor> {
    let axes: Vec<usize> = (0..g.rank()).filter(|&d| d != 1).collect();
    g.sum(axes, false)
}

fn optional_inputs<'a>(x: &'a Var, w: &'a Var, b: Option<&'a Var>) -> Vec<&'a Var> {
    let mut v = vec![x, w];
    v.extend(b);
    v
}

impl Var {
    /// 2-D convolution (`[N, C, H, W]` input, `[C_out, C_in/groups, kH, kW]` weight).
    pub fn conv2d(&self, weight: &Var, bias: Option<&Var>, p: Conv2dParams) -> Result<Var> {
        let y = self.value().conv2d(weight.value(), bias.map(|b| b.value()), p)?;
        let (x, w) = (self.value().clone(), weight.value().clone());
        let (need_x, has_bias) = (self.requires_grad(), bias.is_some());
        Ok(Var::from_op(
            "conv2d",
            y,
            &optional_inputs(self, weight, bias),
            move |g| {
                let [_, _, h, wd] = x.dims4("conv2d")?;
                let wshape = w.dims4("conv2d")?;
                let mut out = vec![
                    if need_x {
                        Some(Tensor::conv2d_grad_input(g, &w, (h, wd), p)?)
                    } else {
                        None
                    },
                    Some(Tensor::conv2d_grad_weight(&x, g, wshape, p)?),
                ];
                if has_bias {
                    out.push(Some(bias_grad(g)?));
                }
                Ok(out)
            },
        ))
    }

    /// 1-D convolution (`[N, C, L]` input, `[C_out, C_in/groups, k]` weight).
    pub fn conv1d(&self, weight: &Var, bias: Option<&Var>, p: ConvParams) -> Result<Var> {
        let y = self.value().conv1d(weight.value(), bias.map(|b| b.value()), p)?;
        let (x, w) = (self.value().clone(), weight.value().clone());
        let (need_x, has_bias) = (self.requires_grad(), bias.is_some());
        Ok(Var::from_op(
            "conv1d",
            y,
            &optional_inputs(self, weight, bias),
            move |g| {
                let l = x.dims()[2];
                let wd = w.dims();
                let wshape = [wd[0], wd[1], wd[2]];
                let mut out = vec![
                    if need_x {
                        Some(Tensor::conv1d_grad_input(g, &w, l, p)?)
                    } else {
                        None
                    },
                    Some(Tensor::conv1d_grad_weight(&x, g, wshape, p)?),
                ];
                if has_bias {
                    out.push(Some(bias_grad(g)?));
                }
                Ok(out)
            },
        ))
    }

    /// 2-D transposed convolution (`[C_in, C_out/groups, kH, kW]` weight).
    pub fn conv_transpose2d(
        &self,
        weight: &Var,
        bias: Option<&Var>,
        p: ConvTranspose2dParams,
    ) -> Result<Var> {
        let y = self
            .value()
            .conv_transpose2d(weight.value(), bias.map(|b| b.value()), p)?;
        let (x, w) = (self.value().clone(), weight.value().clone());
        let (need_x, has_bias) = (self.requires_grad(), bias.is_some());
        Ok(Var::from_op(
            "conv_transpose2d",
            y,
            &optional_inputs(self, weight, bias),
            move |g| {
                let wshape = w.dims4("conv_transpose2d")?;
                let mut out = vec![
                    if need_x {
                        Some(Tensor::conv_transpose2d_grad_input(g, &w, p)?)
                    } else {
                        None
                    },
                    Some(Tensor::conv_transpose2d_grad_weight(&x, g, wshape, p)?),
                ];
                if has_bias {
                    out.push(Some(bias_grad(g)?));
                }
                Ok(out)
            },
        ))
    }

    /// 2-D max pooling; the gradient goes to each window's maximum.
    pub fn max_pool2d(
        &self,
        kernel: (usize, usize),
        stride: (usize, usize),
        padding: (usize, usize),
    ) -> Result<Var> {
        if !Var::records(&[self]) {
            return Ok(Var::constant(self.value().max_pool2d(kernel, stride, padding)?));
        }
        let (y, idx) = self.value().max_pool2d_with_indices(kernel, stride, padding)?;
        let shape = self.value().dims4("max_pool2d")?;
        Ok(Var::from_op("max_pool2d", y, &[self], move |g| {
            Ok(vec![Some(Tensor::max_pool2d_backward(g, &idx, shape)?)])
        }))
    }

    /// 2-D average pooling.
    pub fn avg_pool2d(
        &self,
        kernel: (usize, usize),
        stride: (usize, usize),
        padding: (usize, usize),
        count_include_pad: bool,
    ) -> Result<Var> {
        let y = self
            .value()
            .avg_pool2d(kernel, stride, padding, count_include_pad)?;
        let shape = self.value().dims4("avg_pool2d")?;
        Ok(Var::from_op("avg_pool2d", y, &[self], move |g| {
            Ok(vec![Some(Tensor::avg_pool2d_backward(
                g,
                shape,
                kernel,
                stride,
                padding,
                count_include_pad,
            )?)])
        }))
    }

    /// Adaptive average pooling to `out_hw`.
    pub fn adaptive_avg_pool2d(&self, out_hw: (usize, usize)) -> Result<Var> {
        let y = self.value().adaptive_avg_pool2d(out_hw)?;
        let shape = self.value().dims4("adaptive_avg_pool2d")?;
        Ok(Var::from_op("adaptive_avg_pool2d", y, &[self], move |g| {
            Ok(vec![Some(Tensor::adaptive_avg_pool2d_backward(g, shape)?)])
        }))
    }

    /// Nearest-neighbour upsampling to `out_hw`.
    pub fn upsample_nearest2d(&self, out_hw: (usize, usize)) -> Result<Var> {
        let y = self.value().upsample_nearest2d(out_hw)?;
        let shape = self.value().dims4("upsample_nearest2d")?;
        Ok(Var::from_op("upsample_nearest2d", y, &[self], move |g| {
            Ok(vec![Some(Tensor::upsample_nearest2d_backward(g, shape)?)])
        }))
    }
}
