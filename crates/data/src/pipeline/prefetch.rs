//! `prefetch`: a background thread runs the upstream and keeps up to `n` elements ready in a
//! bounded channel. The thread starts on the first `next`, so skipping to a saved position
//! before that still uses the upstream's cheap skip. Dropping the stream stops the thread.

use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use super::invalid;
use super::stream::{Stage, Stream};
use crate::Result;

pub(crate) struct PrefetchStage<T> {
    pub(crate) upstream: Arc<dyn Stage<T>>,
    pub(crate) depth: usize,
}

impl<T: Send + 'static> Stage<T> for PrefetchStage<T> {
    fn open(&self, epoch: u64) -> Result<Box<dyn Stream<T>>> {
        Ok(Box::new(PrefetchStream {
            upstream: Some(self.upstream.open(epoch)?),
            depth: self.depth,
            rx: None,
            handle: None,
            left: None,
        }))
    }
    fn len(&self, epoch: u64) -> Option<u64> {
        self.upstream.len(epoch)
    }
    fn describe(&self) -> String {
        // Prefetching does not change the output.
        self.upstream.describe()
    }
}

struct PrefetchStream<T> {
    /// The upstream until the thread takes it.
    upstream: Option<Box<dyn Stream<T>>>,
    depth: usize,
    rx: Option<Receiver<Result<T>>>,
    handle: Option<JoinHandle<()>>,
    /// Items left when the thread started, counted down (when the upstream knew).
    left: Option<u64>,
}

impl<T: Send + 'static> PrefetchStream<T> {
    fn start(&mut self) -> Result<()> {
        let Some(mut upstream) = self.upstream.take() else {
            return Ok(());
        };
        self.left = upstream.remaining();
        let (tx, rx) = sync_channel(self.depth);
        let handle = std::thread::Builder::new()
            .name("kiln-data-prefetch".into())
            .spawn(move || {
                while let Some(item) = upstream.next() {
                    if tx.send(item).is_err() {
                        return;
                    }
                }
            })
            .map_err(|e| {
                invalid(
                    "Pipeline::prefetch",
                    format!("cannot start the prefetch thread: {e}"),
                )
            })?;
        self.rx = Some(rx);
        self.handle = Some(handle);
        Ok(())
    }
}

impl<T: Send + 'static> Stream<T> for PrefetchStream<T> {
    fn next(&mut self) -> Option<Result<T>> {
        if let Err(e) = self.start() {
            return Some(Err(e));
        }
        match self.rx.as_ref()?.recv() {
            Ok(item) => {
                if let Some(l) = self.left.as_mut() {
                    *l = l.saturating_sub(1);
                }
                Some(item)
            }
            Err(_) => {
                // The thread is done: at the end of the pass, or because it panicked.
                self.rx = None;
                let panicked = self.handle.take().is_some_and(|h| h.join().is_err());
                panicked.then(|| {
                    Err(invalid(
                        "Pipeline::prefetch",
                        "the prefetch thread panicked (in a filter predicate or a collate function?)",
                    ))
                })
            }
        }
    }
    fn skip(&mut self, n: u64) -> Result<u64> {
        if let Some(up) = self.upstream.as_mut() {
            return up.skip(n);
        }
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
    fn remaining(&self) -> Option<u64> {
        match &self.upstream {
            Some(up) => up.remaining(),
            None => self.left,
        }
    }
}

impl<T> Drop for PrefetchStream<T> {
    fn drop(&mut self) {
        // Hanging up makes a thread blocked on a full channel return.
        drop(self.rx.take());
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
