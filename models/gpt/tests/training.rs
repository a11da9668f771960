//! Training a small GPT with kiln-train: the loss falls, -100 targets are ignored, and a run resumed
//! from a checkpoint ends with bit-identical weights to an uninterrupted one.

use kiln_data::Dataset;
use kiln_gpt::{Gpt, GptConfig};
use kiln_nn::Scope;
use kiln_optim::{AdamW, AdamWConfig, ParamGroup, Schedule};
use kiln_tensor::{DType, Device, Tensor};
use kiln_train::{TrainConfig, Trainer};
use kiln_zoo::{Batch, Model};

fn small() -> GptConfig {
    GptConfig {
        vocab_size: 17,
        n_positions: 16,
        n_embd: 16,
        n_layer: 2,
        n_head: 2,
        ..GptConfig::tiny()
    }
}

/// Sequences of a repeating pattern (the next token is predictable).
struct Pattern;
impl Dataset for Pattern {
    fn len(&self) -> usize {
        48
    }
    fn get_batch(&self, indices: &[usize]) -> kiln_data::Result<kiln_data::Batch> {
        let t = 12;
        let seq = |i: usize, j: usize| ((i + j * 3) % 17) as i64;
        let x: Vec<i64> = indices
            .iter()
            .flat_map(|&i| (0..t).map(move |j| seq(i, j)))
            .collect();
        let y: Vec<i64> = indices
            .iter()
            .flat_map(|&i| (0..t).map(move |j| seq(i, j + 1)))
            .collect();
        Ok(kiln_data::Batch {
            inputs: Tensor::from_vec(x, [indices.len(), t])?,
            targets: Some(Tensor::from_vec(y, [indices.len(), t])?),
        })
    }
}

fn trainer(dir: &std::path::Path, steps: usize) -> Trainer {
    let model = Gpt::new("gpt-tiny", small(), Scope::init(7, DType::F32, Device::Cpu)).unwrap();
    let params = model.parameters();
    let opt = AdamW::new(
        ParamGroup::split_decay_matrices(params, 0.1),
        AdamWConfig {
            lr: 3e-3,
            betas: (0.9, 0.95),
            ..Default::default()
        },
    )
    .unwrap();
    let cfg = TrainConfig {
        epochs: None,
        max_steps: Some(steps),
        batch_size: 8,
        schedule: Some(Schedule::warmup_cosine(3e-3, 3, 20, 3e-4)),
        clip_grad_norm: Some(1.0),
        checkpoint_every_steps: Some(5),
        out_dir: Some(dir.to_path_buf()),
        progress: kiln_train::ProgressMode::Off,
        tensorboard: false,
        plot: false,
        ..Default::default()
    };
    Trainer::new(Box::new(model) as Box<dyn Model>, Box::new(opt), cfg).unwrap()
}

fn weights(t: &Trainer) -> Vec<Vec<u32>> {
    t.model()
        .parameters()
        .iter()
        .map(|p| {
            p.value()
                .to_vec::<f32>()
                .unwrap()
                .iter()
                .map(|v| v.to_bits())
                .collect()
        })
        .collect()
}

#[test]
fn resume_is_bit_exact_and_the_loss_falls() {
    let base = std::env::temp_dir().join(format!("kiln-gpt-resume-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let mut straight = trainer(&base.join("straight"), 20);
    let before = straight.evaluate(&Pattern).unwrap().loss;
    straight.fit(&Pattern, None).unwrap();
    let after = straight.evaluate(&Pattern).unwrap().loss;
    assert!(after < before - 0.3, "loss {before} -> {after} after 20 steps");

    let mut part = trainer(&base.join("resumed"), 10);
    part.fit(&Pattern, None).unwrap();
    drop(part);
    let mut resumed = trainer(&base.join("resumed"), 20);
    resumed.resume(base.join("resumed")).unwrap();
    resumed.fit(&Pattern, None).unwrap();
    assert_eq!(weights(&straight), weights(&resumed));
    let _ = std::fs::remove_dir_all(&base);
}

#[test]
fn ignored_targets_do_not_count() {
    let model = Gpt::new("gpt-tiny", small(), Scope::init(1, DType::F32, Device::Cpu)).unwrap();
    let x = Tensor::from_vec(vec![1i64, 2, 3, 4], [1, 4]).unwrap();
    let loss = |y: Vec<i64>| {
        model
            .forward(&Batch {
                inputs: x.clone(),
                targets: Some(Tensor::from_vec(y, [1, 4]).unwrap()),
            })
            .unwrap()
            .loss
            .unwrap()
            .value()
            .to_scalar::<f32>()
            .unwrap()
    };
    // Masking the first two positions equals the mean over the last two alone.
    let logits = model.logits(&x).unwrap().value().to_vec::<f32>().unwrap();
    let nll = |pos: usize, t: usize| {
        let row = &logits[pos * 17..(pos + 1) * 17];
        let m = row.iter().cloned().fold(f32::MIN, f32::max);
        let lse = m + row.iter().map(|v| (v - m).exp()).sum::<f32>().ln();
        lse - row[t]
    };
    let want = (nll(2, 5) + nll(3, 6)) / 2.0;
    assert!((loss(vec![-100, -100, 5, 6]) - want).abs() < 1e-5);
    let e = model
        .forward(&Batch {
            inputs: x.clone(),
            targets: Some(Tensor::from_vec(vec![-100i64; 4], [1, 4]).unwrap()),
        })
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("nothing to learn"), "{e}");
}
