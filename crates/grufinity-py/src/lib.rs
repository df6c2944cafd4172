//! Thin Python bindings: converts types, releases the GIL around long work, maps errors to the
//! exception classes of `grufinity.errors`. No logic of its own.

use std::path::PathBuf;

use burn::tensor::{Int, Tensor, TensorData};
use numpy::{IntoPyArray, PyArray3, PyArrayDyn, PyReadonlyArray2};
use pyo3::exceptions::PyKeyboardInterrupt;
use pyo3::prelude::*;

use grufinity::generate::{run_batch, sample, Decoder, DecoderState, SamplingConfig};
use grufinity::rng::Rng;
use grufinity::model::host::WeightDtype;
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
            notify(callback.as_ref(), &mut pending, event)
        })
    });
    let outcome = match (result, pending.take()) {
        // Stopped before a checkpoint existed (e.g. Ctrl-C while encoding): the interruption
        // is the news, not the error it caused.
        (Err(_), Some(e)) => return Err(e),
        (Err(e), None) => return Err(to_py(py, e)),
        (Ok(o), p) => {
            pending = p;
            o
        }
    };
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

/// Recurrent state of a model for a batch of rows (with, for one row, what generation needs
/// to continue: last logits, history, sampler), opaque to Python.
#[pyclass(module = "grufinity._grufinity")]
#[derive(Clone)]
struct ModelState {
    inner: DecoderState,
}

#[pymethods]
impl ModelState {
    /// Number of rows.
    #[getter]
    fn batch(&self) -> usize {
        self.inner.state.batch()
    }

    /// Number of tokens consumed so far (one-row states).
    #[getter]
    fn tokens_seen(&self) -> usize {
        self.inner.history.len()
    }
}

/// Python's truth value of a callback's result: only an explicit False means "stop".
fn is_false(py: Python<'_>, value: &Py<PyAny>) -> bool {
    value.bind(py).is(&false.into_pyobject(py).expect("bool").to_owned())
}

/// Hands a core event to a Python callback as JSON, from Rust work running without the GIL.
/// Returns false when the work should stop: the callback returned False, or it raised, or a
/// signal handler did (Ctrl-C); the exception is kept in `pending` to be raised afterwards.
fn notify<E: serde::Serialize>(callback: Option<&Py<PyAny>>, pending: &mut Option<PyErr>, event: &E) -> bool {
    Python::attach(|py| {
        if let Err(e) = py.check_signals() {
            pending.get_or_insert(e);
            return false;
        }
        let Some(cb) = callback else { return true };
        let json = serde_json::to_string(event).unwrap_or_default();
        match cb.call1(py, (json,)) {
            Ok(r) => !is_false(py, &r),
            Err(e) => {
                pending.get_or_insert(e);
                false
            }
        }
    })
}

#[pymethods]
impl Model {
    /// Loads a run directory (its best checkpoint, else its last) or a checkpoint directory.
    #[staticmethod]
    #[pyo3(signature = (path, device="auto", dtype="f32"))]
    fn load(py: Python<'_>, path: PathBuf, device: &str, dtype: &str) -> PyResult<Self> {
        let dtype: WeightDtype = dtype.parse().map_err(|e| to_py(py, e))?;
        let selected = grufinity::device::select(device).map_err(|e| to_py(py, e))?;
        let inner = py
            .detach(|| grufinity::load::load(&path, &selected.device, dtype))
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
        ModelState { inner: DecoderState::initial(&self.inner.trainer.config.model, batch, &self.inner.device) }
    }

