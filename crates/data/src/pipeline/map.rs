//! `map`: a function over every element, inline or on worker threads, in order.
//!
//! With `workers > 1` the consumer's thread reads elements from upstream in chunks and hands the
//! chunks to a pool of threads; results come back tagged with their chunk number and leave in
//! input order, so the output is the same for any number of workers. At most `2 * workers`
//! chunks are in flight. A panic in the function becomes an `Err` element.

use std::collections::{BTreeMap, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use super::invalid;
use super::stream::{Stage, Stream};
use crate::Result;

/// Where an element sits: the epoch and its position in the stream the map reads (0-based,
/// counting every element of the pass, skipped or not). Seeded maps derive the element's
/// generator from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ElementId {
    /// The epoch of the pass.
    pub epoch: u64,
    /// The element's position in the map's input for this pass.
    pub index: u64,
}

pub(crate) type MapFn<T, U> = Arc<dyn Fn(T, ElementId) -> Result<U> + Send + Sync>;

/// Elements per job handed to a worker.
const CHUNK: usize = 16;

pub(crate) struct MapStage<T, U> {
    pub(crate) upstream: Arc<dyn Stage<T>>,
    pub(crate) f: MapFn<T, U>,
    pub(crate) workers: usize,
    pub(crate) name: String,
}

impl<T: Send + 'static, U: Send + 'static> Stage<U> for MapStage<T, U> {
    fn open(&self, epoch: u64) -> Result<Box<dyn Stream<U>>> {
        Ok(Box::new(MapStream {
            upstream: self.upstream.open(epoch)?,
            f: Arc::clone(&self.f),
            epoch,
            next_index: 0,
            workers: self.workers,
            pool: None,
        }))
    }
    fn len(&self, epoch: u64) -> Option<u64> {
        self.upstream.len(epoch)
    }
    fn describe(&self) -> String {
        format!("{} -> {}", self.upstream.describe(), self.name)
    }
}

struct Job<T> {
    seq: u64,
    first: u64,
    items: Vec<Result<T>>,
}

struct Pool<U, T> {
    jobs: Option<Sender<Job<T>>>,
    results: Receiver<(u64, Vec<Result<U>>)>,
    handles: Vec<JoinHandle<()>>,
    /// Finished chunks that arrived ahead of their turn.
    early: BTreeMap<u64, Vec<Result<U>>>,
    /// Results of the chunk in turn, ready to hand out.
    ready: VecDeque<Result<U>>,
    next_seq_in: u64,
    next_seq_out: u64,
    /// Elements sent to workers and not handed out yet (including `ready`).
    buffered: u64,
    upstream_done: bool,
}

struct MapStream<T, U> {
    upstream: Box<dyn Stream<T>>,
    f: MapFn<T, U>,
    epoch: u64,
    /// Position of the next element read from upstream.
    next_index: u64,
    workers: usize,
    pool: Option<Pool<U, T>>,
}

fn call<T, U>(f: &MapFn<T, U>, item: Result<T>, id: ElementId) -> Result<U> {
    let x = item?;
    match catch_unwind(AssertUnwindSafe(|| f(x, id))) {
        Ok(r) => r,
        Err(panic) => {
            let msg = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a non-string panic".to_string());
            Err(invalid(
                "Pipeline::map",
                format!(
                    "the map function panicked on element {} of epoch {}: {msg}",
                    id.index, id.epoch
                ),
            ))
        }
    }
}

impl<T: Send + 'static, U: Send + 'static> MapStream<T, U> {
    fn start_pool(&mut self) -> Result<()> {
        let (job_tx, job_rx) = channel::<Job<T>>();
        let (res_tx, res_rx) = channel();
        let job_rx = Arc::new(Mutex::new(job_rx));
        let mut handles = Vec::with_capacity(self.workers);
        for w in 0..self.workers {
            let job_rx = Arc::clone(&job_rx);
            let res_tx: Sender<(u64, Vec<Result<U>>)> = res_tx.clone();
            let f = Arc::clone(&self.f);
            let epoch = self.epoch;
            let h = std::thread::Builder::new()
                .name(format!("kiln-data-map-{w}"))
                .spawn(move || loop {
                    let job = {
                        let rx = job_rx.lock().unwrap_or_else(PoisonError::into_inner);
                        rx.recv()
                    };
                    let Ok(job) = job else { return };
                    let out: Vec<Result<U>> = job
                        .items
                        .into_iter()
                        .enumerate()
                        .map(|(k, item)| {
                            let id = ElementId {
                                epoch,
                                index: job.first + k as u64,
                            };
                            call(&f, item, id)
                        })
                        .collect();
                    if res_tx.send((job.seq, out)).is_err() {
                        return;
                    }
                })
                .map_err(|e| invalid("Pipeline::par_map", format!("cannot start a worker thread: {e}")))?;
            handles.push(h);
        }
        self.pool = Some(Pool {
            jobs: Some(job_tx),
            results: res_rx,
            handles,
            early: BTreeMap::new(),
            ready: VecDeque::new(),
            next_seq_in: 0,
            next_seq_out: 0,
            buffered: 0,
            upstream_done: false,
        });
        Ok(())
    }

