//! Convolutions: `Conv1d`, `Conv2d` and `ConvTranspose2d`, with PyTorch's parameter names, layouts
//! and default initialisation (weights `kaiming_uniform_(a = √5)`, biases `U(±1/√fan_in)`).

use kiln_autograd::{Param, Var};
use kiln_tensor::ops::conv::{Conv2dParams, ConvParams, ConvTranspose2dParams};
use kiln_tensor::Shape;

use crate::{fans, Error, Init, Module, Result, Scope};

/// The weight (kaiming uniform, `a = √5`) and optional bias (`U(±1/√fan_in)`, with `fan_in` from the
/// weight's shape as PyTorch computes it) of a convolution.
fn weight_and_bias(
    scope: &Scope,
    wshape: Shape,
    out_channels: usize,
    bias: bool,
) -> Result<(Param, Option<Param>)> {
    let (fan_in, _) = fans(&wshape);
    let weight = scope.param("weight", wshape, Init::KaimingUniform { a: 5f64.sqrt() })?;
    let bias = if bias {
        let bound = if fan_in > 0 {
            1.0 / (fan_in as f64).sqrt()
        } else {
            0.0
        };
        Some(scope.param(
            "bias",
            [out_channels],
            Init::Uniform {
                lo: -bound,
                hi: bound,
            },
        )?)
    } else {
        None
    };
    Ok((weight, bias))
}

/// Error unless every entry of `values` (named `what`) is positive.
fn check_positive(op: &'static str, what: &str, values: &[usize]) -> Result<()> {
    if values.contains(&0) {
        return Err(Error::invalid(
            op,
            format!("{what} must be positive, got {values:?}"),
        ));
    }
    Ok(())
}

/// Error unless `groups` is positive and divides both channel counts.
fn check_groups(op: &'static str, in_channels: usize, out_channels: usize, groups: usize) -> Result<()> {
    if groups == 0 || !in_channels.is_multiple_of(groups) || !out_channels.is_multiple_of(groups) {
        return Err(Error::invalid(
            op,
            format!(
                "groups ({groups}) must be positive and divide in_channels ({in_channels}) and \
                 out_channels ({out_channels})"
            ),
        ));
    }
    Ok(())
}

/// Error unless `x` has rank `rank` and `channels` channels in dimension 1.
fn check_input(op: &'static str, x: &Var, layout: &str, channels: usize) -> Result<()> {
    let rank = layout.split(',').count();
    if x.rank() != rank || x.dims()[1] != channels {
        return Err(Error::invalid(
            op,
            format!(
                "expected a {rank}-D input [{layout}] with C = {channels} channels, got shape {:?}",
                x.shape()
            ),
        ));
    }
    Ok(())
}

fn params_of(weight: &Param, bias: &Option<Param>) -> Vec<Param> {
    std::iter::once(weight.clone()).chain(bias.clone()).collect()
}

// ---------------------------------------------------------------------------------------------

/// Options of [`Conv1d`], as the keyword arguments of `torch.nn.Conv1d`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv1dConfig {
    /// Step between windows (default 1).
    pub stride: usize,
    /// Zeros added at both ends (default 0).
    pub padding: usize,
    /// Spacing between kernel taps (default 1).
    pub dilation: usize,
    /// Channel groups (default 1); must divide both channel counts.
    pub groups: usize,
    /// Whether the layer has a `bias` (default true).
    pub bias: bool,
}

impl Default for Conv1dConfig {
    fn default() -> Self {
        Conv1dConfig {
            stride: 1,
            padding: 0,
            dilation: 1,
            groups: 1,
            bias: true,
        }
    }
}

/// `nn.Conv1d`: input `[N, C_in, L]`, `weight` `[C_out, C_in / groups, k]`, `bias` `[C_out]`.
pub struct Conv1d {
    weight: Param,
    bias: Option<Param>,
    in_channels: usize,
    cfg: Conv1dConfig,
}

impl Conv1d {
    /// A convolution with the default options (stride 1, no padding, bias).
    pub fn new(scope: Scope, in_channels: usize, out_channels: usize, kernel: usize) -> Result<Conv1d> {
        Self::with_config(scope, in_channels, out_channels, kernel, Conv1dConfig::default())
    }

    /// A convolution with explicit options.
    pub fn with_config(
        scope: Scope,
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        cfg: Conv1dConfig,
    ) -> Result<Conv1d> {
        const OP: &str = "Conv1d";
        check_positive(
            OP,
            "channels and kernel size",
            &[in_channels, out_channels, kernel],
        )?;
        check_positive(OP, "stride and dilation", &[cfg.stride, cfg.dilation])?;
        check_groups(OP, in_channels, out_channels, cfg.groups)?;
        let wshape = Shape::from([out_channels, in_channels / cfg.groups, kernel]);
        let (weight, bias) = weight_and_bias(&scope, wshape, out_channels, cfg.bias)?;
        Ok(Conv1d {
            weight,
            bias,
            in_channels,
            cfg,
        })
    }

