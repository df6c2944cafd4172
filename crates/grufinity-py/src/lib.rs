//! Thin Python bindings: converts types, releases the GIL around long work, maps errors to the
//! exception classes of `grufinity.errors`. No logic of its own.

use std::path::PathBuf;

use burn::tensor::{Int, Tensor, TensorData};
use numpy::{IntoPyArray, PyArray3, PyReadonlyArray2};
use pyo3::exceptions::PyKeyboardInterrupt;
use pyo3::prelude::*;

use grufinity::data::Tokenizer;
use grufinity::generate::{sample, Rng, SamplingConfig};
use grufinity::model::State;
use grufinity::train::{train as train_run, TrainConfig};
use grufinity::Error;

/// Maps a core error to the matching Python exception class.
fn to_py(py: Python<'_>, err: Error) -> PyErr {
    let class = match &err {
        Error::Config { .. } => "ConfigError",
        Error::NotFound(_) => "DataNotFoundError",
        Error::Data(_) => "DataError",
        Error::Checkpoint { .. } => "CheckpointError",
        Error::Device { .. } => "DeviceError",
        Error::NonFinite { .. } => "TrainingDivergedError",
        Error::Io { .. } => "GrufinityIOError",
    };
    let message = err.to_string();
    match py.import("grufinity.errors").and_then(|m| m.getattr(class)) {
        Ok(cls) => PyErr::from_type(cls.cast_into().expect("exception class"), message),
        Err(e) => e,
    }
}

fn json_err(py: Python<'_>, what: &str, e: serde_json::Error) -> PyErr {
    to_py(py, Error::config(what, e.to_string()))
}

/// Trains from a JSON `TrainConfig`. `callback(event_json) -> bool | None` sees every event;
/// returning False, or a Ctrl-C / SIGTERM arriving, stops after the current step with a
/// checkpoint. Returns the outcome as JSON. An exception raised by the callback or a signal
/// handler is re-raised after the checkpoint is written.
#[pyfunction]
#[pyo3(signature = (config_json, resume=None, callback=None))]
fn train(py: Python<'_>, config_json: &str, resume: Option<PathBuf>, callback: Option<Py<PyAny>>) -> PyResult<String> {
    let config: TrainConfig = serde_json::from_str(config_json).map_err(|e| json_err(py, "config", e))?;
    let mut pending: Option<PyErr> = None;
    let result = py.detach(|| {
        train_run(config, resume.as_deref(), &mut |event| {
            Python::attach(|py| {
                if let Err(e) = py.check_signals() {
                    pending.get_or_insert(e);
                    return false;
                }
                let Some(cb) = &callback else { return true };
                let json = serde_json::to_string(event).unwrap_or_default();
                match cb.call1(py, (json,)) {
                    Ok(r) => !r.bind(py).is(&false.into_pyobject(py).expect("bool").to_owned()),
                    Err(e) => {
                        pending.get_or_insert(e);
                        false
                    }
                }
            })
        })
    });
    let outcome = result.map_err(|e| to_py(py, e))?;
    let json = serde_json::to_string(&outcome).unwrap_or_default();
    if let Some(e) = pending {
        // The checkpoint is written; hand the interruption back with where it is.
        if e.is_instance_of::<PyKeyboardInterrupt>(py) {
            let ki = PyKeyboardInterrupt::new_err(json);
            return Err(ki);
        }
        return Err(e);
    }
    Ok(json)
}

/// A trained model loaded for inference.
#[pyclass(module = "grufinity._grufinity")]
struct Model {
    inner: grufinity::load::Loaded,
}

/// Recurrent state of a model for a batch of rows, opaque to Python.
#[pyclass(module = "grufinity._grufinity")]
#[derive(Clone)]
struct ModelState {
    state: State,
    last_logits: Option<Vec<f32>>,
}

#[pymethods]
impl ModelState {
    /// Number of rows.
    #[getter]
    fn batch(&self) -> usize {
        self.state.batch()
    }
}

#[pymethods]
impl Model {
    /// Loads a run directory (its best checkpoint, else its last) or a checkpoint directory.
    #[staticmethod]
    #[pyo3(signature = (path, device="auto"))]
    fn load(py: Python<'_>, path: PathBuf, device: &str) -> PyResult<Self> {
        let selected = grufinity::device::select(device).map_err(|e| to_py(py, e))?;
        let inner = py
            .detach(|| grufinity::load::load(&path, &selected.device))
            .map_err(|e| to_py(py, e))?;
        Ok(Self { inner })
    }

    /// The checkpoint directory this model came from.
    #[getter]
    fn checkpoint(&self) -> PathBuf {
        self.inner.checkpoint.clone()
    }

    /// Trainer state and resolved config of the checkpoint, as JSON.
    #[getter]
    fn trainer_json(&self) -> String {
        serde_json::to_string(&self.inner.trainer).unwrap_or_default()
    }

