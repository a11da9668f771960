use std::path::Path;

use kiln::optim::LrSchedule;
use kiln::train::{RunSpec, TrainConfig};

/// `run.json` / `--config` parsing: the settings, their `train` section, its validation, and the
/// learning rate of a valid config's schedule; a valid config round-trips through JSON.
pub fn run_config(data: &[u8]) {
    let Ok(spec) = RunSpec::from_json(data, Path::new("run.json")) else {
        return;
    };
    let _ = serde_json::to_vec(&spec);
    let Ok(cfg) = spec.train_config() else {
        return;
    };
    if cfg.validate().is_err() {
        return;
    }
    let text = serde_json::to_string(&cfg).expect("a valid config serializes");
    let back: TrainConfig = serde_json::from_str(&text).expect("a valid config parses back");
    back.validate().expect("a valid config stays valid");
    if let Some(schedule) = &cfg.schedule {
        for step in [0, 1, 2, 1000, usize::MAX / 2] {
            let _ = schedule.lr(step);
        }
    }
}
