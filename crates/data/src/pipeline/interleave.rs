//! `interleave`: each input element becomes a pipeline; up to `cycle_length` of them are read
//! round-robin, `block_length` elements at a time (tf.data's `interleave`).
//!
//! A slot whose pipeline ends is refilled from the next input element when the cycle comes
//! back to it; the cycle moves on as soon as a block is complete or a pipeline ends. The inner
//! pipelines are opened in the interleave's epoch. Skipping advances the same round-robin with
//! the inner pipelines' own (cheap where possible) skips.

use std::sync::Arc;

use super::stream::{Stage, Stream};
use super::Pipeline;
use crate::Result;

pub(crate) type OpenFn<T, U> = Arc<dyn Fn(T) -> Result<Pipeline<U>> + Send + Sync>;

pub(crate) struct InterleaveStage<T, U> {
    pub(crate) upstream: Arc<dyn Stage<T>>,
    pub(crate) cycle_length: usize,
    pub(crate) block_length: u64,
    pub(crate) f: OpenFn<T, U>,
}

impl<T: Send + 'static, U: Send + 'static> Stage<U> for InterleaveStage<T, U> {
    fn open(&self, epoch: u64) -> Result<Box<dyn Stream<U>>> {
        Ok(Box::new(InterleaveStream {
            input: Some(self.upstream.open(epoch)?),
            f: Arc::clone(&self.f),
            epoch,
            slots: (0..self.cycle_length).map(|_| None).collect(),
            current: 0,
            taken: 0,
            block_length: self.block_length,
        }))
    }
    fn len(&self, _epoch: u64) -> Option<u64> {
        None
    }
    fn describe(&self) -> String {
        format!(
            "{} -> interleave(cycle={}, block={})",
            self.upstream.describe(),
            self.cycle_length,
            self.block_length
        )
    }
}

struct InterleaveStream<T, U> {
    /// The input elements; `None` once exhausted.
    input: Option<Box<dyn Stream<T>>>,
    f: OpenFn<T, U>,
    epoch: u64,
    slots: Vec<Option<Box<dyn Stream<U>>>>,
    current: usize,
    /// Elements taken from the current slot in this block.
    taken: u64,
    block_length: u64,
}

/// What one step of the round-robin produced.
enum Step<U> {
    Item(U),
    End,
}

impl<T: Send + 'static, U: Send + 'static> InterleaveStream<T, U> {
    fn next_slot(&mut self) {
        self.current = (self.current + 1) % self.slots.len();
        self.taken = 0;
    }

    /// Fill the current slot from the input if it is empty; false when the input is done.
    fn fill(&mut self) -> Result<bool> {
        if self.slots[self.current].is_some() {
            return Ok(true);
        }
        let Some(input) = self.input.as_mut() else {
            return Ok(false);
        };
        match input.next() {
            Some(x) => {
                let stream = (self.f)(x?)?.stage.open(self.epoch)?;
                self.slots[self.current] = Some(stream);
                Ok(true)
            }
            None => {
                self.input = None;
                Ok(false)
            }
        }
    }

    /// Advance the round-robin by one element, reading it (`read`) or skipping it.
    fn step(&mut self, read: bool) -> Result<Step<Option<Result<U>>>> {
        loop {
            if self.input.is_none() && self.slots.iter().all(Option::is_none) {
                return Ok(Step::End);
            }
            if !self.fill()? {
                self.next_slot();
                continue;
            }
            let Some(stream) = self.slots[self.current].as_mut() else {
                continue;
            };
            let got = if read {
                stream.next().map(Some)
            } else {
                (stream.skip(1)? == 1).then_some(None)
            };
            match got {
                Some(item) => {
                    self.taken += 1;
                    if self.taken >= self.block_length {
                        self.next_slot();
                    }
                    return Ok(Step::Item(item));
                }
                None => {
                    self.slots[self.current] = None;
                    self.next_slot();
                }
            }
        }
    }
}

impl<T: Send + 'static, U: Send + 'static> Stream<U> for InterleaveStream<T, U> {
    fn next(&mut self) -> Option<Result<U>> {
        match self.step(true) {
            Ok(Step::Item(item)) => item,
            Ok(Step::End) => None,
            Err(e) => Some(Err(e)),
        }
    }
    fn skip(&mut self, n: u64) -> Result<u64> {
        let mut done = 0;
        while done < n {
            match self.step(false)? {
                Step::Item(_) => done += 1,
                Step::End => break,
            }
        }
        Ok(done)
    }
}
