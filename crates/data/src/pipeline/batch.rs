//! `batch`: consecutive elements grouped and collated into one value.

use std::sync::Arc;

use super::stream::{Stage, Stream};
use crate::Result;

pub(crate) type CollateFn<T, U> = Arc<dyn Fn(Vec<T>) -> Result<U> + Send + Sync>;

pub(crate) struct BatchStage<T, U> {
    pub(crate) upstream: Arc<dyn Stage<T>>,
    pub(crate) size: usize,
    pub(crate) drop_remainder: bool,
    pub(crate) collate: CollateFn<T, U>,
}

/// The number of batches `n` elements make.
fn batches(n: u64, size: u64, drop_remainder: bool) -> u64 {
    if drop_remainder {
        n / size
    } else {
        n.div_ceil(size)
    }
}

impl<T: Send + 'static, U: Send + 'static> Stage<U> for BatchStage<T, U> {
    fn open(&self, epoch: u64) -> Result<Box<dyn Stream<U>>> {
        Ok(Box::new(BatchStream {
            upstream: self.upstream.open(epoch)?,
            size: self.size,
            drop_remainder: self.drop_remainder,
            collate: Arc::clone(&self.collate),
        }))
    }
    fn len(&self, epoch: u64) -> Option<u64> {
        self.upstream
            .len(epoch)
            .map(|n| batches(n, self.size as u64, self.drop_remainder))
    }
    fn describe(&self) -> String {
        format!(
            "{} -> batch({}, drop_remainder={})",
            self.upstream.describe(),
            self.size,
            self.drop_remainder
        )
    }
}

struct BatchStream<T, U> {
    upstream: Box<dyn Stream<T>>,
    size: usize,
    drop_remainder: bool,
    collate: CollateFn<T, U>,
}

impl<T: Send, U: Send> Stream<U> for BatchStream<T, U> {
    fn next(&mut self) -> Option<Result<U>> {
        let mut items = Vec::with_capacity(self.size);
        let mut error = None;
        let mut read = 0;
        while read < self.size {
            match self.upstream.next() {
                Some(Ok(x)) => items.push(x),
                // The batch fails with its first error; its other elements are still read so
                // that the following batches keep their boundaries.
                Some(Err(e)) => {
                    error.get_or_insert(e);
                }
                None => break,
            }
            read += 1;
        }
        if read == 0 || (read < self.size && self.drop_remainder) {
            return None;
        }
        Some(match error {
            Some(e) => Err(e),
            None => (self.collate)(items),
        })
    }

    fn skip(&mut self, n: u64) -> Result<u64> {
        let size = self.size as u64;
        let skipped = self.upstream.skip(n.saturating_mul(size))?;
        Ok(batches(skipped, size, self.drop_remainder))
    }

    fn remaining(&self) -> Option<u64> {
        self.upstream
            .remaining()
            .map(|n| batches(n, self.size as u64, self.drop_remainder))
    }
}
