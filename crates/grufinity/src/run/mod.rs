//! A run directory, `out_dir/name/`, and everything about its layout:
//!
//! ```text
//! .lock                    held by the one process writing the run (files::lock)
//! config.json              the resolved config
//! metrics.jsonl, .csv      one line per step / eval / skipped event (train::metrics)
//! samples.txt              a sample at each evaluation
//! checkpoints/step-N/      a checkpoint (train::checkpoint); complete once it has TRAINER_FILE
//! checkpoints/last, best   links to the newest and the lowest-validation-loss checkpoints
//! checkpoints/average-last-K/  the mean of the K newest checkpoints' weights (average)
//! ```
//!
//! This module knows the layout only; what a checkpoint holds is [`crate::train::checkpoint`],
//! and resuming a run [`crate::train::resume`].

pub mod average;

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{Error, Result};
use crate::files::{point_link, remove_dir_atomically, remove_stale_temporaries, DirLock};

/// The file whose presence marks a checkpoint directory as complete (written last).
pub const TRAINER_FILE: &str = "trainer.json";
/// A checkpoint's tokenizer.
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// The directories and files of one run.
#[derive(Clone, Debug)]
pub struct RunDir {
    pub root: PathBuf,
}

/// One checkpoint of a run, as listed by [`RunDir::checkpoints`].
#[derive(Clone, Debug, Serialize)]
pub struct CheckpointInfo {
    /// `step-N`.
    pub name: String,
    pub step: u64,
    pub path: PathBuf,
    /// Whether `last` / `best` point at it.
    pub last: bool,
    pub best: bool,
}

impl RunDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The run that holds checkpoint directory `ckpt` (its grandparent).
    pub fn of_checkpoint(ckpt: &Path) -> Result<Self> {
        let real = ckpt.canonicalize().map_err(|e| Error::io(ckpt, e))?;
        match real.parent().filter(|p| p.file_name().is_some_and(|n| n == "checkpoints")).and_then(Path::parent) {
            Some(run) => Ok(Self::new(run)),
            None => Err(Error::checkpoint(ckpt, "is not inside a run directory (RUN/checkpoints/step-N)")),
        }
    }

    pub fn checkpoints_dir(&self) -> PathBuf {
        self.root.join("checkpoints")
    }

    pub fn config_file(&self) -> PathBuf {
        self.root.join("config.json")
    }

    pub fn samples_file(&self) -> PathBuf {
        self.root.join("samples.txt")
    }

    /// The checkpoint directory of `step`.
    pub fn checkpoint(&self, step: u64) -> PathBuf {
        self.checkpoints_dir().join(format!("step-{step}"))
    }

    /// Whether the run has at least one complete checkpoint.
    pub fn has_checkpoints(&self) -> bool {
        self.checkpoints().map(|c| !c.is_empty()).unwrap_or(false)
    }

    /// Takes the run's one-writer lock: a second process writing the same run fails here,
    /// naming the one that holds it.
    pub fn lock(&self) -> Result<DirLock> {
        DirLock::acquire(&self.root, &format!("run {}", self.root.display()))
    }

    /// Whether a process is writing the run now.
    pub fn is_training(&self) -> bool {
        DirLock::is_held(&self.root)
    }

    /// Removes what killed writers left behind (temporary checkpoint directories, links and
    /// files of dead processes). Call with the lock held. Returns the bytes freed.
    pub fn remove_debris(&self) -> u64 {
        remove_stale_temporaries(&self.root) + remove_stale_temporaries(&self.checkpoints_dir())
    }

    /// The step the link `name` (`last` or `best`) points at, if it exists.
    pub fn link_step(&self, name: &str) -> Option<u64> {
        let target = std::fs::read_link(self.checkpoints_dir().join(name)).ok()?;
        target.file_name()?.to_str()?.strip_prefix("step-")?.parse().ok()
    }

    /// The checkpoint the run continues from, with its step: `last`, or, when `last` is missing
    /// or dangling (a crash between a checkpoint's rename and its link), the newest complete one.
    pub fn last_checkpoint(&self) -> Option<(u64, PathBuf)> {
        let last = self.checkpoints_dir().join("last");
        match self.link_step("last") {
            Some(step) if last.join(TRAINER_FILE).is_file() => Some((step, last)),
            _ => self.checkpoints().ok()?.pop().map(|c| (c.step, c.path)),
        }
    }

    /// Points `name` (`last`, `best`) at the checkpoint of `step`.
    pub fn point(&self, name: &str, step: u64) -> Result<()> {
        point_link(&self.checkpoints_dir(), name, &format!("step-{step}"))
    }

    /// The complete checkpoints, oldest first.
    pub fn checkpoints(&self) -> Result<Vec<CheckpointInfo>> {
        let dir = self.checkpoints_dir();
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
            Err(e) => return Err(Error::io(&dir, e)),
        };
        let (last, best) = (self.link_step("last"), self.link_step("best"));
        let mut out: Vec<CheckpointInfo> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().to_str()?.to_string();
                let step: u64 = name.strip_prefix("step-")?.parse().ok()?;
                let path = e.path();
                path.join(TRAINER_FILE).is_file().then(|| CheckpointInfo {
                    name,
                    step,
                    path,
                    last: last == Some(step),
                    best: best == Some(step),
                })
            })
            .collect();
        out.sort_by_key(|c| c.step);
        Ok(out)
    }

    /// Keeps the newest `keep` step checkpoints and the best one.
    pub fn prune(&self, keep: usize) -> Result<()> {
        let all = self.checkpoints()?;
        let keep = keep.max(1);
        if all.len() > keep {
            for c in &all[..all.len() - keep] {
                if !c.best && !c.last {
                    // Not remove_dir_all in place: killed halfway, it left a checkpoint that
                    // still looked complete with files missing (found by the crash campaign).
                    let _ = remove_dir_atomically(&c.path);
                }
            }
        }
        Ok(())
    }
}

/// Resolves a run directory or a checkpoint directory to a checkpoint directory: a run gives
/// its `prefer` checkpoint (`best` or `last`) if it has one, else the other.
pub fn resolve(path: &Path, prefer: &str) -> Result<PathBuf> {
    if !path.exists() {
        return Err(Error::NotFound(path.to_path_buf()));
    }
    if path.join(TRAINER_FILE).exists() {
        return Ok(path.to_path_buf());
    }
    let run = RunDir::new(path);
    let best = run.checkpoints_dir().join("best");
    let best = best.join(TRAINER_FILE).is_file().then_some(best);
    let last = || run.last_checkpoint().map(|(_, c)| c);
    let found = if prefer == "best" { best.or_else(last) } else { last().or(best) };
    match found {
        Some(c) => Ok(c.canonicalize().unwrap_or(c)),
        None => Err(Error::checkpoint(path, "is neither a run directory with checkpoints nor a checkpoint directory")),
    }
}

/// `run-YYYYmmdd-HHMMSS` in local time: the name of a run that was given none.
pub fn default_run_name() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as libc::time_t)
        .unwrap_or(0);
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // localtime_r is thread-safe and reads the TZ setting.
    unsafe { libc::localtime_r(&now, &mut tm) };
    format!(
        "run-{:04}{:02}{:02}-{:02}{:02}{:02}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}
