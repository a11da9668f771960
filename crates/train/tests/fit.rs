//! fit / evaluate / predict, callbacks, logs, configuration errors and data parallelism.

mod common;

use std::sync::Arc;

use common::*;
use kiln_data::TensorDataset;
use kiln_optim::{Schedule, Sgd, SgdConfig};
use kiln_train::tensorboard::{read_events, FILE_VERSION};
use kiln_train::{
    Callback, CallbackContext, Collective, EarlyStopping, LocalCollective, LrLogger, ModelCheckpoint,
    Monitor, OptimizerConfig, StepEnd, TrainConfig, Trainer, CURVES_FILE, HISTORY_FILE, METRICS_FILE,
};
use kiln_zoo::Model;

#[test]
fn fit_learns_and_records_history_logs_events_and_curves() {
    let dir = scratch("logs");
    let (train, val) = (blobs(150, 1), blobs(60, 2));
    let mut t = trainer(
        1,
        TrainConfig {
            epochs: Some(4),
            out_dir: Some(dir.clone()),
            log_every_steps: 3,
            ..quiet()
        },
    );
    let h = t.fit(&train, Some(&val)).unwrap();
    // 150 examples / 16 = 10 batches (the last one of 6) per epoch.
    assert_eq!(h.epochs.len(), 4);
    assert_eq!(
        h.epochs.iter().map(|e| e.step).collect::<Vec<_>>(),
        vec![10, 20, 30, 40]
    );
    assert!(h
        .epochs
        .iter()
        .all(|e| e.train.samples == 150 && e.val.as_ref().unwrap().samples == 60));
    assert_eq!(h.steps.len(), 13, "logged every 3 steps");
    assert!(h.stopped_early.is_none());
    let last = h.last().unwrap();
    assert!(last.train.loss < h.epochs[0].train.loss);
    assert!(last.val.as_ref().unwrap().accuracy.unwrap() > 0.9, "{last:?}");
    assert_eq!(h.metric("val_accuracy").len(), 4);

    // metrics.jsonl: one line per logged step and per epoch.
    let text = std::fs::read_to_string(dir.join(METRICS_FILE)).unwrap();
    let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.iter().filter(|l| l["type"] == "step").count(), 13);
    assert_eq!(lines.iter().filter(|l| l["type"] == "epoch").count(), 4);
    let e = lines.iter().find(|l| l["type"] == "epoch").unwrap();
    assert_eq!(e["step"], 10);
    assert!(e["val_accuracy"].as_f64().is_some() && e["loss"].as_f64().is_some());

    // The TensorBoard event file decodes, CRCs check, and holds the logged values.
    let files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("events.out.tfevents.")
        })
        .collect();
    assert_eq!(files.len(), 1);
    let events = read_events(&files[0]).unwrap();
    assert_eq!(events[0].file_version.as_deref(), Some(FILE_VERSION));
    let losses: Vec<(i64, f32)> = events
        .iter()
        .flat_map(|e| {
            e.scalars
                .iter()
                .filter(|(tag, _)| tag == "train/loss")
                .map(move |(_, v)| (e.step, *v))
        })
        .collect();
    assert_eq!(losses.len(), 13);
    assert_eq!(losses[0].0, 3);
    assert_eq!(losses[0].1, h.steps[0].loss as f32);
    let val_acc: Vec<(i64, f32)> = events
        .iter()
        .flat_map(|e| {
            e.scalars
                .iter()
                .filter(|(tag, _)| tag == "val/accuracy")
                .map(move |(_, v)| (e.step, *v))
        })
        .collect();
    assert_eq!(val_acc.len(), 4);
    assert_eq!(
        val_acc[3],
        (40, last.val.as_ref().unwrap().accuracy.unwrap() as f32)
    );

    // The curves PNG and the history JSON.
    let png = std::fs::read(dir.join(CURVES_FILE)).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let back: kiln_train::History =
        serde_json::from_slice(&std::fs::read(dir.join(HISTORY_FILE)).unwrap()).unwrap();
    assert_eq!(back, h);
    // One checkpoint per epoch, the last 3 kept.
    assert!(dir.join("checkpoints/step-00000040").is_dir());
    assert!(!dir.join("checkpoints/step-00000010").exists());
}