    /// The weight `[C_out, C_in / groups, k]`.
    pub fn weight(&self) -> &Param {
        &self.weight
    }
    /// The bias `[C_out]`, if any.
    pub fn bias(&self) -> Option<&Param> {
        self.bias.as_ref()
    }
    /// The options.
    pub fn config(&self) -> &Conv1dConfig {
        &self.cfg
    }
}

impl Module for Conv1d {
    fn forward(&self, x: &Var) -> Result<Var> {
        check_input("Conv1d", x, "N, C, L", self.in_channels)?;
        let p = ConvParams {
            stride: self.cfg.stride,
            padding: self.cfg.padding,
            dilation: self.cfg.dilation,
            groups: self.cfg.groups,
        };
        let b = self.bias.as_ref().map(|b| b.var());
        Ok(x.conv1d(&self.weight.var(), b.as_ref(), p)?)
    }
    fn parameters(&self) -> Vec<Param> {
        params_of(&self.weight, &self.bias)
    }
}

// ---------------------------------------------------------------------------------------------

/// Options of [`Conv2d`], as the keyword arguments of `torch.nn.Conv2d`. Pairs are `(height, width)`.
///
/// ```
/// use kiln_nn::layers::Conv2dConfig;
/// let cfg = Conv2dConfig { stride: (2, 2), padding: (1, 1), ..Default::default() };
/// assert_eq!(cfg.groups, 1);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dConfig {
    /// Step between windows (default `(1, 1)`).
    pub stride: (usize, usize),
    /// Zeros added on both sides of each spatial dimension (default `(0, 0)`).
    pub padding: (usize, usize),
    /// Spacing between kernel taps (default `(1, 1)`).
    pub dilation: (usize, usize),
    /// Channel groups (default 1); must divide both channel counts.
    pub groups: usize,
    /// Whether the layer has a `bias` (default true).
    pub bias: bool,
}

impl Default for Conv2dConfig {
    fn default() -> Self {
        Conv2dConfig {
            stride: (1, 1),
            padding: (0, 0),
            dilation: (1, 1),
            groups: 1,
            bias: true,
        }
    }
}

/// `nn.Conv2d`: input `[N, C_in, H, W]`, `weight` `[C_out, C_in / groups, kH, kW]`, `bias` `[C_out]`.
///
/// ```
/// use kiln_nn::{layers::Conv2d, Module, Scope};
/// use kiln_tensor::{DType, Device, Tensor};
/// let conv = Conv2d::new(Scope::init(0, DType::F32, Device::Cpu).sub("conv1"), 1, 6, (5, 5))?;
/// assert_eq!(conv.weight().name(), "conv1.weight");
/// let x = kiln_nn::Var::constant(Tensor::zeros([2, 1, 28, 28], DType::F32, Device::Cpu)?);
/// assert_eq!(conv.forward(&x)?.dims(), &[2, 6, 24, 24]);
/// # Ok::<(), kiln_nn::Error>(())
/// ```
pub struct Conv2d {
    weight: Param,
    bias: Option<Param>,
    in_channels: usize,
    cfg: Conv2dConfig,
}

impl Conv2d {
    /// A convolution with the default options (stride 1, no padding, bias).
    pub fn new(
        scope: Scope,
        in_channels: usize,
        out_channels: usize,
        kernel: (usize, usize),
    ) -> Result<Conv2d> {
        Self::with_config(scope, in_channels, out_channels, kernel, Conv2dConfig::default())
    }

    /// A convolution with explicit options.
    pub fn with_config(
        scope: Scope,
        in_channels: usize,
        out_channels: usize,
        kernel: (usize, usize),
        cfg: Conv2dConfig,
    ) -> Result<Conv2d> {
        const OP: &str = "Conv2d";
        check_positive(
            OP,
            "channels and kernel sizes",
            &[in_channels, out_channels, kernel.0, kernel.1],
        )?;
        check_positive(
            OP,
            "stride and dilation",
            &[cfg.stride.0, cfg.stride.1, cfg.dilation.0, cfg.dilation.1],
        )?;
        check_groups(OP, in_channels, out_channels, cfg.groups)?;
        let wshape = Shape::from([out_channels, in_channels / cfg.groups, kernel.0, kernel.1]);
        let (weight, bias) = weight_and_bias(&scope, wshape, out_channels, cfg.bias)?;
        Ok(Conv2d {
            weight,
            bias,
            in_channels,
            cfg,
        })
    }

    /// The weight `[C_out, C_in / groups, kH, kW]`.
    pub fn weight(&self) -> &Param {
        &self.weight
    }
    /// The bias `[C_out]`, if any.
    pub fn bias(&self) -> Option<&Param> {
        self.bias.as_ref()
    }
    /// The options.
    pub fn config(&self) -> &Conv2dConfig {
        &self.cfg
    }
}

