//! `shuffle`: a buffered, seeded shuffle, different in every epoch.
//!
//! The stage keeps a buffer of up to `buffer_size` upstream positions. Each output draws a slot
//! uniformly from the buffer (by a [`TensorRng`] seeded with `(seed, epoch)`), emits that
//! element, and refills the slot with the next upstream position, or removes the slot once
//! upstream is exhausted. A buffer at least as large as the upstream gives a uniform
//! permutation.
//!
//! The draws depend only on how many elements upstream has, never on their values, so the
//! stage handles positions and reads elements only when it must:
//! - over a random-access upstream (a [`Source`](super::Source), possibly through `take`/`skip`/
//!   `shard`), an element is fetched when it is emitted, and the buffer costs 8 bytes a slot;
//! - over an upstream of known length, elements are read in order and kept only while they sit
//!   in the buffer; skipped outputs are never read when nothing later forces it;
//! - otherwise (after a `filter`, say) every element is read as it enters the buffer.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use kiln_tensor::TensorRng;

use super::stream::{Stage, Stream};
use crate::loader::epoch_seed;
use crate::Result;

pub(crate) struct ShuffleStage<T> {
    pub(crate) upstream: Arc<dyn Stage<T>>,
    pub(crate) buffer_size: usize,
    pub(crate) seed: u64,
}

impl<T: Send + 'static> Stage<T> for ShuffleStage<T> {
    fn open(&self, epoch: u64) -> Result<Box<dyn Stream<T>>> {
        Ok(Box::new(ShuffleStream {
            upstream: self.upstream.open(epoch)?,
            rng: TensorRng::new(epoch_seed(self.seed, epoch)),
            buffer_size: self.buffer_size,
            started: false,
            total: None,
            fetch: false,
            buf: Vec::new(),
            next_pos: 0,
            cursor: 0,
            ready: HashMap::new(),
            live: HashSet::new(),
        }))
    }
    fn len(&self, epoch: u64) -> Option<u64> {
        self.upstream.len(epoch)
    }
    fn describe(&self) -> String {
        format!(
            "{} -> shuffle(buffer={}, seed={})",
            self.upstream.describe(),
            self.buffer_size,
            self.seed
        )
    }
}

struct ShuffleStream<T> {
    upstream: Box<dyn Stream<T>>,
    rng: TensorRng,
    buffer_size: usize,
    started: bool,
    /// The number of upstream elements, when known up front (lazy and fetch modes).
    total: Option<u64>,
    /// Fetch mode: elements are fetched by position from a random-access upstream.
    fetch: bool,
    /// The upstream positions in the buffer.
    buf: Vec<u64>,
    /// The next upstream position to enter the buffer.
    next_pos: u64,
    /// The next upstream position to read (lazy and eager modes).
    cursor: u64,
    /// Elements read from upstream, by position, waiting in the buffer.
    ready: HashMap<u64, Result<T>>,
    /// Positions in the buffer (lazy mode), to know which ones must be kept when reading past.
    live: HashSet<u64>,
}

impl<T: Send> ShuffleStream<T> {
    fn start(&mut self) {
        self.started = true;
        self.total = self.upstream.remaining();
        self.fetch = self.total.is_some() && self.upstream.can_fetch();
        while self.buf.len() < self.buffer_size && self.enter() {}
    }

    /// Put the next upstream position into the buffer, if there is one.
    fn enter(&mut self) -> bool {
        let pos = self.next_pos;
        match self.total {
            Some(total) if pos >= total => return false,
            Some(_) => {
                if !self.fetch {
                    self.live.insert(pos);
                }
            }
            None => {
                // Unknown length: read the element now to learn whether it exists.
                match self.upstream.next() {
                    Some(item) => {
                        self.ready.insert(pos, item);
                        self.cursor += 1;
                    }
                    None => return false,
                }
            }
        }
        self.buf.push(pos);
        self.next_pos += 1;
        true
    }

    /// Draw the next buffer slot, refill it, and return the position it held.
    fn draw(&mut self) -> Option<u64> {
        if !self.started {
            self.start();
        }
        if self.buf.is_empty() {
            return None;
        }
        let j = self.rng.next_below(self.buf.len() as u64) as usize;
        let pos = self.buf[j];
        self.live.remove(&pos);
        let last = self.buf.len() - 1;
        self.buf.swap(j, last);
        self.buf.pop();
        if self.enter() {
            // The new position takes the drawn slot.
            let newest = self.buf.len() - 1;
            self.buf.swap(j.min(newest), newest);
        }
        Some(pos)
    }

    /// The element at upstream position `pos` (which has just left the buffer).
    fn materialize(&mut self, pos: u64) -> Result<T> {
        if let Some(item) = self.ready.remove(&pos) {
            return item;
        }
        if self.fetch {
            return self.upstream.fetch(pos).unwrap_or_else(|| Err(lost(pos)));
        }
        // Lazy mode: read up to `pos`, keeping the elements still in the buffer.
        while self.cursor < pos {
            if self.live.contains(&self.cursor) {
                let item = self.upstream.next().unwrap_or_else(|| Err(lost(self.cursor)));
                self.ready.insert(self.cursor, item);
                self.cursor += 1;
            } else {
                // A run of positions that already left the buffer: skip them without reading.
                let mut run = 1;
                while self.cursor + run < pos && !self.live.contains(&(self.cursor + run)) {
                    run += 1;
                }
                let skipped = self.upstream.skip(run)?;
                self.cursor += skipped;
                if skipped < run {
                    return Err(lost(pos));
                }
            }
        }
        self.cursor += 1;
        self.upstream.next().unwrap_or_else(|| Err(lost(pos)))
    }
}

fn lost(pos: u64) -> crate::Error {
    super::invalid(
        "Pipeline::shuffle",
        format!("upstream ended before element {pos}, which it announced"),
    )
}

impl<T: Send> Stream<T> for ShuffleStream<T> {
    fn next(&mut self) -> Option<Result<T>> {
        let pos = self.draw()?;
        Some(self.materialize(pos))
    }

    fn skip(&mut self, n: u64) -> Result<u64> {
        let mut done = 0;
        while done < n {
            let Some(pos) = self.draw() else { break };
            self.ready.remove(&pos);
            done += 1;
        }
        Ok(done)
    }

    fn remaining(&self) -> Option<u64> {
        if !self.started {
            return self.upstream.remaining();
        }
        self.total.map(|t| t - self.next_pos + self.buf.len() as u64)
    }
}
