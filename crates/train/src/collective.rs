//! [`Collective`]: the communication a data-parallel run needs (all-reduce, broadcast, barrier),
//! behind one trait so that MPI or NCCL can plug in without changing the training loop.
//!
//! Two implementations ship: [`SingleProcess`] (one replica; every operation is the identity) and
//! [`LocalCollective`] (replicas as threads of one process sharing memory, for tests).

use std::sync::{Arc, Condvar, Mutex, PoisonError};

use kiln_autograd::{Gradients, Param};
use kiln_tensor::Tensor;

use crate::{Error, Result};

/// Collective communication between the replicas of a data-parallel run. Every replica calls
/// each operation in the same order; an operation returns once every replica has reached it.
pub trait Collective: Send + Sync {
    /// This replica's index, `0..world_size()`.
    fn rank(&self) -> usize;

    /// The number of replicas.
    fn world_size(&self) -> usize;

    /// Replace each tensor by its mean over the replicas (element-wise). Every replica passes
    /// tensors of the same shapes, in the same order.
    fn all_reduce_mean(&self, tensors: &mut [Tensor]) -> Result<()>;

    /// Replace each tensor by replica `root`'s.
    fn broadcast(&self, tensors: &mut [Tensor], root: usize) -> Result<()>;

    /// Wait until every replica has called `barrier`.
    fn barrier(&self) -> Result<()>;

    /// Starts the mean of `tensors` over the replicas ([`Collective::all_reduce_mean`]) and
    /// returns at once with a handle whose [`PendingMean::wait`] gives the result, so that the
    /// caller can go on computing meanwhile (the gradient buckets of the backward pass).
    /// Replicas start their operations in the same order, with tensors of the same shapes (no
    /// check: the run's agreement step checked the parameter shapes). The default computes the
    /// mean now.
    fn start_all_reduce_mean(&self, tensors: Vec<Tensor>) -> Result<PendingMean> {
        let mut tensors = tensors;
        self.all_reduce_mean(&mut tensors)?;
        Ok(PendingMean::ready(tensors))
    }

    /// Seconds spent in communication so far (0 where it is not measured): with the time a
    /// trainer waits for it, the share of the communication hidden behind computation.
    fn busy_seconds(&self) -> f64 {
        0.0
    }

    /// Every replica's `bytes`, in rank order (`op` names the operation in errors).
    fn all_gather_bytes(&self, op: &'static str, bytes: &[u8]) -> Result<Vec<Vec<u8>>>;

    /// Checks that every replica passes the same `description` (lines of `key: value`: the
    /// training configuration, the parameter shapes); otherwise an error, on every replica,
    /// naming the first line that differs and the replicas that differ. Replicas that disagree
    /// would otherwise reduce misaligned buffers or wait for each other forever.
    fn agree(&self, what: &'static str, description: &str) -> Result<()> {
        if self.world_size() == 1 {
            return Ok(());
        }
        let all = self.all_gather_bytes(what, description.as_bytes())?;
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        let reference = text(&all[0]);
        for (r, other) in all.iter().enumerate().skip(1) {
            let other = text(other);
            if other == reference {
                continue;
            }
            let (a, b): (Vec<&str>, Vec<&str>) = (reference.lines().collect(), other.lines().collect());
            let i = (0..a.len().max(b.len()))
                .find(|&i| a.get(i) != b.get(i))
                .unwrap_or(0);
            let show = |l: Option<&&str>| l.map_or("(nothing)".to_string(), |l| format!("`{l}`"));
            return Err(Error::Collective {
                op: what,
                reason: format!(
                    "the replicas disagree: rank 0 has {}, rank {r} has {} (line {} of the description; every replica must run the same configuration)",
                    show(a.get(i)),
                    show(b.get(i)),
                    i + 1
                ),
            });
        }
        Ok(())
    }

    /// Average the gradients of `params` over the replicas, in place. A parameter that requires
    /// grad but has no gradient here contributes zeros (so every replica reduces the same list).
    /// With one replica this does nothing.
    fn all_reduce_gradients(&self, params: &[Param], grads: &mut Gradients) -> Result<()> {
        if self.world_size() == 1 {
            return Ok(());
        }
        let trainable: Vec<&Param> = params.iter().filter(|p| p.requires_grad()).collect();
        let mut tensors = Vec::with_capacity(trainable.len());
        for p in &trainable {
            tensors.push(match p.grad(grads) {
                Some(g) => g,
                None => p.value().zeros_like()?,
            });
        }
        self.all_reduce_mean(&mut tensors)?;
        for (p, g) in trainable.iter().zip(tensors) {
            grads.insert(&p.var(), g);
        }
        Ok(())
    }

    /// Make every replica's parameter values replica `root`'s (at the start of training, so all
    /// replicas start from the same weights). With one replica this does nothing.
    fn broadcast_parameters(&self, params: &[Param], root: usize) -> Result<()> {
        if self.world_size() == 1 {
            return Ok(());
        }
        let mut values: Vec<Tensor> = params.iter().map(Param::value).collect();
        self.broadcast(&mut values, root)?;
        for (p, v) in params.iter().zip(values) {
            p.set_value(v);
        }
        Ok(())
    }
}

/// The result of a [`Collective::start_all_reduce_mean`] still in flight.
pub struct PendingMean {
    finish: Box<dyn FnOnce() -> Result<Vec<Tensor>> + Send>,
}

impl PendingMean {
    /// A result already there.
    pub fn ready(tensors: Vec<Tensor>) -> PendingMean {
        PendingMean {
            finish: Box::new(move || Ok(tensors)),
        }
    }

