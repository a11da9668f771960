//! [`MpiCollective`]: data parallel over MPI (the `mpi` crate on the system's OpenMPI), one
//! process per replica, started by `mpirun`.
//!
//! Every MPI call happens on one thread this type owns (MPI is initialised there, with
//! `MPI_THREAD_FUNNELED`), so the training thread, and the backward pass feeding gradient buckets,
//! never call MPI themselves. Each collective is a non-blocking MPI operation polled against a
//! deadline ([`MpiCollective::timeout`]): a replica that never arrives (it crashed, or it runs a
//! different program) is an error naming the operation, and the job is aborted so that no rank
//! hangs.
//!
//! Reductions are deterministic: the replicas' buffers are all-gathered and every replica adds
//! them **in rank order**, then scales by `1 / world_size` — the bits of [`LocalCollective`] and
//! of gradient accumulation over the same micro-batches in one process, whatever MPI's own
//! reduction algorithm would do. For two replicas this moves the same bytes as a ring
//! all-reduce; beyond that, the all-gather moves `world_size / 2` times more (the price of exact
//! results, stated in `docs/distributed.md`).
//!
//! [`LocalCollective`]: crate::LocalCollective

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kiln_tensor::{DType, Tensor};
use mpi::request::{scope, Request};
use mpi::topology::{Communicator, SimpleCommunicator};
use mpi::traits::{CommunicatorCollectives, Equivalence, Root};

use crate::collective::{Collective, PendingMean};
use crate::{Error, Result};

/// The default deadline of one collective operation.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// Environment variables through which the MPI launchers (OpenMPI, MPICH/Hydra, PMIx, Slurm) tell a
/// process it is one rank of a job.
const LAUNCHER_VARS: [&str; 4] = ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "SLURM_NTASKS"];

/// Buffers moved by the communication thread.
enum Payload {
    F32(Vec<f32>),
    F64(Vec<f64>),
    Bytes(Vec<u8>),
}

impl Payload {
    fn len(&self) -> usize {
        match self {
            Payload::F32(v) => v.len(),
            Payload::F64(v) => v.len(),
            Payload::Bytes(v) => v.len(),
        }
    }
}

/// What the training thread asks of the communication thread.
enum Job {
    /// Every replica's buffer (all the same length), concatenated in rank order.
    AllGather(Payload),
    /// Replace the buffer by `root`'s.
    Broadcast(Payload, usize),
    Barrier,
}

type Reply = std::result::Result<Payload, String>;