#[test]
fn evaluate_and_predict() {
    let (train, val) = (blobs(150, 1), blobs(60, 2));
    let mut t = trainer(
        1,
        TrainConfig {
            epochs: Some(3),
            eval_batch_size: Some(25),
            ..quiet()
        },
    );
    t.fit(&train, None).unwrap();
    let m = t.evaluate(&val).unwrap();
    assert_eq!(m.samples, 60);
    assert!(m.accuracy.unwrap() > 0.9);
    assert_eq!(m.top5, None, "3 classes: top-5 does not apply");
    assert!(m.loss > 0.0 && m.loss.is_finite());
    let unlabeled = TensorDataset::unlabeled(val.inputs().clone()).unwrap();
    let logits = t.predict(&unlabeled).unwrap();
    assert_eq!(logits.dims(), &[60, 3]);
    // Predictions agree with evaluate's accuracy.
    let acc = kiln_train::metrics::accuracy(&logits, val.targets().unwrap()).unwrap();
    assert_eq!(acc, m.accuracy.unwrap());
    // No graph was recorded and evaluation needs targets.
    assert!(t
        .evaluate(&unlabeled)
        .unwrap_err()
        .to_string()
        .contains("no targets"));
}

#[test]
fn early_stopping_stops() {
    let (train, val) = (blobs(60, 1), blobs(30, 2));
    let model = Mlp::new(5);
    // Learning rate 0: the validation loss never improves after the first epoch.
    let opt = Box::new(
        Sgd::from_params(
            model.parameters(),
            SgdConfig {
                lr: 0.0,
                ..Default::default()
            },
        )
        .unwrap(),
    );
    let es = EarlyStopping::new(Monitor::ValLoss, 2, 0.0).unwrap();
    let stopped = es.stopped_epoch();
    let mut t = Trainer::new(
        Box::new(model) as Box<dyn Model>,
        opt,
        TrainConfig {
            epochs: Some(20),
            ..quiet()
        },
    )
    .unwrap()
    .with_callback(es);
    let h = t.fit(&train, Some(&val)).unwrap();
    assert_eq!(
        h.epochs.len(),
        3,
        "best at epoch 1, then 2 epochs without improvement"
    );
    assert!(h.stopped_early.as_deref().unwrap().contains("val_loss"), "{h:?}");
    assert_eq!(*stopped.lock().unwrap(), Some(2));

    // Monitoring validation metrics without a validation set is a clear error.
    let mut t = trainer(5, quiet()).with_callback(EarlyStopping::new(Monitor::ValAccuracy, 1, 0.0).unwrap());
    let e = t.fit(&train, None).unwrap_err().to_string();
    assert!(e.contains("val_accuracy") && e.contains("validation"), "{e}");
}

/// Records every hook call.
struct Recorder(Arc<std::sync::Mutex<Vec<String>>>);

impl Callback for Recorder {
    fn name(&self) -> &str {
        "recorder"
    }
    fn on_train_begin(&mut self, _ctx: &mut CallbackContext<'_>) -> kiln_train::Result<()> {
        self.0.lock().unwrap().push("train_begin".into());
        Ok(())
    }
    fn on_epoch_begin(&mut self, epoch: usize, _ctx: &mut CallbackContext<'_>) -> kiln_train::Result<()> {
        self.0.lock().unwrap().push(format!("epoch_begin {epoch}"));
        Ok(())
    }
    fn on_batch_begin(&mut self, batch: usize, _ctx: &mut CallbackContext<'_>) -> kiln_train::Result<()> {
        self.0.lock().unwrap().push(format!("batch_begin {batch}"));
        Ok(())
    }
    fn on_batch_end(&mut self, logs: &StepEnd, ctx: &mut CallbackContext<'_>) -> kiln_train::Result<()> {
        self.0
            .lock()
            .unwrap()
            .push(format!("batch_end {} {}", logs.step, logs.samples));
        if logs.step == 5 {
            ctx.request_stop("enough");
        }
        Ok(())
    }
    fn on_epoch_end(
        &mut self,
        m: &kiln_train::EpochMetrics,
        _ctx: &mut CallbackContext<'_>,
    ) -> kiln_train::Result<()> {
        self.0.lock().unwrap().push(format!("epoch_end {}", m.epoch));
        Ok(())
    }
    fn on_train_end(
        &mut self,
        _h: &kiln_train::History,
        _ctx: &mut CallbackContext<'_>,
    ) -> kiln_train::Result<()> {
        self.0.lock().unwrap().push("train_end".into());
        Ok(())
    }
}

