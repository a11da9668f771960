//! [`DataLoader`]: batches of a [`Dataset`] in a seeded order, assembled ahead of time on a
//! background thread.
//!
//! The order of an epoch is a pure function of `(seed, epoch)` ([`epoch_permutation`]), so a run
//! resumed from a checkpoint that recorded `(epoch, batch offset)` continues with exactly the
//! batches the uninterrupted run would have seen ([`DataLoader::iter_from`]). The same position
//! as a serialisable [`PipelineState`] (with a fingerprint of the loader's settings, checked on
//! restore) comes from [`Batches::state`] / [`DataLoader::state`] and goes back in through
//! [`DataLoader::iter_from_state`].
//!
//! ```
//! use kiln_data::{DataLoader, Dataset, TensorDataset};
//! use kiln_tensor::Tensor;
//! let x = Tensor::from_vec((0..10).map(|i| i as f32).collect::<Vec<_>>(), [10, 1])?;
//! let y = Tensor::from_vec((0..10).collect::<Vec<i64>>(), [10])?;
//! let data = TensorDataset::new(x, y)?;
//! let loader = DataLoader::new(&data, 4)?.shuffle(7).drop_last(true);
//! assert_eq!(loader.num_batches(), 2);
//! let mut seen = 0;
//! for batch in loader.iter_epoch(0) {
//!     seen += batch?.len();
//! }
//! assert_eq!(seen, 8);
//! # Ok::<(), kiln_data::Error>(())
//! ```

use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::{JoinHandle, Scope};

use kiln_tensor::TensorRng;

use crate::{Batch, Dataset, Error, PipelineState, Result};

/// SplitMix64's finaliser: a bijective scrambling of 64 bits.
fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The seed of epoch `epoch`'s shuffle, derived from the run's `seed`.
pub fn epoch_seed(seed: u64, epoch: u64) -> u64 {
    splitmix64(seed ^ splitmix64(epoch ^ 0x6B69_6C6E_6461_7461))
}

/// The order of `0..n` in epoch `epoch` of a run seeded with `seed`: a Fisher-Yates shuffle by a
/// [`TensorRng`] seeded with [`epoch_seed`]. A pure function of its arguments.
pub fn epoch_permutation(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    TensorRng::new(epoch_seed(seed, epoch)).shuffle(&mut order);
    order
}

fn invalid(reason: impl Into<String>) -> Error {
    Error::Tensor(kiln_tensor::Error::invalid("DataLoader", reason))
}

/// Where the loader's dataset lives.
enum Source<'d> {
    Borrowed(&'d dyn Dataset),
    Shared(Arc<dyn Dataset>),
}

/// Batches of a dataset: a batch size, optional seeded shuffling, `drop_last`, sharding across
/// data-parallel replicas, and background prefetching.
///
/// Built with [`DataLoader::new`] (a borrowed dataset) or [`DataLoader::from_arc`] (a shared one),
/// then configured with the builder methods. Defaults: no shuffling (dataset order), keep the
/// last partial batch, prefetch 2 batches, one replica.
///
/// Prefetching runs `get_batch` on a separate thread that stays up to `prefetch` batches ahead,
/// through a bounded channel. A shared dataset gets its own thread from
/// [`DataLoader::iter_from`]; a borrowed one needs a thread scope
/// ([`DataLoader::iter_from_scoped`]) and is otherwise read on the caller's thread.
pub struct DataLoader<'d> {
    source: Source<'d>,
    batch_size: usize,
    shuffle: Option<u64>,
    drop_last: bool,
    prefetch: usize,
    rank: usize,
    world_size: usize,
}