/// A job, the operation's name for errors, and where its result goes.
type Envelope = (&'static str, Job, mpsc::Sender<Reply>);

/// Replicas as MPI processes (see the module documentation).
pub struct MpiCollective {
    rank: usize,
    world_size: usize,
    timeout: Duration,
    /// Nanoseconds the communication thread spent in MPI operations.
    busy_nanos: Arc<AtomicU64>,
    jobs: Mutex<Option<mpsc::Sender<Envelope>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for MpiCollective {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MpiCollective(rank {} of {})", self.rank, self.world_size)
    }
}

/// Whether this process was started by an MPI launcher (`mpirun`, `mpiexec`, `srun`).
pub fn launched_by_mpi() -> bool {
    LAUNCHER_VARS.iter().any(|v| std::env::var_os(v).is_some())
}

impl MpiCollective {
    /// Initialises MPI on a communication thread and joins `MPI_COMM_WORLD`. Errors when this
    /// process was not started by an MPI launcher (MPI would silently run a world of one), or
    /// when MPI cannot be initialised (twice in one process, or a broken installation).
    pub fn init() -> Result<MpiCollective> {
        if !launched_by_mpi() {
            return Err(Error::Collective {
                op: "init",
                reason: "this process was not started by mpirun (no OMPI_COMM_WORLD_SIZE, PMI_SIZE, PMIX_RANK or SLURM_NTASKS in its environment): run it as `mpirun -np N <command>`".into(),
            });
        }
        let timeout = match std::env::var("KILN_MPI_TIMEOUT_SECS") {
            Ok(s) => {
                Duration::from_secs_f64(s.parse::<f64>().ok().filter(|t| *t > 0.0).ok_or_else(|| {
                    Error::Collective {
                        op: "init",
                        reason: format!("KILN_MPI_TIMEOUT_SECS={s:?} is not a positive number of seconds"),
                    }
                })?)
            }
            Err(_) => DEFAULT_TIMEOUT,
        };
        let busy_nanos = Arc::new(AtomicU64::new(0));
        let (ready_tx, ready_rx) = mpsc::channel::<std::result::Result<(usize, usize), String>>();
        let (jobs_tx, jobs_rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("kiln-mpi".into())
            .spawn({
                let busy = busy_nanos.clone();
                move || communication_thread(timeout, busy, ready_tx, jobs_rx)
            })
            .map_err(|e| Error::Collective {
                op: "init",
                reason: format!("cannot start the MPI thread: {e}"),
            })?;
        let (rank, world_size) = ready_rx
            .recv()
            .map_err(|_| "the MPI thread stopped during MPI_Init".to_string())
            .and_then(|r| r)
            .map_err(|reason| Error::Collective { op: "init", reason })?;
        Ok(MpiCollective {
            rank,
            world_size,
            timeout,
            busy_nanos,
            jobs: Mutex::new(Some(jobs_tx)),
            thread: Mutex::new(Some(thread)),
        })
    }

    /// The deadline of one collective operation (default [`DEFAULT_TIMEOUT`]; the environment
    /// variable `KILN_MPI_TIMEOUT_SECS` sets it, read by [`MpiCollective::init`]).
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Runs `job` on the communication thread and waits for its result.
    fn run(&self, op: &'static str, job: Job) -> Result<Payload> {
        let rx = self.submit(op, job)?;
        receive(op, &rx, self.timeout)
    }

    /// Queues `job` on the communication thread (which runs jobs in order, so every replica
    /// starts its MPI operations in the order it submitted them); the result comes on the
    /// returned channel.
    fn submit(&self, op: &'static str, job: Job) -> Result<mpsc::Receiver<Reply>> {
        let (tx, rx) = mpsc::channel();
        {
            let jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
            let sender = jobs.as_ref().ok_or_else(|| Error::Collective {
                op,
                reason: "the MPI thread has stopped".into(),
            })?;
            sender.send((op, job, tx)).map_err(|_| Error::Collective {
                op,
                reason: "the MPI thread has stopped".into(),
            })?;
        }
        Ok(rx)
    }

    /// Every replica's `data` (each the same length), concatenated in rank order.
    fn all_gather(&self, op: &'static str, data: Payload) -> Result<Payload> {
        self.run(op, Job::AllGather(data))
    }
}

/// Waits for a job's result (the communication thread aborts the job at its own deadline; this
/// one only guards against that thread dying).
fn receive(op: &'static str, rx: &mpsc::Receiver<Reply>, timeout: Duration) -> Result<Payload> {
    let deadline = timeout + Duration::from_secs(5);
    match rx.recv_timeout(deadline) {
        Ok(Ok(p)) => Ok(p),
        Ok(Err(reason)) => Err(Error::Collective { op, reason }),
        Err(_) => Err(Error::Collective {
            op,
            reason: format!("no answer from the MPI thread within {deadline:?}"),
        }),
    }
}

impl Drop for MpiCollective {
    fn drop(&mut self) {
        // Closing the channel ends the thread, which finalises MPI.
        self.jobs.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = t.join();
        }
    }
}

/// Concatenates same-dtype tensors into one flat buffer.
fn flatten(tensors: &[Tensor], dtype: DType) -> Result<Payload> {
    Ok(match dtype {
        DType::F32 => {
            let mut v = Vec::new();
            for t in tensors {
                v.extend(t.to_vec::<f32>()?);
            }
            Payload::F32(v)
        }
        DType::F64 => {
            let mut v = Vec::new();
            for t in tensors {
                v.extend(t.to_vec::<f64>()?);
            }
            Payload::F64(v)
        }
        other => {
            return Err(Error::Collective {
                op: "all_reduce_mean",
                reason: format!("tensors of {other} cannot be reduced; gradients are f32 or f64"),
            })
        }
    })
}

/// Splits a flat buffer (from offset `at`) back into tensors of the shapes of `like`.
fn unflatten(payload: &Payload, at: usize, like: &[Tensor]) -> Result<Vec<Tensor>> {
    let mut out = Vec::with_capacity(like.len());
    let mut at = at;
    for t in like {
        let n = t.elem_count();
        out.push(match payload {
            Payload::F32(v) => Tensor::from_vec(v[at..at + n].to_vec(), t.dims())?,
            Payload::F64(v) => Tensor::from_vec(v[at..at + n].to_vec(), t.dims())?,
            Payload::Bytes(_) => unreachable!("tensors travel as f32 or f64"),
        });
        at += n;
    }
    Ok(out)
}

/// The mean over the replicas of the gathered buffer (every replica's `len` values, in rank
/// order), cut into tensors shaped like `like`: the sum in rank order, times `1 / world`, plus
/// zero — element for element the arithmetic of `mean_in_rank_order` (of [`LocalCollective`](crate::LocalCollective)) (`Tensor::add`, then
/// `mul_scalar`, whose affine kernel computes `x · m + 0`), in one pass over the buffer.
fn mean_of_gathered(gathered: &Payload, len: usize, world: usize, like: &[Tensor]) -> Result<Vec<Tensor>> {
    fn mean<T>(all: &[T], len: usize, world: usize, like: &[Tensor], m: T, zero: T) -> Result<Vec<Tensor>>
    where
        T: Copy + std::ops::Add<Output = T> + std::ops::Mul<Output = T> + kiln_tensor::WithDType,
    {
        let mut out = Vec::with_capacity(like.len());
        let mut at = 0;
        for t in like {
            let n = t.elem_count();
            let mut v: Vec<T> = all[at..at + n].to_vec();
            for r in 1..world {
                let other = &all[r * len + at..r * len + at + n];
                v.iter_mut().zip(other).for_each(|(a, &b)| *a = *a + b);
            }
            v.iter_mut().for_each(|a| *a = *a * m + zero);
            out.push(Tensor::from_vec(v, t.dims())?);
            at += n;
        }
        Ok(out)
    }
    let scale = 1.0 / world as f64;
    match gathered {
        Payload::F32(all) => mean(all, len, world, like, scale as f32, 0.0f32),
        Payload::F64(all) => mean(all, len, world, like, scale, 0.0f64),
        Payload::Bytes(_) => Err(Error::Collective {
            op: "all_reduce_mean",
            reason: "tensors travel as f32 or f64".into(),
        }),
    }
}

/// The shapes and dtypes of `tensors`, a line each (what replicas agree on before moving them).
fn layout(tensors: &[Tensor]) -> String {
    let lines: Vec<String> = tensors
        .iter()
        .map(|t| format!("{:?} {}", t.dims(), t.dtype()))
        .collect();
    lines.join("\n")
}

impl Collective for MpiCollective {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world_size
    }

    fn all_reduce_mean(&self, tensors: &mut [Tensor]) -> Result<()> {
        if self.world_size == 1 || tensors.is_empty() {
            return Ok(());
        }
        // Agree on the layout first: a mismatch must be an error on every replica, not a
        // reduction of misaligned buffers.
        self.agree("all_reduce_mean", &layout(tensors))?;
        // One buffer per dtype, in the tensors' order.
        let mut i = 0;
        while i < tensors.len() {
            let dtype = tensors[i].dtype();
            let j = i + tensors[i..].iter().take_while(|t| t.dtype() == dtype).count();
            let run = &tensors[i..j];
            let local = flatten(run, dtype)?;
            let len = local.len();
            let gathered = self.all_gather("all_reduce_mean", local)?;
            let mean = mean_of_gathered(&gathered, len, self.world_size, run)?;
            tensors[i..j].clone_from_slice(&mean);
            i = j;
        }
        Ok(())
    }

    fn start_all_reduce_mean(&self, tensors: Vec<Tensor>) -> Result<PendingMean> {
        if self.world_size == 1 || tensors.is_empty() {
            return Ok(PendingMean::ready(tensors));
        }
        let dtype = tensors[0].dtype();
        if tensors.iter().any(|t| t.dtype() != dtype) {
            // Mixed dtypes travel as one buffer per dtype: the synchronous path.
            let mut tensors = tensors;
            self.all_reduce_mean(&mut tensors)?;
            return Ok(PendingMean::ready(tensors));
        }
        let local = flatten(&tensors, dtype)?;
        let len = local.len();
        let rx = self.submit("all_reduce_mean", Job::AllGather(local))?;
        let (world, timeout) = (self.world_size, self.timeout);
        Ok(PendingMean::new(move || {
            let gathered = receive("all_reduce_mean", &rx, timeout)?;
            mean_of_gathered(&gathered, len, world, &tensors)
        }))
    }

    fn busy_seconds(&self) -> f64 {
        self.busy_nanos.load(Ordering::Relaxed) as f64 * 1e-9
    }

    fn broadcast(&self, tensors: &mut [Tensor], root: usize) -> Result<()> {
        if root >= self.world_size {
            return Err(Error::Collective {
                op: "broadcast",
                reason: format!("root {root} out of range for {} replicas", self.world_size),
            });
        }
        if self.world_size == 1 || tensors.is_empty() {
            return Ok(());
        }
        self.agree("broadcast", &layout(tensors))?;
        for t in tensors.iter_mut() {
            let local = flatten(std::slice::from_ref(t), t.dtype())?;
            let got = self.run("broadcast", Job::Broadcast(local, root))?;
            *t = unflatten(&got, 0, std::slice::from_ref(t))?.remove(0);
        }
        Ok(())
    }

    fn barrier(&self) -> Result<()> {
        if self.world_size == 1 {
            return Ok(());
        }
        self.run("barrier", Job::Barrier).map(|_| ())
    }

    fn all_gather_bytes(&self, op: &'static str, bytes: &[u8]) -> Result<Vec<Vec<u8>>> {
        if self.world_size == 1 {
            return Ok(vec![bytes.to_vec()]);
        }
        // Lengths first, then every replica's bytes padded to the longest.
        let len = Payload::F64(vec![bytes.len() as f64]);
        let Payload::F64(lens) = self.all_gather(op, len)? else {
            unreachable!("an f64 gather returns f64")
        };
        let longest = lens.iter().fold(0.0f64, |a, &b| a.max(b)) as usize;
        let mut padded = bytes.to_vec();
        padded.resize(longest, 0);
        let Payload::Bytes(all) = self.all_gather(op, Payload::Bytes(padded))? else {
            unreachable!("a byte gather returns bytes")
        };
        Ok(lens
            .iter()
            .enumerate()
            .map(|(r, &l)| all[r * longest..r * longest + l as usize].to_vec())
            .collect())
    }
}

