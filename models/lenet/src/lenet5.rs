//! LeNet-5.

use kiln_autograd::{Param, Var};
use kiln_nn::layers::{Conv2d, Conv2dConfig, Linear, MaxPool2d};
use kiln_nn::{Module, Scope};
use kiln_zoo::{Model, Result};

use kiln_zoo::vision::{ImageClassifier, ImageClassifierConfig};

/// LeNet-5 with ReLU and max pooling.
pub struct LeNet5 {
    conv1: Conv2d,
    conv2: Conv2d,
    pool: MaxPool2d,
    fc1: Linear,
    fc2: Linear,
    fc3: Linear,
}

impl LeNet5 {
    /// Build with parameters from `scope`.
    pub fn new(cfg: &ImageClassifierConfig, scope: Scope) -> Result<LeNet5> {
        let pad2 = Conv2dConfig {
            padding: (2, 2),
            ..Default::default()
        };
        // 28 → (pad 2, 5×5) 28 → pool 14 → 5×5 10 → pool 5
        let side = (cfg.image_size / 2 - 4) / 2;
        Ok(LeNet5 {
            conv1: Conv2d::with_config(scope.sub("conv1"), cfg.in_channels, 6, (5, 5), pad2)?,
            conv2: Conv2d::new(scope.sub("conv2"), 6, 16, (5, 5))?,
            pool: MaxPool2d::new((2, 2))?,
            fc1: Linear::new(scope.sub("fc1"), 16 * side * side, 120)?,
            fc2: Linear::new(scope.sub("fc2"), 120, 84)?,
            fc3: Linear::new(scope.sub("fc3"), 84, cfg.num_classes)?,
        })
    }
}

impl Module for LeNet5 {
    fn forward(&self, x: &Var) -> kiln_nn::Result<Var> {
        let h = self.pool.forward(&self.conv1.forward(x)?.relu()?)?;
        let h = self.pool.forward(&self.conv2.forward(&h)?.relu()?)?;
        let h = self.fc1.forward(&h.flatten(1, -1)?)?.relu()?;
        let h = self.fc2.forward(&h)?.relu()?;
        self.fc3.forward(&h)
    }
    fn parameters(&self) -> Vec<Param> {
        [
            &self.conv1 as &dyn Module,
            &self.conv2,
            &self.fc1,
            &self.fc2,
            &self.fc3,
        ]
        .iter()
        .flat_map(|m| m.parameters())
        .collect()
    }
}

pub(crate) fn build(cfg: &serde_json::Value, scope: Scope) -> Result<Box<dyn Model>> {
    // Two 5×5 convs and two poolings need at least 12×12 inputs.
    let cfg = ImageClassifierConfig::parse("lenet5", cfg, 12)?;
    let net = LeNet5::new(&cfg, scope)?;
    Ok(Box::new(ImageClassifier::new("lenet5", cfg, net)))
}
