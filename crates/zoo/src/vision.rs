//! What every image classifier of the zoo shares: [`ImageClassifierConfig`] (input geometry and
//! class count) and [`ImageClassifier`], which turns any [`Module`] mapping images to logits into a
//! zoo [`Model`] (batch validation, cross-entropy loss, train/eval switch).

use kiln_autograd::{Param, Var};
use kiln_nn::Module;

use crate::{Batch, Error, Model, Output, Result, Task};

/// Input geometry and class count of an image classifier.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageClassifierConfig {
    /// Channels of the input images (1 for MNIST, 3 for RGB).
    pub in_channels: usize,
    /// Side of the square input images (28 for MNIST).
    pub image_size: usize,
    /// Number of classes.
    pub num_classes: usize,
}

impl Default for ImageClassifierConfig {
    /// 1-channel 28×28 images, 10 classes (MNIST, Fashion-MNIST).
    fn default() -> Self {
        ImageClassifierConfig {
            in_channels: 1,
            image_size: 28,
            num_classes: 10,
        }
    }
}

impl ImageClassifierConfig {
    /// Parse and validate; `min_size` is the smallest image the architecture accepts.
    pub fn parse(model: &str, cfg: &serde_json::Value, min_size: usize) -> Result<Self> {
        let c: Self = crate::parse_config(model, cfg)?;
        if c.in_channels == 0 || c.num_classes == 0 || c.image_size < min_size {
            return Err(Error::Config {
                model: model.into(),
                reason: format!(
                    "need in_channels > 0, num_classes > 0 and image_size >= {min_size}, got {c:?}"
                ),
            });
        }
        Ok(c)
    }

    /// The default configuration as JSON (for [`ModelEntry::default_config`](crate::ModelEntry)).
    pub fn default_json() -> serde_json::Value {
        serde_json::to_value(ImageClassifierConfig::default()).unwrap_or_default()
    }

    /// Check that a batch is `[N, in_channels, image_size, image_size]` floats.
    pub fn check_images(&self, model: &str, images: &kiln_tensor::Tensor) -> Result<()> {
        let want = [self.in_channels, self.image_size, self.image_size];
        if images.rank() != 4 || images.dims()[1..] != want || !images.dtype().is_float() {
            return Err(Error::Input {
                model: model.into(),
                reason: format!(
                    "expected float images [N, {}, {}, {}], got {:?} {}",
                    want[0],
                    want[1],
                    want[2],
                    images.shape(),
                    images.dtype()
                ),
            });
        }
        Ok(())
    }
}

/// A network mapping images `[N, C, H, W]` to logits `[N, classes]` (its [`Module::forward`]), as
/// a zoo [`Model`] named `name`.
pub struct ImageClassifier<B> {
    name: &'static str,
    cfg: ImageClassifierConfig,
    net: B,
}

impl<B: Module> ImageClassifier<B> {
    /// Wrap `net`, built for `cfg`, under the registered `name`.
    pub fn new(name: &'static str, cfg: ImageClassifierConfig, net: B) -> Self {
        ImageClassifier { name, cfg, net }
    }
    /// The wrapped network.
    pub fn net(&self) -> &B {
        &self.net
    }
}

impl<B: Module> Model for ImageClassifier<B> {
    fn name(&self) -> &str {
        self.name
    }
    fn task(&self) -> Task {
        Task::ImageClassification
    }
    fn forward(&self, batch: &Batch) -> Result<Output> {
        self.cfg.check_images(self.name, &batch.inputs)?;
        let logits = self.net.forward(&Var::constant(batch.inputs.clone()))?;
        let loss = match &batch.targets {
            None => None,
            Some(t) => Some(kiln_nn::loss::cross_entropy(
                &logits,
                &kiln_nn::loss::Target::Indices(t.clone()),
                &Default::default(),
            )?),
        };
        Ok(Output::new(logits, loss))
    }
    fn parameters(&self) -> Vec<Param> {
        self.net.parameters()
    }
    fn set_training(&self, training: bool) {
        self.net.set_training(training)
    }
    fn config(&self) -> serde_json::Value {
        serde_json::to_value(&self.cfg).unwrap_or_default()
    }
}