    /// A result `finish` waits for.
    pub fn new(finish: impl FnOnce() -> Result<Vec<Tensor>> + Send + 'static) -> PendingMean {
        PendingMean {
            finish: Box::new(finish),
        }
    }

    /// Waits for the mean.
    pub fn wait(self) -> Result<Vec<Tensor>> {
        (self.finish)()
    }
}

impl std::fmt::Debug for PendingMean {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PendingMean")
    }
}

/// One replica: every operation is the identity.
#[derive(Clone, Copy, Debug, Default)]
pub struct SingleProcess;

impl Collective for SingleProcess {
    fn rank(&self) -> usize {
        0
    }
    fn world_size(&self) -> usize {
        1
    }
    fn all_reduce_mean(&self, _tensors: &mut [Tensor]) -> Result<()> {
        Ok(())
    }
    fn broadcast(&self, _tensors: &mut [Tensor], root: usize) -> Result<()> {
        if root != 0 {
            return Err(Error::Collective {
                op: "broadcast",
                reason: format!("root {root} out of range for 1 replica"),
            });
        }
        Ok(())
    }
    fn barrier(&self) -> Result<()> {
        Ok(())
    }
    fn all_gather_bytes(&self, _op: &'static str, bytes: &[u8]) -> Result<Vec<Vec<u8>>> {
        Ok(vec![bytes.to_vec()])
    }
}

/// The rendezvous shared by the replicas of a [`LocalCollective`].
struct Rendezvous {
    world_size: usize,
    state: Mutex<Round>,
    turn: Condvar,
}

/// One collective operation in progress.
struct Round {
    /// Increments when a round completes.
    generation: u64,
    /// The operation this round performs (all replicas must agree).
    op: Option<&'static str>,
    inputs: Vec<Option<Vec<Tensor>>>,
    arrived: usize,
    /// The result of the last completed round, shared by every replica.
    result: Arc<std::result::Result<Vec<Tensor>, String>>,
}

/// Replicas as threads of one process sharing memory: a reference implementation of
/// [`Collective`] for tests. [`LocalCollective::new`] returns one handle per replica; give each
/// to its own thread.
///
/// Reductions add the replicas' tensors in rank order, then scale, so every replica receives the
/// same bits regardless of arrival order.
#[derive(Clone)]
pub struct LocalCollective {
    rank: usize,
    shared: Arc<Rendezvous>,
}

