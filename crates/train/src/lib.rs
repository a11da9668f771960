//! # kiln-train
//!
//! A Keras-like [`Trainer`] for any [`kiln_zoo::Model`]: `fit` / `evaluate` / `predict`,
//! [`Callback`]s ([`EarlyStopping`], [`ModelCheckpoint`], [`LrLogger`]), metrics (loss, accuracy,
//! top-k) and a [`History`]; gradient accumulation, clipping and learning-rate schedules from a
//! serialisable [`TrainConfig`]; a progress bar (or plain lines when standard output is not a
//! terminal); and per-run logs: `metrics.jsonl`, TensorBoard event files ([`tensorboard`]) and a
//! PNG of the curves ([`plot`]).
//!
//! Checkpoints ([`checkpoint`]) hold the weights and the optimizer state as safetensors and the
//! trainer's position as JSON; they are written atomically on a background thread, and
//! [`Trainer::resume`] continues a run bit for bit. Gradients pass through one [`Collective`]:
//! [`SingleProcess`], [`LocalCollective`] (replicas as threads, for tests) or, with the `mpi`
//! feature, `MpiCollective` (one process per replica under `mpirun`; `docs/distributed.md`).
//!
//! ```no_run
//! use kiln_data::mnist::{Mnist, Split};
//! use kiln_train::{OptimizerConfig, TrainConfig, Trainer};
//! # fn run(model: Box<dyn kiln_zoo::Model>) -> kiln_train::Result<()> {
//! let train = Mnist::load("data/mnist", Split::Train)?.to_dataset(true)?;
//! let test = Mnist::load("data/mnist", Split::Test)?.to_dataset(true)?;
//! let optimizer = OptimizerConfig::by_name("adam", 1e-3)?.build(model.parameters())?;
//! let config = TrainConfig { epochs: Some(3), out_dir: Some("runs/lenet5".into()), ..Default::default() };
//! let mut trainer = Trainer::new(model, optimizer, config)?;
//! trainer.fit(&train, Some(&test))?;
//! println!("{:?}", trainer.evaluate(&test)?);
//! # Ok(()) }
//! ```

mod buckets;
pub mod callbacks;
pub mod checkpoint;
mod collective;
mod config;
mod error;
mod logs;
pub mod metrics;
#[cfg(feature = "mpi")]
mod mpi_collective;
pub mod plot;
mod progress;
pub mod run_spec;
pub mod tensorboard;
mod train_data;
mod trainer;

pub use callbacks::{
    Callback, CallbackContext, EarlyStopping, LrLogger, LrRecords, ModelCheckpoint, Monitor, StepEnd,
};
pub use checkpoint::{
    latest_checkpoint, load_checkpoint, verify_all_checkpoints, verify_checkpoint, write_file_atomically,
    Checkpoint, CheckpointCheck, TrainerState,
};
pub use collective::{Collective, LocalCollective, PendingMean, SingleProcess};
pub use config::{OnNan, OptimizerConfig, ProgressMode, TrainConfig};
pub use error::{Error, Result};
pub use logs::METRICS_FILE;
pub use metrics::{EpochMetrics, History, MetricAccumulator, Metrics, StepLog, ValLog};
#[cfg(feature = "mpi")]
pub use mpi_collective::{launched_by_mpi, MpiCollective, DEFAULT_TIMEOUT as MPI_DEFAULT_TIMEOUT};
pub use run_spec::{Recipe, RunSpec, RUN_FILE};
pub use trainer::{Trainer, CURVES_FILE, HISTORY_FILE};
