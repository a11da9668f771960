//! Train a LeNet-5 (defined here with kiln-nn layers) on MNIST with the kiln-train `Trainer`, and
//! measure the trainer's per-step overhead against a bare training loop.
//!
//! ```sh
//! cargo run --release -p kiln-train --example mnist_lenet -- [DATA_DIR] [OUT_DIR] [EPOCHS]
//! cargo run --release -p kiln-train --example mnist_lenet -- --overhead [DATA_DIR] [STEPS]
//! ```
//!
//! `DATA_DIR` defaults to `data/mnist` (the repository's copy), `OUT_DIR` to `runs/mnist-lenet`.

use std::time::Instant;

use kiln_autograd::{Param, Var};
use kiln_data::mnist::{Mnist, Split};
use kiln_data::{DataLoader, Dataset};
use kiln_nn::layers::{Conv2d, Conv2dConfig, Linear, MaxPool2d};
use kiln_nn::loss::{cross_entropy, Target};
use kiln_nn::{Module, Scope};
use kiln_optim::{Adam, AdamConfig, Optimizer};
use kiln_tensor::{DType, Device};
use kiln_train::{TrainConfig, Trainer};
use kiln_zoo::{Batch, Model, Output, Task};

/// LeNet-5 with ReLU and max pooling, for 28×28 grey images.
struct LeNet {
    conv1: Conv2d,
    conv2: Conv2d,
    pool: MaxPool2d,
    fc1: Linear,
    fc2: Linear,
    fc3: Linear,
}

impl LeNet {
    fn new(seed: u64) -> kiln_nn::Result<LeNet> {
        let s = Scope::init(seed, DType::F32, Device::Cpu);
        let pad2 = Conv2dConfig {
            padding: (2, 2),
            ..Default::default()
        };
        Ok(LeNet {
            conv1: Conv2d::with_config(s.sub("conv1"), 1, 6, (5, 5), pad2)?,
            conv2: Conv2d::new(s.sub("conv2"), 6, 16, (5, 5))?,
            pool: MaxPool2d::new((2, 2))?,
            fc1: Linear::new(s.sub("fc1"), 16 * 5 * 5, 120)?,
            fc2: Linear::new(s.sub("fc2"), 120, 84)?,
            fc3: Linear::new(s.sub("fc3"), 84, 10)?,
        })
    }
}

impl Model for LeNet {
    fn name(&self) -> &str {
        "example-lenet5"
    }
    fn task(&self) -> Task {
        Task::ImageClassification
    }
    fn forward(&self, batch: &Batch) -> kiln_zoo::Result<Output> {
        let x = Var::constant(batch.inputs.clone());
        let h = self.pool.forward(&self.conv1.forward(&x)?.relu()?)?;
        let h = self.pool.forward(&self.conv2.forward(&h)?.relu()?)?;
        let h = self.fc1.forward(&h.flatten(1, -1)?)?.relu()?;
        let logits = self.fc3.forward(&self.fc2.forward(&h)?.relu()?)?;
        let loss = match &batch.targets {
            Some(t) => Some(cross_entropy(
                &logits,
                &Target::Indices(t.clone()),
                &Default::default(),
            )?),
            None => None,
        };
        Ok(Output { logits, loss })
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
    fn set_training(&self, _training: bool) {}
    fn config(&self) -> serde_json::Value {
        serde_json::json!({})
    }
}

fn adam(model: &dyn Model) -> Result<Box<dyn Optimizer>, Box<dyn std::error::Error>> {
    Ok(Box::new(Adam::from_params(
        model.parameters(),
        AdamConfig::default(),
    )?))
}

/// Milliseconds per step of a bare loop (loader, forward, backward, Adam) and of the Trainer.
fn overhead(data_dir: &str, steps: usize) -> Result<(), Box<dyn std::error::Error>> {
    let train = Mnist::load(data_dir, Split::Train)?.to_dataset(true)?;
    let bare = {
        let model = LeNet::new(0)?;
        let mut opt = adam(&model)?;
        let loader = DataLoader::new(&train, 64)?.shuffle(0);
        let mut batches = loader.iter_epoch(0);
        // Warm up, then time.
        let mut t0 = Instant::now();
        for i in 0..steps + 10 {
            if i == 10 {
                t0 = Instant::now();
            }
            let b = batches.next().ok_or("not enough batches")??;
            let out = model.forward(&Batch {
                inputs: b.inputs,
                targets: b.targets,
            })?;
            let grads = out.loss.ok_or("no loss")?.backward()?;
            opt.step(&grads)?;
        }
        t0.elapsed().as_secs_f64() / steps as f64
    };
    let trainer = {
        let model = LeNet::new(0)?;
        let opt = adam(&model)?;
        let cfg = TrainConfig {
            epochs: None,
            max_steps: Some(steps + 10),
            batch_size: 64,
            log_every_steps: 50,
            progress: kiln_train::ProgressMode::Off,
            ..Default::default()
        };
        let mut t = Trainer::new(Box::new(model) as Box<dyn Model>, opt, cfg)?;
        t.set_config(TrainConfig {
            max_steps: Some(10),
            ..t.config().clone()
        })?;
        t.fit(&train, None)?;
        t.set_config(TrainConfig {
            max_steps: Some(steps + 10),
            ..t.config().clone()
        })?;
        let t0 = Instant::now();
        t.fit(&train, None)?;
        t0.elapsed().as_secs_f64() / steps as f64
    };
    println!(
        "LeNet-5, batch 64, {steps} steps: bare loop {:.3} ms/step ({:.0} img/s), Trainer {:.3} ms/step ({:.0} img/s), overhead {:+.1}%",
        bare * 1e3,
        64.0 / bare,
        trainer * 1e3,
        64.0 / trainer,
        (trainer / bare - 1.0) * 100.0
    );
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--overhead") {
        let dir = args.get(1).map(String::as_str).unwrap_or("data/mnist");
        let steps = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(300);
        return overhead(dir, steps);
    }
    let dir = args.first().map(String::as_str).unwrap_or("data/mnist");
    let out = args.get(1).map(String::as_str).unwrap_or("runs/mnist-lenet");
    let epochs = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(1);
    let train = Mnist::load(dir, Split::Train)?.to_dataset(true)?;
    let test = Mnist::load(dir, Split::Test)?.to_dataset(true)?;
    println!("MNIST: {} training, {} test images", train.len(), test.len());
    let model = LeNet::new(0)?;
    let opt = adam(&model)?;
    let cfg = TrainConfig {
        epochs: Some(epochs),
        batch_size: 64,
        eval_batch_size: Some(1000),
        out_dir: Some(out.into()),
        ..Default::default()
    };
    let mut trainer = Trainer::new(Box::new(model) as Box<dyn Model>, opt, cfg)?;
    if let Some(ck) = kiln_train::latest_checkpoint(out)? {
        println!("resuming from {}", ck.display());
        trainer.resume(&ck)?;
    }
    let t0 = Instant::now();
    trainer.fit(&train, Some(&test))?;
    let m = trainer.evaluate(&test)?;
    println!(
        "test loss {:.4}, accuracy {:.4}, top-5 {:.4} ({:.1} s)",
        m.loss,
        m.accuracy.unwrap_or(0.0),
        m.top5.unwrap_or(0.0),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}