impl LocalCollective {
    /// Handles for `world_size` replicas (ranks `0..world_size`). Errors for 0 replicas.
    pub fn new(world_size: usize) -> Result<Vec<LocalCollective>> {
        if world_size == 0 {
            return Err(Error::config("LocalCollective", "world_size", 0, "must be > 0"));
        }
        let shared = Arc::new(Rendezvous {
            world_size,
            state: Mutex::new(Round {
                generation: 0,
                op: None,
                inputs: vec![None; world_size],
                arrived: 0,
                result: Arc::new(Ok(Vec::new())),
            }),
            turn: Condvar::new(),
        });
        Ok((0..world_size)
            .map(|rank| LocalCollective {
                rank,
                shared: shared.clone(),
            })
            .collect())
    }

    /// Deposit `data`; the last replica to arrive combines every replica's data (in rank order)
    /// with `combine` and publishes the result to all.
    fn exchange(
        &self,
        op: &'static str,
        data: Vec<Tensor>,
        combine: impl FnOnce(Vec<Vec<Tensor>>) -> std::result::Result<Vec<Tensor>, String>,
    ) -> Result<Vec<Tensor>> {
        let sh = &self.shared;
        let mut st = sh.state.lock().unwrap_or_else(PoisonError::into_inner);
        match st.op {
            Some(other) if other != op => {
                return Err(Error::Collective {
                    op,
                    reason: format!(
                        "replica {} called {op} while the others are in {other}: replicas must call the same operations in the same order",
                        self.rank
                    ),
                })
            }
            _ => st.op = Some(op),
        }
        let my_gen = st.generation;
        st.inputs[self.rank] = Some(data);
        st.arrived += 1;
        if st.arrived == sh.world_size {
            let inputs: Vec<Vec<Tensor>> = st
                .inputs
                .iter_mut()
                .map(|s| s.take().unwrap_or_default())
                .collect();
            st.result = Arc::new(combine(inputs));
            st.arrived = 0;
            st.op = None;
            st.generation += 1;
            sh.turn.notify_all();
        } else {
            while st.generation == my_gen {
                st = sh.turn.wait(st).unwrap_or_else(PoisonError::into_inner);
            }
        }
        // The next round cannot complete before this replica joins it, so `result` is still ours.
        match &*st.result {
            Ok(v) => Ok(v.clone()),
            Err(reason) => Err(Error::Collective {
                op,
                reason: reason.clone(),
            }),
        }
    }
}

/// The element-wise mean of every replica's tensors, added in rank order then scaled by
/// `1 / world_size` (the same bits on every replica, whatever the arrival order).
pub(crate) fn mean_in_rank_order(inputs: Vec<Vec<Tensor>>) -> std::result::Result<Vec<Tensor>, String> {
    let world = inputs.len();
    let n = inputs[0].len();
    if let Some((r, v)) = inputs.iter().enumerate().find(|(_, v)| v.len() != n) {
        return Err(format!(
            "replica 0 passed {n} tensors but replica {r} passed {}",
            v.len()
        ));
    }
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let mut acc = inputs[0][i].clone();
        for (r, v) in inputs.iter().enumerate().skip(1) {
            let (a, b) = (&inputs[0][i], &v[i]);
            if a.shape() != b.shape() || a.dtype() != b.dtype() {
                return Err(format!(
                    "tensor {i}: replica 0 passed {:?} {}, replica {r} passed {:?} {}",
                    a.dims(),
                    a.dtype(),
                    b.dims(),
                    b.dtype()
                ));
            }
            acc = acc
                .add(&v[i])
                .map_err(|e| format!("tensor {i}, replica {r}: {e}"))?;
        }
        out.push(
            acc.mul_scalar(1.0 / world as f64)
                .map_err(|e| format!("tensor {i}: {e}"))?,
        );
    }
    Ok(out)
}

