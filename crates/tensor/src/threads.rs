//! The number of threads of kiln's parallel kernels: rayon's global pool, sized by
//! [`set_num_threads`] or the `KILN_NUM_THREADS` environment variable (read once, when the first
//! tensor is made), else by rayon's default (`RAYON_NUM_THREADS`, or one per core).
//!
//! Results do not depend on it: every parallel reduction splits its work into a fixed number of
//! parts whatever the thread count and adds them in order, so a training run is bit-identical at
//! 1 thread and at 64.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Once;

use crate::{Error, Result};

/// The environment variable read for the thread count.
pub const THREADS_ENV: &str = "KILN_NUM_THREADS";

static POOL: Once = Once::new();

/// Sizes the pool from `KILN_NUM_THREADS` the first time it is called (a no-op afterwards). A
/// value that is not a positive integer, or a pool that the application already started, is
/// reported on stderr and the pool is left as it is.
pub(crate) fn init_from_env() {
    POOL.call_once(|| {
        let Ok(value) = std::env::var(THREADS_ENV) else {
            return;
        };
        match value.trim().parse::<usize>() {
            Ok(n) if n > 0 => {
                if let Err(e) = rayon::ThreadPoolBuilder::new().num_threads(n).build_global() {
                    eprintln!(
                        "kiln: {THREADS_ENV}={value} ignored: the thread pool already runs {} threads ({e})",
                        rayon::current_num_threads()
                    );
                }
            }
            _ => eprintln!(
                "kiln: {THREADS_ENV}={value:?} is not a positive integer; using {} threads",
                rayon::current_num_threads()
            ),
        }
    });
}

/// Run kiln's kernels on `n` threads. Must come before the first tensor is made (the pool is
/// started then); afterwards it succeeds only when the pool already has `n` threads.
pub fn set_num_threads(n: usize) -> Result<()> {
    if n == 0 {
        return Err(Error::invalid(
            "set_num_threads",
            "the thread count must be at least 1",
        ));
    }
    let mut built = false;
    POOL.call_once(|| {
        built = rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
            .is_ok()
    });
    let running = rayon::current_num_threads();
    if built || running == n {
        Ok(())
    } else {
        Err(Error::invalid(
            "set_num_threads",
            format!(
                "the thread pool already runs {running} threads; call set_num_threads({n}) before the first tensor operation, or set {THREADS_ENV}"
            ),
        ))
    }
}

/// The number of threads kiln's kernels run on.
pub fn num_threads() -> usize {
    init_from_env();
    rayon::current_num_threads()
}

/// Runs `f` on one of kiln's pool threads while the caller waits, and returns its result.
///
/// A parallel kernel called from a thread outside the pool hands its work over to the pool and
/// puts the caller to sleep until it is done: two thread switches per operation, which on a
/// training step of many small operations (an LSTM's per-time-step products and gate math) cost
/// more than the arithmetic. Called from inside the pool, a kernel runs on the calling thread and
/// only the parts other threads steal move. Wrap a whole step (forward, backward, optimizer) in
/// this; inside the pool already, `f` simply runs. The caller's [`crate::matmul_precision`] holds
/// inside `f` (autograd's `kiln_autograd::in_pool` carries its recording mode as well).
///
/// While `f` runs, the pool's other threads stay awake looking for its work, as OpenMP's threads
/// spin-wait between parallel regions: a thread that went to sleep between two small kernels
/// takes tens of microseconds to wake (more on a virtual machine), more than such a kernel's
/// share of work. They go back to sleep when `f` returns.
pub fn in_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    init_from_env();
    if rayon::current_thread_index().is_some() {
        return f();
    }
    // The pool thread takes on the caller's per-thread settings for the length of `f`.
    let precision = crate::matmul_precision();
    let helpers = rayon::current_num_threads().saturating_sub(1);
    let done = &AtomicBool::new(false);
    rayon::scope(|s| {
        let runner = rayon::current_thread_index();
        for _ in 0..helpers {
            s.spawn(move |_| stay_awake(done, runner));
        }
        // Set even if `f` panics, so the helpers end and the scope can return the panic.
        let _finished = SetOnDrop(done);
        let _precision = crate::set_matmul_precision(precision);
        f()
    })
}

/// Sets its flag when dropped.
struct SetOnDrop<'a>(&'a AtomicBool);

impl Drop for SetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// A helper of [`in_pool`]: runs whatever work the pool has until `done`. On the thread running
/// the step itself (`runner`) it returns at once: it would otherwise wait on the step it is part of.
fn stay_awake(done: &AtomicBool, runner: Option<usize>) {
    if rayon::current_thread_index() == runner {
        return;
    }
    while !done.load(Ordering::Acquire) {
        if rayon::yield_now() != Some(rayon::Yield::Executed) {
            std::hint::spin_loop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_pool_runs_on_a_pool_thread_returns_panics_and_keeps_working() {
        assert!(in_pool(|| rayon::current_thread_index().is_some()));
        let caught = std::panic::catch_unwind(|| in_pool(|| panic!("inside the pool")));
        assert!(caught.is_err(), "the panic comes back to the caller");
        // The helpers of the failed step ended: the next step runs (and its parallel work too).
        let sum: u64 = in_pool(|| {
            use rayon::prelude::*;
            (0..10_000u64).into_par_iter().sum()
        });
        assert_eq!(sum, 49_995_000);
    }
}