impl<'d> DataLoader<'d> {
    fn build(source: Source<'d>, batch_size: usize) -> Result<DataLoader<'d>> {
        if batch_size == 0 {
            return Err(invalid("invalid batch_size = 0: must be > 0"));
        }
        Ok(DataLoader {
            source,
            batch_size,
            shuffle: None,
            drop_last: false,
            prefetch: 2,
            rank: 0,
            world_size: 1,
        })
    }

    /// A loader over a borrowed dataset, in batches of `batch_size` (> 0, else an error).
    pub fn new(dataset: &'d dyn Dataset, batch_size: usize) -> Result<DataLoader<'d>> {
        Self::build(Source::Borrowed(dataset), batch_size)
    }

    /// Shuffle every epoch, in an order that is a pure function of `(seed, epoch)`.
    pub fn shuffle(mut self, seed: u64) -> Self {
        self.shuffle = Some(seed);
        self
    }

    /// Drop the last batch of an epoch when it is smaller than the batch size.
    pub fn drop_last(mut self, drop_last: bool) -> Self {
        self.drop_last = drop_last;
        self
    }

    /// Keep up to `n` batches ready ahead of the consumer (0: assemble each batch on demand, on
    /// the consumer's thread).
    pub fn prefetch(mut self, n: usize) -> Self {
        self.prefetch = n;
        self
    }

    /// Read only replica `rank`'s share of each epoch, out of `world_size` data-parallel
    /// replicas. Every replica reads `len / world_size` examples (the rest of the epoch is
    /// dropped, as PyTorch's `DistributedSampler` with `drop_last`), cut from the epoch's order
    /// one global batch at a time: of each run of `world_size · batch_size` examples, replica `r`
    /// takes the `r`-th block of `batch_size`. So the replicas' batches of a step are, in rank
    /// order, the consecutive micro-batches that one process with `world_size` accumulation
    /// steps would read, and both runs compute the same update.
    /// Errors unless `rank < world_size`.
    pub fn shard(mut self, rank: usize, world_size: usize) -> Result<Self> {
        if world_size == 0 || rank >= world_size {
            return Err(invalid(format!(
                "invalid shard: rank {rank} of world_size {world_size} (need rank < world_size)"
            )));
        }
        self.rank = rank;
        self.world_size = world_size;
        Ok(self)
    }

    /// The dataset.
    pub fn dataset(&self) -> &dyn Dataset {
        match &self.source {
            Source::Borrowed(d) => *d,
            Source::Shared(d) => &**d,
        }
    }

    /// The batch size.
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// The number of examples this replica reads per epoch.
    pub fn num_examples(&self) -> usize {
        self.dataset().len() / self.world_size
    }

    /// The number of batches per epoch.
    pub fn num_batches(&self) -> usize {
        let n = self.num_examples();
        if self.drop_last {
            n / self.batch_size
        } else {
            n.div_ceil(self.batch_size)
        }
    }

    /// This replica's example indices for epoch `epoch`, in the order they are batched (the
    /// dataset order without shuffling).
    pub fn epoch_order(&self, epoch: usize) -> Vec<usize> {
        let n = self.dataset().len();
        let order = match self.shuffle {
            Some(seed) => epoch_permutation(n, seed, epoch as u64),
            None => (0..n).collect(),
        };
        if self.world_size == 1 {
            return order;
        }
        let (world, rank, b) = (self.world_size, self.rank, self.batch_size);
        let per = n / world;
        // Whole global batches, then the replicas' equal shares of what is left.
        let full = per / b;
        let mut out = Vec::with_capacity(per);
        for k in 0..full {
            let start = (k * world + rank) * b;
            out.extend_from_slice(&order[start..start + b]);
        }
        let tail = per - full * b;
        let start = full * world * b + rank * tail;
        out.extend_from_slice(&order[start..start + tail]);
        out
    }

    /// The indices of every batch of epoch `epoch`, in order.
    pub fn epoch_batches(&self, epoch: usize) -> Vec<Vec<usize>> {
        let order = self.epoch_order(epoch);
        order
            .chunks(self.batch_size)
            .take(self.num_batches())
            .map(|c| c.to_vec())
            .collect()
    }

    /// The batches of epoch `epoch`, from the first.
    pub fn iter_epoch(&self, epoch: usize) -> Batches<'_> {
        self.start(epoch, 0, None::<&Scope<'_, '_>>)
    }

    /// The batches of epoch `epoch` from batch `batch_offset` on: the tail of
    /// [`DataLoader::iter_epoch`] after skipping `batch_offset` batches, without loading the
    /// skipped ones. An offset past [`DataLoader::num_batches`] is an error.
    pub fn iter_from(&self, epoch: usize, batch_offset: usize) -> Result<Batches<'_>> {
        self.check_offset(batch_offset)?;
        Ok(self.start(epoch, batch_offset, None::<&Scope<'_, '_>>))
    }

