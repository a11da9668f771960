//! The registered depths: which block type, how many blocks per stage, which stem.

use kiln_nn::Scope;
use kiln_zoo::vision::{ImageClassifier, ImageClassifierConfig};
use kiln_zoo::{Model, Result};

use crate::block::{BasicBlock, Bottleneck};
use crate::net::{Architecture, ResNet, Stem};

/// One registered ResNet.
pub(crate) struct Variant {
    pub name: &'static str,
    pub bottleneck: bool,
    pub stem: Stem,
    pub blocks: &'static [usize],
}

impl Variant {
    pub fn architecture(&self) -> Architecture {
        let widths = match self.stem {
            Stem::ImageNet => vec![64, 128, 256, 512],
            Stem::Cifar => vec![16, 32, 64],
        };
        Architecture {
            stem: self.stem,
            blocks: self.blocks.to_vec(),
            widths,
        }
    }

    /// The smallest input side: every stride-2 step needs at least one pixel left.
    fn min_size(&self) -> usize {
        match self.stem {
            Stem::ImageNet => 32,
            Stem::Cifar => 4,
        }
    }

    pub fn build(&self, cfg: &serde_json::Value, scope: Scope) -> Result<Box<dyn Model>> {
        let cfg = ImageClassifierConfig::parse(self.name, cfg, self.min_size())?;
        let arch = self.architecture();
        let model: Box<dyn Model> = if self.bottleneck {
            let net = ResNet::<Bottleneck>::new(&arch, cfg.in_channels, cfg.num_classes, scope)?;
            Box::new(ImageClassifier::new(self.name, cfg, net))
        } else {
            let net = ResNet::<BasicBlock>::new(&arch, cfg.in_channels, cfg.num_classes, scope)?;
            Box::new(ImageClassifier::new(self.name, cfg, net))
        };
        Ok(model)
    }

    pub fn default_config(&self) -> serde_json::Value {
        let cfg = match self.stem {
            // torchvision's defaults: RGB 224×224 ImageNet images, 1000 classes.
            Stem::ImageNet => ImageClassifierConfig {
                in_channels: 3,
                image_size: 224,
                num_classes: 1000,
            },
            // CIFAR-10.
            Stem::Cifar => ImageClassifierConfig {
                in_channels: 3,
                image_size: 32,
                num_classes: 10,
            },
        };
        serde_json::to_value(cfg).unwrap_or_default()
    }
}

macro_rules! variants {
    ($($fn_name:ident: $name:literal, $bottleneck:expr, $stem:ident, $blocks:expr, $desc:literal;)*) => {
        /// Every registered variant.
        pub(crate) const VARIANTS: &[Variant] = &[
            $(Variant { name: $name, bottleneck: $bottleneck, stem: Stem::$stem, blocks: &$blocks },)*
        ];
        $(
            mod $fn_name {
                use super::*;
                fn variant() -> &'static Variant {
                    VARIANTS.iter().find(|v| v.name == $name).expect("listed in VARIANTS")
                }
                fn build(cfg: &serde_json::Value, scope: Scope) -> Result<Box<dyn Model>> {
                    variant().build(cfg, scope)
                }
                fn default_config() -> serde_json::Value {
                    variant().default_config()
                }
                kiln_zoo::inventory::submit! {
                    kiln_zoo::ModelEntry {
                        name: $name,
                        family: "resnet",
                        task: kiln_zoo::Task::ImageClassification,
                        description: $desc,
                        default_config,
                        build,
                    }
                }
            }
        )*
    };
}

variants! {
    resnet18: "resnet18", false, ImageNet, [2, 2, 2, 2], "ResNet-18 (torchvision layout and names), 11.7M parameters at 1000 classes";
    resnet34: "resnet34", false, ImageNet, [3, 4, 6, 3], "ResNet-34 (torchvision layout and names), 21.8M parameters at 1000 classes";
    resnet50: "resnet50", true, ImageNet, [3, 4, 6, 3], "ResNet-50 (torchvision v1.5 bottlenecks and names), 25.6M parameters at 1000 classes";
    resnet101: "resnet101", true, ImageNet, [3, 4, 23, 3], "ResNet-101 (torchvision v1.5 bottlenecks and names), 44.5M parameters at 1000 classes";
    resnet20: "resnet20", false, Cifar, [3, 3, 3], "CIFAR ResNet-20 (3 stages of 16/32/64 channels, projection shortcuts), 0.27M parameters";
    resnet32: "resnet32", false, Cifar, [5, 5, 5], "CIFAR ResNet-32 (3 stages of 16/32/64 channels, projection shortcuts), 0.47M parameters";
    resnet56: "resnet56", false, Cifar, [9, 9, 9], "CIFAR ResNet-56 (3 stages of 16/32/64 channels, projection shortcuts), 0.86M parameters";
}
