//! The configuration both classifiers share.

use kiln_zoo::{Error, Result};

/// Input geometry and class count.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageClassifierConfig {
    /// Channels of the input images (1 for MNIST).
    pub in_channels: usize,
    /// Side of the square input images (28 for MNIST).
    pub image_size: usize,
    /// Number of classes.
    pub num_classes: usize,
}

impl Default for ImageClassifierConfig {
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
        let c: Self = kiln_zoo::parse_config(model, cfg)?;
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

pub(crate) fn default_json() -> serde_json::Value {
    serde_json::to_value(ImageClassifierConfig::default()).expect("a plain struct serialises")
}
