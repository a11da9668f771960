//! Where [`crate::Trainer`] reads training batches: a [`Dataset`] through kiln-data's
//! [`DataLoader`] (batched, shuffled and sharded by the trainer's [`crate::TrainConfig`]), or a
//! [`Pipeline`] of batches built by the user (`tf.data` style: streamed, shuffled and prefetched
//! as its stages say), which the trainer shards by rank.
//!
//! Both give, per epoch, batches from a position on and that position; a pipeline's epoch may
//! have an unknown length (a filter, an iterator source), in which case the epoch ends when its
//! iterator does (the trainer looks one batch ahead to close the last accumulation step).

use std::iter::Peekable;
use std::thread::Scope;

use kiln_data::{Batch, Batches, DataLoader, Dataset, Pipeline, PipelineIter, PipelineState};

use crate::{Error, Result};

/// The training data of one `fit` call.
pub(crate) enum TrainSource<'d> {
    /// A dataset read through a loader built from the trainer's configuration.
    Loader(DataLoader<'d>),
    /// A pipeline of batches, already sharded for this replica.
    Pipeline {
        /// The user's pipeline.
        whole: Pipeline<kiln_data::Batch>,
        /// This replica's shard of it.
        shard: Pipeline<kiln_data::Batch>,
        /// The number of replicas.
        world: usize,
        /// The unsharded pipeline's fingerprint and the number of replicas.
        fingerprint: String,
    },
}

impl<'d> TrainSource<'d> {
    /// A dataset, batched as `cfg` says, read by replica `rank` of `world`.
    pub(crate) fn dataset(
        train: &'d dyn Dataset,
        cfg: &crate::TrainConfig,
        rank: usize,
        world: usize,
    ) -> Result<Self> {
        if train.is_empty() {
            return Err(Error::Data("fit: the training dataset is empty".into()));
        }
        let mut loader = DataLoader::new(train, cfg.batch_size)?
            .drop_last(cfg.drop_last)
            .prefetch(cfg.prefetch);
        if cfg.shuffle {
            loader = loader.shuffle(cfg.seed);
        }
        if world > 1 {
            loader = loader.shard(rank, world)?;
        }
        if loader.num_batches() == 0 {
            return Err(Error::Data(format!(
                "fit: {} training examples make no batch of {} (drop_last is on{})",
                loader.num_examples(),
                cfg.batch_size,
                if world > 1 { ", per replica" } else { "" }
            )));
        }
        Ok(TrainSource::Loader(loader))
    }

    /// A pipeline of batches; replica `rank` of `world` reads its batches `rank`, `rank + world`,
    /// ... (so each optimizer step consumes `world` consecutive batches of the pipeline, as one
    /// process accumulating `world` batches would).
    pub(crate) fn pipeline(train: &Pipeline<Batch>, rank: usize, world: usize) -> Result<Self> {
        if train.is_empty(0) {
            return Err(Error::Data(
                "fit: the training pipeline's first epoch is empty".into(),
            ));
        }
        let shard = if world > 1 {
            train.clone().shard(world, rank)?
        } else {
            train.clone()
        };
        Ok(TrainSource::Pipeline {
            whole: train.clone(),
            shard,
            world,
            fingerprint: format!("Pipeline({}; replicas={world})", train.fingerprint()),
        })
    }

    /// Checks, before epoch `epoch`, that every replica gets the same number of batches: with
    /// several replicas a pipeline's epoch must have a known length that the replicas divide
    /// (a replica with one batch more would wait for the others at its last step).
    pub(crate) fn check_epoch(&self, epoch: usize) -> Result<()> {
        let TrainSource::Pipeline { whole, world, .. } = self else {
            return Ok(());
        };
        if *world == 1 {
            return Ok(());
        }
        match whole.len(epoch as u64) {
            Some(n) if n % *world as u64 == 0 => Ok(()),
            Some(n) => Err(Error::Data(format!(
                "fit_pipeline: epoch {} of the pipeline has {n} batches, which {world} replicas cannot share evenly; make it a multiple of {world} (e.g. `.take({})`)",
                epoch + 1,
                n - n % *world as u64
            ))),
            None => Err(Error::Data(format!(
                "fit_pipeline: with {world} replicas every replica must read as many batches, but this pipeline's epoch length is unknown (a filter or an iterator source); train it on one process, or build its epochs from a known number of batches"
            ))),
        }
    }

    /// This replica's batches in epoch `epoch`, when known without reading data.
    pub(crate) fn batches_in(&self, epoch: usize) -> Option<usize> {
        match self {
            TrainSource::Loader(l) => Some(l.num_batches()),
            TrainSource::Pipeline { shard, .. } => shard.len(epoch as u64).map(|n| n as usize),
        }
    }

    /// What decides the batches (stored with a checkpoint's data position).
    pub(crate) fn fingerprint(&self) -> String {
        match self {
            TrainSource::Loader(l) => l.fingerprint(),
            TrainSource::Pipeline { fingerprint, .. } => fingerprint.clone(),
        }
    }

    /// The batches of epoch `epoch` after the first `offset`; a loader prefetches on a thread
    /// of `scope` (a pipeline prefetches through its own stages).
    pub(crate) fn open<'scope, 'env>(
        &'env self,
        scope: &'scope Scope<'scope, 'env>,
        epoch: usize,
        offset: usize,
    ) -> Result<EpochBatches<'scope>>
    where
        'd: 'env,
    {
        Ok(match self {
            TrainSource::Loader(l) => EpochBatches::Loader(l.iter_from_scoped(scope, epoch, offset)?),
            TrainSource::Pipeline { shard, .. } => {
                let state = PipelineState {
                    epoch: epoch as u64,
                    offset: offset as u64,
                    // The trainer has compared its own fingerprint (which names the replicas).
                    fingerprint: String::new(),
                };
                EpochBatches::Pipeline {
                    items: shard.iter_from(&state)?.peekable(),
                    position: offset,
                }
            }
        })
    }
}

/// The batches of one epoch from a [`TrainSource`].
pub(crate) enum EpochBatches<'a> {
    /// From a loader.
    Loader(Batches<'a>),
    /// From a pipeline, one batch looked ahead when asked whether the epoch ends.
    Pipeline {
        /// The epoch's remaining batches.
        items: Peekable<PipelineIter<Batch>>,
        /// Batches of the epoch consumed (including those skipped by a restore).
        position: usize,
    },
}

impl EpochBatches<'_> {
    /// The number of batches of the epoch consumed so far.
    pub(crate) fn position(&self) -> usize {
        match self {
            EpochBatches::Loader(b) => Batches::position(b),
            EpochBatches::Pipeline { position, .. } => *position,
        }
    }

    /// Whether the epoch has no batch left (a pipeline of unknown length reads the next batch
    /// ahead to tell; an error there counts as a batch, reported by the next `next`).
    pub(crate) fn finished(&mut self) -> bool {
        match self {
            EpochBatches::Loader(b) => Batches::position(b) >= b.epoch_len(),
            EpochBatches::Pipeline { items, .. } => items.peek().is_none(),
        }
    }
}

impl Iterator for EpochBatches<'_> {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Result<Batch>> {
        match self {
            EpochBatches::Loader(b) => b.next().map(|r| r.map_err(Error::from)),
            EpochBatches::Pipeline { items, position } => {
                let item = items.next()?;
                *position += 1;
                Some(item.map_err(Error::from))
            }
        }
    }
}
