//! A small model and dataset of the tests' own: a two-layer perceptron on three Gaussian blobs.

#![allow(dead_code)]

use std::path::PathBuf;

use kiln_autograd::{Param, Var};
use kiln_data::TensorDataset;
use kiln_nn::layers::Linear;
use kiln_nn::loss::{cross_entropy, Target};
use kiln_nn::{Module, Scope};
use kiln_optim::{Adam, AdamConfig, Optimizer};
use kiln_tensor::{DType, Device, Tensor, TensorRng};
use kiln_train::{ProgressMode, TrainConfig, Trainer};
use kiln_zoo::{Batch, Model, Output, Task};

/// `fc1` (4 → 16), ReLU, `fc2` (16 → 3), cross-entropy.
pub struct Mlp {
    fc1: Linear,
    fc2: Linear,
    name: &'static str,
}

impl Mlp {
    pub fn new(seed: u64) -> Mlp {
        let scope = Scope::init(seed, DType::F32, Device::Cpu);
        Mlp {
            fc1: Linear::new(scope.sub("fc1"), 4, 16).unwrap(),
            fc2: Linear::new(scope.sub("fc2"), 16, 3).unwrap(),
            name: "test-mlp",
        }
    }

    pub fn named(seed: u64, name: &'static str) -> Mlp {
        Mlp {
            name,
            ..Mlp::new(seed)
        }
    }
}

impl Model for Mlp {
    fn name(&self) -> &str {
        self.name
    }
    fn task(&self) -> Task {
        Task::ImageClassification
    }
    fn forward(&self, batch: &Batch) -> kiln_zoo::Result<Output> {
        let x = Var::constant(batch.inputs.clone());
        let logits = self.fc2.forward(&self.fc1.forward(&x)?.relu()?)?;
        let loss = match &batch.targets {
            Some(t) => Some(cross_entropy(
                &logits,
                &Target::Indices(t.clone()),
                &Default::default(),
            )?),
            None => None,
        };
        Ok(Output::new(logits, loss))
    }
    fn parameters(&self) -> Vec<Param> {
        let mut p = self.fc1.parameters();
        p.extend(self.fc2.parameters());
        p
    }
    fn set_training(&self, _training: bool) {}
    fn config(&self) -> serde_json::Value {
        serde_json::json!({"hidden": 16})
    }
}

/// `n` points of 3 well-separated blobs in 4-D, labelled by blob.
pub fn blobs(n: usize, seed: u64) -> TensorDataset {
    let mut rng = TensorRng::new(seed);
    let centers = [
        [2.0, 0.0, -1.0, 0.5],
        [-2.0, 1.0, 1.0, -0.5],
        [0.0, -2.0, 0.0, 2.0],
    ];
    let mut x = Vec::with_capacity(n * 4);
    let mut y = Vec::with_capacity(n);
    for i in 0..n {
        let c = i % 3;
        for center in centers[c] {
            x.push((center + 0.7 * rng.next_normal()) as f32);
        }
        y.push(c as i64);
    }
    TensorDataset::new(
        Tensor::from_vec(x, [n, 4]).unwrap(),
        Tensor::from_vec(y, [n]).unwrap(),
    )
    .unwrap()
}

pub fn adam(model: &dyn Model, lr: f64) -> Box<dyn Optimizer> {
    Box::new(
        Adam::from_params(
            model.parameters(),
            AdamConfig {
                lr,
                ..Default::default()
            },
        )
        .unwrap(),
    )
}

/// A quiet config (no progress output).
pub fn quiet() -> TrainConfig {
    TrainConfig {
        batch_size: 16,
        progress: ProgressMode::Off,
        log_every_steps: 2,
        ..Default::default()
    }
}

pub fn trainer(seed: u64, cfg: TrainConfig) -> Trainer {
    let model = Mlp::new(seed);
    let opt = adam(&model, 0.01);
    Trainer::new(Box::new(model) as Box<dyn Model>, opt, cfg).unwrap()
}

/// Parameter values as bits, by name.
pub type Bits = Vec<(String, Vec<u32>)>;

/// The parameters' bits, by name.
pub fn param_bits(t: &Trainer) -> Bits {
    t.model()
        .parameters()
        .iter()
        .map(|p| {
            let v = p.value().to_vec::<f32>().unwrap();
            (p.name().to_string(), v.iter().map(|x| x.to_bits()).collect())
        })
        .collect()
}

/// A fresh scratch directory unique to this test.
pub fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kiln-train-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}
