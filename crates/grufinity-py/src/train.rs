//! Training, settings, data statistics, devices and runs.

use std::path::PathBuf;

use pyo3::exceptions::PyKeyboardInterrupt;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use grufinity::data::DataOptions;
use grufinity::generate::SamplingConfig;
use grufinity::run::RunDir;
use grufinity::schema::{Key, Schema};
use grufinity::train::{Event, TrainConfig};

use crate::convert::{raw_map, to_py};
use crate::errors::{check, is_false, Bridge};

/// The keys of `which` settings (`train`, `sampling` or `load`): name, section, kind, optional,
/// default, choices, min / max (each `[value, inclusive]` or None) and help.
#[pyfunction]
pub fn config_schema(py: Python<'_>, which: &str) -> PyResult<Py<PyAny>> {
    let keys: Vec<Key> = match which {
        "train" => TrainConfig::user_keys(),
        "sampling" => SamplingConfig::user_keys(),
        "load" => grufinity::inference::LoadConfig::user_keys(),
        other => return Err(pyo3::exceptions::PyValueError::new_err(format!("no settings called {other:?}"))),
    };
    to_py(py, &keys)
}

/// Checks training settings (a dict of user keys) and returns the whole config, nested as the
/// core keeps it (`model` section).
#[pyfunction]
pub fn check_config(py: Python<'_>, values: &Bound<'_, PyDict>) -> PyResult<Py<PyAny>> {
    let config = check(py, TrainConfig::from_raw(&raw_map(values)?))?;
    check(py, config.validate())?;
    to_py(py, &config)
}

/// Checks sampling settings (a dict of user keys) and returns them whole.
#[pyfunction]
pub fn check_sampling(py: Python<'_>, values: &Bound<'_, PyDict>) -> PyResult<Py<PyAny>> {
    let config = check(py, SamplingConfig::from_raw(&raw_map(values)?))?;
    check(py, config.validate())?;
    to_py(py, &config)
}

/// Whether training with `values` would start a new run (rather than resume one): a new run
/// without data trains on the built-in corpus, which the Python package supplies.
#[pyfunction]
pub fn starts_fresh(py: Python<'_>, values: &Bound<'_, PyDict>) -> PyResult<bool> {
    let config = check(py, TrainConfig::from_raw(&raw_map(values)?))?;
    let plan = check(py, grufinity::train::resume::plan(config))?;
    Ok(matches!(plan.start, grufinity::train::resume::Start::Fresh))
}

/// Trains with `values` (a dict of user keys). `callback(event: dict) -> bool | None` sees every
/// event; returning False, or Ctrl-C / SIGTERM, stops at the next safe point with a checkpoint.
/// Returns the outcome as a dict. An exception raised by the callback or a signal handler is
/// raised after the checkpoint is written (a KeyboardInterrupt carries the outcome dict).
#[pyfunction]
#[pyo3(signature = (values, callback=None))]
pub fn train(py: Python<'_>, values: &Bound<'_, PyDict>, callback: Option<Py<PyAny>>) -> PyResult<Py<PyAny>> {
    let config = check(py, TrainConfig::from_raw(&raw_map(values)?))?;
    let mut bridge = Bridge::default();
    let result = py.detach(|| {
        grufinity::train::train(config, &mut |event| {
            bridge.call(|py| match (&callback, event) {
                (None, _) | (_, Event::Heartbeat { .. }) => Ok(true),
                (Some(cb), event) => Ok(!is_false(cb.bind(py).call1((to_py(py, event)?,))?.as_any())),
            })
        })
    });
    match (result, bridge.pending) {
        // Stopped before a checkpoint existed (e.g. Ctrl-C while encoding): the interruption is
        // the news, not the error it caused.
        (Err(_), Some(e)) => Err(e),
        (Err(e), None) => Err(crate::errors::to_py(py, e)),
        (Ok(outcome), pending) => {
            let outcome = to_py(py, &outcome)?;
            match pending {
                // The checkpoint is written; hand the interruption back with where it is.
                Some(e) if e.is_instance_of::<PyKeyboardInterrupt>(py) => Err(PyKeyboardInterrupt::new_err((outcome,))),
                Some(e) => Err(e),
                None => Ok(outcome),
            }
        }
    }
}

/// Statistics of corpus files under a tokenizer (`options`: tokenizer, vocab_size,
/// doc_separator, cache_dir), tokenized through the token cache like for training.
/// `callback(event: dict)` gets data events (returning False, or Ctrl-C, stops).
#[pyfunction]
#[pyo3(signature = (paths, options, top=20, callback=None))]
pub fn data_stats(
    py: Python<'_>,
    paths: Vec<PathBuf>,
    options: &Bound<'_, PyDict>,
    top: usize,
    callback: Option<Py<PyAny>>,
) -> PyResult<Py<PyAny>> {
    let config = check(py, TrainConfig::from_raw(&raw_map(options)?))?;
    let opts: DataOptions = config.data_options();
    let mut bridge = Bridge::default();
    let result = py.detach(|| {
        grufinity::data::stats::corpus_stats(&paths, &opts, top, &mut |event| {
            bridge.call(|py| match &callback {
                None => Ok(true),
                Some(cb) => Ok(!is_false(cb.bind(py).call1((to_py(py, event)?,))?.as_any())),
            })
        })
    });
    let stats = bridge.finish(py, result)?;
    to_py(py, &stats)
}

