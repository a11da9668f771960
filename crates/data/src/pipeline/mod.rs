//! An element-level input pipeline in the style of `tf.data`: a [`Pipeline`] starts at a
//! random-access [`Source`] (or an iterator per epoch), and combinators chain stages onto it —
//! [`map`](Pipeline::map) (inline, or [`par_map`](Pipeline::par_map) /
//! [`map_seeded`](Pipeline::map_seeded) on worker threads), [`filter`](Pipeline::filter),
//! [`shuffle`](Pipeline::shuffle), [`batch`](Pipeline::batch) with a [`collate`] function,
//! [`prefetch`](Pipeline::prefetch), [`cache`](Pipeline::cache) /
//! [`cache_file`](Pipeline::cache_file), [`repeat`](Pipeline::repeat),
//! [`take`](Pipeline::take) / [`skip`](Pipeline::skip), [`shard`](Pipeline::shard) and
//! [`interleave`](Pipeline::interleave).
//!
//! ```
//! use kiln_data::pipeline::{collate, Pipeline};
//! use kiln_data::{Example, TensorDataset};
//! use kiln_tensor::Tensor;
//! let x = Tensor::from_vec((0..20).map(|i| i as f32).collect::<Vec<_>>(), [10, 2])?;
//! let y = Tensor::from_vec((0..10).collect::<Vec<i64>>(), [10])?;
//! let data = TensorDataset::new(x, y)?;
//! let pipeline = Pipeline::from_source(data)
//!     .shuffle(10, 7)?                                        // buffered, reshuffled each epoch
//!     .map_seeded(2, 99, |ex: Example, rng| {                 // 2 workers, same output as 1
//!         let noise = rng.next_f64() as f32 * 0.01;
//!         ex.map_input(|x| x.add_scalar(noise as f64))
//!     })?
//!     .batch(4, true, collate::stack_examples)?               // Vec<Example> -> Batch
//!     .prefetch(2)?;
//! let mut it = pipeline.iter_epoch(0)?;
//! let first = it.next().unwrap()?;
//! assert_eq!(first.inputs.dims(), &[4, 2]);
//! // The position after one batch; restoring it continues exactly where `it` stands.
//! let state = it.state();
//! let resumed: Vec<_> = pipeline.iter_from(&state)?.map(|b| b.unwrap().targets).collect();
//! let straight: Vec<_> = it.map(|b| b.unwrap().targets).collect();
//! assert_eq!(resumed.len(), 1);
//! assert_eq!(format!("{resumed:?}"), format!("{straight:?}"));
//! # Ok::<(), kiln_data::Error>(())
//! ```
//!
//! # Determinism
//!
//! The output of epoch `e` is a pure function of the pipeline and `e`:
//! - `shuffle` draws from a generator seeded by `(seed, epoch)`;
//! - [`map_seeded`](Pipeline::map_seeded) gives each element its own generator, seeded by
//!   `(seed, epoch, index)` ([`element_seed`]) where `index` is the element's position in the
//!   map's input — never a generator shared by the workers — and parallel maps return results
//!   in input order, so 1, 2 or 8 workers give the same elements;
//! - `repeat` opens pass `r` of epoch `e` as upstream epoch `e * n + r` (`e + r` forever);
//! - `cache` always holds the upstream's epoch-0 pass.
//!
//! # Saving and restoring a position
//!
//! [`PipelineIter::state`] is a [`PipelineState`] — the epoch, the number of items this
//! iterator has yielded, and a fingerprint of the pipeline's structure — that serialises with
//! serde (kiln-train stores it in its checkpoints). No generator state needs saving: every
//! random draw derives from `(seed, epoch, position)`. [`Pipeline::iter_from`] reopens the epoch
//! and *skips* `offset` items, each stage skipping as cheaply as its structure allows:
//! - a source moves its cursor; `map`, `par_map` and `map_seeded` skip upstream without running
//!   their function; `batch` skips `n × size` elements; `take`, `skip`, `shard`, `repeat` and a
//!   filled cache compute where to go;
//! - `shuffle` replays its draws (cheap: one random number per skipped element) and reads only
//!   the elements still in its buffer (none at all over a random-access upstream);
//! - `filter` must run its predicate, hence everything before it, on the skipped elements;
//!   `interleave` skips inside its inner pipelines; an iterator source reads what it skips.
//!
//! So restoring `source → shuffle → map → batch → prefetch` at batch `k` costs `k × batch`
//! random draws and no map call. The fingerprint (stage names and parameters, not worker counts
//! or prefetch depths) must match: restoring into a differently built pipeline is an error.
//!
//! # Errors
//!
//! An element that fails (a corrupt file, a map function's error or panic) is an `Err` item at
//! its place; a batch containing one is an `Err`. [`PipelineIter`] ends after the first error.