/// Waits for `request` until `deadline`, sleeping a little longer each poll (the training
/// threads need the cores more than this one does); past the deadline, `stuck` ends the job.
fn wait_until<'a, D: ?Sized, S: mpi::request::Scope<'a>>(
    mut request: Request<'a, D, S>,
    deadline: Instant,
    stuck: &Stuck<'_>,
) {
    // MPI moves a large message only while a test call runs: poll eagerly (yielding the core to
    // the training thread between tests) for a while, then back off to short naps.
    let start = Instant::now();
    let mut nap = Duration::from_micros(20);
    loop {
        match request.test() {
            Ok(_) => return,
            Err(r) => request = r,
        }
        let now = Instant::now();
        if now >= deadline {
            stuck.give_up();
        }
        if now - start < Duration::from_millis(2) {
            std::thread::yield_now();
        } else {
            std::thread::sleep(nap);
            nap = (nap * 2).min(Duration::from_micros(500));
        }
    }
}

/// What a collective past its deadline needs to end the job.
struct Stuck<'a> {
    world: &'a SimpleCommunicator,
    rank: usize,
    op: &'static str,
    timeout: Duration,
    reply: &'a mpsc::Sender<Reply>,
}

impl Stuck<'_> {
    /// Reports the timeout and aborts the MPI job: no replica may wait forever, and MPI cannot
    /// cancel a pending collective (dropping its request would panic).
    fn give_up(&self) -> ! {
        let why = format!(
            "rank {}: not every replica reached {} within {:?} (a replica crashed, is stuck, or runs a different program); aborting the MPI job",
            self.rank, self.op, self.timeout
        );
        let _ = self.reply.send(Err(why.clone()));
        eprintln!("error: collective {}: {why}", self.op);
        // A moment for the training thread to report the error itself.
        std::thread::sleep(Duration::from_secs(2));
        self.world.abort(3)
    }
}