    /// As [`DataLoader::iter_from`], prefetching on a thread of `scope`, which works for borrowed
    /// datasets too. The prefetch thread stops when the returned iterator is dropped.
    pub fn iter_from_scoped<'scope, 'env>(
        &'env self,
        scope: &'scope Scope<'scope, 'env>,
        epoch: usize,
        batch_offset: usize,
    ) -> Result<Batches<'scope>>
    where
        'd: 'env,
    {
        self.check_offset(batch_offset)?;
        Ok(self.start(epoch, batch_offset, Some(scope)))
    }

    /// The loader's settings that decide the batches (dataset length, batch size, shuffle seed,
    /// `drop_last`, number of replicas), as recorded in a [`PipelineState`]. Prefetching is not
    /// part of it, nor the replica's rank: data-parallel replicas move in lockstep, so one saved
    /// position restores every replica, each into its own shard.
    pub fn fingerprint(&self) -> String {
        format!(
            "DataLoader(examples={}, batch_size={}, shuffle={}, drop_last={}, replicas={})",
            self.dataset().len(),
            self.batch_size,
            self.shuffle
                .map_or_else(|| "none".to_string(), |s| format!("seed {s}")),
            self.drop_last,
            self.world_size
        )
    }

    /// The position "batch `batch_offset` of epoch `epoch`" as a [`PipelineState`].
    pub fn state(&self, epoch: usize, batch_offset: usize) -> PipelineState {
        PipelineState {
            epoch: epoch as u64,
            offset: batch_offset as u64,
            fingerprint: self.fingerprint(),
        }
    }

    /// The epoch and batch offset of a saved position, checked against this loader: a
    /// fingerprint of other settings (a different dataset length, batch size, seed, ...) or an
    /// offset past the epoch is an error. An empty fingerprint is not checked.
    pub fn position_of(&self, state: &PipelineState) -> Result<(usize, usize)> {
        let fingerprint = self.fingerprint();
        if !state.fingerprint.is_empty() && state.fingerprint != fingerprint {
            return Err(invalid(format!(
                "the saved position belongs to {}, this loader is {fingerprint}",
                state.fingerprint
            )));
        }
        let epoch = usize::try_from(state.epoch)
            .map_err(|_| invalid(format!("epoch {} does not fit in usize", state.epoch)))?;
        let offset = usize::try_from(state.offset).unwrap_or(usize::MAX);
        self.check_offset(offset)?;
        Ok((epoch, offset))
    }

    /// Continue from a saved position ([`DataLoader::position_of`], then
    /// [`DataLoader::iter_from`]).
    pub fn iter_from_state(&self, state: &PipelineState) -> Result<Batches<'_>> {
        let (epoch, offset) = self.position_of(state)?;
        self.iter_from(epoch, offset)
    }

    fn check_offset(&self, batch_offset: usize) -> Result<()> {
        if batch_offset > self.num_batches() {
            return Err(invalid(format!(
                "batch offset {batch_offset} is past the end of the epoch ({} batches)",
                self.num_batches()
            )));
        }
        Ok(())
    }

    fn start<'scope, 'env>(
        &'env self,
        epoch: usize,
        batch_offset: usize,
        scope: Option<&'scope Scope<'scope, 'env>>,
    ) -> Batches<'scope>
    where
        'env: 'scope,
    {
        let order = self.epoch_order(epoch);
        let end = self.num_batches();
        let plan = Plan {
            order,
            batch_size: self.batch_size,
            next: batch_offset,
            end,
        };
        let remaining = end - batch_offset;
        if self.prefetch == 0 || remaining == 0 {
            return Batches {
                inner: Inner::Direct {
                    dataset: self.dataset(),
                    plan,
                },
                position: batch_offset,
                end,
                epoch,
                fingerprint: self.fingerprint(),
            };
        }
        let (tx, rx) = sync_channel(self.prefetch);
        let inner = match (scope, &self.source) {
            (Some(scope), _) => {
                let dataset = self.dataset();
                scope.spawn(move || produce(dataset, plan, tx));
                Inner::Scoped { rx: Some(rx) }
            }
            (None, Source::Shared(arc)) => {
                let dataset = Arc::clone(arc);
                let handle = std::thread::Builder::new()
                    .name("kiln-data-prefetch".into())
                    .spawn(move || produce(&*dataset, plan, tx));
                match handle {
                    Ok(h) => Inner::Thread {
                        rx: Some(rx),
                        handle: Some(h),
                    },
                    // No thread to be had: read on the caller's thread instead.
                    Err(_) => Inner::Direct {
                        dataset: self.dataset(),
                        plan: Plan {
                            order: self.epoch_order(epoch),
                            batch_size: self.batch_size,
                            next: batch_offset,
                            end,
                        },
                    },
                }
            }
            (None, Source::Borrowed(d)) => Inner::Direct { dataset: *d, plan },
        };
        Batches {
            inner,
            position: batch_offset,
            end,
            epoch,
            fingerprint: self.fingerprint(),
        }
    }
}

