//! A trained model for inference: the core's [`Loaded`] with numpy and bytes around it.

use std::path::PathBuf;

use numpy::{IntoPyArray, PyArray3, PyArrayDyn, PyReadonlyArray2};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

use grufinity::generate::{sample, DecoderState, SamplingConfig};
use grufinity::model::quant::WeightDtype;
use grufinity::rng::Rng;
use grufinity::schema::Schema;
use grufinity::{Error, Loaded};

use crate::convert::{raw_map, to_py};
use crate::errors::{check, is_false, to_py as err_to_py, Bridge};

/// Sampling settings from a dict of user keys, checked for a vocabulary of `vocab` tokens.
fn sampling(py: Python<'_>, values: &Bound<'_, PyDict>, vocab: usize) -> PyResult<SamplingConfig> {
    let cfg = check(py, SamplingConfig::from_raw(&raw_map(values)?))?;
    check(py, cfg.validate_for(vocab))?;
    Ok(cfg)
}

/// A trained model loaded for inference.
#[pyclass(module = "grufinity._grufinity")]
pub struct Model {
    inner: Loaded,
}

/// Recurrent state of a model for a batch of rows (with, for one row, what generation needs
/// to continue: last logits, history, sampler), opaque to Python.
#[pyclass(module = "grufinity._grufinity")]
#[derive(Clone)]
pub struct ModelState {
    inner: DecoderState,
}

#[pymethods]
impl ModelState {
    /// Number of rows.
    #[getter]
    fn batch(&self) -> usize {
        self.inner.state.batch()
    }

    /// Tokens consumed so far (one-row states).
    #[getter]
    fn tokens_seen(&self) -> usize {
        self.inner.history.len()
    }
}

#[pymethods]
impl Model {
    /// Loads a run directory (its best checkpoint, else its last) or a checkpoint directory.
    /// `device` must already be resolved (`cpu`, `vulkan:0`...); `dtype` is a weight dtype
    /// (None: the default).
    #[staticmethod]
    #[pyo3(signature = (path, device, dtype=None))]
    fn load(py: Python<'_>, path: PathBuf, device: &str, dtype: Option<&str>) -> PyResult<Self> {
        let dtype: WeightDtype = match dtype {
            Some(d) => check(py, d.parse())?,
            None => grufinity::inference::LoadConfig::default().dtype,
        };
        let selected = check(py, py.detach(|| grufinity::device::select(device)))?;
        let inner = check(py, py.detach(|| Loaded::load(&path, &selected.device, dtype)))?;
        Ok(Self { inner })
    }

    /// The checkpoint directory this model came from.
    #[getter]
    fn checkpoint(&self) -> PathBuf {
        self.inner.checkpoint.clone()
    }

    /// The checkpoint's trainer state (step, tokens, best validation loss, config...).
    #[getter]
    fn trainer(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        to_py(py, &self.inner.trainer)
    }

    /// Number of parameters.
    #[getter]
    fn num_params(&self) -> usize {
        self.inner.config().num_params()
    }

    /// Vocabulary size.
    #[getter]
    fn vocab_size(&self) -> usize {
        self.inner.tokenizer.vocab_size()
    }

