//! The fuzz targets (`fuzz/targets.rs`) on stable Rust: each target's seeds and the corpus that
//! libFuzzer kept for it in `fuzz/corpus/<target>/` (inputs that reached new code, and every
//! input that once failed) must load or be refused with a one-line error, without a panic and
//! within the target's time limit. The long, coverage-guided runs are cargo fuzz's (fuzz/README.md).

#[path = "../../../fuzz/targets.rs"]
mod targets;

use std::path::PathBuf;
use std::sync::mpsc;

use targets::{failure, target, NAMES};

/// Every input the stable run replays for `name`: the seeds, then the kept corpus (sorted).
fn inputs(name: &str) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<_> = target(name).seeds.into_iter().enumerate().map(|(i, s)| (format!("{name} seed {i}"), s)).collect();
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus").join(name);
    let mut files: Vec<_> = std::fs::read_dir(&dir).into_iter().flatten().filter_map(|e| e.ok()).map(|e| e.path()).collect();
    files.sort();
    // A file that vanished meanwhile (a running libFuzzer replaces inputs it reduced) is skipped.
    out.extend(files.into_iter().filter_map(|p| Some((format!("{name} {}", p.display()), std::fs::read(&p).ok()?))));
    out
}

/// Runs every input of `name` on a worker thread; returns how many ran and the failures.
fn replay(name: &'static str) -> (usize, Vec<String>) {
    let t = target(name);
    let (limit, run) = (t.limit, t.run.clone());
    let inputs = inputs(name);
    let labels: Vec<String> = inputs.iter().map(|(l, _)| l.clone()).collect();
    let (send, verdicts) = mpsc::channel();
    std::thread::spawn(move || {
        for (_, input) in inputs {
            let verdict = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&input)));
            if send.send(verdict.map_err(|_| "panicked (message above)".to_string())).is_err() {
                break;
            }
        }
    });
    let mut failures = vec![];
    for label in &labels {
        match verdicts.recv_timeout(limit) {
            Err(_) => {
                failures.push(format!("{label}: no answer within {limit:?}"));
                break; // a hung worker cannot be stopped
            }
            Ok(Err(panic)) => failures.push(format!("{label}: {panic}")),
            Ok(Ok(verdict)) => failures.extend(failure(&verdict).map(|f| format!("{label}: {f}"))),
        }
    }
    (labels.len(), failures)
}

#[test]
fn every_fuzz_target_survives_its_corpus() {
    let mut failures = vec![];
    for name in NAMES {
        let (n, f) = replay(name);
        eprintln!("fuzz corpus {name}: {n} inputs, {} failure(s)", f.len());
        assert!(n > 0, "{name} has no inputs");
        failures.extend(f);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Writes each target's seeds into `fuzz/corpus/<target>/seed-<i>`, where cargo fuzz starts
/// from (see fuzz/README.md): `cargo test --release -p grufinity --test fuzz -- --ignored`.
#[test]
#[ignore = "writes the seed corpus for cargo fuzz"]
fn write_seed_corpus() {
    for name in NAMES {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus").join(name);
        std::fs::create_dir_all(&dir).unwrap();
        for (i, seed) in target(name).seeds.iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i}")), seed).unwrap();
        }
    }
}
