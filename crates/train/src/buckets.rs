//! Gradient buckets all-reduced while the backward pass runs (the design of PyTorch DDP): the
//! trainable parameters are grouped, in reverse order (the output side's gradients are complete
//! first), into buckets of about [`BUCKET_BYTES`]; as soon as every gradient of a bucket is
//! complete — and every bucket before it started — its mean over the replicas starts, and the
//! backward pass goes on to the layers below. After the pass the trainer waits for what is
//! still in flight.
//!
//! The buckets and their order are fixed by the parameter list, so every replica starts the
//! same operations in the same order; each element's mean is the same rank-order sum whatever
//! the bucket, so the result is bit-identical to one synchronous all-reduce.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use kiln_autograd::{Gradients, Param, Var};
use kiln_tensor::Tensor;

use crate::collective::{Collective, PendingMean};
use crate::Result;

/// Bytes of gradients per bucket (PyTorch DDP's default is 25 MiB for models of hundreds of
/// millions of parameters; kiln's are smaller, and more buckets start sooner).
pub(crate) const BUCKET_BYTES: usize = 256 << 10;

/// Which parameters go in which bucket.
#[derive(Debug)]
pub(crate) struct BucketPlan {
    params: Vec<Param>,
    /// Indices into `params`, bucket by bucket, in the order they start.
    buckets: Vec<Vec<usize>>,
}

impl BucketPlan {
    /// Buckets of about `bytes` over `params` in reverse order.
    pub(crate) fn new(params: &[Param], bytes: usize) -> BucketPlan {
        let mut buckets: Vec<Vec<usize>> = Vec::new();
        let mut size = 0usize;
        for i in (0..params.len()).rev() {
            let v = params[i].value();
            let b = v.elem_count() * v.dtype().size_in_bytes();
            match buckets.last_mut() {
                Some(last) if size + b <= bytes => last.push(i),
                _ => {
                    buckets.push(vec![i]);
                    size = 0;
                }
            }
            size += b;
        }
        BucketPlan {
            params: params.to_vec(),
            buckets,
        }
    }

    /// The current variable id of every parameter → (bucket, slot). (An optimizer step gives a
    /// parameter a new variable, so this is taken afresh for each backward pass.)
    fn slots(&self) -> HashMap<u64, (usize, usize)> {
        let mut slot = HashMap::new();
        for (bi, b) in self.buckets.iter().enumerate() {
            for (si, &p) in b.iter().enumerate() {
                slot.insert(self.params[p].var().id(), (bi, si));
            }
        }
        slot
    }
}

/// One backward pass's buckets in flight.
pub(crate) struct Reduction<'a> {
    plan: &'a BucketPlan,
    slot: HashMap<u64, (usize, usize)>,
    collective: &'a dyn Collective,
    filled: Vec<Vec<Option<Tensor>>>,
    missing: Vec<usize>,
    started: Vec<PendingMean>,
    /// The first error of a bucket started during the pass (the pass itself cannot fail on it).
    error: Option<crate::Error>,
}

impl<'a> Reduction<'a> {
    /// No gradient yet.
    pub(crate) fn new(plan: &'a BucketPlan, collective: &'a dyn Collective) -> Reduction<'a> {
        Reduction {
            plan,
            slot: plan.slots(),
            collective,
            filled: plan.buckets.iter().map(|b| vec![None; b.len()]).collect(),
            missing: plan.buckets.iter().map(Vec::len).collect(),
            started: Vec::new(),
            error: None,
        }
    }

    /// A leaf's gradient is complete (the backward pass's hook); starts the buckets it completes.
    pub(crate) fn ready(&mut self, leaf: &Var, grad: &Tensor) {
        if let Some(&(b, s)) = self.slot.get(&leaf.id()) {
            if self.filled[b][s].replace(grad.clone()).is_none() {
                self.missing[b] -= 1;
            }
            if let Err(e) = self.start_ready() {
                self.error.get_or_insert(e);
            }
        }
    }

    /// Starts, in order, every bucket whose gradients are all there.
    fn start_ready(&mut self) -> Result<()> {
        while self.error.is_none()
            && self.started.len() < self.plan.buckets.len()
            && self.missing[self.started.len()] == 0
        {
            let b = self.started.len();
            let tensors: Vec<Tensor> = self.filled[b].iter_mut().filter_map(Option::take).collect();
            self.started.push(self.collective.start_all_reduce_mean(tensors)?);
        }
        Ok(())
    }

    /// After the backward pass: gives the parameters no gradient reached zeros (every replica
    /// reduces the same buckets), starts the rest, waits for every bucket and puts the means in
    /// `grads`. Returns how long it waited (the communication not hidden behind the pass).
    pub(crate) fn finish(mut self, grads: &mut Gradients) -> Result<Duration> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        for (b, bucket) in self.plan.buckets.iter().enumerate() {
            for (s, &p) in bucket.iter().enumerate() {
                if self.filled[b][s].is_none() && b >= self.started.len() {
                    self.filled[b][s] = Some(self.plan.params[p].value().zeros_like()?);
                    self.missing[b] -= 1;
                }
            }
        }
        self.start_ready()?;
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        let waited = Instant::now();
        for (pending, bucket) in self.started.into_iter().zip(&self.plan.buckets) {
            for (mean, &p) in pending.wait()?.into_iter().zip(bucket) {
                grads.insert(&self.plan.params[p].var(), mean);
            }
        }
        Ok(waited.elapsed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_run_backwards_through_the_parameters_and_hold_about_their_size() {
        let p = |n: usize| {
            Param::new(
                format!("p{n}"),
                Tensor::zeros([n], kiln_tensor::DType::F32, kiln_tensor::Device::Cpu).unwrap(),
            )
        };
        // 400, 400, 800 and 100 bytes into buckets of 1000: [p25, p200], [p100, p100].
        let params = vec![p(100), p(100), p(200), p(25)];
        let plan = BucketPlan::new(&params, 1000);
        assert_eq!(plan.buckets, vec![vec![3, 2], vec![1, 0]]);
        // A parameter bigger than a bucket gets one of its own.
        let plan = BucketPlan::new(&[p(10), p(1000), p(10)], 100);
        assert_eq!(plan.buckets, vec![vec![2], vec![1], vec![0]]);
    }
}