impl Module for Conv2d {
    fn forward(&self, x: &Var) -> Result<Var> {
        check_input("Conv2d", x, "N, C, H, W", self.in_channels)?;
        let p = Conv2dParams {
            stride: self.cfg.stride,
            padding: self.cfg.padding,
            dilation: self.cfg.dilation,
            groups: self.cfg.groups,
        };
        let b = self.bias.as_ref().map(|b| b.var());
        Ok(x.conv2d(&self.weight.var(), b.as_ref(), p)?)
    }
    fn parameters(&self) -> Vec<Param> {
        params_of(&self.weight, &self.bias)
    }
}

// ---------------------------------------------------------------------------------------------

/// Options of [`ConvTranspose2d`], as the keyword arguments of `torch.nn.ConvTranspose2d`.
/// Pairs are `(height, width)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvTranspose2dConfig {
    /// Stride (default `(1, 1)`).
    pub stride: (usize, usize),
    /// Padding of the convolution this is the transpose of (default `(0, 0)`).
    pub padding: (usize, usize),
    /// Extra size added to one side of the output (default `(0, 0)`); smaller than the stride or
    /// the dilation.
    pub output_padding: (usize, usize),
    /// Spacing between kernel taps (default `(1, 1)`).
    pub dilation: (usize, usize),
    /// Channel groups (default 1); must divide both channel counts.
    pub groups: usize,
    /// Whether the layer has a `bias` (default true).
    pub bias: bool,
}

impl Default for ConvTranspose2dConfig {
    fn default() -> Self {
        ConvTranspose2dConfig {
            stride: (1, 1),
            padding: (0, 0),
            output_padding: (0, 0),
            dilation: (1, 1),
            groups: 1,
            bias: true,
        }
    }
}

/// `nn.ConvTranspose2d`: input `[N, C_in, H, W]`, `weight` `[C_in, C_out / groups, kH, kW]`, `bias`
/// `[C_out]`. The output size is `(H - 1) * stride - 2 * padding + dilation * (kH - 1) +
/// output_padding + 1` (likewise the width).
pub struct ConvTranspose2d {
    weight: Param,
    bias: Option<Param>,
    in_channels: usize,
    cfg: ConvTranspose2dConfig,
}

impl ConvTranspose2d {
    /// A transposed convolution with the default options (stride 1, no padding, bias).
    pub fn new(
        scope: Scope,
        in_channels: usize,
        out_channels: usize,
        kernel: (usize, usize),
    ) -> Result<ConvTranspose2d> {
        Self::with_config(
            scope,
            in_channels,
            out_channels,
            kernel,
            ConvTranspose2dConfig::default(),
        )
    }

    /// A transposed convolution with explicit options.
    pub fn with_config(
        scope: Scope,
        in_channels: usize,
        out_channels: usize,
        kernel: (usize, usize),
        cfg: ConvTranspose2dConfig,
    ) -> Result<ConvTranspose2d> {
        const OP: &str = "ConvTranspose2d";
        check_positive(
            OP,
            "channels and kernel sizes",
            &[in_channels, out_channels, kernel.0, kernel.1],
        )?;
        check_positive(
            OP,
            "stride and dilation",
            &[cfg.stride.0, cfg.stride.1, cfg.dilation.0, cfg.dilation.1],
        )?;
        check_groups(OP, in_channels, out_channels, cfg.groups)?;
        for (o, s, d) in [
            (cfg.output_padding.0, cfg.stride.0, cfg.dilation.0),
            (cfg.output_padding.1, cfg.stride.1, cfg.dilation.1),
        ] {
            if o >= s && o >= d {
                return Err(Error::invalid(
                    OP,
                    format!(
                        "output_padding {:?} must be smaller than the stride {:?} or the dilation {:?}",
                        cfg.output_padding, cfg.stride, cfg.dilation
                    ),
                ));
            }
        }
        let wshape = Shape::from([in_channels, out_channels / cfg.groups, kernel.0, kernel.1]);
        let (weight, bias) = weight_and_bias(&scope, wshape, out_channels, cfg.bias)?;
        Ok(ConvTranspose2d {
            weight,
            bias,
            in_channels,
            cfg,
        })
    }

    /// The weight `[C_in, C_out / groups, kH, kW]`.
    pub fn weight(&self) -> &Param {
        &self.weight
    }
    /// The bias `[C_out]`, if any.
    pub fn bias(&self) -> Option<&Param> {
        self.bias.as_ref()
    }
    /// The options.
    pub fn config(&self) -> &ConvTranspose2dConfig {
        &self.cfg
    }
}

impl Module for ConvTranspose2d {
    fn forward(&self, x: &Var) -> Result<Var> {
        check_input("ConvTranspose2d", x, "N, C, H, W", self.in_channels)?;
        let p = ConvTranspose2dParams {
            stride: self.cfg.stride,
            padding: self.cfg.padding,
            output_padding: self.cfg.output_padding,
            dilation: self.cfg.dilation,
            groups: self.cfg.groups,
        };
        let b = self.bias.as_ref().map(|b| b.var());
        Ok(x.conv_transpose2d(&self.weight.var(), b.as_ref(), p)?)
    }
    fn parameters(&self) -> Vec<Param> {
        params_of(&self.weight, &self.bias)
    }
}