    /// Send chunks to the workers until `2 * workers` are in flight or upstream is done.
    fn dispatch(&mut self) {
        let Some(pool) = self.pool.as_mut() else { return };
        let max_in_flight = 2 * self.workers as u64;
        while !pool.upstream_done && pool.next_seq_in - pool.next_seq_out < max_in_flight {
            let mut items = Vec::with_capacity(CHUNK);
            while items.len() < CHUNK {
                match self.upstream.next() {
                    Some(x) => items.push(x),
                    None => {
                        pool.upstream_done = true;
                        break;
                    }
                }
            }
            if items.is_empty() {
                break;
            }
            let n = items.len() as u64;
            let job = Job {
                seq: pool.next_seq_in,
                first: self.next_index,
                items,
            };
            let sent = pool.jobs.as_ref().map(|tx| tx.send(job).is_ok()).unwrap_or(false);
            if !sent {
                pool.upstream_done = true;
                break;
            }
            self.next_index += n;
            pool.next_seq_in += 1;
            pool.buffered += n;
        }
    }

    /// The next result already handed to the workers (waiting for it if needed), without
    /// reading upstream; `None` when nothing is in flight.
    fn take_buffered(&mut self) -> Option<Result<U>> {
        let pool = self.pool.as_mut()?;
        loop {
            if let Some(x) = pool.ready.pop_front() {
                pool.buffered -= 1;
                return Some(x);
            }
            if pool.next_seq_in == pool.next_seq_out {
                return None;
            }
            while !pool.early.contains_key(&pool.next_seq_out) {
                match pool.results.recv() {
                    Ok((seq, out)) => {
                        pool.early.insert(seq, out);
                    }
                    Err(_) => {
                        pool.upstream_done = true;
                        pool.next_seq_in = pool.next_seq_out;
                        pool.buffered = 0;
                        return Some(Err(invalid(
                            "Pipeline::par_map",
                            "the worker threads stopped unexpectedly",
                        )));
                    }
                }
            }
            let out = pool.early.remove(&pool.next_seq_out).unwrap_or_default();
            pool.next_seq_out += 1;
            pool.ready.extend(out);
        }
    }

    fn next_parallel(&mut self) -> Option<Result<U>> {
        if self.pool.is_none() {
            if let Err(e) = self.start_pool() {
                self.workers = 1;
                return Some(Err(e));
            }
        }
        // Keep the workers busy, then hand out the oldest result.
        self.dispatch();
        self.take_buffered()
    }
}

impl<T: Send + 'static, U: Send + 'static> Stream<U> for MapStream<T, U> {
    fn next(&mut self) -> Option<Result<U>> {
        if self.workers > 1 {
            return self.next_parallel();
        }
        let item = self.upstream.next()?;
        let id = ElementId {
            epoch: self.epoch,
            index: self.next_index,
        };
        self.next_index += 1;
        Some(call(&self.f, item, id))
    }

    fn skip(&mut self, n: u64) -> Result<u64> {
        let mut done = 0;
        // Elements already handed to workers come out first.
        while done < n && self.pool.as_ref().is_some_and(|p| p.buffered > 0) {
            match self.take_buffered() {
                Some(Ok(_)) => done += 1,
                Some(Err(e)) => return Err(e),
                None => return Ok(done),
            }
        }
        let skipped = self.upstream.skip(n - done)?;
        self.next_index += skipped;
        Ok(done + skipped)
    }

    fn remaining(&self) -> Option<u64> {
        let buffered = self.pool.as_ref().map_or(0, |p| p.buffered);
        self.upstream.remaining().map(|r| r + buffered)
    }
}

impl<T, U> Drop for MapStream<T, U> {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.as_mut() {
            // Closing the job channel ends the workers once they finish their current chunk.
            drop(pool.jobs.take());
            for h in pool.handles.drain(..) {
                let _ = h.join();
            }
        }
    }
}
