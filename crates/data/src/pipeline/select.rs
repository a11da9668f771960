//! Stages that choose elements without changing them: `filter`, `take`, `skip`, `shard`.

use std::sync::Arc;

use super::stream::{Stage, Stream};
use crate::Result;

pub(crate) type Predicate<T> = Arc<dyn Fn(&T) -> bool + Send + Sync>;

/// Keeps the elements the predicate accepts (errors pass through).
pub(crate) struct FilterStage<T> {
    pub(crate) upstream: Arc<dyn Stage<T>>,
    pub(crate) pred: Predicate<T>,
}

impl<T: Send + 'static> Stage<T> for FilterStage<T> {
    fn open(&self, epoch: u64) -> Result<Box<dyn Stream<T>>> {
        Ok(Box::new(FilterStream {
            upstream: self.upstream.open(epoch)?,
            pred: Arc::clone(&self.pred),
        }))
    }
    fn len(&self, _epoch: u64) -> Option<u64> {
        None
    }
    fn describe(&self) -> String {
        format!("{} -> filter", self.upstream.describe())
    }
}

struct FilterStream<T> {
    upstream: Box<dyn Stream<T>>,
    pred: Predicate<T>,
}

impl<T: Send> Stream<T> for FilterStream<T> {
    fn next(&mut self) -> Option<Result<T>> {
        loop {
            match self.upstream.next()? {
                Ok(x) if !(self.pred)(&x) => continue,
                other => return Some(other),
            }
        }
    }
}

/// The first `n` elements of each pass.
pub(crate) struct TakeStage<T> {
    pub(crate) upstream: Arc<dyn Stage<T>>,
    pub(crate) n: u64,
}

impl<T: Send + 'static> Stage<T> for TakeStage<T> {
    fn open(&self, epoch: u64) -> Result<Box<dyn Stream<T>>> {
        Ok(Box::new(TakeStream {
            upstream: self.upstream.open(epoch)?,
            left: self.n,
        }))
    }
    fn len(&self, epoch: u64) -> Option<u64> {
        self.upstream.len(epoch).map(|n| n.min(self.n))
    }
    fn describe(&self) -> String {
        format!("{} -> take({})", self.upstream.describe(), self.n)
    }
}

struct TakeStream<T> {
    upstream: Box<dyn Stream<T>>,
    left: u64,
}

impl<T: Send> Stream<T> for TakeStream<T> {
    fn next(&mut self) -> Option<Result<T>> {
        if self.left == 0 {
            return None;
        }
        let item = self.upstream.next();
        self.left = if item.is_some() { self.left - 1 } else { 0 };
        item
    }
    fn skip(&mut self, n: u64) -> Result<u64> {
        let k = self.upstream.skip(n.min(self.left))?;
        self.left -= k;
        Ok(k)
    }
    fn remaining(&self) -> Option<u64> {
        self.upstream.remaining().map(|r| r.min(self.left))
    }
    fn can_fetch(&self) -> bool {
        self.upstream.can_fetch()
    }
    fn fetch(&mut self, k: u64) -> Option<Result<T>> {
        if k < self.left {
            self.upstream.fetch(k)
        } else {
            None
        }
    }
}

/// Everything but the first `n` elements of each pass.
pub(crate) struct SkipStage<T> {
    pub(crate) upstream: Arc<dyn Stage<T>>,
    pub(crate) n: u64,
}

impl<T: Send + 'static> Stage<T> for SkipStage<T> {
    fn open(&self, epoch: u64) -> Result<Box<dyn Stream<T>>> {
        Ok(Box::new(SkipStream {
            upstream: self.upstream.open(epoch)?,
            pending: self.n,
        }))
    }
    fn len(&self, epoch: u64) -> Option<u64> {
        self.upstream.len(epoch).map(|n| n.saturating_sub(self.n))
    }
    fn describe(&self) -> String {
        format!("{} -> skip({})", self.upstream.describe(), self.n)
    }
}

struct SkipStream<T> {
    upstream: Box<dyn Stream<T>>,
    /// Elements still to drop before the first output.
    pending: u64,
}

impl<T: Send> SkipStream<T> {
    fn settle(&mut self) -> Result<()> {
        if self.pending > 0 {
            let n = self.pending;
            self.pending = 0;
            self.upstream.skip(n)?;
        }
        Ok(())
    }
}