/// The body of the communication thread: initialises MPI, then serves jobs until the channel
/// closes (finalising MPI when the universe drops).
fn communication_thread(
    timeout: Duration,
    busy: Arc<AtomicU64>,
    ready: mpsc::Sender<std::result::Result<(usize, usize), String>>,
    jobs: mpsc::Receiver<Envelope>,
) {
    let Some((universe, _)) = mpi::initialize_with_threading(mpi::Threading::Funneled) else {
        let _ = ready.send(Err(
            "MPI_Init failed (MPI already initialised in this process, or the MPI installation is broken)"
                .into(),
        ));
        return;
    };
    let world = universe.world();
    let (rank, size) = (world.rank() as usize, world.size() as usize);
    if ready.send(Ok((rank, size))).is_err() {
        return;
    }
    while let Ok((op, job, reply)) = jobs.recv() {
        let stuck = Stuck {
            world: &world,
            rank,
            op,
            timeout,
            reply: &reply,
        };
        let start = Instant::now();
        let result = serve(&world, size, job, start + timeout, &stuck);
        busy.fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
        let _ = reply.send(Ok(result));
    }
}

/// Performs one job (`stuck` ends the MPI job if the deadline passes).
fn serve(world: &SimpleCommunicator, size: usize, job: Job, deadline: Instant, stuck: &Stuck<'_>) -> Payload {
    fn gather<T: Equivalence + Default + Clone>(
        world: &SimpleCommunicator,
        size: usize,
        local: &[T],
        deadline: Instant,
        stuck: &Stuck<'_>,
    ) -> Vec<T> {
        let mut out = vec![T::default(); local.len() * size];
        scope(|s| {
            wait_until(
                world.immediate_all_gather_into(s, local, &mut out[..]),
                deadline,
                stuck,
            )
        });
        out
    }
    fn bcast<T: Equivalence>(
        world: &SimpleCommunicator,
        root: usize,
        buf: &mut [T],
        deadline: Instant,
        stuck: &Stuck<'_>,
    ) {
        let root = world.process_at_rank(root as i32);
        scope(|s| wait_until(root.immediate_broadcast_into(s, buf), deadline, stuck));
    }
    match job {
        Job::AllGather(Payload::F32(v)) => Payload::F32(gather(world, size, &v, deadline, stuck)),
        Job::AllGather(Payload::F64(v)) => Payload::F64(gather(world, size, &v, deadline, stuck)),
        Job::AllGather(Payload::Bytes(v)) => Payload::Bytes(gather(world, size, &v, deadline, stuck)),
        Job::Broadcast(mut p, root) => {
            match &mut p {
                Payload::F32(v) => bcast(world, root, v, deadline, stuck),
                Payload::F64(v) => bcast(world, root, v, deadline, stuck),
                Payload::Bytes(v) => bcast(world, root, v, deadline, stuck),
            }
            p
        }
        Job::Barrier => {
            wait_until(world.immediate_barrier(), deadline, stuck);
            Payload::Bytes(Vec::new())
        }
    }
}
