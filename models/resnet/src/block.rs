//! The residual blocks: [`BasicBlock`] (two 3×3 convolutions; ResNet-18/34 and the CIFAR ResNets)
//! and [`Bottleneck`] (1×1 → 3×3 → 1×1 with 4× expansion; ResNet-50/101), with torchvision's
//! parameter names (`conv1`, `bn1`, ..., `downsample.0` / `downsample.1`).

use kiln_autograd::{Param, Var};
use kiln_nn::layers::{BatchNorm2d, Conv2d, Conv2dConfig};
use kiln_nn::{Module, Result, Scope};

/// A `k×k` convolution without bias (batch norm follows), padded to keep the size at stride 1.
pub(crate) fn conv_bn(
    scope: &Scope,
    conv: &str,
    bn: &str,
    (c_in, c_out): (usize, usize),
    kernel: usize,
    stride: usize,
) -> Result<(Conv2d, BatchNorm2d)> {
    let cfg = Conv2dConfig {
        stride: (stride, stride),
        padding: (kernel / 2, kernel / 2),
        bias: false,
        ..Default::default()
    };
    Ok((
        Conv2d::with_config(scope.sub(conv), c_in, c_out, (kernel, kernel), cfg)?,
        BatchNorm2d::new(scope.sub(bn), c_out)?,
    ))
}

/// The projection shortcut `downsample = Sequential(conv1x1(stride), BatchNorm2d)`, present when a
/// block changes the resolution or the channel count.
struct Downsample {
    conv: Conv2d,
    bn: BatchNorm2d,
}

impl Downsample {
    fn new(scope: &Scope, c_in: usize, c_out: usize, stride: usize) -> Result<Option<Downsample>> {
        if stride == 1 && c_in == c_out {
            return Ok(None);
        }
        let (conv, bn) = conv_bn(&scope.sub("downsample"), "0", "1", (c_in, c_out), 1, stride)?;
        Ok(Some(Downsample { conv, bn }))
    }
}

/// `relu(main(x) + shortcut(x))` where the shortcut is `x` or the projection.
fn residual(main: Var, x: &Var, downsample: &Option<Downsample>) -> Result<Var> {
    let shortcut = match downsample {
        Some(d) => d.bn.forward(&d.conv.forward(x)?)?,
        None => x.clone(),
    };
    Ok(main.add(&shortcut)?.relu()?)
}

fn downsample_modules(d: &Option<Downsample>) -> Vec<&dyn Module> {
    d.iter().flat_map(|d| [&d.conv as &dyn Module, &d.bn]).collect()
}

/// A residual block: `block(scope, in_channels, planes, stride)`, with `EXPANSION` output channels
/// per plane.
pub trait Block: Module + Sized {
    /// Output channels per `planes` (1 for basic blocks, 4 for bottlenecks).
    const EXPANSION: usize;
    /// A block reading `c_in` channels, with `planes` inner channels, the first convolution (the 3×3
    /// one for bottlenecks) at `stride`.
    fn build(scope: Scope, c_in: usize, planes: usize, stride: usize) -> Result<Self>;
}

/// `conv3x3(stride) → BN → ReLU → conv3x3 → BN`, plus the shortcut, then ReLU.
pub struct BasicBlock {
    conv1: Conv2d,
    bn1: BatchNorm2d,
    conv2: Conv2d,
    bn2: BatchNorm2d,
    downsample: Option<Downsample>,
}

impl Block for BasicBlock {
    const EXPANSION: usize = 1;
    fn build(scope: Scope, c_in: usize, planes: usize, stride: usize) -> Result<Self> {
        let (conv1, bn1) = conv_bn(&scope, "conv1", "bn1", (c_in, planes), 3, stride)?;
        let (conv2, bn2) = conv_bn(&scope, "conv2", "bn2", (planes, planes), 3, 1)?;
        Ok(BasicBlock {
            conv1,
            bn1,
            conv2,
            bn2,
            downsample: Downsample::new(&scope, c_in, planes, stride)?,
        })
    }
}

impl BasicBlock {
    fn modules(&self) -> Vec<&dyn Module> {
        let mut m: Vec<&dyn Module> = vec![&self.conv1, &self.bn1, &self.conv2, &self.bn2];
        m.extend(downsample_modules(&self.downsample));
        m
    }
}

impl Module for BasicBlock {
    fn forward(&self, x: &Var) -> Result<Var> {
        let h = self.bn1.forward(&self.conv1.forward(x)?)?.relu()?;
        let h = self.bn2.forward(&self.conv2.forward(&h)?)?;
        residual(h, x, &self.downsample)
    }
    fn parameters(&self) -> Vec<Param> {
        self.modules().iter().flat_map(|m| m.parameters()).collect()
    }
    fn set_training(&self, training: bool) {
        self.modules().iter().for_each(|m| m.set_training(training));
    }
}

/// `conv1x1 → BN → ReLU → conv3x3(stride) → BN → ReLU → conv1x1 (4× planes) → BN`, plus the
/// shortcut, then ReLU (torchvision's "ResNet v1.5": the stride sits on the 3×3 convolution).
pub struct Bottleneck {
    conv1: Conv2d,
    bn1: BatchNorm2d,
    conv2: Conv2d,
    bn2: BatchNorm2d,
    conv3: Conv2d,
    bn3: BatchNorm2d,
    downsample: Option<Downsample>,
}

impl Block for Bottleneck {
    const EXPANSION: usize = 4;
    fn build(scope: Scope, c_in: usize, planes: usize, stride: usize) -> Result<Self> {
        let out = planes * Self::EXPANSION;
        let (conv1, bn1) = conv_bn(&scope, "conv1", "bn1", (c_in, planes), 1, 1)?;
        let (conv2, bn2) = conv_bn(&scope, "conv2", "bn2", (planes, planes), 3, stride)?;
        let (conv3, bn3) = conv_bn(&scope, "conv3", "bn3", (planes, out), 1, 1)?;
        Ok(Bottleneck {
            conv1,
            bn1,
            conv2,
            bn2,
            conv3,
            bn3,
            downsample: Downsample::new(&scope, c_in, out, stride)?,
        })
    }
}

impl Bottleneck {
    fn modules(&self) -> Vec<&dyn Module> {
        let mut m: Vec<&dyn Module> = vec![
            &self.conv1,
            &self.bn1,
            &self.conv2,
            &self.bn2,
            &self.conv3,
            &self.bn3,
        ];
        m.extend(downsample_modules(&self.downsample));
        m
    }
}

impl Module for Bottleneck {
    fn forward(&self, x: &Var) -> Result<Var> {
        let h = self.bn1.forward(&self.conv1.forward(x)?)?.relu()?;
        let h = self.bn2.forward(&self.conv2.forward(&h)?)?.relu()?;
        let h = self.bn3.forward(&self.conv3.forward(&h)?)?;
        residual(h, x, &self.downsample)
    }
    fn parameters(&self) -> Vec<Param> {
        self.modules().iter().flat_map(|m| m.parameters()).collect()
    }
    fn set_training(&self, training: bool) {
        self.modules().iter().for_each(|m| m.set_training(training));
    }
}
