//! The [`ResNet`] network: a stem, stages of residual blocks, global average pooling and a linear
//! classifier, named as torchvision names it (`conv1`, `bn1`, `layer1.0.conv1`, ..., `fc`).

use kiln_autograd::{Param, Var};
use kiln_nn::layers::{BatchNorm2d, Conv2d, Linear, MaxPool2d};
use kiln_nn::{Module, Result, Scope};

use crate::block::{conv_bn, Block};

/// The first layers before the residual stages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stem {
    /// ImageNet: `conv1` 7×7 stride 2 to 64 channels, BN, ReLU, 3×3 max pooling stride 2
    /// (a 224×224 image reaches the first stage at 56×56).
    ImageNet,
    /// CIFAR (He et al. 2016, §4.2): `conv1` 3×3 stride 1 to 16 channels, BN, ReLU; no pooling.
    Cifar,
}

/// The shape of a ResNet: its stem, blocks per stage, and base width of each stage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Architecture {
    /// The stem.
    pub stem: Stem,
    /// Blocks in each stage (`[2, 2, 2, 2]` for ResNet-18, `[3, 3, 3]` for ResNet-20).
    pub blocks: Vec<usize>,
    /// Planes of each stage (`[64, 128, 256, 512]`, or `[16, 32, 64]` for CIFAR).
    pub widths: Vec<usize>,
}

/// A ResNet built from blocks of type `B` (`BasicBlock` or `Bottleneck`).
pub struct ResNet<B> {
    conv1: Conv2d,
    bn1: BatchNorm2d,
    maxpool: Option<MaxPool2d>,
    stages: Vec<Vec<B>>,
    fc: Linear,
}

impl<B: Block> ResNet<B> {
    /// Build `arch` for `in_channels`-channel images and `num_classes` classes, parameters from `scope`.
    pub fn new(arch: &Architecture, in_channels: usize, num_classes: usize, scope: Scope) -> Result<Self> {
        let stem_width = arch.widths[0];
        let (kernel, stride) = match arch.stem {
            Stem::ImageNet => (7, 2),
            Stem::Cifar => (3, 1),
        };
        let (conv1, bn1) = conv_bn(&scope, "conv1", "bn1", (in_channels, stem_width), kernel, stride)?;
        let maxpool = match arch.stem {
            Stem::ImageNet => Some(MaxPool2d::with_stride((3, 3), (2, 2), (1, 1))?),
            Stem::Cifar => None,
        };
        let mut c_in = stem_width;
        let mut stages = Vec::with_capacity(arch.blocks.len());
        for (i, (&n, &planes)) in arch.blocks.iter().zip(&arch.widths).enumerate() {
            let stage_scope = scope.sub(format!("layer{}", i + 1));
            let mut blocks = Vec::with_capacity(n);
            for j in 0..n {
                // Every stage but the first halves the resolution in its first block.
                let stride = if i > 0 && j == 0 { 2 } else { 1 };
                blocks.push(B::build(stage_scope.sub(j), c_in, planes, stride)?);
                c_in = planes * B::EXPANSION;
            }
            stages.push(blocks);
        }
        let fc = Linear::new(scope.sub("fc"), c_in, num_classes)?;
        Ok(ResNet {
            conv1,
            bn1,
            maxpool,
            stages,
            fc,
        })
    }

    fn modules(&self) -> Vec<&dyn Module> {
        let mut m: Vec<&dyn Module> = vec![&self.conv1, &self.bn1];
        m.extend(self.stages.iter().flatten().map(|b| b as &dyn Module));
        m.push(&self.fc);
        m
    }

    /// The pooled features `[N, C]` before the classifier.
    pub fn features(&self, x: &Var) -> Result<Var> {
        let mut h = self.bn1.forward(&self.conv1.forward(x)?)?.relu()?;
        if let Some(pool) = &self.maxpool {
            h = pool.forward(&h)?;
        }
        for block in self.stages.iter().flatten() {
            h = block.forward(&h)?;
        }
        // Global average pooling (torchvision's AdaptiveAvgPool2d((1, 1)) + flatten).
        Ok(h.mean([2, 3], false)?)
    }
}

impl<B: Block> Module for ResNet<B> {
    fn forward(&self, x: &Var) -> Result<Var> {
        self.fc.forward(&self.features(x)?)
    }
    fn parameters(&self) -> Vec<Param> {
        self.modules().iter().flat_map(|m| m.parameters()).collect()
    }
    fn set_training(&self, training: bool) {
        self.modules().iter().for_each(|m| m.set_training(training));
    }
}
