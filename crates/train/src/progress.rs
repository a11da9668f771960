//! Progress on standard output: an `indicatif` bar (with throughput and ETA) on a terminal, plain
//! periodic lines otherwise.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::config::ProgressMode;

/// The progress reporter of one `fit` call.
pub(crate) enum Progress {
    Off,
    Lines,
    Bar(Option<ProgressBar>),
}

/// What one progress update shows.
pub(crate) struct ProgressLine {
    pub epoch: usize,
    pub step_in_epoch: usize,
    pub steps_per_epoch: usize,
    pub loss: f64,
    pub accuracy: Option<f64>,
    pub samples_per_sec: f64,
    pub unit: &'static str,
    /// Learning rate and gradient norm, shown when gradients are clipped (the norm is known).
    pub lr_and_norm: Option<(f64, f64)>,
}

impl ProgressLine {
    fn metrics(&self) -> String {
        let mut s = format!("loss {:.4}", self.loss);
        if let Some(a) = self.accuracy {
            s.push_str(&format!(" acc {a:.4}"));
        }
        if let Some((lr, norm)) = self.lr_and_norm {
            s.push_str(&format!(" lr {lr:.2e} gnorm {norm:.3}"));
        }
        s.push_str(&format!(" {:.0} {}", self.samples_per_sec, self.unit));
        s
    }
}

impl Progress {
    pub fn new(mode: ProgressMode) -> Progress {
        match mode {
            ProgressMode::Off => Progress::Off,
            ProgressMode::Lines => Progress::Lines,
            ProgressMode::Bar => Progress::Bar(None),
            ProgressMode::Auto => {
                if std::io::stdout().is_terminal() {
                    Progress::Bar(None)
                } else {
                    Progress::Lines
                }
            }
        }
    }

    /// A new epoch of `steps` steps starts, `done` of them already done (a resumed epoch).
    pub fn epoch_begin(&mut self, epoch: usize, epochs: Option<usize>, steps: usize, done: usize) {
        if let Progress::Bar(bar) = self {
            if let Some(b) = bar.take() {
                b.finish_and_clear();
            }
            // 0 steps: an epoch of unknown length (a streamed pipeline).
            let b = ProgressBar::with_draw_target(
                (steps > 0).then_some(steps as u64),
                ProgressDrawTarget::stdout(),
            );
            let style = ProgressStyle::with_template(
                "{prefix} [{bar:30.cyan/blue}] {pos}/{len} {msg} [{elapsed_precise}, ETA {eta}]",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
            b.set_style(style);
            let total = epochs.map(|e| format!("/{e}")).unwrap_or_default();
            b.set_prefix(format!("epoch {}{total}", epoch + 1));
            b.set_position(done as u64);
            b.reset_eta();
            *bar = Some(b);
        }
    }

    /// One optimizer step finished; `step_in_epoch` steps of the epoch are done.
    pub fn step(&self, step_in_epoch: usize) {
        if let Progress::Bar(Some(b)) = self {
            b.set_position(step_in_epoch as u64);
        }
    }

    /// A logging step.
    pub fn log(&self, line: &ProgressLine) {
        match self {
            Progress::Off => {}
            Progress::Lines => println!(
                "epoch {} step {}{} {}",
                line.epoch + 1,
                line.step_in_epoch,
                match line.steps_per_epoch {
                    0 => String::new(),
                    n => format!("/{n}"),
                },
                line.metrics()
            ),
            Progress::Bar(b) => {
                if let Some(b) = b {
                    b.set_message(line.metrics());
                }
            }
        }
    }

    /// A line of its own (an epoch summary), above the bar when there is one.
    pub fn message(&self, text: &str) {
        match self {
            Progress::Off => {}
            Progress::Lines | Progress::Bar(None) => println!("{text}"),
            Progress::Bar(Some(b)) => b.println(text),
        }
    }

    /// Training ended: remove the bar.
    pub fn finish(&mut self) {
        if let Progress::Bar(bar) = self {
            if let Some(b) = bar.take() {
                b.finish_and_clear();
            }
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}
