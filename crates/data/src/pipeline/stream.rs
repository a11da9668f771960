//! The two traits every pipeline stage implements: a [`Stage`] is the reusable description (what
//! the builder methods of [`Pipeline`](super::Pipeline) chain), a [`Stream`] one pass over it for
//! one epoch.
//!
//! Besides `next`, a stream can *skip* items (cheaply where its structure allows: a source moves
//! its cursor, a map skips upstream without calling its function), say how many items remain
//! when that is known without reading them, and, for random-access streams, *fetch* an item
//! ahead of the cursor. These are what make restoring a saved position cheap.

use crate::Result;

/// One pass over a stage for one epoch: the items, in order.
pub(crate) trait Stream<T>: Send {
    /// The next item; `None` at the end of the pass. An `Err` item is an element that failed;
    /// the stream goes on after it.
    fn next(&mut self) -> Option<Result<T>>;

    /// Skip up to `n` items, returning how many were skipped (fewer only at the end of the
    /// pass). The default reads and drops them; stages override it to avoid the work.
    fn skip(&mut self, n: u64) -> Result<u64> {
        let mut done = 0;
        while done < n {
            match self.next() {
                Some(Ok(_)) => done += 1,
                Some(Err(e)) => return Err(e),
                None => break,
            }
        }
        Ok(done)
    }

    /// The exact number of items left, when it is known without reading them.
    fn remaining(&self) -> Option<u64> {
        None
    }

    /// Whether [`Stream::fetch`] works.
    fn can_fetch(&self) -> bool {
        false
    }

    /// The item `k` places past the cursor (0: the one `next` would return), without moving the
    /// cursor; `None` past the end. Only for streams where [`Stream::can_fetch`] is true.
    fn fetch(&mut self, _k: u64) -> Option<Result<T>> {
        None
    }
}

/// A pipeline stage: opens a [`Stream`] per epoch.
pub(crate) trait Stage<T>: Send + Sync {
    /// A pass over this stage's output in epoch `epoch`.
    fn open(&self, epoch: u64) -> Result<Box<dyn Stream<T>>>;

    /// The number of items of epoch `epoch`, when it is known without reading them.
    fn len(&self, epoch: u64) -> Option<u64>;

    /// A description of the stage and everything before it (names and parameters that decide
    /// the output, not worker counts or buffer depths), used to check that a saved position is
    /// restored into the same pipeline.
    fn describe(&self) -> String;
}