    /// Number of parameters.
    #[getter]
    fn num_params(&self) -> usize {
        self.inner.trainer.config.model.num_params()
    }

    /// Vocabulary size.
    #[getter]
    fn vocab_size(&self) -> usize {
        self.inner.tokenizer.vocab_size()
    }

    /// Text (bytes) to token ids.
    fn encode(&self, data: &[u8]) -> Vec<u32> {
        self.inner.tokenizer.encode(data)
    }

    /// Token ids to bytes.
    fn decode(&self, tokens: Vec<u32>) -> Vec<u8> {
        self.inner.tokenizer.decode(&tokens)
    }

    /// The initial state for `batch` rows.
    #[pyo3(signature = (batch=1))]
    fn initial_state(&self, batch: usize) -> ModelState {
        ModelState { state: State::zeros(&self.inner.trainer.config.model, batch, &self.inner.device), last_logits: None }
    }

    /// `tokens`: int array `[B, T]` → (`logits`: float32 `[B, T, V]`, state after the last token).
    #[pyo3(signature = (tokens, state=None))]
    fn forward<'py>(
        &self,
        py: Python<'py>,
        tokens: PyReadonlyArray2<'py, i64>,
        state: Option<&ModelState>,
    ) -> PyResult<(Bound<'py, PyArray3<f32>>, ModelState)> {
        let arr = tokens.as_array();
        let (b, t) = arr.dim();
        let vocab = self.vocab_size() as i64;
        if t == 0 {
            return Err(to_py(py, Error::config("tokens", "need at least one token per row")));
        }
        if let Some(bad) = arr.iter().find(|&&x| x < 0 || x >= vocab) {
            return Err(to_py(py, Error::config("tokens", format!("token id {bad} is outside the vocabulary [0, {vocab})"))));
        }
        let start = match state {
            Some(s) if s.state.batch() != b => {
                return Err(to_py(py, Error::config("state", format!("has {} rows but tokens has {b}", s.state.batch()))))
            }
            Some(s) => s.state.clone(),
            None => State::zeros(&self.inner.trainer.config.model, b, &self.inner.device),
        };
        let ids: Vec<i64> = arr.iter().copied().collect();
        let (logits, next) = py.detach(|| {
            let input = Tensor::<2, Int>::from_data(TensorData::new(ids, [b, t]), &self.inner.device);
            let (logits, next) = self.inner.model.forward(input, start);
            let values = logits.into_data().convert::<f32>().try_to_vec::<f32>().unwrap_or_default();
            (values, next)
        });
        let v = self.vocab_size();
        let last = logits[(b * t - 1) * v..].to_vec();
        let array = numpy::ndarray::Array3::from_shape_vec((b, t, v), logits)
            .map_err(|e| to_py(py, Error::Data(e.to_string())))?
            .into_pyarray(py);
        Ok((array, ModelState { state: next, last_logits: (b == 1).then_some(last) }))
    }

    /// Generates from `prompt` (bytes). `sampling_json` is a `SamplingConfig`. `state` continues
    /// an earlier generation (the prompt is then fed after it). `on_piece(bytes) -> bool | None`
    /// is called with each token's bytes as it is produced; returning False stops. Returns
    /// (generated bytes, state after them).
    #[pyo3(signature = (prompt, sampling_json, state=None, on_piece=None))]
    fn generate(
        &self,
        py: Python<'_>,
        prompt: &[u8],
        sampling_json: &str,
        state: Option<&ModelState>,
        on_piece: Option<Py<PyAny>>,
    ) -> PyResult<(Vec<u8>, ModelState)> {
        let cfg: SamplingConfig = serde_json::from_str(sampling_json).map_err(|e| json_err(py, "sampling", e))?;
        cfg.validate().map_err(|e| to_py(py, e))?;
        let model_cfg = &self.inner.trainer.config.model;
        let mut st = match state {
            Some(s) if s.state.batch() != 1 => return Err(to_py(py, Error::config("state", "generation takes a one-row state"))),
            Some(s) => s.clone(),
            None => self.initial_state(1),
        };
        let tokens = self.inner.tokenizer.encode(prompt);
        let tokenizer: &Tokenizer = &self.inner.tokenizer;
        let mut pending: Option<PyErr> = None;
        let generated = py.detach(|| {
            let mut dec = grufinity::generate::Decoder {
                model: &self.inner.model,
                config: model_cfg,
                device: self.inner.device.clone(),
                state: st.state.clone(),
                last_logits: st.last_logits.clone(),
            };
            dec.feed(&tokens);
            let out = dec.generate(&cfg, &tokens, &mut |tok| {
                Python::attach(|py| {
                    if let Err(e) = py.check_signals() {
                        pending.get_or_insert(e);
                        return false;
                    }
                    let Some(cb) = &on_piece else { return true };
                    let piece = pyo3::types::PyBytes::new(py, &tokenizer.decode(&[tok]));
                    match cb.call1(py, (piece,)) {
                        Ok(r) => !r.bind(py).is(&false.into_pyobject(py).expect("bool").to_owned()),
                        Err(e) => {
                            pending.get_or_insert(e);
                            false
                        }
                    }
                })
            });
            st = ModelState { state: dec.state, last_logits: dec.last_logits };
            out
        });
        if let Some(e) = pending {
            return Err(e);
        }
        Ok((self.inner.tokenizer.decode(&generated), st))
    }

    /// Loss of the model on `data` (bytes) with carried state: JSON with loss (nats/token),
    /// bits per token, bits per byte, perplexity and token count. `reset_every` > 0 resets the
    /// state every that many tokens.
    #[pyo3(signature = (data, rows=1, chunk=256, reset_every=0))]
    fn evaluate(&self, py: Python<'_>, data: &[u8], rows: usize, chunk: usize, reset_every: usize) -> PyResult<String> {
        let tokens = self.inner.tokenizer.encode(data);
        if tokens.len() < 2 {
            return Err(to_py(py, Error::Data("need at least 2 tokens of text to evaluate".into())));
        }
        if chunk == 0 || rows == 0 {
            return Err(to_py(py, Error::config("chunk", "rows and chunk must be at least 1")));
        }
        let bpt = self.inner.tokenizer.bytes_per_token(&tokens);
        let r = py.detach(|| {
            let (loss, n) = grufinity::train::eval::evaluate(
                &self.inner.model,
                &self.inner.trainer.config.model,
                &tokens,
                rows,
                chunk,
                0,
                reset_every,
                &self.inner.device,
            );
            grufinity::train::eval::EvalResult::from_loss(loss, n, bpt)
        });
        Ok(serde_json::to_string(&r).unwrap_or_default())
    }

    /// Picks a token from a logit vector under a `SamplingConfig` (for tests and custom loops).
    #[staticmethod]
    #[pyo3(signature = (logits, sampling_json, history=vec![], seed=0))]
    fn sample_logits(py: Python<'_>, logits: Vec<f32>, sampling_json: &str, history: Vec<u32>, seed: u64) -> PyResult<u32> {
        let cfg: SamplingConfig = serde_json::from_str(sampling_json).map_err(|e| json_err(py, "sampling", e))?;
        cfg.validate().map_err(|e| to_py(py, e))?;
        Ok(sample(&logits, &cfg, &history, &mut Rng::new(seed)))
    }
}