impl DataLoader<'static> {
    /// A loader over a shared dataset (prefetches on its own thread), in batches of
    /// `batch_size` (> 0, else an error).
    pub fn from_arc(dataset: Arc<dyn Dataset>, batch_size: usize) -> Result<DataLoader<'static>> {
        Self::build(Source::Shared(dataset), batch_size)
    }
}

/// Which batches remain to be assembled.
struct Plan {
    order: Vec<usize>,
    batch_size: usize,
    next: usize,
    end: usize,
}

impl Plan {
    fn next_indices(&mut self) -> Option<&[usize]> {
        if self.next >= self.end {
            return None;
        }
        let start = self.next * self.batch_size;
        let stop = (start + self.batch_size).min(self.order.len());
        self.next += 1;
        Some(&self.order[start..stop])
    }
}

/// The prefetch thread: assemble batches in order until the plan is done, an error was sent, or
/// the consumer hung up.
fn produce(dataset: &dyn Dataset, mut plan: Plan, tx: SyncSender<Result<Batch>>) {
    while let Some(idx) = plan.next_indices() {
        let batch = dataset.get_batch(idx);
        let failed = batch.is_err();
        if tx.send(batch).is_err() || failed {
            return;
        }
    }
}

enum Inner<'a> {
    Direct {
        dataset: &'a dyn Dataset,
        plan: Plan,
    },
    Thread {
        rx: Option<Receiver<Result<Batch>>>,
        handle: Option<JoinHandle<()>>,
    },
    Scoped {
        rx: Option<Receiver<Result<Batch>>>,
    },
}

/// The batches of one epoch (from [`DataLoader::iter_epoch`] and friends). After an error the
/// iterator ends.
pub struct Batches<'a> {
    inner: Inner<'a>,
    position: usize,
    end: usize,
    epoch: usize,
    fingerprint: String,
}

impl Batches<'_> {
    /// The index within the epoch of the batch the next call to `next` returns (the number of
    /// batches of the epoch consumed so far, counting skipped ones).
    pub fn position(&self) -> usize {
        self.position
    }

    /// The number of batches in the whole epoch.
    pub fn epoch_len(&self) -> usize {
        self.end
    }

    /// The position as a [`PipelineState`]: [`DataLoader::iter_from_state`] continues with the
    /// batch this iterator would return next.
    pub fn state(&self) -> PipelineState {
        PipelineState {
            epoch: self.epoch as u64,
            offset: self.position as u64,
            fingerprint: self.fingerprint.clone(),
        }
    }
}

impl Iterator for Batches<'_> {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Result<Batch>> {
        if self.position >= self.end {
            return None;
        }
        let item = match &mut self.inner {
            Inner::Direct { dataset, plan } => plan.next_indices().map(|idx| dataset.get_batch(idx)),
            Inner::Thread { rx, .. } | Inner::Scoped { rx } => rx.as_ref().and_then(|rx| rx.recv().ok()),
        };
        match &item {
            Some(Ok(_)) => self.position += 1,
            // An error (or a vanished producer) ends the epoch.
            _ => self.position = self.end,
        }
        if item.is_none() {
            return Some(Err(invalid("the prefetch thread stopped unexpectedly")));
        }
        item
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.end - self.position;
        (n, Some(n))
    }
}