#[test]
fn callbacks_see_every_hook_and_can_stop() {
    let calls = Arc::new(std::sync::Mutex::new(Vec::new()));
    // 40 examples, batch 16, accumulation 2: batches of 16, 16, 8 → steps of 32 and 8 examples.
    let mut t = trainer(
        2,
        TrainConfig {
            epochs: Some(10),
            grad_accum_steps: 2,
            ..quiet()
        },
    )
    .with_callback(Recorder(calls.clone()));
    let h = t.fit(&blobs(40, 1), None).unwrap();
    let calls = calls.lock().unwrap().clone();
    assert_eq!(
        calls[..8],
        [
            "train_begin",
            "epoch_begin 0",
            "batch_begin 0",
            "batch_end 1 32",
            "batch_begin 2",
            "batch_end 2 8",
            "epoch_end 0",
            "epoch_begin 1"
        ]
    );
    assert_eq!(calls.last().unwrap(), "train_end");
    assert_eq!(t.step(), 5);
    assert_eq!(h.stopped_early.as_deref(), Some("enough"));
    assert_eq!(h.epochs.len(), 2, "stopped in the middle of the third epoch");
}

#[test]
fn lr_logger_follows_the_schedule_and_best_weights_are_saved() {
    let dir = scratch("lr");
    let schedule = Schedule::Step {
        lr: 0.1,
        step_size: 3,
        gamma: 0.5,
    };
    let lr = LrLogger::new(1).unwrap();
    let records = lr.records();
    let mut t = trainer(
        4,
        TrainConfig {
            epochs: Some(2),
            schedule: Some(schedule.clone()),
            out_dir: Some(dir.clone()),
            checkpoint_every_epoch: false,
            ..quiet()
        },
    )
    .with_callback(lr)
    .with_callback(ModelCheckpoint::best(
        Monitor::ValAccuracy,
        "best/model.safetensors",
    ))
    .with_callback(ModelCheckpoint::every_epochs(2).unwrap());
    t.fit(&blobs(64, 1), Some(&blobs(30, 2))).unwrap();
    let r = records.lock().unwrap().clone();
    assert_eq!(r.len(), 8);
    for (step, lr) in r {
        use kiln_optim::LrSchedule;
        assert_eq!(lr, schedule.lr(step - 1), "step {step}");
    }
    assert!(dir.join("best/model.safetensors").is_file());
    t.load_weights(dir.join("best/model.safetensors")).unwrap();
    // ModelCheckpoint::every_epochs(2) asked for the checkpoint at the end of epoch 2.
    assert!(dir.join("checkpoints/step-00000008").is_dir());
}

#[test]
fn bad_configs_and_data_are_clear_errors() {
    let model = Mlp::new(1);
    let e = OptimizerConfig::by_name("adam", -0.5)
        .unwrap()
        .build(model.parameters())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("lr = -0.5") && e.contains(">= 0"), "{e}");
    let opt = adam(&model, 0.01);
    let e = Trainer::new(
        Box::new(model) as Box<dyn Model>,
        opt,
        TrainConfig {
            batch_size: 0,
            ..quiet()
        },
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("batch_size = 0") && e.contains("> 0"), "{e}");

    let mut t = trainer(1, quiet());
    let unlabeled = TensorDataset::unlabeled(blobs(20, 1).inputs().clone()).unwrap();
    assert!(t
        .fit(&unlabeled, None)
        .unwrap_err()
        .to_string()
        .contains("no targets"));
    let empty = blobs(20, 1).slice(0, 0).unwrap();
    assert!(t.fit(&empty, None).unwrap_err().to_string().contains("empty"));
    let mut t = trainer(
        1,
        TrainConfig {
            batch_size: 32,
            drop_last: true,
            ..quiet()
        },
    );
    let e = t.fit(&blobs(20, 1), None).unwrap_err().to_string();
    assert!(e.contains("no batch of 32"), "{e}");

    // An out_dir that cannot be created.
    let file = scratch("not-a-dir").join("file");
    std::fs::write(&file, b"x").unwrap();
    let mut t = trainer(
        1,
        TrainConfig {
            out_dir: Some(file.join("run")),
            ..quiet()
        },
    );
    let e = t.fit(&blobs(20, 1), None).unwrap_err().to_string();
    assert!(e.contains("file/run"), "{e}");

    // Labels out of range for the model's classes.
    let bad = TensorDataset::new(
        blobs(20, 1).inputs().clone(),
        kiln_tensor::Tensor::from_vec(vec![7i64; 20], [20]).unwrap(),
    )
    .unwrap();
    assert!(trainer(1, quiet()).fit(&bad, None).is_err());
}

