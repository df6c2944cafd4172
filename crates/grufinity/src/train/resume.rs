//! Where a training run starts: a fresh run, the continuation of a run, or a new run branched
//! from an older checkpoint; and the one policy for the settings of a resumed run.
//!
//! A resumed run keeps what defines it (architecture, data, tokenizer, optimiser, schedule,
//! seed...): giving one of those with a different value is an error naming the key. It takes
//! from the new settings, when they are given (differ from the defaults), the ones that say how
//! long and how it is watched: [`OVERRIDABLE`]. The budgets go together: giving any of them
//! replaces all four; giving none keeps the run's.
//!
//! Resuming a checkpoint older than the run's `last` would overwrite the newer checkpoints, so
//! it is refused unless a new `name` is given: the run then branches into that new run
//! directory and the original stays as it was.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::checkpoint::{read_trainer_state, TrainerState};
use super::config::TrainConfig;
use crate::error::{Error, Result};
use crate::run::RunDir;
use crate::schema::{flat, Schema};

/// The budget keys: given together or inherited together.
pub const BUDGETS: &[&str] = &["max_steps", "max_tokens", "max_time", "epochs"];

/// Settings a resumed run takes from the new config when they are given.
pub const OVERRIDABLE: &[&str] = &[
    "eval_every",
    "eval_tokens",
    "save_every",
    "keep_last",
    "log_every",
    "sample_prompt",
    "sample_tokens",
    "early_stop_patience",
    "on_nan",
    "device",
    "precision",
    "cache_dir",
    "tensorboard",
];

/// Settings that locate a run rather than define it: never compared.
const LOCATION: &[&str] = &["out_dir", "name", "resume", "data_description"];

/// How a run starts.
pub enum Start {
    Fresh,
    /// Continue from `checkpoint`, whose trainer state is `saved`.
    Resume { checkpoint: PathBuf, saved: Box<TrainerState>, branched_from: Option<PathBuf> },
}

/// A resolved start: the run directory, the settings to train with, where it starts.
pub struct Plan {
    pub run: RunDir,
    pub config: TrainConfig,
    pub start: Start,
}

/// Decides where `config` trains (see the [module docs](self)). `config.name` must be set.
pub fn plan(mut config: TrainConfig) -> Result<Plan> {
    if config.resume.as_deref() == Some("") {
        config.resume = None;
    }
    if config.name.is_empty() {
        match config.resume.as_deref() {
            None => config.name = crate::run::default_run_name(),
            Some("auto") => return Err(Error::config("resume", "`auto` needs the run's name (--name) to look for")),
            Some(_) => {}
        }
    }
    let checkpoint = match config.resume.as_deref() {
        None => None,
        Some("auto") => RunDir::new(config.out_dir.join(&config.name)).last_checkpoint().map(|(_, c)| c),
        Some(path) => Some(checkpoint_to_resume(Path::new(path))?),
    };
    let Some(checkpoint) = checkpoint else {
        let run = RunDir::new(config.out_dir.join(&config.name));
        if run.has_checkpoints() {
            return Err(Error::Data(format!(
                "run {} already exists; resume it with --resume, or choose another --name",
                run.root.display()
            )));
        }
        return Ok(Plan { run, config, start: Start::Fresh });
    };
    let saved = read_trainer_state(&checkpoint)?;
    let origin = RunDir::of_checkpoint(&checkpoint)?;
    let requested_run = config.out_dir.join(&config.name);
    let named_elsewhere = !config.name.is_empty()
        && config.resume.as_deref() != Some("auto")
        && !same_dir(&requested_run, &origin.root);
    if !named_elsewhere && origin.is_training() {
        // Another process is writing the run, so its checkpoints move while they are read here:
        // refuse naming that process (the lock's error), not a step count that just changed.
        drop(origin.lock()?);
    }
    let newest = origin.last_checkpoint().map_or(saved.step, |(step, _)| step);
    let (run, branched_from) = if named_elsewhere {
        let run = RunDir::new(requested_run);
        if run.has_checkpoints() {
            return Err(Error::Data(format!(
                "run {} already exists; choose another --name to branch {} into",
                run.root.display(),
                checkpoint.display()
            )));
        }
        (run, Some(origin.root.clone()))
    } else if saved.step < newest {
        return Err(Error::checkpoint(
            &checkpoint,
            format!(
                "is at step {} but the run's last checkpoint is at step {newest}: resuming it in place would \
                 overwrite the newer checkpoints; give a new --name to branch from it into a new run",
                saved.step
            ),
        ));
    } else {
        (origin, None)
    };
    let mut merged = merge(&saved.config, &config)?;
    merged.out_dir = run.root.parent().map(Path::to_path_buf).unwrap_or_default();
    merged.name = run.root.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    merged.resume = config.resume.clone();
    let checkpoint = checkpoint.canonicalize().map_err(|e| Error::io(&checkpoint, e))?;
    Ok(Plan { run, config: merged, start: Start::Resume { checkpoint, saved: Box::new(saved), branched_from } })
}

/// The checkpoint a user-given resume path means: a run's last checkpoint, or a checkpoint.
fn checkpoint_to_resume(path: &Path) -> Result<PathBuf> {
    if !path.exists() {
        return Err(Error::NotFound(path.to_path_buf()));
    }
    if path.join(crate::run::TRAINER_FILE).exists() {
        return Ok(path.to_path_buf());
    }
    if let Some((_, last)) = RunDir::new(path).last_checkpoint() {
        return Ok(last);
    }
    Err(Error::checkpoint(path, "has no complete checkpoint to resume"))
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

/// The settings of a resumed run: `saved`, with the [`OVERRIDABLE`] keys and [`BUDGETS`] that
/// `requested` gives; any other key `requested` gives with another value is an error.
pub fn merge(saved: &TrainConfig, requested: &TrainConfig) -> Result<TrainConfig> {
    let given: Vec<&str> = requested.changed_keys();
    let (old, new) = (flat(saved), flat(requested));
    let budgets_given = given.iter().any(|k| BUDGETS.contains(k));
    let mut json = serde_json::to_value(saved).map_err(|e| Error::Data(e.to_string()))?;
    for key in TrainConfig::user_keys() {
        let name = key.name;
        let take = if BUDGETS.contains(&name) {
            budgets_given
        } else if OVERRIDABLE.contains(&name) {
            given.contains(&name)
        } else {
            if given.contains(&name) && !LOCATION.contains(&name) && old.get(name) != new.get(name) {
                return Err(Error::config(
                    name,
                    format!(
                        "cannot be changed when resuming (the run has {}, given {}); start a new run instead",
                        show(old.get(name)),
                        show(new.get(name))
                    ),
                ));
            }
            false
        };
        if take {
            let target = match key.section {
                Some(s) => &mut json[s],
                None => &mut json,
            };
            target[name] = new.get(name).cloned().unwrap_or(Value::Null);
        }
    }
    serde_json::from_value(json).map_err(|e| Error::Data(format!("cannot merge the resumed settings: {e}")))
}

fn show(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => "none".into(),
        Some(Value::String(s)) => format!("{s:?}"),
        Some(v) => v.to_string(),
    }
}
