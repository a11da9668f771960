//! `repeat`: passes over the upstream one after another, each a new epoch of the upstream.
//!
//! Pass `r` of `repeat(Some(n))` in epoch `e` opens the upstream in epoch `e * n + r`, so every
//! pass of every epoch reshuffles differently; `repeat(None)` (forever) opens epochs `e, e + 1,
//! ...`. A pass that yields nothing ends the repetition (an empty upstream would otherwise spin
//! forever).

use std::sync::Arc;

use super::stream::{Stage, Stream};
use crate::Result;

pub(crate) struct RepeatStage<T> {
    pub(crate) upstream: Arc<dyn Stage<T>>,
    pub(crate) times: Option<u64>,
}

impl<T: Send + 'static> RepeatStage<T> {
    /// The upstream epoch of pass `r` in epoch `epoch`.
    fn pass_epoch(&self, epoch: u64, r: u64) -> u64 {
        match self.times {
            Some(n) => epoch.wrapping_mul(n).wrapping_add(r),
            None => epoch.wrapping_add(r),
        }
    }
}

impl<T: Send + 'static> Stage<T> for RepeatStage<T> {
    fn open(&self, epoch: u64) -> Result<Box<dyn Stream<T>>> {
        let stage = Arc::new(RepeatStage {
            upstream: Arc::clone(&self.upstream),
            times: self.times,
        });
        let current = if self.times == Some(0) {
            None
        } else {
            Some(self.upstream.open(self.pass_epoch(epoch, 0))?)
        };
        Ok(Box::new(RepeatStream {
            stage,
            epoch,
            pass: 0,
            current,
            pass_items: 0,
        }))
    }
    fn len(&self, epoch: u64) -> Option<u64> {
        let n = self.times?;
        (0..n).try_fold(0u64, |acc, r| {
            acc.checked_add(self.upstream.len(self.pass_epoch(epoch, r))?)
        })
    }
    fn describe(&self) -> String {
        match self.times {
            Some(n) => format!("{} -> repeat({n})", self.upstream.describe()),
            None => format!("{} -> repeat", self.upstream.describe()),
        }
    }
}

struct RepeatStream<T> {
    stage: Arc<RepeatStage<T>>,
    epoch: u64,
    /// The pass in progress.
    pass: u64,
    current: Option<Box<dyn Stream<T>>>,
    /// Items the current pass has produced (or skipped) so far.
    pass_items: u64,
}

impl<T: Send + 'static> RepeatStream<T> {
    /// Move to the next pass; false when there is none (or the pass just ended was empty).
    fn advance(&mut self) -> Result<bool> {
        let empty = self.pass_items == 0;
        self.current = None;
        self.pass += 1;
        self.pass_items = 0;
        if empty || self.stage.times.is_some_and(|n| self.pass >= n) {
            return Ok(false);
        }
        let e = self.stage.pass_epoch(self.epoch, self.pass);
        self.current = Some(self.stage.upstream.open(e)?);
        Ok(true)
    }
}

impl<T: Send + 'static> Stream<T> for RepeatStream<T> {
    fn next(&mut self) -> Option<Result<T>> {
        loop {
            let item = self.current.as_mut()?.next();
            if item.is_some() {
                self.pass_items += 1;
                return item;
            }
            match self.advance() {
                Ok(true) => {}
                Ok(false) => return None,
                Err(e) => return Some(Err(e)),
            }
        }
    }

    fn skip(&mut self, n: u64) -> Result<u64> {
        let mut done = 0;
        while done < n {
            let Some(cur) = self.current.as_mut() else { break };
            let k = cur.skip(n - done)?;
            done += k;
            self.pass_items += k;
            if done < n && !self.advance()? {
                break;
            }
        }
        Ok(done)
    }

    fn remaining(&self) -> Option<u64> {
        let cur = match &self.current {
            Some(c) => c.remaining()?,
            None => return Some(0),
        };
        let times = self.stage.times?;
        (self.pass + 1..times).try_fold(cur, |acc, r| {
            acc.checked_add(self.stage.upstream.len(self.stage.pass_epoch(self.epoch, r))?)
        })
    }
}