/// Resolves a device request; returns (name, reason, [(skipped backend, why)]) or raises
/// DeviceError.
#[pyfunction]
pub fn select_device(py: Python<'_>, request: &str) -> PyResult<(String, String, Vec<(String, String)>)> {
    let s = py.detach(|| grufinity::device::select(request));
    let s = check(py, s)?;
    Ok((s.name, s.reason, s.skipped))
}

/// What a device request names, without initialising anything: (canonical name, whether it
/// is a GPU backend whose self-check may crash a process). ConfigError for a bad request.
#[pyfunction]
pub fn parse_device(py: Python<'_>, request: &str) -> PyResult<(String, bool)> {
    check(py, grufinity::device::describe(request))
}

/// The GPU devices `auto` tries, in order, before the CPU.
#[pyfunction]
pub fn auto_devices() -> Vec<String> {
    grufinity::device::auto_candidates()
}

/// Every backend of this build: (name, works here, detail or reason). With `probe_gpus`
/// False, GPU backends are listed without their self-check (the Python side runs it in a
/// child process, where a crashing driver cannot take the caller down).
#[pyfunction]
#[pyo3(signature = (probe_gpus=true))]
pub fn list_devices(py: Python<'_>, probe_gpus: bool) -> Vec<(String, bool, String)> {
    py.detach(|| grufinity::device::list(probe_gpus))
        .into_iter()
        .map(|(name, status)| match status {
            Ok(detail) => (name, true, detail),
            Err(why) => (name, false, why),
        })
        .collect()
}

/// The complete checkpoints of a run, oldest first: dicts with name, step, path, last, best.
#[pyfunction]
pub fn list_checkpoints(py: Python<'_>, run: PathBuf) -> PyResult<Py<PyAny>> {
    let list = check(py, RunDir::new(run).checkpoints())?;
    to_py(py, &list)
}

/// Averages the weights of a run's `last` newest checkpoints into a checkpoint of its own:
/// a dict with path, steps (oldest first) and files (the weight files averaged).
#[pyfunction]
pub fn average_checkpoints(py: Python<'_>, run: PathBuf, last: usize) -> PyResult<Py<PyAny>> {
    let averaged = check(py, py.detach(|| grufinity::run::average::average_last(&run, last)))?;
    to_py(py, &averaged)
}

/// Whether a process is writing the run now (holds its lock).
#[pyfunction]
pub fn run_is_training(run: PathBuf) -> bool {
    RunDir::new(run).is_training()
}

/// Resolves a run or checkpoint directory to a checkpoint directory (`prefer`: best or last).
#[pyfunction]
#[pyo3(signature = (path, prefer="best"))]
pub fn resolve_checkpoint(py: Python<'_>, path: PathBuf, prefer: &str) -> PyResult<PathBuf> {
    check(py, grufinity::run::resolve(&path, prefer))
}

/// Writes `data` to `path` atomically (a temporary file renamed into place).
#[pyfunction]
pub fn write_atomically(py: Python<'_>, path: PathBuf, data: &[u8]) -> PyResult<()> {
    check(py, grufinity::files::write_file_atomically(&path, data))
}

/// The training head of `n` tokens (the rest is the validation tail): what the trainer uses.
#[pyfunction]
pub fn split_point(py: Python<'_>, n: usize, val_fraction: f64) -> PyResult<usize> {
    check(py, grufinity::data::split_point(n, val_fraction))
}

/// The trainer's stream layout of `epoch`: (region starts, one per row; steps in the epoch).
#[pyfunction]
pub fn epoch_layout(py: Python<'_>, n_train: usize, batch: usize, chunk: usize, seed: u64, epoch: u64) -> PyResult<(Vec<usize>, u64)> {
    let batcher = check(py, grufinity::data::StreamBatcher::new(n_train, batch, chunk, seed))?;
    let layout = batcher.layout(epoch);
    Ok((layout.starts, layout.steps))
}

/// The trainer's validation layout: (row starts, targets per row) of `n_val` tokens.
#[pyfunction]
pub fn eval_layout(n_val: usize, rows: usize, cap: usize) -> (Vec<usize>, usize) {
    grufinity::data::batcher::eval_layout(n_val, rows, cap)
}

/// (parameters, parameters in matrix products) of the model that training settings describe
/// (`vocab_size`: the model's vocabulary).
#[pyfunction]
pub fn count_params(py: Python<'_>, values: &Bound<'_, PyDict>, vocab_size: usize) -> PyResult<(usize, usize)> {
    let mut config = check(py, TrainConfig::from_raw(&raw_map(values)?))?;
    config.model.vocab_size = vocab_size;
    check(py, config.model.validate())?;
    Ok((config.model.num_params(), config.model.matmul_params()))
}