#[test]
fn data_parallel_replicas_stay_identical() {
    let data = blobs(96, 1);
    let handles = LocalCollective::new(2).unwrap();
    let results: Vec<(Bits, usize)> = std::thread::scope(|s| {
        let joins: Vec<_> = handles
            .into_iter()
            .map(|c| {
                let data = data.clone();
                s.spawn(move || {
                    let rank = c.rank();
                    // Different initial weights per replica: rank 0's are broadcast.
                    let mut t = trainer(
                        10 + rank as u64,
                        TrainConfig {
                            epochs: Some(2),
                            ..quiet()
                        },
                    )
                    .with_collective(Arc::new(c));
                    let h = t.fit(&data, None).unwrap();
                    (param_bits(&t), h.epochs[0].train.samples)
                })
            })
            .collect();
        joins.into_iter().map(|j| j.join().unwrap()).collect()
    });
    assert_eq!(results[0].0, results[1].0, "replicas diverged");
    // Each replica read half of the data.
    assert_eq!(results[0].1, 48);
    assert_eq!(results[1].1, 48);
    // And they trained: not rank 0's initial weights.
    assert_ne!(results[0].0, param_bits(&trainer(10, quiet())));
}

/// Runs `configs.len()` replicas as threads over a [`LocalCollective`], each with its config;
/// returns each replica's final weights or error.
fn run_replicas(data: &TensorDataset, configs: Vec<TrainConfig>) -> Vec<Result<Bits, String>> {
    run_replicas_from(data, configs, None)
}

/// [`run_replicas`], every replica first resuming from the run in `resume`.
fn run_replicas_from(
    data: &TensorDataset,
    configs: Vec<TrainConfig>,
    resume: Option<&std::path::Path>,
) -> Vec<Result<Bits, String>> {
    let handles = LocalCollective::new(configs.len()).unwrap();
    std::thread::scope(|s| {
        let joins: Vec<_> = handles
            .into_iter()
            .zip(configs)
            .map(|(c, cfg)| {
                s.spawn(move || {
                    let mut t = trainer(10 + c.rank() as u64, cfg).with_collective(Arc::new(c));
                    if let Some(dir) = resume {
                        t.resume(dir).map_err(|e| e.to_string())?;
                    }
                    t.fit(data, None)
                        .map(|_| param_bits(&t))
                        .map_err(|e| e.to_string())
                })
            })
            .collect();
        joins.into_iter().map(|j| j.join().unwrap()).collect()
    })
}

/// Two replicas with batches of 16 end bit-identical to one process reading batches of 16 with
/// two accumulation steps (each replica's batch is one of the process's micro-batches, and the
/// mean adds them in the same order), over shuffled epochs. (An epoch's ragged last batch is
/// where they differ: the replicas split it, one process reads it whole.)
#[test]
fn two_replicas_equal_one_process_with_two_accumulation_steps_bit_for_bit() {
    let data = blobs(96, 1);
    let cfg = TrainConfig {
        epochs: Some(3),
        clip_grad_norm: Some(0.5),
        ..quiet()
    };
    let replicas = run_replicas(&data, vec![cfg.clone(), cfg.clone()]);
    let mut single = trainer(
        10,
        TrainConfig {
            grad_accum_steps: 2,
            ..cfg
        },
    );
    single.fit(&data, None).unwrap();
    let reference = param_bits(&single);
    for r in replicas {
        assert_eq!(
            r.unwrap(),
            reference,
            "a replica differs from the accumulating process"
        );
    }
    assert_ne!(reference, param_bits(&trainer(10, quiet())), "it trained");
}

/// Replicas started with different settings stop before the first step, each with an error
/// naming the setting and both values (instead of reducing mismatched gradients or hanging).
#[test]
fn replicas_that_disagree_on_the_config_fail_naming_the_difference() {
    let data = blobs(64, 1);
    let errors = run_replicas(
        &data,
        vec![
            quiet(),
            TrainConfig {
                batch_size: 8,
                ..quiet()
            },
        ],
    );
    for e in errors {
        let e = e.unwrap_err();
        assert!(e.contains("batch_size: 16") && e.contains("batch_size: 8"), "{e}");
    }
}

