//! `cargo xtask verify RUN_DIR`: check every checkpoint of a run directory (each file's size
//! and CRC-32C against its `trainer_state.json`) and list them; a damaged one fails the command.

use std::path::PathBuf;

use anyhow::bail;

/// Options of `cargo xtask verify`.
#[derive(clap::Args)]
pub struct VerifyArgs {
    /// The run directory (or its `checkpoints/`).
    run: PathBuf,
}

pub fn run(args: VerifyArgs) -> anyhow::Result<()> {
    if !args.run.is_dir() {
        bail!(
            "{}: no such directory (expected a kiln run directory)",
            args.run.display()
        );
    }
    let all = kiln::train::verify_all_checkpoints(&args.run)?;
    let damaged = all.iter().filter(|c| c.problem.is_some()).count();
    for c in &all {
        match &c.problem {
            None => println!("step {:>8}  ok       {}", c.step, c.path.display()),
            Some(why) => println!("step {:>8}  DAMAGED  {why}", c.step),
        }
    }
    if damaged > 0 {
        // Not a usage error: the run's files are damaged (exit code 1).
        return Err(anyhow::Error::new(std::io::Error::other(format!(
            "{} of {} checkpoints in {} are damaged or incomplete",
            damaged,
            all.len(),
            args.run.display()
        ))));
    }
    println!("{} checkpoints, all complete", all.len());
    Ok(())
}
