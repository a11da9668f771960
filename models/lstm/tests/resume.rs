//! Training `lstm-lm` with dropout through kiln-train: 2N steps straight equal N steps, a
//! checkpoint, a new trainer (other initial weights and dropout seed), resume and N steps — bit
//! for bit, because the dropout generator travels in the checkpoint.

use std::path::PathBuf;

use kiln_data::TensorDataset;
use kiln_lstm::{LstmLm, LstmLmConfig};
use kiln_nn::Scope;
use kiln_tensor::{DType, Device, Tensor};
use kiln_train::{OptimizerConfig, ProgressMode, TrainConfig, Trainer};
use kiln_zoo::Model;

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kiln-lstm-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn data() -> TensorDataset {
    let (n, t, v) = (24usize, 6usize, 7i64);
    let stream: Vec<i64> = (0..n * t + 1)
        .map(|i| (i as i64 * 5 + i as i64 / 3) % v)
        .collect();
    let x: Vec<i64> = (0..n * t).map(|i| stream[i]).collect();
    let y: Vec<i64> = (0..n * t).map(|i| stream[i + 1]).collect();
    TensorDataset::new(
        Tensor::from_vec(x, [n, t]).unwrap(),
        Tensor::from_vec(y, [n, t]).unwrap(),
    )
    .unwrap()
}

fn trainer(seed: u64, max_steps: usize, out: PathBuf) -> Trainer {
    let cfg = LstmLmConfig {
        vocab_size: 7,
        embedding_dim: 6,
        hidden_size: 8,
        num_layers: 3,
        dropout: 0.5,
        tie_embeddings: false,
    };
    let model: Box<dyn Model> =
        Box::new(LstmLm::new(cfg, Scope::init(seed, DType::F32, Device::Cpu)).unwrap());
    let optimizer = OptimizerConfig::by_name("adam", 1e-2)
        .unwrap()
        .build(model.parameters())
        .unwrap();
    let config = TrainConfig {
        epochs: None,
        max_steps: Some(max_steps),
        batch_size: 4,
        out_dir: Some(out),
        progress: ProgressMode::Off,
        tensorboard: false,
        plot: false,
        ..Default::default()
    };
    Trainer::new(model, optimizer, config).unwrap()
}

fn params(t: &Trainer) -> Vec<(String, Vec<f64>)> {
    t.model()
        .parameters()
        .iter()
        .map(|p| (p.name().to_string(), p.value().to_f64_vec()))
        .collect()
}

#[test]
fn resume_with_dropout_is_bit_exact() {
    let data = data();
    let mut straight = trainer(1, 8, scratch("straight"));
    straight.fit(&data, None).unwrap();

    let dir = scratch("resumed");
    let mut first = trainer(1, 4, dir.clone());
    first.fit(&data, None).unwrap();
    drop(first);
    let mut second = trainer(77, 8, dir.clone());
    second.resume(&dir).unwrap();
    second.fit(&data, None).unwrap();

    let (a, b) = (params(&straight), params(&second));
    assert!(a.iter().any(|(n, _)| n == "lstm.dropout_rng"));
    assert_eq!(a, b);
    for d in [dir, scratch("straight")] {
        let _ = std::fs::remove_dir_all(d);
    }
}