/// A run checkpointed mid-epoch on 2 replicas continues in 1 process with 2 accumulation steps,
/// and back on 2 replicas, ending bit-identical to 1 process trained straight through.
#[test]
fn a_run_continues_on_another_number_of_replicas() {
    let (data, dir) = (blobs(96, 1), scratch("replicas"));
    // 96 examples: 3 steps of 2 × 16 per epoch; stops at steps 4 and 7 are mid-epoch.
    let cfg = |steps: usize, accum: usize| TrainConfig {
        max_steps: Some(steps),
        epochs: None,
        grad_accum_steps: accum,
        out_dir: Some(dir.clone()),
        checkpoint_at_end: true,
        clip_grad_norm: Some(0.5),
        ..quiet()
    };
    for r in run_replicas_from(&data, vec![cfg(4, 1), cfg(4, 1)], None) {
        r.unwrap();
    }
    let mut single = trainer(10, cfg(7, 2));
    single.resume(&dir).unwrap();
    single.fit(&data, None).unwrap();
    let ends = run_replicas_from(&data, vec![cfg(9, 1), cfg(9, 1)], Some(&dir));

    let mut straight = trainer(
        10,
        TrainConfig {
            out_dir: Some(scratch("replicas-straight")),
            ..cfg(9, 2)
        },
    );
    straight.fit(&data, None).unwrap();
    for e in ends {
        assert_eq!(e.unwrap(), param_bits(&straight));
    }
    // A different global batch is refused by name.
    let mut other = trainer(10, cfg(9, 1));
    let e = other.resume(&dir).unwrap_err().to_string();
    assert!(e.contains("grad_accum_steps × replicas"), "{e}");
}

/// Whether every weight in a checkpoint's model file is finite.
fn checkpoint_is_finite(step_dir: &std::path::Path) -> bool {
    let tensors = kiln_tensor::io::safetensors::load(step_dir.join("model.safetensors")).unwrap();
    tensors
        .values()
        .all(|t| t.to_vec::<f32>().unwrap().iter().all(|v| v.is_finite()))
}

/// A learning rate of 1e6 drives the loss to inf/NaN: training stops with an error naming the
/// step instead of running to the end, and no checkpoint (one is due every step) holds
/// non-finite weights.
#[test]
fn divergence_stops_training_and_never_checkpoints_non_finite_weights() {
    let dir = scratch("diverge");
    let model = Mlp::new(5);
    let opt = Box::new(
        Sgd::from_params(
            model.parameters(),
            SgdConfig {
                lr: 1e6,
                ..Default::default()
            },
        )
        .unwrap(),
    );
    let cfg = TrainConfig {
        epochs: Some(50),
        out_dir: Some(dir.clone()),
        checkpoint_every_steps: Some(1),
        keep_last: 1000,
        ..quiet()
    };
    let mut t = Trainer::new(Box::new(model) as Box<dyn Model>, opt, cfg).unwrap();
    let e = t.fit(&blobs(60, 1), None).unwrap_err().to_string();
    assert!(e.contains("diverged at step"), "{e}");
    let step: usize = e
        .split("diverged at step ")
        .nth(1)
        .unwrap()
        .split(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(step < 50 * 4, "stopped at step {step}: {e}");
    let ckpts: Vec<_> = std::fs::read_dir(dir.join("checkpoints"))
        .unwrap()
        .flatten()
        .filter(|d| d.file_name().to_string_lossy().starts_with("step-"))
        .collect();
    assert!(!ckpts.is_empty());
    for d in ckpts {
        assert!(
            checkpoint_is_finite(&d.path()),
            "{:?} holds non-finite weights",
            d.path()
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `OnNan::SkipBatch`: a batch whose loss is NaN (a NaN input) gives no update; training goes
/// on and ends with finite weights that still learn the task.
#[test]
fn skip_batch_drops_only_the_non_finite_batches() {
    let data = blobs(96, 3);
    let (x, y) = (data.inputs().clone(), data.targets().unwrap().clone());
    let mut xv = x.to_vec::<f32>().unwrap();
    xv[0] = f32::NAN;
    let poisoned =
        TensorDataset::new(kiln_tensor::Tensor::from_vec(xv, x.dims().to_vec()).unwrap(), y).unwrap();
    let cfg = TrainConfig {
        epochs: Some(5),
        shuffle: false,
        ..quiet()
    };
    let e = trainer(7, cfg.clone())
        .fit(&poisoned, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("diverged at step 1") && e.contains("NaN"), "{e}");
    let mut t = trainer(
        7,
        TrainConfig {
            on_nan: kiln_train::OnNan::SkipBatch,
            ..cfg
        },
    );
    let h = t.fit(&poisoned, None).unwrap();
    // 6 batches per epoch, the first skipped each time.
    assert_eq!(t.step(), 5 * 5);
    assert!(param_bits(&t)
        .iter()
        .all(|(_, b)| b.iter().all(|&v| f32::from_bits(v).is_finite())));
    let last = h.epochs.last().unwrap();
    assert!(last.train.loss.is_finite() && last.train.loss < 0.5, "{last:?}");
}