impl<T: Send> Stream<T> for SkipStream<T> {
    fn next(&mut self) -> Option<Result<T>> {
        if let Err(e) = self.settle() {
            return Some(Err(e));
        }
        self.upstream.next()
    }
    fn skip(&mut self, n: u64) -> Result<u64> {
        self.settle()?;
        self.upstream.skip(n)
    }
    fn remaining(&self) -> Option<u64> {
        self.upstream.remaining().map(|r| r.saturating_sub(self.pending))
    }
    fn can_fetch(&self) -> bool {
        self.upstream.can_fetch()
    }
    fn fetch(&mut self, k: u64) -> Option<Result<T>> {
        self.upstream.fetch(k.checked_add(self.pending)?)
    }
}

/// Elements `index, index + num_shards, ...` of each pass.
pub(crate) struct ShardStage<T> {
    pub(crate) upstream: Arc<dyn Stage<T>>,
    pub(crate) num_shards: u64,
    pub(crate) index: u64,
}

/// How many of the positions `pos..pos + n` are `≡ index (mod shards)`.
fn owned_in(pos: u64, n: u64, shards: u64, index: u64) -> u64 {
    // Count of q < x with q % shards == index.
    let below = |x: u64| x / shards + u64::from(x % shards > index);
    below(pos + n) - below(pos)
}

impl<T: Send + 'static> Stage<T> for ShardStage<T> {
    fn open(&self, epoch: u64) -> Result<Box<dyn Stream<T>>> {
        Ok(Box::new(ShardStream {
            upstream: self.upstream.open(epoch)?,
            num_shards: self.num_shards,
            index: self.index,
            pos: 0,
        }))
    }
    fn len(&self, epoch: u64) -> Option<u64> {
        self.upstream
            .len(epoch)
            .map(|n| owned_in(0, n, self.num_shards, self.index))
    }
    fn describe(&self) -> String {
        format!(
            "{} -> shard({}, {})",
            self.upstream.describe(),
            self.num_shards,
            self.index
        )
    }
}

struct ShardStream<T> {
    upstream: Box<dyn Stream<T>>,
    num_shards: u64,
    index: u64,
    /// The upstream position of the next element read.
    pos: u64,
}

impl<T: Send> ShardStream<T> {
    /// Upstream elements between the cursor and this shard's next element.
    fn gap(&self) -> u64 {
        (self.index + self.num_shards - self.pos % self.num_shards) % self.num_shards
    }
}

impl<T: Send> Stream<T> for ShardStream<T> {
    fn next(&mut self) -> Option<Result<T>> {
        let gap = self.gap();
        if gap > 0 {
            match self.upstream.skip(gap) {
                Ok(k) => {
                    self.pos += k;
                    if k < gap {
                        return None;
                    }
                }
                Err(e) => return Some(Err(e)),
            }
        }
        let item = self.upstream.next()?;
        self.pos += 1;
        Some(item)
    }
    fn skip(&mut self, n: u64) -> Result<u64> {
        if n == 0 {
            return Ok(0);
        }
        // Skip to just past the n-th element of this shard.
        let want = self.gap() + (n - 1) * self.num_shards + 1;
        let k = self.upstream.skip(want)?;
        let done = owned_in(self.pos, k, self.num_shards, self.index);
        self.pos += k;
        Ok(done)
    }
    fn remaining(&self) -> Option<u64> {
        self.upstream
            .remaining()
            .map(|r| owned_in(self.pos, r, self.num_shards, self.index))
    }
    fn can_fetch(&self) -> bool {
        self.upstream.can_fetch()
    }
    fn fetch(&mut self, k: u64) -> Option<Result<T>> {
        self.upstream.fetch(self.gap() + k.checked_mul(self.num_shards)?)
    }
}

#[cfg(test)]
mod tests {
    use super::owned_in;

    #[test]
    fn owned_counts_match_a_direct_count() {
        for shards in 1..5 {
            for index in 0..shards {
                for pos in 0..12 {
                    for n in 0..12 {
                        let direct = (pos..pos + n).filter(|q| q % shards == index).count() as u64;
                        assert_eq!(
                            owned_in(pos, n, shards, index),
                            direct,
                            "{shards} {index} {pos} {n}"
                        );
                    }
                }
            }
        }
    }
}