impl Collective for LocalCollective {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world_size(&self) -> usize {
        self.shared.world_size
    }
    fn all_reduce_mean(&self, tensors: &mut [Tensor]) -> Result<()> {
        let out = self.exchange("all_reduce_mean", tensors.to_vec(), mean_in_rank_order)?;
        tensors.clone_from_slice(&out);
        Ok(())
    }
    fn broadcast(&self, tensors: &mut [Tensor], root: usize) -> Result<()> {
        let world = self.world_size();
        if root >= world {
            return Err(Error::Collective {
                op: "broadcast",
                reason: format!("root {root} out of range for {world} replicas"),
            });
        }
        let n = tensors.len();
        let out = self.exchange("broadcast", tensors.to_vec(), move |mut inputs| {
            let v = std::mem::take(&mut inputs[root]);
            if v.len() != n {
                return Err(format!("root passed {} tensors, replicas expect {n}", v.len()));
            }
            Ok(v)
        })?;
        tensors.clone_from_slice(&out);
        Ok(())
    }
    fn barrier(&self) -> Result<()> {
        self.exchange("barrier", Vec::new(), |_| Ok(Vec::new()))?;
        Ok(())
    }
    fn all_gather_bytes(&self, op: &'static str, bytes: &[u8]) -> Result<Vec<Vec<u8>>> {
        let mine = Tensor::from_vec(bytes.to_vec(), [bytes.len()])?;
        let all = self.exchange(op, vec![mine], |inputs| {
            Ok(inputs.into_iter().flatten().collect())
        })?;
        all.iter()
            .map(|t| t.to_vec::<u8>().map_err(Error::from))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_process_is_the_identity() {
        let c = SingleProcess;
        let mut t = vec![Tensor::from_vec(vec![1.0f32, 2.0], [2]).unwrap()];
        c.all_reduce_mean(&mut t).unwrap();
        c.broadcast(&mut t, 0).unwrap();
        c.barrier().unwrap();
        assert_eq!(t[0].to_vec::<f32>().unwrap(), vec![1.0, 2.0]);
        assert_eq!((c.rank(), c.world_size()), (0, 1));
        assert!(c.broadcast(&mut t, 1).is_err());
    }

    #[test]
    fn local_collective_averages_broadcasts_and_waits() {
        let handles = LocalCollective::new(3).unwrap();
        let results: Vec<(Vec<f32>, Vec<f32>)> = std::thread::scope(|s| {
            let joins: Vec<_> = handles
                .into_iter()
                .map(|c| {
                    s.spawn(move || {
                        let r = c.rank() as f32;
                        let mut out = (Vec::new(), Vec::new());
                        for round in 0..20 {
                            let mut t =
                                vec![Tensor::from_vec(vec![r, 10.0 * r + round as f32], [2]).unwrap()];
                            c.all_reduce_mean(&mut t).unwrap();
                            out.0 = t[0].to_vec::<f32>().unwrap();
                            let mut b = vec![Tensor::from_vec(vec![r], [1]).unwrap()];
                            c.broadcast(&mut b, 2).unwrap();
                            out.1 = b[0].to_vec::<f32>().unwrap();
                            c.barrier().unwrap();
                        }
                        out
                    })
                })
                .collect();
            joins.into_iter().map(|j| j.join().unwrap()).collect()
        });
        for (mean, bcast) in &results {
            assert_eq!(mean, &vec![1.0, 29.0]);
            assert_eq!(bcast, &vec![2.0]);
        }
    }

    #[test]
    fn mismatched_shapes_are_an_error_on_every_replica() {
        let handles = LocalCollective::new(2).unwrap();
        let errs: Vec<String> = std::thread::scope(|s| {
            let joins: Vec<_> = handles
                .into_iter()
                .map(|c| {
                    s.spawn(move || {
                        let n = 1 + c.rank();
                        let mut t = vec![Tensor::from_vec(vec![0.0f32; n], [n]).unwrap()];
                        c.all_reduce_mean(&mut t).unwrap_err().to_string()
                    })
                })
                .collect();
            joins.into_iter().map(|j| j.join().unwrap()).collect()
        });
        assert!(errs.iter().all(|e| e.contains("all_reduce_mean")), "{errs:?}");
        assert!(LocalCollective::new(0).is_err());
    }
}
