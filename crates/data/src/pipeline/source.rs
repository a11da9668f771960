//! Random-access sources: the [`Source`] trait, sources over vectors and ranges, its
//! implementations for
//! in-memory datasets, the [`DatasetSource`] adapter, and the stage that reads a source.

use std::sync::Arc;

use kiln_tensor::Tensor;

use super::stream::{Stage, Stream};
use crate::{Dataset, Example, Result, TensorDataset};

/// A collection of elements addressed by index `0..len()`: where a [`Pipeline`](super::Pipeline)
/// starts. Reading is random access, so shuffling a source and skipping to a saved position
/// never reads the elements in between.
pub trait Source<T>: Send + Sync {
    /// The number of elements.
    fn len(&self) -> usize;

    /// Whether there is no element.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Element `index`; an index `>= len()` is an error.
    fn get(&self, index: usize) -> Result<T>;

    /// A short name for the source, part of the pipeline's fingerprint (the length is added).
    fn name(&self) -> String {
        "source".to_string()
    }
}

pub(crate) fn out_of_range(what: &str, index: usize, len: usize) -> crate::Error {
    crate::Error::Tensor(kiln_tensor::Error::invalid(
        "Source::get",
        format!("index {index} out of range for {what} of {len} elements"),
    ))
}

/// The elements of a vector as a source (element `i` is a clone of `items[i]`). A wrapper, not
/// an implementation on `Vec` itself, so that `Source` in scope does not shadow `Vec::get`.
#[derive(Clone, Debug)]
pub struct VecSource<T>(pub Vec<T>);

impl<T: Clone + Send + Sync> Source<T> for VecSource<T> {
    fn len(&self) -> usize {
        self.0.len()
    }
    fn get(&self, index: usize) -> Result<T> {
        self.0
            .get(index)
            .cloned()
            .ok_or_else(|| out_of_range("a vector", index, self.0.len()))
    }
    fn name(&self) -> String {
        "vec".to_string()
    }
}

/// The integers `start..end` as a source (element `i` is `start + i`).
#[derive(Clone, Debug)]
pub struct RangeSource(pub std::ops::Range<usize>);

impl Source<usize> for RangeSource {
    fn len(&self) -> usize {
        self.0.end.saturating_sub(self.0.start)
    }
    fn get(&self, index: usize) -> Result<usize> {
        let n = Source::len(self);
        if index < n {
            Ok(self.0.start + index)
        } else {
            Err(out_of_range("a range", index, n))
        }
    }
    fn name(&self) -> String {
        format!("range({}..{})", self.0.start, self.0.end)
    }
}

impl<T, S: Source<T> + ?Sized> Source<T> for Arc<S> {
    fn len(&self) -> usize {
        (**self).len()
    }
    fn get(&self, index: usize) -> Result<T> {
        (**self).get(index)
    }
    fn name(&self) -> String {
        (**self).name()
    }
}

/// Row `index` of `t` (along the first dimension) as a view, without the first dimension.
pub(crate) fn row(t: &Tensor, index: usize) -> Result<Tensor> {
    Ok(t.narrow(0, index, 1)?.squeeze(0)?)
}

/// Example `i` of an in-memory dataset: row `i` of the inputs and of the targets, as views (no
/// copy).
impl Source<Example> for TensorDataset {
    fn len(&self) -> usize {
        Dataset::len(self)
    }
    fn get(&self, index: usize) -> Result<Example> {
        let n = Dataset::len(self);
        if index >= n {
            return Err(out_of_range("a TensorDataset", index, n));
        }
        Ok(Example {
            input: row(self.inputs(), index)?,
            target: self.targets().map(|t| row(t, index)).transpose()?,
        })
    }
    fn name(&self) -> String {
        "tensor_dataset".to_string()
    }
}

/// Any batch-level [`Dataset`] as a source of single [`Example`]s: element `i` is the one-row
/// batch `get_batch(&[i])` without its batch dimension.
pub struct DatasetSource<D>(pub D);

impl<D: Dataset> Source<Example> for DatasetSource<D> {
    fn len(&self) -> usize {
        self.0.len()
    }
    fn get(&self, index: usize) -> Result<Example> {
        let b = self.0.get_batch(&[index])?;
        Ok(Example {
            input: row(&b.inputs, 0)?,
            target: b.targets.as_ref().map(|t| row(t, 0)).transpose()?,
        })
    }
    fn name(&self) -> String {
        "dataset".to_string()
    }
}

/// The stage reading a source in index order.
pub(crate) struct SourceStage<T> {
    pub(crate) source: Arc<dyn Source<T>>,
}

impl<T: Send + 'static> Stage<T> for SourceStage<T> {
    fn open(&self, _epoch: u64) -> Result<Box<dyn Stream<T>>> {
        Ok(Box::new(SourceStream {
            source: Arc::clone(&self.source),
            next: 0,
            len: self.source.len(),
        }))
    }
    fn len(&self, _epoch: u64) -> Option<u64> {
        Some(self.source.len() as u64)
    }
    fn describe(&self) -> String {
        format!("{}[{}]", self.source.name(), self.source.len())
    }
}

struct SourceStream<T> {
    source: Arc<dyn Source<T>>,
    next: usize,
    len: usize,
}

impl<T: Send> Stream<T> for SourceStream<T> {
    fn next(&mut self) -> Option<Result<T>> {
        if self.next >= self.len {
            return None;
        }
        self.next += 1;
        Some(self.source.get(self.next - 1))
    }
    fn skip(&mut self, n: u64) -> Result<u64> {
        let k = (self.len - self.next).min(usize::try_from(n).unwrap_or(usize::MAX));
        self.next += k;
        Ok(k as u64)
    }
    fn remaining(&self) -> Option<u64> {
        Some((self.len - self.next) as u64)
    }
    fn can_fetch(&self) -> bool {
        true
    }
    fn fetch(&mut self, k: u64) -> Option<Result<T>> {
        let i = usize::try_from(k).ok()?.checked_add(self.next)?;
        (i < self.len).then(|| self.source.get(i))
    }
}

/// A stage over an iterator made afresh for each epoch (a stream without random access).
pub(crate) struct FnStage<T> {
    pub(crate) name: String,
    #[allow(clippy::type_complexity)]
    pub(crate) make: Arc<dyn Fn(u64) -> Result<Box<dyn Iterator<Item = Result<T>> + Send>> + Send + Sync>,
}

impl<T: Send + 'static> Stage<T> for FnStage<T> {
    fn open(&self, epoch: u64) -> Result<Box<dyn Stream<T>>> {
        Ok(Box::new(IterStream((self.make)(epoch)?)))
    }
    fn len(&self, _epoch: u64) -> Option<u64> {
        None
    }
    fn describe(&self) -> String {
        format!("stream({})", self.name)
    }
}

struct IterStream<T>(Box<dyn Iterator<Item = Result<T>> + Send>);

impl<T: Send> Stream<T> for IterStream<T> {
    fn next(&mut self) -> Option<Result<T>> {
        self.0.next()
    }
}
