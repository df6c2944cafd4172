//! A small mutational fuzzer on stable Rust, for the loaders of files a user can point at.
//!
//! Each target is a function from bytes to `Ok` or an error message. Inputs are real files
//! (seeds) mutated by [`mutate`]: bit flips, byte insertions and deletions, truncations, splices
//! of two inputs, and JSON-aware changes of numbers, strings, keys and structure (also inside a
//! safetensors header). An input that gives an error message never seen before joins the corpus,
//! so mutations go on from inputs that got further into the loader.
//!
//! A failure is a panic, a time-out (a hang), or an error whose message is empty or spans
//! several lines. Each input is written to `<target dir>/fuzz/<target>/current` before it runs,
//! so one that aborts the process (an allocation failure, a stack overflow) is kept, and failing
//! inputs are saved beside it.
//!
//! `GRUFINITY_FUZZ_SECS` (default 2) sets the seconds per target, `GRUFINITY_FUZZ_SEED` the
//! random seed (default: from the clock; printed).

pub mod json;
pub mod mutate;

use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use mutate::{mutate, Rng};

/// What a target made of an input.
pub type Verdict = Result<(), String>;

/// A loader under test.
pub struct Target {
    pub name: &'static str,
    pub seeds: Vec<Vec<u8>>,
    /// Longest time one input may take.
    pub limit: Duration,
    pub run: Arc<dyn Fn(&[u8]) -> Verdict + Send + Sync>,
}

/// Corpus entries kept at most (the seeds always stay).
const MAX_CORPUS: usize = 400;

/// Fuzzes `target` for the configured time; panics listing the failures, if any.
pub fn fuzz(target: Target) {
    let secs: f64 = std::env::var("GRUFINITY_FUZZ_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(2.0);
    let seed: u64 = std::env::var("GRUFINITY_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
    });
    let report = run(&target, Duration::from_secs_f64(secs), seed);
    eprintln!("{report}");
    assert!(report.failures.is_empty(), "{report}");
}

/// The outcome of a fuzzing session.
pub struct Report {
    pub target: &'static str,
    pub seed: u64,
    pub inputs: u64,
    pub errors: u64,
    pub seconds: f64,
    pub corpus: usize,
    pub messages: usize,
    pub failures: Vec<String>,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "fuzz {}: {} inputs in {:.0} s ({} refused with {} different messages, {} accepted), corpus {}, seed {}, {} failure(s)",
            self.target,
            self.inputs,
            self.seconds,
            self.errors,
            self.messages,
            self.inputs - self.errors - self.failures.len() as u64,
            self.corpus,
            self.seed,
            self.failures.len()
        )?;
        for failure in &self.failures {
            write!(f, "\n  {failure}")?;
        }
        Ok(())
    }
}

/// Where a target's current and failing inputs go.
fn artifacts(target: &str) -> PathBuf {
    let base = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join("..").join("target")
    });
    let dir = base.join("fuzz").join(target);
    let _ = std::fs::create_dir_all(&dir);
    dir
}

/// A failing input, saved for reproduction; returns the line that reports it.
fn keep(dir: &std::path::Path, kind: &str, input: &[u8], what: &str) -> String {
    let name = format!("{kind}-{:016x}", xxhash_rust::xxh3::xxh3_64(input));
    let _ = std::fs::write(dir.join(&name), input);
    format!("{kind}: {what} (input saved as {})", dir.join(name).display())
}

/// Location of the last panic (set by the hook that [`quiet_panics`] installs).
static PANIC_AT: Mutex<Option<String>> = Mutex::new(None);

/// Panics on fuzzing workers (threads named `fuzz-*`) are recorded, not printed once per
/// input; others (the test's own assertions) print as usual.
fn quiet_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if let Ok(mut at) = PANIC_AT.lock() {
                *at = info.location().map(|l| format!("{}:{}", l.file(), l.line()));
            }
            if !std::thread::current().name().is_some_and(|n| n.starts_with("fuzz-")) {
                default(info);
            }
        }));
    });
}

/// The message of a caught panic, with where it happened.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    let msg = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    let at = PANIC_AT.lock().ok().and_then(|at| at.clone()).unwrap_or_default();
    format!("{msg} (at {at})")
}

fn run(target: &Target, budget: Duration, seed: u64) -> Report {
    let dir = artifacts(target.name);
    let current = dir.join("current");
    let mut report = Report { target: target.name, seed, inputs: 0, errors: 0, seconds: 0.0, corpus: 0, messages: 0, failures: vec![] };
    quiet_panics();
    // One worker runs the inputs, so that one that hangs can be noticed (and left behind).
    let (to_worker, inputs) = mpsc::channel::<Vec<u8>>();
    let (to_fuzzer, verdicts) = mpsc::channel::<Result<Verdict, String>>();
    let run_input = target.run.clone();
    let worker = std::thread::Builder::new().name(format!("fuzz-{}", target.name)).spawn(move || {
        for input in inputs {
            let verdict = std::panic::catch_unwind(AssertUnwindSafe(|| run_input(&input)));
            if to_fuzzer.send(verdict.map_err(|payload| panic_message(&*payload))).is_err() {
                break;
            }
        }
    });
    assert!(worker.is_ok(), "cannot start the fuzzing worker");
    let mut rng = Rng(seed);
    let mut corpus: Vec<Vec<u8>> = target.seeds.clone();
    let mut seen = std::collections::HashSet::new();
    let clock = Instant::now();
    while clock.elapsed() < budget {
        let input = if report.inputs < target.seeds.len() as u64 {
            target.seeds[report.inputs as usize].clone()
        } else {
            mutate(&corpus, &mut rng)
        };
        let _ = std::fs::write(&current, &input);
        report.inputs += 1;
        if to_worker.send(input.clone()).is_err() {
            break;
        }
        let failure = match verdicts.recv_timeout(target.limit) {
            Err(_) => Some(keep(&dir, "hang", &input, &format!("no answer within {:?}", target.limit))),
            Ok(Err(panic)) => Some(keep(&dir, "panic", &input, &panic)),
            Ok(Ok(Ok(()))) => None,
            Ok(Ok(Err(message))) => {
                report.errors += 1;
                if message.trim().is_empty() || message.trim().contains('\n') {
                    Some(keep(&dir, "message", &input, &format!("not a one-line message: {message:?}")))
                } else {
                    // New kinds of messages (numbers aside) mark inputs that got somewhere new.
                    let kind: String = message.chars().filter(|c| !c.is_ascii_digit()).take(160).collect();
                    if seen.insert(kind) && corpus.len() < MAX_CORPUS {
                        corpus.push(input);
                    }
                    None
                }
            }
        };
        if let Some(f) = failure {
            let hung = f.starts_with("hang");
            report.failures.push(f);
            if hung || report.failures.len() >= 5 {
                break; // a hung worker cannot be stopped; the rest would queue behind it
            }
        }
    }
    let _ = std::fs::remove_file(&current);
    report.seconds = clock.elapsed().as_secs_f64();
    report.corpus = corpus.len();
    report.messages = seen.len();
    report
}