impl ExactSizeIterator for Batches<'_> {}

impl Drop for Batches<'_> {
    fn drop(&mut self) {
        match &mut self.inner {
            Inner::Thread { rx, handle } => {
                // Hanging up makes a producer blocked on a full channel return.
                drop(rx.take());
                if let Some(h) = handle.take() {
                    let _ = h.join();
                }
            }
            Inner::Scoped { rx } => drop(rx.take()),
            Inner::Direct { .. } => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use kiln_tensor::Tensor;

    use super::*;
    use crate::TensorDataset;

    fn toy(n: usize) -> TensorDataset {
        let x: Vec<f32> = (0..n).map(|i| i as f32).collect();
        let y: Vec<i64> = (0..n as i64).collect();
        TensorDataset::new(
            Tensor::from_vec(x, [n, 1]).unwrap(),
            Tensor::from_vec(y, [n]).unwrap(),
        )
        .unwrap()
    }

    fn labels(batches: Batches<'_>) -> Vec<Vec<i64>> {
        batches
            .map(|b| b.unwrap().targets.unwrap().to_vec::<i64>().unwrap())
            .collect()
    }

    #[test]
    fn same_seed_and_epoch_give_the_same_order_and_epochs_differ() {
        let d = toy(100);
        let a = DataLoader::new(&d, 10).unwrap().shuffle(42);
        let b = DataLoader::new(&d, 10).unwrap().shuffle(42).prefetch(0);
        assert_eq!(labels(a.iter_epoch(3)), labels(b.iter_epoch(3)));
        assert_eq!(a.epoch_order(3), epoch_permutation(100, 42, 3));
        assert_ne!(a.epoch_order(0), a.epoch_order(1));
        assert_ne!(a.epoch_order(0), (0..100).collect::<Vec<_>>());
        let c = DataLoader::new(&d, 10).unwrap().shuffle(43);
        assert_ne!(a.epoch_order(0), c.epoch_order(0));
        // Without shuffling: dataset order.
        let plain = DataLoader::new(&d, 30).unwrap();
        assert_eq!(labels(plain.iter_epoch(5))[0], (0..30).collect::<Vec<i64>>());
    }

    #[test]
    fn every_index_exactly_once_per_epoch() {
        let d = toy(103);
        let l = DataLoader::new(&d, 10).unwrap().shuffle(1);
        assert_eq!(l.num_batches(), 11);
        for epoch in 0..4 {
            let all: Vec<i64> = labels(l.iter_epoch(epoch)).concat();
            assert_eq!(all.len(), 103);
            let set: HashSet<i64> = all.iter().copied().collect();
            assert_eq!(set.len(), 103);
            assert!(set.iter().all(|&i| (0..103).contains(&i)));
        }
    }

    #[test]
    fn drop_last_drops_the_partial_batch() {
        let d = toy(103);
        let keep = DataLoader::new(&d, 10).unwrap();
        let sizes: Vec<usize> = labels(keep.iter_epoch(0)).iter().map(Vec::len).collect();
        assert_eq!(sizes.len(), 11);
        assert_eq!(sizes[10], 3);
        let drop = DataLoader::new(&d, 10).unwrap().drop_last(true).shuffle(5);
        assert_eq!(drop.num_batches(), 10);
        let b = labels(drop.iter_epoch(0));
        assert_eq!(b.len(), 10);
        assert!(b.iter().all(|x| x.len() == 10));
        // Smaller than one batch: nothing with drop_last, one batch without.
        let tiny = toy(3);
        assert_eq!(
            DataLoader::new(&tiny, 10)
                .unwrap()
                .drop_last(true)
                .iter_epoch(0)
                .count(),
            0
        );
        assert_eq!(DataLoader::new(&tiny, 10).unwrap().iter_epoch(0).count(), 1);
    }

    #[test]
    fn resuming_from_an_offset_is_the_tail_of_the_epoch() {
        let d = toy(97);
        let arc: Arc<dyn Dataset> = Arc::new(d.clone());
        let shared = DataLoader::from_arc(arc, 8).unwrap().shuffle(9);
        let full = labels(shared.iter_epoch(2));
        for offset in [0, 1, 5, 12, 13] {
            let tail = labels(shared.iter_from(2, offset).unwrap());
            assert_eq!(tail, full[offset..].to_vec(), "offset {offset}");
            let it = shared.iter_from(2, offset).unwrap();
            assert_eq!(it.position(), offset);
            assert_eq!(it.len(), 13 - offset);
        }
        let borrowed = DataLoader::new(&d, 8).unwrap().shuffle(9).prefetch(3);
        std::thread::scope(|s| {
            let tail = labels(borrowed.iter_from_scoped(s, 2, 4).unwrap());
            assert_eq!(tail, full[4..].to_vec());
            // Dropping an unfinished iterator stops its prefetch thread (the scope would hang otherwise).
            let mut it = borrowed.iter_from_scoped(s, 2, 0).unwrap();
            it.next();
        });
        let e = shared.iter_from(2, 14).err().unwrap().to_string();
        assert!(e.contains("past the end"), "{e}");
    }

    #[test]
    fn shards_partition_the_epoch() {
        let d = toy(21);
        let parts: Vec<Vec<usize>> = (0..4)
            .map(|r| {
                DataLoader::new(&d, 2)
                    .unwrap()
                    .shuffle(3)
                    .shard(r, 4)
                    .unwrap()
                    .epoch_order(1)
            })
            .collect();
        assert!(parts.iter().all(|p| p.len() == 5));
        let all: HashSet<usize> = parts.concat().into_iter().collect();
        assert_eq!(all.len(), 20);
        assert!(DataLoader::new(&d, 2).unwrap().shard(4, 4).is_err());
    }

    /// The replicas' batches of a step are the consecutive batches of one process reading the
    /// same order: data parallel over `w` replicas computes what `w` accumulation steps do.
    #[test]
    fn shards_take_consecutive_blocks_of_each_global_batch() {
        let d = toy(23);
        let single = DataLoader::new(&d, 3).unwrap().shuffle(5).epoch_batches(2);
        let shards: Vec<Vec<Vec<usize>>> = (0..2)
            .map(|r| {
                DataLoader::new(&d, 3)
                    .unwrap()
                    .shuffle(5)
                    .shard(r, 2)
                    .unwrap()
                    .epoch_batches(2)
            })
            .collect();
        // 11 examples each: three full batches and a tail of 2.
        assert!(shards.iter().all(|s| s.len() == 4 && s[3].len() == 2));
        for k in 0..3 {
            assert_eq!(shards[0][k], single[2 * k]);
            assert_eq!(shards[1][k], single[2 * k + 1]);
        }
    }

    #[test]
    fn zero_batch_size_and_bad_batches_are_errors() {
        let d = toy(4);
        let e = DataLoader::new(&d, 0).err().unwrap().to_string();
        assert!(e.contains("batch_size") && e.contains("> 0"), "{e}");

        struct Failing;
        impl Dataset for Failing {
            fn len(&self) -> usize {
                10
            }
            fn get_batch(&self, indices: &[usize]) -> Result<Batch> {
                if indices.contains(&5) {
                    return Err(invalid("no five"));
                }
                Ok(Batch {
                    inputs: Tensor::zeros(
                        [indices.len()],
                        kiln_tensor::DType::F32,
                        kiln_tensor::Device::Cpu,
                    )?,
                    targets: None,
                })
            }
        }
        let arc: Arc<dyn Dataset> = Arc::new(Failing);
        let l = DataLoader::from_arc(arc, 2).unwrap();
        let items: Vec<Result<Batch>> = l.iter_epoch(0).collect();
        assert_eq!(items.len(), 3);
        assert!(items[2].as_ref().unwrap_err().to_string().contains("no five"));
    }
}