mod batch;
mod cache;
pub mod collate;
mod interleave;
mod map;
mod prefetch;
mod record;
mod repeat;
mod select;
mod shuffle;
mod source;
mod stream;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use kiln_tensor::TensorRng;
use serde::{Deserialize, Serialize};

pub use map::ElementId;
pub use record::Record;
pub(crate) use source::{out_of_range as source_out_of_range, row};
pub use source::{DatasetSource, RangeSource, Source, VecSource};

use stream::{Stage, Stream};

use crate::loader::epoch_seed;
use crate::{Error, Result};

/// An invalid-argument error of kiln-data.
pub(crate) fn invalid(op: &'static str, reason: impl Into<String>) -> Error {
    Error::Tensor(kiln_tensor::Error::invalid(op, reason))
}

/// SplitMix64's finaliser.
fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The seed of element `index`'s generator in epoch `epoch` of a map seeded with `seed`.
pub fn element_seed(seed: u64, epoch: u64, index: u64) -> u64 {
    splitmix64(epoch_seed(seed, epoch) ^ splitmix64(index ^ 0x656c_656d_656e_7473))
}

/// A position in a pipeline: restore it with [`Pipeline::iter_from`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PipelineState {
    /// The epoch of the pass.
    pub epoch: u64,
    /// Items of that pass already consumed.
    pub offset: u64,
    /// The structure of the pipeline the position belongs to ([`Pipeline::fingerprint`]); empty
    /// to skip the check.
    #[serde(default)]
    pub fingerprint: String,
}

/// A chain of stages producing elements of type `T`; cheap to clone (stages are shared).
///
/// Building never reads data; [`Pipeline::iter_epoch`] runs one epoch.
pub struct Pipeline<T> {
    stage: Arc<dyn Stage<T>>,
}

impl<T> Clone for Pipeline<T> {
    fn clone(&self) -> Self {
        Pipeline {
            stage: Arc::clone(&self.stage),
        }
    }
}

impl Pipeline<usize> {
    /// The integers `start..end`, in order (indices to build on, as in `range(n).map(load)`).
    pub fn range(range: std::ops::Range<usize>) -> Pipeline<usize> {
        Pipeline::from_source(RangeSource(range))
    }
}

