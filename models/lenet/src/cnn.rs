//! The Keras MNIST CNN.

use kiln_autograd::{Param, Var};
use kiln_nn::layers::{Conv2d, Linear, MaxPool2d};
use kiln_nn::{Module, Scope};
use kiln_zoo::{Model, Result};

use kiln_zoo::vision::{ImageClassifier, ImageClassifierConfig};

/// `Conv2D 32 3×3 → MaxPool → Conv2D 64 3×3 → MaxPool → Conv2D 64 3×3 → Flatten → Dense 64 → Dense 10`.
pub struct MnistCnn {
    conv1: Conv2d,
    conv2: Conv2d,
    conv3: Conv2d,
    pool: MaxPool2d,
    fc1: Linear,
    fc2: Linear,
}

impl MnistCnn {
    /// Build with parameters from `scope`.
    pub fn new(cfg: &ImageClassifierConfig, scope: Scope) -> Result<MnistCnn> {
        // 28 → 26 → 13 → 11 → 5 → 3
        let side = ((cfg.image_size - 2) / 2 - 2) / 2 - 2;
        Ok(MnistCnn {
            conv1: Conv2d::new(scope.sub("conv1"), cfg.in_channels, 32, (3, 3))?,
            conv2: Conv2d::new(scope.sub("conv2"), 32, 64, (3, 3))?,
            conv3: Conv2d::new(scope.sub("conv3"), 64, 64, (3, 3))?,
            pool: MaxPool2d::new((2, 2))?,
            fc1: Linear::new(scope.sub("fc1"), 64 * side * side, 64)?,
            fc2: Linear::new(scope.sub("fc2"), 64, cfg.num_classes)?,
        })
    }
}

impl Module for MnistCnn {
    fn forward(&self, x: &Var) -> kiln_nn::Result<Var> {
        let h = self.pool.forward(&self.conv1.forward(x)?.relu()?)?;
        let h = self.pool.forward(&self.conv2.forward(&h)?.relu()?)?;
        let h = self.conv3.forward(&h)?.relu()?.flatten(1, -1)?;
        let h = self.fc1.forward(&h)?.relu()?;
        self.fc2.forward(&h)
    }
    fn parameters(&self) -> Vec<Param> {
        [
            &self.conv1 as &dyn Module,
            &self.conv2,
            &self.conv3,
            &self.fc1,
            &self.fc2,
        ]
        .iter()
        .flat_map(|m| m.parameters())
        .collect()
    }
}

pub(crate) fn build(cfg: &serde_json::Value, scope: Scope) -> Result<Box<dyn Model>> {
    // Three valid 3×3 convs and two poolings need at least 22×22 inputs.
    let cfg = ImageClassifierConfig::parse("mnist-cnn", cfg, 22)?;
    let net = MnistCnn::new(&cfg, scope)?;
    Ok(Box::new(ImageClassifier::new("mnist-cnn", cfg, net)))
}
