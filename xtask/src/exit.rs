//! How a failed command ends: its error chain on one line, never a backtrace (even with
//! `RUST_BACKTRACE=1`, common in users' environments), and an exit code that tells a usage or
//! input error (2, as for bad flags) from a failure while running (1).

use std::io::ErrorKind;

/// Exit code of input the user can correct: flags, missing or malformed files, configs.
pub const USAGE: i32 = 2;
/// Exit code of a failure while running: training diverged, or the system failed an operation
/// (a disk full, a broken pipe, an address in use).
pub const RUNTIME: i32 = 1;

/// The exit code of `error`: [`RUNTIME`] when a cause in its chain is a divergence or an I/O
/// failure that is not about the path or data the user gave; [`USAGE`] otherwise.
pub fn code_of(error: &anyhow::Error) -> i32 {
    for cause in error.chain() {
        if let Some(kiln::train::Error::Diverged { .. }) = cause.downcast_ref::<kiln::train::Error>() {
            return RUNTIME;
        }
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            return match io.kind() {
                ErrorKind::NotFound
                | ErrorKind::PermissionDenied
                | ErrorKind::AlreadyExists
                | ErrorKind::InvalidInput
                | ErrorKind::InvalidData
                | ErrorKind::UnexpectedEof
                | ErrorKind::NotADirectory
                | ErrorKind::IsADirectory
                | ErrorKind::ReadOnlyFilesystem
                | ErrorKind::InvalidFilename => USAGE,
                _ => RUNTIME,
            };
        }
    }
    USAGE
}

/// Print `error` as one line (`error: what: cause: cause`) and exit with its code.
pub fn fail(error: anyhow::Error) -> ! {
    eprintln!("error: {}", one_line(&error));
    std::process::exit(code_of(&error));
}

/// The error and its causes joined by `: `, without the backtrace anyhow may have captured; a
/// cause whose text the line already holds (an error that prints its source) is said once.
fn one_line(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

/// A panic is a bug in kiln, not a user error: report it in two lines without a backtrace
/// (set `KILN_BACKTRACE=1` to get one) instead of the default hook's multi-line dump.
pub fn install_panic_hook() {
    if std::env::var_os("KILN_BACKTRACE").is_some_and(|v| v != "0") {
        return;
    }
    std::panic::set_hook(Box::new(|info| {
        let what = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic".to_string());
        if is_closed_stdout(&what) {
            // `xtask embed --json ... | head`: the reader left, as it may; end quietly with the
            // status a process killed by SIGPIPE has, like other command-line tools.
            std::process::exit(141);
        }
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        eprintln!("error: internal error (a bug in kiln, please report it): {what}{at}");
        eprintln!("(run with KILN_BACKTRACE=1 for a backtrace)");
    }));
}

/// Whether a panic message is `println!`'s on a closed pipe (the reader of stdout exited).
fn is_closed_stdout(panic_message: &str) -> bool {
    panic_message.starts_with("failed printing to stdout") && panic_message.contains("Broken pipe")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closed_stdout_is_told_from_a_bug() {
        assert!(is_closed_stdout(
            "failed printing to stdout: Broken pipe (os error 32)"
        ));
        assert!(!is_closed_stdout(
            "index out of bounds: the len is 3 but the index is 5"
        ));
    }

    #[test]
    fn a_cause_already_in_the_message_is_said_once() {
        let io = std::io::Error::new(ErrorKind::PermissionDenied, "Permission denied");
        let e = anyhow::Error::new(kiln::train::Error::Io {
            path: "run/run.json".into(),
            source: io,
        })
        .context("writing the run");
        assert_eq!(one_line(&e), "writing the run: run/run.json: Permission denied");
        assert_eq!(code_of(&e), USAGE);
        let full = anyhow::Error::new(std::io::Error::new(ErrorKind::StorageFull, "No space left"));
        assert_eq!(code_of(&full.context("writing a checkpoint")), RUNTIME);
    }
}