    /// A state as bytes (safetensors, tagged with this model's config), to continue later.
    fn state_to_bytes<'py>(&self, py: Python<'py>, state: &ModelState) -> PyResult<Bound<'py, pyo3::types::PyBytes>> {
        let bytes = state.inner.to_bytes(&self.inner.trainer.config.model).map_err(|e| to_py(py, e))?;
        Ok(pyo3::types::PyBytes::new(py, &bytes))
    }

    /// A state back from [`state_to_bytes`]; fails (DataError) unless it was saved by a model
    /// of the same config.
    fn state_from_bytes(&self, py: Python<'_>, data: &[u8]) -> PyResult<ModelState> {
        let inner = DecoderState::from_bytes(data, &self.inner.trainer.config.model, &self.inner.device)
            .map_err(|e| to_py(py, e))?;
        Ok(ModelState { inner })
    }

    /// Every parameter by name (`blocks.0.mingru...`) as a float32 array of its shape.
    fn parameters<'py>(&self, py: Python<'py>) -> PyResult<Vec<(String, Bound<'py, PyArrayDyn<f32>>)>> {
        let mut out = Vec::new();
        for (name, flat) in grufinity::train::params::named_params(&self.inner.model) {
            let values = flat.value.into_data().convert::<f32>().try_to_vec::<f32>().unwrap_or_default();
            let array = numpy::ndarray::ArrayD::from_shape_vec(numpy::ndarray::IxDyn(&flat.shape), values)
                .map_err(|e| to_py(py, Error::Data(format!("parameter `{name}`: {e}"))))?;
            out.push((name, array.into_pyarray(py)));
        }
        Ok(out)
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
            Some(s) if s.inner.state.batch() != b => {
                return Err(to_py(py, Error::config("state", format!("has {} rows but tokens has {b}", s.inner.state.batch()))))
            }
            Some(s) => s.inner.state.clone(),
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
        let (mut history, sampler) = match state {
            Some(s) if b == 1 => (s.inner.history.clone(), s.inner.sampler.clone()),
            _ => (Vec::new(), None),
        };
        if b == 1 {
            history.extend(arr.iter().map(|&x| x as u32));
        }
        let inner = DecoderState { state: next, last_logits: (b == 1).then_some(last), history, sampler };
        Ok((array, ModelState { inner }))
    }

    /// Generates from `prompt` (bytes). `sampling_json` is a `SamplingConfig`. `state` continues
    /// an earlier generation (the prompt is then fed after it; with the same seed the sampler
    /// continues too). `on_piece(bytes) -> bool | None` is called with the output as it is
    /// produced (held back while it might begin a stop string); returning False stops. Returns
    /// (generated bytes without a stop string, state after every generated token, why it
    /// ended: length, eos, stop or cancelled).
    #[pyo3(signature = (prompt, sampling_json, state=None, on_piece=None))]
    fn generate(
        &self,
        py: Python<'_>,
        prompt: &[u8],
        sampling_json: &str,
        state: Option<&ModelState>,
        on_piece: Option<Py<PyAny>>,
    ) -> PyResult<(Vec<u8>, ModelState, String)> {
        let cfg: SamplingConfig = serde_json::from_str(sampling_json).map_err(|e| json_err(py, "sampling", e))?;
        cfg.validate_for(self.inner.trainer.config.model.vocab_size).map_err(|e| to_py(py, e))?;
        let start = match state {
            Some(s) if s.inner.state.batch() != 1 => {
                return Err(to_py(py, Error::config("state", "generation takes a one-row state")))
            }
            Some(s) => s.inner.clone(),
            None => self.initial_state(1).inner,
        };
        let tokens = self.inner.tokenizer.encode(prompt);
        let mut pending: Option<PyErr> = None;
        let (result, after) = py.detach(|| {
            let mut dec = Decoder::from_state(&self.inner.model, &self.inner.trainer.config.model, &self.inner.device, start)
                .with_host(self.inner.host());
            dec.feed(&tokens);
            let result = dec.run(&cfg, &self.inner.tokenizer, &mut |piece| {
                Python::attach(|py| {
                    if let Err(e) = py.check_signals() {
                        pending.get_or_insert(e);
                        return false;
                    }
                    let Some(cb) = &on_piece else { return true };
                    if piece.is_empty() {
                        return true;
                    }
                    match cb.call1(py, (pyo3::types::PyBytes::new(py, piece),)) {
                        Ok(r) => !is_false(py, &r),
                        Err(e) => {
                            pending.get_or_insert(e);
                            false
                        }
                    }
                })
            });
            (result, dec.into_state())
        });
        if let Some(e) = pending {
            return Err(e);
        }
        let g = result.map_err(|e| to_py(py, e))?;
        let finish = serde_json::to_value(g.finish).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default();
        Ok((g.text, ModelState { inner: after }, finish))
    }

    /// Generates after each of `prompts` (bytes) at once: every prompt is prefilled on its own,
    /// then all rows share one forward per step. Row `i` gives exactly what `generate` gives for
    /// `prompts[i]` alone. Returns the generated bytes of each prompt.
    #[pyo3(signature = (prompts, sampling_json))]
    fn generate_batch(&self, py: Python<'_>, prompts: Vec<Vec<u8>>, sampling_json: &str) -> PyResult<Vec<Vec<u8>>> {
        let cfg: SamplingConfig = serde_json::from_str(sampling_json).map_err(|e| json_err(py, "sampling", e))?;
        let model_cfg = &self.inner.trainer.config.model;
        cfg.validate_for(model_cfg.vocab_size).map_err(|e| to_py(py, e))?;
        let encoded: Vec<Vec<u32>> = prompts.iter().map(|p| self.inner.tokenizer.encode(p)).collect();
        let mut pending: Option<PyErr> = None;
        let result = py.detach(|| {
            let mut decoders: Vec<Decoder> = Vec::with_capacity(encoded.len());
            for tokens in &encoded {
                let mut dec = Decoder::new(&self.inner.model, model_cfg, &self.inner.device).with_host(self.inner.host());
                dec.feed(tokens);
                decoders.push(dec);
            }
            run_batch(&mut decoders, &cfg, &self.inner.tokenizer, &mut || {
                Python::attach(|py| match py.check_signals() {
                    Ok(()) => true,
                    Err(e) => {
                        pending.get_or_insert(e);
                        false
                    }
                })
            })
        });
        if let Some(e) = pending {
            return Err(e);
        }
        let out = result.map_err(|e| to_py(py, e))?;
        Ok(out.into_iter().map(|g| g.text).collect())
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
        cfg.validate_for(logits.len()).map_err(|e| to_py(py, e))?;
        Ok(sample(&logits, &cfg, &history, &mut Rng::new(seed)))
    }
}

