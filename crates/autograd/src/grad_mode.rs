//! The thread-local switch that turns recording off (`no_grad`), as `torch.no_grad()`.

use std::cell::Cell;

thread_local! {
    static GRAD_ENABLED: Cell<bool> = const { Cell::new(true) };
}

/// Whether operations on this thread currently record a graph.
pub fn is_grad_enabled() -> bool {
    GRAD_ENABLED.with(|g| g.get())
}

/// Restores the previous recording mode when dropped.
#[must_use = "recording resumes as soon as the guard is dropped"]
pub struct GradModeGuard {
    previous: bool,
}

impl Drop for GradModeGuard {
    fn drop(&mut self) {
        GRAD_ENABLED.with(|g| g.set(self.previous));
    }
}

/// Stop recording on this thread until the guard is dropped: inference pays nothing for autograd.
///
/// ```
/// let _guard = kiln_autograd::no_grad();
/// assert!(!kiln_autograd::is_grad_enabled());
/// ```
pub fn no_grad() -> GradModeGuard {
    set_grad_enabled(false)
}

/// Set recording on or off until the guard is dropped.
pub fn set_grad_enabled(enabled: bool) -> GradModeGuard {
    let previous = GRAD_ENABLED.with(|g| g.replace(enabled));
    GradModeGuard { previous }
}

/// [`kiln_tensor::in_pool`] for autograd code: runs `f` (a whole training step, say) on one of
/// kiln's pool threads, so its many small parallel kernels start from inside the pool, with this
/// thread's recording mode ([`no_grad`]) and matmul precision carried over.
pub fn in_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    let enabled = is_grad_enabled();
    kiln_tensor::in_pool(move || {
        let _mode = set_grad_enabled(enabled);
        f()
    })
}
