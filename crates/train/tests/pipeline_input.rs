//! `Trainer::fit_pipeline`: training from a kiln-data `Pipeline` of batches, its resume, epochs
//! of unknown length; and `TrainConfig::precision` (bf16 matrix products).

mod common;

use common::*;
use kiln_data::pipeline::collate;
use kiln_data::{Batch, Pipeline, TensorDataset};
use kiln_tensor::MatmulPrecision;
use kiln_train::TrainConfig;

/// The examples of `data` in order, in batches of 16 (the last one smaller).
fn in_order(data: &TensorDataset) -> Pipeline<Batch> {
    Pipeline::from_source(data.clone())
        .batch(16, false, collate::stack_examples)
        .unwrap()
}

/// Shuffled every epoch (seed 5), batches of 16, prefetched.
fn shuffled(data: &TensorDataset) -> Pipeline<Batch> {
    Pipeline::from_source(data.clone())
        .shuffle(100, 5)
        .unwrap()
        .batch(16, false, collate::stack_examples)
        .unwrap()
        .prefetch(2)
        .unwrap()
}

#[test]
fn a_pipeline_of_the_same_batches_trains_exactly_as_the_dataset() {
    let (data, val) = (blobs(100, 1), blobs(30, 2));
    let cfg = TrainConfig {
        epochs: Some(2),
        shuffle: false,
        ..quiet()
    };
    let mut from_dataset = trainer(3, cfg.clone());
    let h1 = from_dataset.fit(&data, Some(&val)).unwrap();
    let mut from_pipeline = trainer(3, cfg);
    let h2 = from_pipeline.fit_pipeline(&in_order(&data), Some(&val)).unwrap();
    assert_eq!(param_bits(&from_dataset), param_bits(&from_pipeline));
    assert_eq!(h1.epochs.len(), 2);
    assert_eq!(
        h2.epochs
            .iter()
            .map(|e| (e.step, e.train.samples))
            .collect::<Vec<_>>(),
        vec![(7, 100), (14, 100)]
    );
    assert_eq!(h1.epochs[1].val, h2.epochs[1].val);
}

#[test]
fn resuming_a_pipeline_run_continues_with_the_next_batch_bit_for_bit() {
    let (data, val) = (blobs(100, 1), blobs(30, 2));
    let pipeline = shuffled(&data);
    // 7 batches per epoch: step 4 stops mid-epoch 1, step 10 lies in epoch 2.
    let mut straight = trainer(
        7,
        TrainConfig {
            max_steps: Some(10),
            epochs: None,
            ..quiet()
        },
    );
    straight.fit_pipeline(&pipeline, Some(&val)).unwrap();

    let dir = scratch("pipeline-resume");
    let mut first = trainer(
        7,
        TrainConfig {
            max_steps: Some(4),
            epochs: None,
            out_dir: Some(dir.clone()),
            ..quiet()
        },
    );
    first.fit_pipeline(&pipeline, Some(&val)).unwrap();
    drop(first);
    let mut second = trainer(
        99,
        TrainConfig {
            max_steps: Some(10),
            epochs: None,
            out_dir: Some(dir.clone()),
            ..quiet()
        },
    );
    second.resume(&dir).unwrap();
    assert_eq!((second.step(), second.batch_offset()), (4, 4));
    second.fit_pipeline(&pipeline, Some(&val)).unwrap();
    assert_eq!(param_bits(&straight), param_bits(&second));

    // Another pipeline's position is refused, naming both.
    let mut third = trainer(
        99,
        TrainConfig {
            max_steps: Some(10),
            epochs: None,
            out_dir: Some(dir.clone()),
            ..quiet()
        },
    );
    third.resume(&dir).unwrap();
    let other = Pipeline::from_source(data.clone())
        .batch(16, false, collate::stack_examples)
        .unwrap();
    let err = third.fit_pipeline(&other, Some(&val)).unwrap_err().to_string();
    assert!(err.contains("shuffle") && err.contains("this run reads"), "{err}");
}

