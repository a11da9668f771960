//! The stable-Rust fuzz runner: replays each target's checked-in corpus and regressions, then
//! runs mutations of the corpus for a while. A panic, an allocation past the memory limit or an
//! input running past the time limit is a crash: the input is saved under
//! `fuzz/artifacts/TARGET/` and the exit code is 1.

use std::alloc::{GlobalAlloc, Layout, System};
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use clap::Parser;
use kiln_fuzz::mutate::Mutator;
use kiln_fuzz::{crate_dir, inputs_in, Target, TARGETS};

/// A single allocation larger than this is a crash (a reader that trusts a length field).
const ALLOCATION_LIMIT: usize = 3 << 30;
/// An input running longer than this is a crash (a hang).
const TIME_LIMIT: Duration = Duration::from_secs(20);

/// The target and input being run, for the allocation guard and the watchdog to save.
static CURRENT: Mutex<(&str, Vec<u8>)> = Mutex::new(("", Vec::new()));
/// Inputs run so far (the watchdog sees whether it moves).
static EXECUTIONS: AtomicU64 = AtomicU64::new(0);

/// The system allocator, refusing (as a crash, with the input saved) any single allocation
/// past [`ALLOCATION_LIMIT`].
struct Guarded;

// SAFETY: every call is forwarded to `System` with the same arguments; the guard only aborts.
unsafe impl GlobalAlloc for Guarded {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        check_size(layout.size());
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        check_size(layout.size());
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        check_size(new_size);
        // SAFETY: forwarded with the caller's pointer, layout and size.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's pointer and layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Guarded = Guarded;

fn check_size(size: usize) {
    if size > ALLOCATION_LIMIT {
        save_current_and_abort(&format!("an allocation of {size} bytes"));
    }
}

/// Save the input being run as a crash and abort (small allocations still work here).
fn save_current_and_abort(what: &str) -> ! {
    if let Ok(current) = CURRENT.try_lock() {
        let path = save_crash(current.0, "oom-or-hang", &current.1);
        eprintln!(
            "CRASH in {}: {what}; input saved to {}",
            current.0,
            path.display()
        );
    } else {
        eprintln!("CRASH: {what}");
    }
    std::process::abort();
}

/// Write a crashing input to `fuzz/artifacts/TARGET/KIND-CRC`, returning its path.
fn save_crash(target: &str, kind: &str, input: &[u8]) -> PathBuf {
    let dir = crate_dir().join("artifacts").join(target);
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join(format!("{kind}-{:08x}", crc32c::crc32c(input)));
    let _ = std::fs::write(&path, input);
    path
}

/// Replay and mutate the corpora of kiln's fuzz targets.
#[derive(Parser)]
#[command(name = "kiln-fuzz")]
struct Args {
    /// Seconds of mutations per target (after the corpus and regressions are replayed).
    #[arg(long, default_value_t = 20.0)]
    seconds: f64,
    /// Seed of the mutations.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Longest input, in bytes.
    #[arg(long, default_value_t = 1 << 20)]
    max_len: usize,
    /// Write each target's generated seeds of at most 64 KiB into its corpus directory, and exit.
    #[arg(long)]
    write_seeds: bool,
    /// Targets to run (default: all): safetensors, idx, tokenizer_json, instruction_jsonl,
    /// run_config, checkpoint.
    targets: Vec<String>,
}

/// Outcome of one target.
struct Report {
    executions: u64,
    seconds: f64,
    crash: Option<(PathBuf, String)>,
}

/// Runs `input` on `target`, returning the panic message if it panicked.
fn run_one(target: &Target, input: &[u8]) -> Option<String> {
    if let Ok(mut current) = CURRENT.lock() {
        current.0 = target.name;
        current.1.clear();
        current.1.extend_from_slice(input);
    }
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| (target.run)(input)));
    EXECUTIONS.fetch_add(1, Ordering::Relaxed);
    result.err().map(|payload| {
        payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic".into())
    })
}

