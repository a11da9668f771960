//! SIGINT and SIGTERM during `cargo xtask train`: the first one lets the current step finish,
//! writes a checkpoint and ends the run with exit code 130 (SIGINT) or 143 (SIGTERM); a second
//! one exits at once.

use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;

use kiln::train::{Callback, CallbackContext, StepEnd};

/// The exit code of the first signal received (0 while none).
#[derive(Clone, Default)]
pub struct SignalFlag(Arc<AtomicI32>);

impl SignalFlag {
    /// Starts listening for SIGINT and SIGTERM on a thread of its own (nothing on other
    /// platforms).
    pub fn install() -> anyhow::Result<SignalFlag> {
        let flag = SignalFlag::default();
        #[cfg(unix)]
        {
            let got = flag.0.clone();
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            // Registered here, before training starts, so no signal is missed.
            let (mut int, mut term) = rt.block_on(async {
                use tokio::signal::unix::{signal, SignalKind};
                Ok::<_, std::io::Error>((signal(SignalKind::interrupt())?, signal(SignalKind::terminate())?))
            })?;
            std::thread::Builder::new().name("kiln-signals".into()).spawn(move || {
                rt.block_on(async move {
                    loop {
                        let code = tokio::select! {
                            _ = int.recv() => 130,
                            _ = term.recv() => 143,
                        };
                        if got.swap(code, Ordering::SeqCst) != 0 {
                            eprintln!("second signal: exiting now");
                            std::process::exit(code);
                        }
                        eprintln!(
                            "signal received: finishing the current step and writing a checkpoint (a second signal exits at once)"
                        );
                    }
                })
            })?;
        }
        Ok(flag)
    }

    /// The exit code of the signal received, if any.
    pub fn received(&self) -> Option<i32> {
        match self.0.load(Ordering::SeqCst) {
            0 => None,
            code => Some(code),
        }
    }

    /// A trainer callback that stops after the step a signal arrived in, with a checkpoint.
    pub fn callback(&self) -> StopOnSignal {
        StopOnSignal(self.clone())
    }
}

/// See [`SignalFlag::callback`].
pub struct StopOnSignal(SignalFlag);

impl Callback for StopOnSignal {
    fn name(&self) -> &str {
        "stop-on-signal"
    }

    fn on_batch_end(&mut self, _logs: &StepEnd, ctx: &mut CallbackContext<'_>) -> kiln::train::Result<()> {
        if let Some(code) = self.0.received() {
            let name = if code == 130 { "SIGINT" } else { "SIGTERM" };
            ctx.request_stop(format!("{name} received"));
            ctx.request_checkpoint();
        }
        Ok(())
    }
}