#[test]
fn an_epoch_of_unknown_length_ends_with_its_last_batch() {
    let (data, val) = (blobs(100, 1), blobs(30, 2));
    // A filter hides the length: the trainer looks one batch ahead to close each epoch.
    let pipeline = Pipeline::from_source(data.clone())
        .filter(|_| true)
        .batch(16, false, collate::stack_examples)
        .unwrap();
    assert_eq!(pipeline.len(0), None);
    let mut t = trainer(
        1,
        TrainConfig {
            epochs: Some(2),
            grad_accum_steps: 3,
            ..quiet()
        },
    );
    let h = t.fit_pipeline(&pipeline, Some(&val)).unwrap();
    // 7 batches per epoch in steps of 3, 3 and 1.
    assert_eq!(h.epochs.iter().map(|e| e.step).collect::<Vec<_>>(), vec![3, 6]);
    assert!(h.epochs.iter().all(|e| e.train.samples == 100));
    // The same batches from the dataset give the same weights.
    let mut d = trainer(
        1,
        TrainConfig {
            epochs: Some(2),
            grad_accum_steps: 3,
            shuffle: false,
            ..quiet()
        },
    );
    d.fit(&data, Some(&val)).unwrap();
    assert_eq!(param_bits(&t), param_bits(&d));
}

#[test]
fn an_empty_pipeline_is_a_clear_error() {
    let data = blobs(100, 1);
    let empty = in_order(&data).take(0);
    let mut t = trainer(1, quiet());
    let err = t.fit_pipeline(&empty, None).unwrap_err().to_string();
    assert!(err.contains("pipeline") && err.contains("empty"), "{err}");
}

#[test]
fn bf16_precision_trains_close_to_f32_and_is_read_from_json() {
    let (data, val) = (blobs(150, 1), blobs(60, 2));
    let run = |precision| {
        let mut t = trainer(
            1,
            TrainConfig {
                epochs: Some(3),
                precision,
                ..quiet()
            },
        );
        let h = t.fit(&data, Some(&val)).unwrap();
        (h, param_bits(&t))
    };
    let (h32, w32) = run(MatmulPrecision::F32);
    let (h16, w16) = run(MatmulPrecision::Bf16);
    assert_ne!(w32, w16, "bf16 products change the weights");
    for (a, b) in h32.epochs.iter().zip(&h16.epochs) {
        let (la, lb) = (a.val.as_ref().unwrap().loss, b.val.as_ref().unwrap().loss);
        assert!(
            (la - lb).abs() < 0.02 * la.max(0.1),
            "val loss f32 {la} vs bf16 {lb}"
        );
    }
    let last = h16.epochs.last().unwrap().val.as_ref().unwrap();
    assert!(last.accuracy.unwrap() > 0.9, "{last:?}");

    let cfg = TrainConfig::from_json(r#"{"precision": "bf16"}"#).unwrap();
    assert_eq!(cfg.precision, MatmulPrecision::Bf16);
    let err = TrainConfig::from_json(r#"{"precision": "fp8"}"#)
        .unwrap_err()
        .to_string();
    assert!(err.contains("fp8") && err.contains("bf16"), "{err}");
}

/// Two replicas reading alternate batches of one pipeline end bit-identical to one process
/// accumulating two consecutive batches per step.
#[test]
fn replicas_share_a_pipeline_as_one_process_accumulating() {
    use std::sync::Arc;

    use kiln_train::{Collective, LocalCollective};
    let data = blobs(96, 1);
    let pipeline = shuffled(&data);
    let cfg = TrainConfig {
        epochs: Some(2),
        ..quiet()
    };
    let handles = LocalCollective::new(2).unwrap();
    let replicas: Vec<_> = std::thread::scope(|s| {
        let joins: Vec<_> = handles
            .into_iter()
            .map(|c| {
                let (cfg, pipeline) = (cfg.clone(), pipeline.clone());
                s.spawn(move || {
                    let mut t = trainer(10 + c.rank() as u64, cfg).with_collective(Arc::new(c));
                    t.fit_pipeline(&pipeline, None).unwrap();
                    param_bits(&t)
                })
            })
            .collect();
        joins.into_iter().map(|j| j.join().unwrap()).collect()
    });
    let mut single = trainer(
        10,
        TrainConfig {
            grad_accum_steps: 2,
            ..cfg
        },
    );
    single.fit_pipeline(&pipeline, None).unwrap();
    for r in replicas {
        assert_eq!(r, param_bits(&single));
    }

    // 100 examples make 7 batches: two replicas cannot share them, and both say so (no hang).
    let ragged = shuffled(&blobs(100, 1));
    let handles = LocalCollective::new(2).unwrap();
    let errors: Vec<String> = std::thread::scope(|s| {
        let joins: Vec<_> = handles
            .into_iter()
            .map(|c| {
                let ragged = ragged.clone();
                s.spawn(move || {
                    let mut t = trainer(1, quiet()).with_collective(Arc::new(c));
                    t.fit_pipeline(&ragged, None).unwrap_err().to_string()
                })
            })
            .collect();
        joins.into_iter().map(|j| j.join().unwrap()).collect()
    });
    for e in errors {
        assert!(e.contains("7 batches") && e.contains("2 replicas"), "{e}");
    }
}