/// Checks a JSON `TrainConfig` and returns it completed with defaults and the derived model
/// fields (vocab size, parameter count) as JSON.
#[pyfunction]
fn resolve_config(py: Python<'_>, config_json: &str) -> PyResult<String> {
    let mut config: TrainConfig = serde_json::from_str(config_json).map_err(|e| json_err(py, "config", e))?;
    let tok = Tokenizer::from_name(&config.tokenizer).map_err(|e| to_py(py, e))?;
    config.model.vocab_size = tok.vocab_size();
    config.validate().map_err(|e| to_py(py, e))?;
    Ok(serde_json::to_string(&config).unwrap_or_default())
}

/// Picks `dim` and `depth` for a parameter budget such as "5M"; returns the model config JSON.
#[pyfunction]
fn size_model(py: Python<'_>, model_json: &str, budget: &str) -> PyResult<String> {
    let model: grufinity::model::ModelConfig = serde_json::from_str(model_json).map_err(|e| json_err(py, "model", e))?;
    let n = grufinity::model::parse_param_budget(budget).map_err(|e| to_py(py, e))?;
    let sized = model.sized_for(n).map_err(|e| to_py(py, e))?;
    Ok(serde_json::to_string(&sized).unwrap_or_default())
}

/// Exact parameter count of a model config (JSON).
#[pyfunction]
fn count_params(py: Python<'_>, model_json: &str) -> PyResult<usize> {
    let model: grufinity::model::ModelConfig = serde_json::from_str(model_json).map_err(|e| json_err(py, "model", e))?;
    model.validate().map_err(|e| to_py(py, e))?;
    Ok(model.num_params())
}

/// Resolves a device request; returns (name, reason) or raises DeviceError.
#[pyfunction]
fn select_device(py: Python<'_>, request: &str) -> PyResult<(String, String)> {
    let s = grufinity::device::select(request).map_err(|e| to_py(py, e))?;
    Ok((s.name, s.reason))
}

#[pymodule]
fn _grufinity(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(train, m)?)?;
    m.add_function(wrap_pyfunction!(resolve_config, m)?)?;
    m.add_function(wrap_pyfunction!(size_model, m)?)?;
    m.add_function(wrap_pyfunction!(count_params, m)?)?;
    m.add_function(wrap_pyfunction!(select_device, m)?)?;
    m.add_class::<Model>()?;
    m.add_class::<ModelState>()?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
