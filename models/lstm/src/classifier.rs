//! `lstm-classifier`: an LSTM over a sequence of feature vectors, classified from its last hidden
//! state.

use kiln_autograd::{Param, Var};
use kiln_nn::layers::{Linear, Lstm, RnnConfig};
use kiln_nn::{Module, Scope};
use kiln_zoo::{Batch, Error, Model, Output, Result, Task};
use serde::{Deserialize, Serialize};

use crate::dropout_rng::DropoutRng;
use crate::input::{config_err, cross_entropy, targets};

const NAME: &str = "lstm-classifier";

/// Configuration of [`LstmClassifier`]. The default reads MNIST row by row ("sequential MNIST":
/// 28 steps of 28 pixels), one layer of 128, 10 classes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LstmClassifierConfig {
    /// Features per time step.
    pub input_size: usize,
    /// Hidden size of every LSTM layer.
    pub hidden_size: usize,
    /// Stacked LSTM layers.
    pub num_layers: usize,
    /// Dropout between LSTM layers in training, in `[0, 1)`.
    pub dropout: f64,
    /// Number of classes.
    pub num_classes: usize,
}

impl Default for LstmClassifierConfig {
    fn default() -> Self {
        LstmClassifierConfig {
            input_size: 28,
            hidden_size: 128,
            num_layers: 1,
            dropout: 0.0,
            num_classes: 10,
        }
    }
}

/// A sequence classifier: `lstm` (`nn.LSTM(F, H, num_layers, dropout, batch_first=True)`) over
/// float sequences `[B, T, F]`, the last layer's final hidden state `h_n[-1]` `[B, H]`, then `fc`
/// (`[classes, H]` + bias) to class logits `[B, classes]`. Targets are class indices `[B]`.
pub struct LstmClassifier {
    cfg: LstmClassifierConfig,
    lstm: Lstm,
    fc: Linear,
    dropout_rng: Option<DropoutRng>,
}

impl LstmClassifier {
    /// Build with parameters from `scope`.
    pub fn new(cfg: LstmClassifierConfig, scope: Scope) -> Result<LstmClassifier> {
        let c = &cfg;
        if c.input_size == 0 || c.hidden_size == 0 || c.num_layers == 0 || c.num_classes == 0 {
            return Err(config_err(
                NAME,
                format!("input_size, hidden_size, num_layers and num_classes must be > 0, got {c:?}"),
            ));
        }
        if !(0.0..1.0).contains(&c.dropout) {
            return Err(config_err(
                NAME,
                format!("dropout must be in [0, 1), got {}", c.dropout),
            ));
        }
        let rnn = RnnConfig::new(c.input_size, c.hidden_size)
            .num_layers(c.num_layers)
            .dropout(c.dropout)
            .batch_first(true);
        let lstm = Lstm::new(scope.sub("lstm"), rnn)?;
        let dropout_rng = match lstm.dropout() {
            Some(d) => Some(DropoutRng::new(&scope.sub("lstm"), "dropout_rng", d)?),
            None => None,
        };
        let fc = Linear::new(scope.sub("fc"), c.hidden_size, c.num_classes)?;
        Ok(LstmClassifier {
            cfg,
            lstm,
            fc,
            dropout_rng,
        })
    }

    /// Class logits `[B, classes]` for sequences `[B, T, F]`.
    pub fn logits(&self, x: &Var) -> Result<Var> {
        let (_, (h_n, _)) = match (&self.dropout_rng, self.lstm.dropout()) {
            (Some(rng), Some(d)) => rng.around(d, || Ok(self.lstm.forward_with_state(x, None)?))?,
            _ => self.lstm.forward_with_state(x, None)?,
        };
        let last = h_n.narrow(0, self.cfg.num_layers - 1, 1)?.squeeze(0)?;
        Ok(self.fc.forward(&last)?)
    }
}

impl Model for LstmClassifier {
    fn name(&self) -> &str {
        NAME
    }
    fn task(&self) -> Task {
        Task::SequenceClassification
    }
    fn forward(&self, batch: &Batch) -> Result<Output> {
        let x = &batch.inputs;
        let f = self.cfg.input_size;
        if x.rank() != 3 || x.dims()[0] == 0 || x.dims()[1] == 0 || x.dims()[2] != f || !x.dtype().is_float()
        {
            return Err(Error::Input {
                model: NAME.into(),
                reason: format!(
                    "expected float sequences [batch, time, {f}] (batch and time > 0), got {:?} {}",
                    x.shape(),
                    x.dtype()
                ),
            });
        }
        let logits = self.logits(&Var::constant(x.clone()))?;
        let loss = match &batch.targets {
            None => None,
            Some(t) => {
                let t = targets(NAME, t, &[x.dims()[0]], self.cfg.num_classes)?;
                Some(cross_entropy(&logits, &t)?)
            }
        };
        Ok(Output::new(logits, loss))
    }
    fn parameters(&self) -> Vec<Param> {
        let mut p = self.lstm.parameters();
        p.extend(self.dropout_rng.as_ref().map(|r| r.param().clone()));
        p.extend(self.fc.parameters());
        p
    }
    fn set_training(&self, training: bool) {
        self.lstm.set_training(training);
    }
    fn config(&self) -> serde_json::Value {
        serde_json::to_value(&self.cfg).unwrap_or_default()
    }
}

pub(crate) fn default_json() -> serde_json::Value {
    serde_json::to_value(LstmClassifierConfig::default()).unwrap_or_default()
}

pub(crate) fn build(cfg: &serde_json::Value, scope: Scope) -> Result<Box<dyn Model>> {
    let cfg: LstmClassifierConfig = kiln_zoo::parse_config(NAME, cfg)?;
    Ok(Box::new(LstmClassifier::new(cfg, scope)?))
}
