//! `--distributed`: how `cargo xtask train` finds its replicas (one process, or MPI ranks).

use std::sync::Arc;

use anyhow::bail;
use kiln::train::{Collective, SingleProcess};

/// The collective of `--distributed KIND` (`none`, the default, or `mpi`).
pub fn collective(kind: Option<&str>) -> anyhow::Result<Arc<dyn Collective>> {
    match kind.unwrap_or("none") {
        "none" => Ok(Arc::new(SingleProcess)),
        "mpi" => mpi(),
        other => bail!("--distributed {other:?} is not known; use \"mpi\" (under mpirun) or \"none\""),
    }
}

#[cfg(feature = "mpi")]
fn mpi() -> anyhow::Result<Arc<dyn Collective>> {
    let c = kiln::train::MpiCollective::init()?;
    share_cores(c.rank());
    Ok(Arc::new(c))
}

#[cfg(not(feature = "mpi"))]
fn mpi() -> anyhow::Result<Arc<dyn Collective>> {
    bail!(
        "--distributed mpi: this xtask was built without the `mpi` feature; install OpenMPI (apt-get install libopenmpi-dev openmpi-bin libclang-dev), build with `cargo build --release -p xtask --features mpi` and run `mpirun -np 2 target/release/xtask train ... --distributed mpi` (docs/distributed.md)"
    )
}

/// Ranks on one machine split its cores (unless `KILN_NUM_THREADS` or `RAYON_NUM_THREADS` says
/// otherwise): each rank's thread pool defaulting to every core would oversubscribe them.
#[cfg(feature = "mpi")]
fn share_cores(rank: usize) {
    if std::env::var_os(kiln::tensor::THREADS_ENV).is_some()
        || std::env::var_os("RAYON_NUM_THREADS").is_some()
    {
        return;
    }
    let local = std::env::var("OMPI_COMM_WORLD_LOCAL_SIZE")
        .or_else(|_| std::env::var("MPI_LOCALNRANKS"))
        .ok()
        .and_then(|s| s.parse::<usize>().ok())
        .unwrap_or(1)
        .max(1);
    // The cores this rank may run on: all of the machine's unless mpirun bound it to some
    // (its default for a few ranks: one core each), in which case they are its own.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let machine = std::fs::read_to_string("/proc/cpuinfo")
        .map(|t| t.lines().filter(|l| l.starts_with("processor")).count())
        .unwrap_or(cores);
    let threads = if cores < machine {
        cores
    } else {
        (cores / local).max(1)
    };
    if let Err(e) = kiln::tensor::set_num_threads(threads) {
        eprintln!("rank {rank}: could not size the thread pool: {e}");
    } else if rank == 0 {
        println!("{local} ranks on this machine: {threads} threads each (set KILN_NUM_THREADS to change)");
    }
}
