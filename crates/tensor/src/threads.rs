//! The number of threads of kiln's parallel kernels: rayon's global pool, sized by
//! [`set_num_threads`] or the `KILN_NUM_THREADS` environment variable (read once, when the first
//! tensor is made), else by rayon's default (`RAYON_NUM_THREADS`, or one per core).
//!
//! Results do not depend on it: every parallel reduction splits its work into a fixed number of
//! parts whatever the thread count and adds them in order, so a training run is bit-identical at
//! 1 thread and at 64.

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