    /// The tokenizer's kind: byte, char or bpe.
    #[getter]
    fn tokenizer(&self) -> &'static str {
        self.inner.tokenizer.name()
    }

    /// The weight matrices' element type: f32 or bf16.
    #[getter]
    fn dtype(&self) -> String {
        self.inner.dtype.to_string()
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
        ModelState { inner: self.inner.initial_state(batch) }
    }

    /// A state as bytes (safetensors, tagged with this model's config), to continue later.
    fn state_to_bytes<'py>(&self, py: Python<'py>, state: &ModelState) -> PyResult<Bound<'py, PyBytes>> {
        let bytes = check(py, state.inner.to_bytes(self.inner.config()))?;
        Ok(PyBytes::new(py, &bytes))
    }

    /// A state back from `state_to_bytes`; DataError unless saved by a model of this config.
    fn state_from_bytes(&self, py: Python<'_>, data: &[u8]) -> PyResult<ModelState> {
        let inner = check(py, DecoderState::from_bytes(data, self.inner.config(), &self.inner.device))?;
        Ok(ModelState { inner })
    }

    /// Every parameter by name (`blocks.0.mingru...`) as a float32 array of its shape.
    fn parameters<'py>(&self, py: Python<'py>) -> PyResult<Vec<(String, Bound<'py, PyArrayDyn<f32>>)>> {
        let mut out = Vec::new();
        for (name, t) in grufinity::train::checkpoint::module_tensors(&self.inner.model) {
            let values = check(py, t.f32_values(&name).map(<[f32]>::to_vec))?;
            let array = numpy::ndarray::ArrayD::from_shape_vec(numpy::ndarray::IxDyn(&t.shape), values)
                .map_err(|e| err_to_py(py, Error::Data(format!("parameter `{name}`: {e}"))))?;
            out.push((name, array.into_pyarray(py)));
        }
        Ok(out)
    }

    /// `tokens`: int64 array `[B, T]` → (`logits`: float32 `[B, T, V]`, state after the last
    /// token), continuing `state` when given.
    #[pyo3(signature = (tokens, state=None))]
    fn forward<'py>(
        &self,
        py: Python<'py>,
        tokens: PyReadonlyArray2<'py, i64>,
        state: Option<&ModelState>,
    ) -> PyResult<(Bound<'py, PyArray3<f32>>, ModelState)> {
        let arr = tokens.as_array();
        let (b, t) = arr.dim();
        let mut ids = Vec::with_capacity(b * t);
        for &x in arr.iter() {
            ids.push(u32::try_from(x).map_err(|_| {
                err_to_py(py, Error::config("tokens", format!("token id {x} is outside the vocabulary [0, {})", self.vocab_size())))
            })?);
        }
        let (logits, after) = check(py, py.detach(|| self.inner.forward(&ids, b, state.map(|s| &s.inner))))?;
        let v = self.vocab_size();
        let array = numpy::ndarray::Array3::from_shape_vec((b, t, v), logits)
            .map_err(|e| err_to_py(py, Error::Data(e.to_string())))?
            .into_pyarray(py);
        Ok((array, ModelState { inner: after }))
    }

    /// Generates from `prompt` (bytes) under `sampling` (a dict of sampling keys), continuing
    /// `state` when given (the prompt is fed after it; with the same seed the sampler continues
    /// too). `on_piece(bytes) -> bool | None` gets the output as it is produced (held back
    /// while it might begin a stop string); returning False stops. Returns (generated bytes
    /// without a stop string, state after every generated token, why it ended: length, eos,
    /// stop or cancelled).
    #[pyo3(signature = (prompt, sampling, state=None, on_piece=None))]
    fn generate(
        &self,
        py: Python<'_>,
        prompt: &[u8],
        sampling: &Bound<'_, PyDict>,
        state: Option<&ModelState>,
        on_piece: Option<Py<PyAny>>,
    ) -> PyResult<(Vec<u8>, ModelState, String)> {
        let cfg = self::sampling(py, sampling, self.vocab_size())?;
        let mut bridge = Bridge::default();
        let result = py.detach(|| {
            self.inner.generate(prompt, &cfg, state.map(|s| s.inner.clone()), &mut |piece| {
                bridge.call(|py| match &on_piece {
                    Some(cb) if !piece.is_empty() => Ok(!is_false(cb.bind(py).call1((PyBytes::new(py, piece),))?.as_any())),
                    _ => Ok(true),
                })
            })
        });
        let (g, after) = bridge.finish(py, result)?;
        Ok((g.text, ModelState { inner: after }, g.finish.word().to_string()))
    }

    /// Generates after each of `prompts` (bytes) at once; item `i` equals `generate` of
    /// `prompts[i]` alone. Returns the generated bytes of each prompt.
    #[pyo3(signature = (prompts, sampling))]
    fn generate_batch(&self, py: Python<'_>, prompts: Vec<Vec<u8>>, sampling: &Bound<'_, PyDict>) -> PyResult<Vec<Vec<u8>>> {
        let cfg = self::sampling(py, sampling, self.vocab_size())?;
        let mut bridge = Bridge::default();
        let result = py.detach(|| self.inner.generate_batch(&prompts, &cfg, &mut || bridge.call(|_| Ok(true))));
        let out = bridge.finish(py, result)?;
        Ok(out.into_iter().map(|g| g.text).collect())
    }

    /// Loss of the model on `data` (bytes) with carried state: dict with loss (nats/token),
    /// bits_per_token, bits_per_byte, perplexity and tokens. `reset_every` > 0 resets the state
    /// every that many tokens; `chunk_len` None is the run's. `progress(done, total)` is called
    /// before each chunk.
    #[pyo3(signature = (data, rows=1, chunk_len=None, reset_every=0, progress=None))]
    fn evaluate(
        &self,
        py: Python<'_>,
        data: &[u8],
        rows: usize,
        chunk_len: Option<usize>,
        reset_every: usize,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        let mut bridge = Bridge::default();
        let result = py.detach(|| {
            self.inner.evaluate(data, rows, chunk_len, reset_every, &mut |done, total| {
                bridge.call(|py| match &progress {
                    Some(cb) => Ok(!is_false(cb.bind(py).call1((done, total))?.as_any())),
                    None => Ok(true),
                })
            })
        });
        let r = bridge.finish(py, result)?;
        to_py(py, &r)
    }

    /// Per token of `data` (bytes): the token ids, the bytes each stands for, the model's
    /// surprise in nats (None for the first) and each block's mean update gate.
    fn inspect(&self, py: Python<'_>, data: &[u8]) -> PyResult<Py<PyAny>> {
        let r = check(py, py.detach(|| self.inner.inspect(data)))?;
        let dict = PyDict::new(py);
        dict.set_item("tokens", r.tokens)?;
        let pieces: Vec<Bound<'_, PyBytes>> = r.pieces.iter().map(|p| PyBytes::new(py, p)).collect();
        dict.set_item("pieces", pieces)?;
        dict.set_item("surprise", r.surprise)?;
        dict.set_item("gates", r.gates)?;
        Ok(dict.into_any().unbind())
    }

    /// Picks a token from a logit vector under sampling settings (for tests and custom loops).
    #[staticmethod]
    #[pyo3(signature = (logits, sampling, history=vec![], seed=0))]
    fn sample_logits(py: Python<'_>, logits: Vec<f32>, sampling: &Bound<'_, PyDict>, history: Vec<u32>, seed: u64) -> PyResult<u32> {
        let cfg = self::sampling(py, sampling, logits.len())?;
        Ok(sample(&logits, &cfg, &history, &mut Rng::new(seed)))
    }
}