fn fuzz(target: &Target, args: &Args) -> Report {
    let started = Instant::now();
    let dir = crate_dir();
    let mut corpus: Vec<Vec<u8>> = inputs_in(&dir.join("corpus").join(target.name))
        .into_iter()
        .map(|(_, b)| b)
        .collect();
    corpus.extend((target.seeds)());
    let regressions = inputs_in(&dir.join("regressions").join(target.name));
    let mut executions = 0u64;
    let crash = |input: &[u8], why: String| Some((save_crash(target.name, "crash", input), why));
    for input in corpus.iter().chain(regressions.iter().map(|(_, b)| b)) {
        executions += 1;
        if let Some(why) = run_one(target, input) {
            return Report {
                executions,
                seconds: started.elapsed().as_secs_f64(),
                crash: crash(input, why),
            };
        }
    }
    let mut mutator = Mutator::new(
        args.seed ^ crc32c::crc32c(target.name.as_bytes()) as u64,
        args.max_len,
    );
    let deadline = started + Duration::from_secs_f64(args.seconds);
    let mut input = Vec::new();
    while !corpus.is_empty() && Instant::now() < deadline {
        // A batch between clock reads.
        for _ in 0..64 {
            input.clear();
            input.extend_from_slice(&corpus[mutator.pick(corpus.len())]);
            mutator.mutate(&mut input, &corpus);
            executions += 1;
            if let Some(why) = run_one(target, &input) {
                return Report {
                    executions,
                    seconds: started.elapsed().as_secs_f64(),
                    crash: crash(&input, why),
                };
            }
        }
    }
    Report {
        executions,
        seconds: started.elapsed().as_secs_f64(),
        crash: None,
    }
}

/// Aborts, saving the input, when no input finishes within [`TIME_LIMIT`].
fn start_watchdog() {
    std::thread::spawn(|| {
        let mut last = (EXECUTIONS.load(Ordering::Relaxed), Instant::now());
        loop {
            std::thread::sleep(Duration::from_millis(500));
            let now = EXECUTIONS.load(Ordering::Relaxed);
            if now != last.0 {
                last = (now, Instant::now());
            } else if last.1.elapsed() > TIME_LIMIT {
                save_current_and_abort(&format!("an input ran past {} s", TIME_LIMIT.as_secs()));
            }
        }
    });
}

fn main() {
    let args = Args::parse();
    let chosen: Vec<&Target> = if args.targets.is_empty() {
        TARGETS.iter().collect()
    } else {
        let mut v = Vec::new();
        for name in &args.targets {
            match kiln_fuzz::target(name) {
                Some(t) => v.push(t),
                None => {
                    let known: Vec<&str> = TARGETS.iter().map(|t| t.name).collect();
                    eprintln!(
                        "error: unknown target {name:?}; the targets are {}",
                        known.join(", ")
                    );
                    std::process::exit(2);
                }
            }
        }
        v
    };
    if args.write_seeds {
        for target in &chosen {
            for (i, seed) in (target.seeds)()
                .iter()
                .enumerate()
                .filter(|(_, s)| s.len() <= 64 << 10)
            {
                let path = crate_dir()
                    .join("corpus")
                    .join(target.name)
                    .join(format!("seed-{i}"));
                if let Err(e) = std::fs::write(&path, seed) {
                    eprintln!("error: cannot write {}: {e}", path.display());
                    std::process::exit(1);
                }
                println!("wrote {}", path.display());
            }
        }
        return;
    }
    // Panics are caught and reported once per target, not printed as they happen.
    std::panic::set_hook(Box::new(|_| {}));
    start_watchdog();
    let mut crashed = false;
    for target in chosen {
        let r = fuzz(target, &args);
        println!(
            "{:<18} {:>10} executions in {:>6.1} s ({:>8.0}/s){}",
            target.name,
            r.executions,
            r.seconds,
            r.executions as f64 / r.seconds.max(1e-9),
            match &r.crash {
                Some((path, why)) => format!(": CRASH ({why}), input saved to {}", path.display()),
                None => ": no crash".into(),
            }
        );
        crashed |= r.crash.is_some();
    }
    std::process::exit(i32::from(crashed));
}
