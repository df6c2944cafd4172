//! Checkpoint averaging after the fact (`grufinity average RUN --last K`): the element-wise
//! mean of the weights of a run's K newest checkpoints, written as a checkpoint of its own,
//! `RUN/checkpoints/average-last-K/`, which `generate`, `eval` and `load` take like any other.
//!
//! The mean is of `model.safetensors`, and of `ema.safetensors` where every chosen checkpoint
//! has one (inference prefers it). The other files (trainer.json, tokenizer, optimiser and
//! carried state) are the newest checkpoint's; `average.json` records the steps averaged.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{CheckpointInfo, RunDir};
use crate::error::{Error, Result};
use crate::files::{tensors, write_dir_atomically, write_file_atomically, HostTensor, Values};
use crate::train::checkpoint::{EMA_FILE, MODEL_FILE};

/// What [`average_last`] wrote.
#[derive(Clone, Debug, Serialize)]
pub struct Averaged {
    /// The new checkpoint directory.
    pub path: PathBuf,
    /// The steps of the checkpoints averaged, oldest first.
    pub steps: Vec<u64>,
    /// The weight files averaged (`model.safetensors`, and `ema.safetensors` where present).
    pub files: Vec<String>,
}

/// The file in an averaged checkpoint naming what it averages.
pub const AVERAGE_FILE: &str = "average.json";

/// Averages the weights of the `last` newest checkpoints of `run` (at least 2).
pub fn average_last(run: &Path, last: usize) -> Result<Averaged> {
    if last < 2 {
        return Err(Error::config("last", format!("got {last}; average at least 2 checkpoints")));
    }
    let dir = RunDir::new(run);
    let all = if dir.checkpoints_dir().is_dir() { dir.checkpoints()? } else { vec![] };
    if all.is_empty() {
        return Err(Error::checkpoint(run, "has no checkpoints to average (is it a run directory?)"));
    }
    if all.len() < last {
        let steps: Vec<String> = all.iter().map(|c| c.step.to_string()).collect();
        return Err(Error::config(
            "last",
            format!("got {last}, but {} has {} checkpoint(s) (steps {}); train with a larger --keep-last", run.display(), all.len(), steps.join(", ")),
        ));
    }
    let chosen = &all[all.len() - last..];
    let newest = &chosen[chosen.len() - 1];
    let files: Vec<&str> = [MODEL_FILE, EMA_FILE].into_iter().filter(|f| chosen.iter().all(|c| c.path.join(f).is_file())).collect();
    let out = dir.checkpoints_dir().join(format!("average-last-{last}"));
    let steps: Vec<u64> = chosen.iter().map(|c| c.step).collect();
    write_dir_atomically(&out, |tmp| {
        for entry in std::fs::read_dir(&newest.path).map_err(|e| Error::io(&newest.path, e))? {
            let entry = entry.map_err(|e| Error::io(&newest.path, e))?;
            let name = entry.file_name();
            if !files.iter().any(|f| name == *f) && name != AVERAGE_FILE {
                std::fs::copy(entry.path(), tmp.join(&name)).map_err(|e| Error::io(entry.path(), e))?;
            }
        }
        for file in &files {
            let (mean, metadata) = mean_of(chosen, file)?;
            tensors::write(&tmp.join(file), &mean, &metadata)?;
        }
        let record = serde_json::json!({ "steps": steps, "files": files });
        write_file_atomically(&tmp.join(AVERAGE_FILE), record.to_string().as_bytes())
    })?;
    Ok(Averaged { path: out, steps, files: files.iter().map(|f| f.to_string()).collect() })
}

/// The element-wise mean of `file` over `chosen` (accumulated in f64), with the newest one's
/// metadata. Every checkpoint must hold the same f32 tensors with the same shapes.
fn mean_of(chosen: &[CheckpointInfo], file: &str) -> Result<(BTreeMap<String, HostTensor>, BTreeMap<String, String>)> {
    let mut sums: BTreeMap<String, (Vec<usize>, Vec<f64>)> = BTreeMap::new();
    let mut metadata = BTreeMap::new();
    for (i, c) in chosen.iter().enumerate() {
        let path = c.path.join(file);
        let (named, meta) = tensors::read(&path)?;
        let differs = |why: String| Error::checkpoint(&path, format!("cannot be averaged with step {}: {why}", chosen[0].step));
        if i > 0 && named.len() != sums.len() {
            return Err(differs(format!("{} tensors instead of {}", named.len(), sums.len())));
        }
        for (name, t) in &named {
            let values = t.f32_values(name)?;
            if i == 0 {
                sums.insert(name.clone(), (t.shape.clone(), vec![0.0; values.len()]));
            }
            let Some((shape, sum)) = sums.get_mut(name) else {
                return Err(differs(format!("tensor `{name}` is not in the first checkpoint")));
            };
            if *shape != t.shape || sum.len() != values.len() {
                return Err(differs(format!("tensor `{name}` has shape {:?}, not {shape:?}", t.shape)));
            }
            sum.iter_mut().zip(values).for_each(|(s, &v)| *s += f64::from(v));
        }
        metadata = meta;
    }
    let n = chosen.len() as f64;
    let mean = sums
        .into_iter()
        .map(|(name, (shape, sum))| (name, HostTensor { shape, data: Values::F32(sum.into_iter().map(|s| (s / n) as f32).collect()) }))
        .collect();
    Ok((mean, metadata))
}