/// Checks a JSON `TrainConfig` and returns it completed with defaults and the derived model
/// fields (vocab size, parameter count) as JSON.
#[pyfunction]
fn resolve_config(py: Python<'_>, config_json: &str) -> PyResult<String> {
    let mut config: TrainConfig = serde_json::from_str(config_json).map_err(|e| json_err(py, "config", e))?;
    let spec = grufinity::data::tokenizer::TokenizerSpec::parse(&config.tokenizer).map_err(|e| to_py(py, e))?;
    // A `char` vocabulary is only known once the corpus is read; the trainer sets it then.
    if let Some(v) = spec.planned_vocab_size(config.vocab_size, config.doc_separator).map_err(|e| to_py(py, e))? {
        config.model.vocab_size = v;
    }
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

/// Resolves a device request; returns (name, reason, [(skipped backend, why)]) or raises
/// DeviceError.
#[pyfunction]
fn select_device(py: Python<'_>, request: &str) -> PyResult<(String, String, Vec<(String, String)>)> {
    let s = py.detach(|| grufinity::device::select(request)).map_err(|e| to_py(py, e))?;
    Ok((s.name, s.reason, s.skipped))
}

/// Every backend of this build: (name, works here, detail or reason). With `probe_gpus`
/// False, GPU backends are listed without their self-check (the Python side runs it in a
/// child process, where a crashing driver cannot take the caller down).
#[pyfunction]
#[pyo3(signature = (probe_gpus=true))]
fn list_devices(py: Python<'_>, probe_gpus: bool) -> Vec<(String, bool, String)> {
    py.detach(|| grufinity::device::list(probe_gpus))
        .into_iter()
        .map(|(name, status)| match status {
            Ok(detail) => (name, true, detail),
            Err(why) => (name, false, why),
        })
        .collect()
}

/// Statistics of corpus files under a tokenizer (`options_json`: tokenizer, vocab_size,
/// doc_separator, cache_dir), tokenized through the token cache like for training. `callback`
/// gets data events as JSON (returning False, or Ctrl-C, stops). Returns the stats as JSON.
#[pyfunction]
#[pyo3(signature = (paths, options_json, top=20, callback=None))]
fn data_stats(py: Python<'_>, paths: Vec<PathBuf>, options_json: &str, top: usize, callback: Option<Py<PyAny>>) -> PyResult<String> {
    let opts: grufinity::data::DataOptions = serde_json::from_str(options_json).map_err(|e| json_err(py, "data options", e))?;
    let mut pending: Option<PyErr> = None;
    let result = py.detach(|| {
        grufinity::data::stats::corpus_stats(&paths, &opts, top, &mut |event| {
            notify(callback.as_ref(), &mut pending, event)
        })
    });
    if let Some(e) = pending {
        return Err(e);
    }
    let stats = result.map_err(|e| to_py(py, e))?;
    Ok(serde_json::to_string(&stats).unwrap_or_default())
}

#[pymodule]
fn _grufinity(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(train, m)?)?;
    m.add_function(wrap_pyfunction!(resolve_config, m)?)?;
    m.add_function(wrap_pyfunction!(size_model, m)?)?;
    m.add_function(wrap_pyfunction!(count_params, m)?)?;
    m.add_function(wrap_pyfunction!(select_device, m)?)?;
    m.add_function(wrap_pyfunction!(list_devices, m)?)?;
    m.add_function(wrap_pyfunction!(data_stats, m)?)?;
    m.add_class::<Model>()?;
    m.add_class::<ModelState>()?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
