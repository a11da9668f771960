//! The `Model` implementation both classifiers share: validate the batch, run the network,
//! add the cross-entropy loss when the batch has labels.

use kiln_autograd::{Param, Var};
use kiln_zoo::{Batch, Model, Output, Result, Task};

use crate::config::ImageClassifierConfig;

/// A network that maps images `[N, C, H, W]` to class logits.
pub trait Backbone: Send + Sync {
    /// The registered model name.
    const NAME: &'static str;
    /// Logits `[N, classes]`.
    fn logits(&self, x: &Var) -> Result<Var>;
    /// Every parameter, with full dotted names.
    fn parameters(&self) -> Vec<Param>;
}

/// A [`Backbone`] with its configuration, as a zoo [`Model`].
pub struct ImageClassifier<B> {
    pub(crate) cfg: ImageClassifierConfig,
    pub(crate) net: B,
}

impl<B: Backbone> ImageClassifier<B> {
    /// The wrapped network.
    pub fn net(&self) -> &B {
        &self.net
    }
}

impl<B: Backbone> Model for ImageClassifier<B> {
    fn name(&self) -> &str {
        B::NAME
    }
    fn task(&self) -> Task {
        Task::ImageClassification
    }
    fn forward(&self, batch: &Batch) -> Result<Output> {
        self.cfg.check_images(B::NAME, &batch.inputs)?;
        let logits = self.net.logits(&Var::constant(batch.inputs.clone()))?;
        let loss = match &batch.targets {
            None => None,
            Some(t) => Some(kiln_nn::loss::cross_entropy(
                &logits,
                &kiln_nn::loss::Target::Indices(t.clone()),
                &Default::default(),
            )?),
        };
        Ok(Output { logits, loss })
    }
    fn parameters(&self) -> Vec<Param> {
        self.net.parameters()
    }
    fn set_training(&self, _training: bool) {}
    fn config(&self) -> serde_json::Value {
        serde_json::to_value(&self.cfg).unwrap_or_default()
    }
}