impl<T: Send + 'static> Pipeline<T> {
    fn wrap(stage: impl Stage<T> + 'static) -> Pipeline<T> {
        Pipeline {
            stage: Arc::new(stage),
        }
    }

    /// A pipeline over a random-access source, in index order.
    pub fn from_source(source: impl Source<T> + 'static) -> Pipeline<T> {
        Self::from_shared_source(Arc::new(source))
    }

    /// A pipeline over a shared source.
    pub fn from_shared_source(source: Arc<dyn Source<T>>) -> Pipeline<T> {
        Self::wrap(source::SourceStage { source })
    }

    /// A pipeline over the elements of a vector.
    pub fn from_vec(items: Vec<T>) -> Pipeline<T>
    where
        T: Clone + Sync,
    {
        Self::from_source(VecSource(items))
    }

    /// A pipeline over a stream without random access: `make(epoch)` returns the iterator of
    /// that epoch. `name` goes into the fingerprint. Skipping such a stream reads the skipped
    /// elements.
    pub fn from_iter_fn<I, F>(name: &str, make: F) -> Pipeline<T>
    where
        I: Iterator<Item = Result<T>> + Send + 'static,
        F: Fn(u64) -> Result<I> + Send + Sync + 'static,
    {
        Self::wrap(source::FnStage {
            name: name.to_string(),
            make: Arc::new(move |epoch| {
                make(epoch).map(|it| Box::new(it) as Box<dyn Iterator<Item = Result<T>> + Send>)
            }),
        })
    }

    fn map_stage<U: Send + 'static>(
        self,
        workers: usize,
        name: String,
        f: map::MapFn<T, U>,
    ) -> Result<Pipeline<U>> {
        if workers == 0 {
            return Err(invalid("Pipeline::map", "workers = 0: need at least 1"));
        }
        Ok(Pipeline::wrap(map::MapStage {
            upstream: self.stage,
            f,
            workers,
            name,
        }))
    }

    /// Apply `f` to every element, on the consumer's thread.
    pub fn map<U: Send + 'static>(self, f: impl Fn(T) -> Result<U> + Send + Sync + 'static) -> Pipeline<U> {
        Pipeline::wrap(map::MapStage {
            upstream: self.stage,
            f: Arc::new(move |x, _| f(x)),
            workers: 1,
            name: "map".into(),
        })
    }

    /// Apply `f` to every element on `workers` threads (1: inline), keeping the input order.
    /// `workers = 0` is an error.
    pub fn par_map<U: Send + 'static>(
        self,
        workers: usize,
        f: impl Fn(T) -> Result<U> + Send + Sync + 'static,
    ) -> Result<Pipeline<U>> {
        self.map_stage(workers, "map".into(), Arc::new(move |x, _| f(x)))
    }

    /// Apply a random transform on `workers` threads: `f` gets each element with its own
    /// generator, seeded by [`element_seed`]`(seed, epoch, index)`, so the output does not
    /// depend on the number of workers and changes from epoch to epoch.
    pub fn map_seeded<U: Send + 'static>(
        self,
        workers: usize,
        seed: u64,
        f: impl Fn(T, &mut TensorRng) -> Result<U> + Send + Sync + 'static,
    ) -> Result<Pipeline<U>> {
        self.map_stage(
            workers,
            format!("map_seeded(seed={seed})"),
            Arc::new(move |x, id: ElementId| {
                let mut rng = TensorRng::new(element_seed(seed, id.epoch, id.index));
                f(x, &mut rng)
            }),
        )
    }

    /// Apply `f` with each element's [`ElementId`] (epoch and position), on `workers` threads.
    pub fn map_with_id<U: Send + 'static>(
        self,
        workers: usize,
        f: impl Fn(T, ElementId) -> Result<U> + Send + Sync + 'static,
    ) -> Result<Pipeline<U>> {
        self.map_stage(workers, "map_with_id".into(), Arc::new(f))
    }

    /// Keep the elements for which `pred` is true (errors pass through).
    pub fn filter(self, pred: impl Fn(&T) -> bool + Send + Sync + 'static) -> Pipeline<T> {
        Self::wrap(select::FilterStage {
            upstream: self.stage,
            pred: Arc::new(pred),
        })
    }

    /// Shuffle through a buffer of `buffer_size` elements, reshuffled each epoch from
    /// `(seed, epoch)`. A buffer at least as large as the data gives a uniform permutation.
    /// `buffer_size = 0` is an error.
    pub fn shuffle(self, buffer_size: usize, seed: u64) -> Result<Pipeline<T>> {
        if buffer_size == 0 {
            return Err(invalid("Pipeline::shuffle", "buffer_size = 0: need at least 1"));
        }
        Ok(Self::wrap(shuffle::ShuffleStage {
            upstream: self.stage,
            buffer_size,
            seed,
        }))
    }

    /// Group consecutive elements into batches of `size` and collate each with `collate`
    /// (see [`collate`]). With `drop_remainder` a last, smaller batch is dropped. `size = 0` is
    /// an error.
    pub fn batch<U: Send + 'static>(
        self,
        size: usize,
        drop_remainder: bool,
        collate: impl Fn(Vec<T>) -> Result<U> + Send + Sync + 'static,
    ) -> Result<Pipeline<U>> {
        if size == 0 {
            return Err(invalid("Pipeline::batch", "batch size 0: need at least 1"));
        }
        Ok(Pipeline::wrap(batch::BatchStage {
            upstream: self.stage,
            size,
            drop_remainder,
            collate: Arc::new(collate),
        }))
    }

    /// Run everything before this stage on a background thread, keeping up to `depth` elements
    /// ready. `depth = 0` is an error.
    pub fn prefetch(self, depth: usize) -> Result<Pipeline<T>> {
        if depth == 0 {
            return Err(invalid("Pipeline::prefetch", "depth = 0: need at least 1"));
        }
        Ok(Self::wrap(prefetch::PrefetchStage {
            upstream: self.stage,
            depth,
        }))
    }

    /// Keep the elements in memory after the first complete pass (always the upstream's epoch 0;
    /// see the module docs).
    pub fn cache(self) -> Pipeline<T>
    where
        T: Clone + Sync,
    {
        Self::wrap(cache::MemoryCacheStage {
            upstream: self.stage,
            data: Arc::new(Mutex::new(None)),
        })
    }

    /// Keep the elements in the file `path` after the first complete pass, and read them from
    /// there in later passes and later runs (the upstream's epoch 0; see the module docs).
    pub fn cache_file(self, path: impl Into<PathBuf>) -> Pipeline<T>
    where
        T: Record,
    {
        Self::wrap(cache::FileCacheStage {
            upstream: self.stage,
            path: path.into(),
        })
    }

    /// Pass over the upstream `times` times (`None`: forever), each pass a new upstream epoch.
    pub fn repeat(self, times: Option<u64>) -> Pipeline<T> {
        Self::wrap(repeat::RepeatStage {
            upstream: self.stage,
            times,
        })
    }

    /// The first `n` elements of each epoch.
    pub fn take(self, n: u64) -> Pipeline<T> {
        Self::wrap(select::TakeStage {
            upstream: self.stage,
            n,
        })
    }

    /// All but the first `n` elements of each epoch.
    pub fn skip(self, n: u64) -> Pipeline<T> {
        Self::wrap(select::SkipStage {
            upstream: self.stage,
            n,
        })
    }

    /// Shard `index` of `num_shards`: the elements at positions `index, index + num_shards, ...`
    /// of each epoch, so that the shards are disjoint and together hold every element once.
    /// Errors unless `index < num_shards`.
    pub fn shard(self, num_shards: usize, index: usize) -> Result<Pipeline<T>> {
        if num_shards == 0 || index >= num_shards {
            return Err(invalid(
                "Pipeline::shard",
                format!("shard index {index} of {num_shards} shards: need index < num_shards"),
            ));
        }
        Ok(Self::wrap(select::ShardStage {
            upstream: self.stage,
            num_shards: num_shards as u64,
            index: index as u64,
        }))
    }

    /// Turn each element into a pipeline with `f` and read `cycle_length` of them round-robin,
    /// `block_length` elements at a time (tf.data's `interleave`). Zero lengths are an error.
    pub fn interleave<U: Send + 'static>(
        self,
        cycle_length: usize,
        block_length: usize,
        f: impl Fn(T) -> Result<Pipeline<U>> + Send + Sync + 'static,
    ) -> Result<Pipeline<U>> {
        if cycle_length == 0 || block_length == 0 {
            return Err(invalid(
                "Pipeline::interleave",
                format!("cycle_length {cycle_length}, block_length {block_length}: both must be at least 1"),
            ));
        }
        Ok(Pipeline::wrap(interleave::InterleaveStage {
            upstream: self.stage,
            cycle_length,
            block_length: block_length as u64,
            f: Arc::new(f),
        }))
    }

    /// The number of items of epoch `epoch`, when it is known without reading data (not after a
    /// `filter` or an `interleave`, nor for iterator sources or endless repeats).
    pub fn len(&self, epoch: u64) -> Option<u64> {
        self.stage.len(epoch)
    }

    /// Whether epoch `epoch` is known to be empty.
    pub fn is_empty(&self, epoch: u64) -> bool {
        self.len(epoch) == Some(0)
    }

    /// The pipeline's structure (stage names and parameters), as stored in [`PipelineState`].
    pub fn fingerprint(&self) -> String {
        self.stage.describe()
    }

    /// The items of epoch 0.
    pub fn iter(&self) -> Result<PipelineIter<T>> {
        self.iter_epoch(0)
    }

    /// The items of epoch `epoch`.
    pub fn iter_epoch(&self, epoch: u64) -> Result<PipelineIter<T>> {
        Ok(PipelineIter {
            stream: self.stage.open(epoch)?,
            epoch,
            offset: 0,
            fingerprint: Arc::from(self.fingerprint()),
            done: false,
        })
    }

    /// Continue from a saved position: the items of `state.epoch` after the first
    /// `state.offset`, equal to what the iterator that saved it would have yielded next. A
    /// fingerprint of another pipeline, or an offset past the end of the epoch, is an error.
    pub fn iter_from(&self, state: &PipelineState) -> Result<PipelineIter<T>> {
        let fingerprint = self.fingerprint();
        if !state.fingerprint.is_empty() && state.fingerprint != fingerprint {
            return Err(invalid(
                "Pipeline::iter_from",
                format!(
                    "the position was saved from another pipeline ({}); this one is ({fingerprint})",
                    state.fingerprint
                ),
            ));
        }
        let mut it = self.iter_epoch(state.epoch)?;
        let skipped = it.stream.skip(state.offset)?;
        if skipped < state.offset {
            return Err(invalid(
                "Pipeline::iter_from",
                format!(
                    "offset {} is past the end of epoch {}, which has {skipped} items",
                    state.offset, state.epoch
                ),
            ));
        }
        it.offset = state.offset;
        Ok(it)
    }
}

/// The items of one epoch of a [`Pipeline`]; ends after the first error.
pub struct PipelineIter<T> {
    stream: Box<dyn Stream<T>>,
    epoch: u64,
    offset: u64,
    fingerprint: Arc<str>,
    done: bool,
}

impl<T> PipelineIter<T> {
    /// The position: restoring it with [`Pipeline::iter_from`] continues with the item this
    /// iterator would return next.
    pub fn state(&self) -> PipelineState {
        PipelineState {
            epoch: self.epoch,
            offset: self.offset,
            fingerprint: self.fingerprint.to_string(),
        }
    }

    /// The epoch being read.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Items consumed so far in this epoch (including those skipped by a restore).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The number of items left, when known without reading them.
    pub fn remaining(&self) -> Option<u64> {
        if self.done {
            Some(0)
        } else {
            self.stream.remaining()
        }
    }
}

impl<T> Iterator for PipelineIter<T> {
    type Item = Result<T>;

    fn next(&mut self) -> Option<Result<T>> {
        if self.done {
            return None;
        }
        let item = self.stream.next();
        match &item {
            Some(Ok(_)) => self.offset += 1,
            Some(Err(_)) | None => self.done = true,
        }
        item
    }
}
