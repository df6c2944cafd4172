//! Stateful decoding: the prompt goes through the parallel scan once (prefill), then each new
//! token is one recurrent step per layer on the carried state, so time and memory per token do
//! not grow with the context.
//!
//! - [`SamplingConfig`]: every decoding control (temperature, top-k/p, min-p, repetition
//!   penalty, no-repeat n-grams, min/max new tokens, stop strings, end-of-sequence, beams).
//! - [`Decoder`]: one stream with its carried [`DecoderState`]; [`Decoder::run`] samples or
//!   beam-searches, streaming the text.
//! - [`run_batch`]: several decoders (prompts) that share one forward per step.
//! - [`DecoderState::to_bytes`] / [`DecoderState::from_bytes`]: save a generation to continue it
//!   later.

use std::collections::HashMap;

use burn::tensor::{Device, Int, Tensor, TensorData};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};

use crate::data::Tokenizer;
use crate::error::{Error, Result};
use crate::model::host::{HostModel, HostState};
use crate::model::{LayerState, MinGruLm, ModelConfig, State};
use crate::rng::Rng;

/// Largest accepted beam width.
pub const MAX_BEAMS: usize = 256;

/// Decoding controls.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SamplingConfig {
    /// Softmax temperature; 0 means greedy (argmax).
    pub temperature: f64,
    /// Keep only the `k` most likely tokens (0 = off).
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches `top_p` (1 = off).
    pub top_p: f64,
    /// Drop tokens less likely than `min_p` times the most likely one (0 = off).
    pub min_p: f64,
    /// Divide the logits of tokens already seen by this (1 = off).
    pub repetition_penalty: f64,
    /// Never produce an n-gram of this many tokens that already occurs in the history (prompt
    /// included); 0 = off.
    pub no_repeat_ngram_size: usize,
    /// Tokens to generate at most.
    pub max_new_tokens: usize,
    /// Tokens to generate before the end-of-sequence token or a stop string may end the output.
    pub min_new_tokens: usize,
    /// Stop strings: generation ends when the decoded output ends with one of them, which is then
    /// left out of the returned text (the state has still consumed it).
    pub stop: Vec<String>,
    /// End-of-sequence token: generation ends after it, and it is left out of the text. `None`
    /// when the tokenizer has none (the byte tokenizer has none).
    pub eos: Option<u32>,
    /// Beam width; 1 turns beam search off. Beam search is deterministic: temperature, top-k,
    /// top-p, min-p and the seed do not apply to it.
    pub beams: usize,
    /// Beam score = sum of log-probabilities / length^`length_penalty` (0 = plain sum, 1 = mean).
    pub length_penalty: f64,
    /// Seed of the sampler.
    pub seed: u64,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        Self {
            temperature: 0.8,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            no_repeat_ngram_size: 0,
            max_new_tokens: 256,
            min_new_tokens: 0,
            stop: Vec::new(),
            eos: None,
            beams: 1,
            length_penalty: 0.0,
            seed: 0,
        }
    }
}

impl SamplingConfig {
    /// Rejects out-of-range values, naming the field.
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(Error::config("temperature", "must be >= 0 (0 = greedy)"));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::config("top_p", "must be in (0, 1]"));
        }
        if !(0.0..1.0).contains(&self.min_p) {
            return Err(Error::config("min_p", "must be in [0, 1)"));
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            return Err(Error::config("repetition_penalty", "must be > 0 (1 = off)"));
        }
        if self.beams == 0 {
            return Err(Error::config("beams", "must be at least 1 (1 = no beam search)"));
        }
        if self.beams > MAX_BEAMS {
            return Err(Error::config("beams", format!("must be at most {MAX_BEAMS}")));
        }
        if !self.length_penalty.is_finite() {
            return Err(Error::config("length_penalty", "must be a finite number (0 = off)"));
        }
        if self.min_new_tokens > self.max_new_tokens {
            return Err(Error::config(
                "min_new_tokens",
                format!("must not exceed max_new_tokens ({})", self.max_new_tokens),
            ));
        }
        if self.stop.iter().any(|s| s.is_empty()) {
            return Err(Error::config("stop", "stop strings must not be empty"));
        }
        Ok(())
    }

    /// [`validate`](Self::validate), plus the checks that need the vocabulary size.
    pub fn validate_for(&self, vocab_size: usize) -> Result<()> {
        self.validate()?;
        if let Some(eos) = self.eos {
            if eos as usize >= vocab_size {
                return Err(Error::config("eos", format!("token {eos} is outside the vocabulary [0, {vocab_size})")));
            }
        }
        Ok(())
    }
}

/// The logits `[V]` after the controls that do not draw random numbers: the repetition penalty
/// and no-repeat n-grams look at `history` (every token so far, prompt included), and the
/// end-of-sequence token is banned while fewer than `min_new_tokens` tokens were generated
/// (`generated`). Banned tokens get `-inf`; if every token would be banned the bans are lifted.
pub fn process_logits(logits: &[f32], cfg: &SamplingConfig, history: &[u32], generated: usize) -> Vec<f64> {
    process(logits, cfg, history, &[], generated)
}

/// [`process_logits`] with the history in two parts (`older` then `recent`).
fn process(logits: &[f32], cfg: &SamplingConfig, older: &[u32], recent: &[u32], generated: usize) -> Vec<f64> {
    let mut l: Vec<f64> = logits.iter().map(|&x| x as f64).collect();
    if cfg.repetition_penalty != 1.0 {
        let mut seen = vec![false; l.len()];
        for &t in older.iter().chain(recent) {
            if let Some(s) = seen.get_mut(t as usize) {
                *s = true;
            }
        }
        for (x, s) in l.iter_mut().zip(seen) {
            if s {
                *x = if *x > 0.0 { *x / cfg.repetition_penalty } else { *x * cfg.repetition_penalty };
            }
        }
    }
    let mut banned = Vec::new();
    let n = cfg.no_repeat_ngram_size;
    if n > 0 && older.len() + recent.len() + 1 >= n {
        let seq: Vec<u32> = older.iter().chain(recent).copied().collect();
        let prefix = &seq[seq.len() + 1 - n..];
        for w in seq.windows(n) {
            if &w[..n - 1] == prefix {
                banned.push(w[n - 1] as usize);
            }
        }
    }
    if let Some(eos) = cfg.eos {
        if generated < cfg.min_new_tokens {
            banned.push(eos as usize);
        }
    }
    if !banned.is_empty() {
        let before = l.clone();
        for b in banned {
            if let Some(x) = l.get_mut(b) {
                *x = f64::NEG_INFINITY;
            }
        }
        if l.iter().all(|x| *x == f64::NEG_INFINITY) {
            return before;
        }
    }
    l
}

/// Index of the largest value (the first one on ties).
fn argmax(values: &[f64]) -> usize {
    values.iter().enumerate().fold(0, |best, (i, &x)| if x > values[best] { i } else { best })
}

/// `log(sum(exp(values)))`, stable.
fn log_sum_exp(values: impl Iterator<Item = f64> + Clone) -> f64 {
    let max = values.clone().fold(f64::NEG_INFINITY, f64::max);
    if max == f64::NEG_INFINITY {
        return max;
    }
    max + values.map(|x| (x - max).exp()).sum::<f64>().ln()
}

/// Log-probability of `token` under the softmax of `logits` (`[V]`).
fn log_prob_of(logits: &[f32], token: u32) -> f64 {
    let lse = log_sum_exp(logits.iter().map(|&x| x as f64));
    logits.get(token as usize).map_or(f64::NEG_INFINITY, |&x| x as f64 - lse)
}

/// Picks a token from processed logits (see [`process_logits`]) under the temperature, top-k,
/// min-p and top-p of `cfg`, in that order.
pub fn pick(logits: &[f64], cfg: &SamplingConfig, rng: &mut Rng) -> u32 {
    let best = argmax(logits);
    if cfg.temperature == 0.0 {
        return best as u32;
    }
    let max = logits[best];
    let mut probs: Vec<(usize, f64)> =
        logits.iter().enumerate().map(|(i, &x)| (i, ((x - max) / cfg.temperature).exp())).collect();
    probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut keep = probs.iter().take_while(|p| p.1 > 0.0).count().max(1);
    if cfg.top_k > 0 {
        keep = keep.min(cfg.top_k);
    }
    if cfg.min_p > 0.0 {
        let floor = probs[0].1 * cfg.min_p;
        keep = keep.min(probs.iter().take_while(|p| p.1 >= floor).count().max(1));
    }
    if cfg.top_p < 1.0 {
        let total: f64 = probs[..keep].iter().map(|p| p.1).sum();
        let mut acc = 0.0;
        let mut n = 0;
        for p in &probs[..keep] {
            acc += p.1 / total;
            n += 1;
            if acc >= cfg.top_p {
                break;
            }
        }
        keep = n.max(1);
    }
    let kept = &probs[..keep];
    let total: f64 = kept.iter().map(|p| p.1).sum();
    let mut r = rng.uniform() * total;
    for &(i, p) in kept {
        if r < p {
            return i as u32;
        }
        r -= p;
    }
    kept[kept.len() - 1].0 as u32
}

/// Picks the next token from raw `logits` (`[V]`) under `cfg`. `history` is the text so far (for
/// the repetition controls; it also counts as generated for `min_new_tokens`).
pub fn sample(logits: &[f32], cfg: &SamplingConfig, history: &[u32], rng: &mut Rng) -> u32 {
    pick(&process_logits(logits, cfg, history, history.len()), cfg, rng)
}

/// Why a generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Finish {
    /// `max_new_tokens` were generated.
    Length,
    /// The end-of-sequence token was generated.
    Eos,
    /// A stop string was generated.
    Stop,
    /// The caller's callback asked to stop.
    Cancelled,
}

/// The outcome of one generation.
#[derive(Clone, Debug, PartialEq)]
pub struct Generation {
    /// Every generated token, including an end-of-sequence token and the tokens of a stop string
    /// (the decoder's state has consumed them all).
    pub tokens: Vec<u32>,
    /// The decoded output without the end-of-sequence token and without the stop string (and
    /// anything after its start); empty when decoding without a tokenizer.
    pub text: Vec<u8>,
    /// Why it ended.
    pub finish: Finish,
    /// Sum of the model's log-probabilities of `tokens` (log-softmax of the raw logits, before
    /// any decoding control).
    pub log_prob: f64,
}

/// Everything a decoder carries from one call to the next; saved and restored with
/// [`to_bytes`](Self::to_bytes) / [`from_bytes`](Self::from_bytes).
#[derive(Clone, Debug)]
pub struct DecoderState {
    /// Recurrent state, `B` rows (a decoder uses one).
    pub state: State,
    /// Logits `[V]` after the last consumed token; `None` before any token (the first guess is
    /// then uniform).
    pub last_logits: Option<Vec<f32>>,
    /// Every token consumed so far (fed or generated), for the repetition controls.
    pub history: Vec<u32>,
    /// The sampler and the seed it started from: a later call with the same seed continues it,
    /// so generating in pieces draws the same numbers as generating at once.
    pub sampler: Option<(u64, Rng)>,
}

const STATE_FORMAT: &str = "grufinity-generation-state";
const STATE_VERSION: &str = "1";

fn state_error(message: impl std::fmt::Display) -> Error {
    Error::Data(format!("generation state: {message}"))
}

/// A model config with the fields that do not change inference cleared.
fn inference_shape(config: &ModelConfig) -> ModelConfig {
    ModelConfig { dropout: 0.0, ..config.clone() }
}

impl DecoderState {
    /// The initial state (nothing consumed yet) for `batch` rows.
    pub fn initial(config: &ModelConfig, batch: usize, device: &Device) -> Self {
        Self { state: State::zeros(config, batch, device), last_logits: None, history: Vec::new(), sampler: None }
    }

    /// Serialises the state as safetensors bytes: `layers.{i}.log_h` (`[B, 1, E]`),
    /// `layers.{i}.conv` (`[B, K-1, D]`), `last_logits` (`[V]`) and `history` (`[N]`, u32),
    /// tagged with `config` so that it can only be loaded back into the same kind of model.
    pub fn to_bytes(&self, config: &ModelConfig) -> Result<Vec<u8>> {
        let mut owned: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
        let f32_bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let host = |t: &Tensor<3>| -> (Vec<usize>, Vec<u8>) {
            let dims = t.dims().to_vec();
            let values = t.clone().into_data().convert::<f32>().try_to_vec::<f32>().unwrap_or_default();
            (dims, f32_bytes(&values))
        };
        for (i, l) in self.state.layers.iter().enumerate() {
            let (dims, bytes) = host(&l.log_h);
            owned.push((format!("layers.{i}.log_h"), Dtype::F32, dims, bytes));
            if let Some(c) = &l.conv {
                let (dims, bytes) = host(c);
                owned.push((format!("layers.{i}.conv"), Dtype::F32, dims, bytes));
            }
        }
        if let Some(l) = &self.last_logits {
            owned.push(("last_logits".into(), Dtype::F32, vec![l.len()], f32_bytes(l)));
        }
        if !self.history.is_empty() {
            let bytes = self.history.iter().flat_map(|x| x.to_le_bytes()).collect();
            owned.push(("history".into(), Dtype::U32, vec![self.history.len()], bytes));
        }
        let views = owned
            .iter()
            .map(|(name, dtype, shape, bytes)| {
                TensorView::new(*dtype, shape.clone(), bytes).map(|v| (name.clone(), v)).map_err(state_error)
            })
            .collect::<Result<Vec<_>>>()?;
        let model = serde_json::to_string(&inference_shape(config)).map_err(state_error)?;
        let mut meta = HashMap::from([
            ("format".to_string(), STATE_FORMAT.to_string()),
            ("version".to_string(), STATE_VERSION.to_string()),
            ("model".to_string(), model),
        ]);
        if let Some((seed, rng)) = &self.sampler {
            meta.insert("sampler_seed".into(), seed.to_string());
            meta.insert("sampler_position".into(), rng.position().to_string());
        }
        safetensors::serialize(views, Some(meta)).map_err(state_error)
    }

    /// Reads bytes written by [`to_bytes`](Self::to_bytes) onto `device`; fails unless they were
    /// saved by a model of the same config (`config`).
    pub fn from_bytes(bytes: &[u8], config: &ModelConfig, device: &Device) -> Result<Self> {
        let bad = |e: safetensors::SafeTensorError| state_error(format!("not a valid state file ({e})"));
        let (_, meta) = SafeTensors::read_metadata(bytes).map_err(bad)?;
        let st = SafeTensors::deserialize(bytes).map_err(bad)?;
        let meta = meta.metadata().clone().unwrap_or_default();
        if meta.get("format").map(String::as_str) != Some(STATE_FORMAT) {
            return Err(state_error("not a GRUfinity generation state"));
        }
        if meta.get("version").map(String::as_str) != Some(STATE_VERSION) {
            return Err(state_error("saved by an incompatible version of GRUfinity"));
        }
        let saved: ModelConfig = meta
            .get("model")
            .and_then(|m| serde_json::from_str(m).ok())
            .ok_or_else(|| state_error("the model config is missing"))?;
        if inference_shape(&saved) != inference_shape(config) {
            return Err(state_error(format!(
                "saved by a different model (dim {}, depth {}, vocab {}) than this one (dim {}, depth {}, vocab {})",
                saved.dim, saved.depth, saved.vocab_size, config.dim, config.depth, config.vocab_size
            )));
        }
        let mut tensors: HashMap<String, TensorView<'_>> = st.tensors().into_iter().collect();
        let mut take_f32 = |name: &str| -> Result<Option<(Vec<usize>, Vec<f32>)>> {
            let Some(view) = tensors.remove(name) else { return Ok(None) };
            if view.dtype() != Dtype::F32 {
                return Err(state_error(format!("tensor `{name}` is {:?}, expected F32", view.dtype())));
            }
            let values = view.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
            Ok(Some((view.shape().to_vec(), values)))
        };
        let mut batch = None;
        let mut layers = Vec::with_capacity(config.depth);
        for i in 0..config.depth {
            let mut tensor = |name: String, tail: Vec<usize>| -> Result<Tensor<3>> {
                let (shape, values) = take_f32(&name)?.ok_or_else(|| state_error(format!("tensor `{name}` is missing")))?;
                let b = *batch.get_or_insert(shape.first().copied().unwrap_or(0));
                let expected = [vec![b], tail].concat();
                if shape != expected || b == 0 {
                    return Err(state_error(format!("tensor `{name}` has shape {shape:?}, expected {expected:?}")));
                }
                Ok(Tensor::<1>::from_data(TensorData::new(values, [shape.iter().product::<usize>()]), device)
                    .reshape([shape[0], shape[1], shape[2]]))
            };
            let log_h = tensor(format!("layers.{i}.log_h"), vec![1, config.inner()])?;
            let conv = if config.conv_kernel > 0 {
                Some(tensor(format!("layers.{i}.conv"), vec![config.conv_kernel - 1, config.dim])?)
            } else {
                None
            };
            layers.push(LayerState { log_h, conv });
        }
        let last_logits = match take_f32("last_logits")? {
            Some((shape, values)) if shape == [config.vocab_size] => Some(values),
            Some((shape, _)) => {
                return Err(state_error(format!("`last_logits` has shape {shape:?}, expected [{}]", config.vocab_size)))
            }
            None => None,
        };
        let history = match tensors.remove("history") {
            Some(v) if v.dtype() == Dtype::U32 && v.shape().len() == 1 => {
                let h: Vec<u32> = v.data().chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
                if let Some(bad) = h.iter().find(|&&t| t as usize >= config.vocab_size) {
                    return Err(state_error(format!("history token {bad} is outside the vocabulary")));
                }
                h
            }
            Some(_) => return Err(state_error("`history` must be a one-dimensional U32 tensor")),
            None => Vec::new(),
        };
        if let Some(extra) = tensors.keys().next() {
            return Err(state_error(format!("unexpected tensor `{extra}`")));
        }
        let number = |key: &str| meta.get(key).and_then(|v| v.parse::<u64>().ok());
        let sampler = match (number("sampler_seed"), number("sampler_position")) {
            (Some(seed), Some(pos)) => Some((seed, Rng::at_position(pos))),
            _ => None,
        };
        Ok(Self { state: State { layers }, last_logits, history, sampler })
    }
}

/// Watches the decoded output for stop strings and tells how much of it is safe to show: the
/// bytes that can no longer turn out to be the start of a stop string.
#[derive(Clone, Debug, Default)]
struct StopMatcher {
    stops: Vec<Vec<u8>>,
    text: Vec<u8>,
    shown: usize,
    /// Start of the stop string, once one was generated.
    cut: Option<usize>,
}

impl StopMatcher {
    fn new(stops: &[String]) -> Self {
        Self { stops: stops.iter().map(|s| s.as_bytes().to_vec()).collect(), ..Default::default() }
    }

    /// Appends `bytes`; with `check`, looks for a stop string ending inside them.
    fn push(&mut self, bytes: &[u8], check: bool) {
        let from = self.text.len();
        self.text.extend_from_slice(bytes);
        if check && !bytes.is_empty() {
            self.cut = find_stop(&self.stops, &self.text, from);
        }
    }

    /// End of the text that cannot become part of a stop string any more.
    fn safe_end(&self) -> usize {
        let n = self.text.len();
        let mut hold = 0;
        for s in &self.stops {
            for k in (hold + 1..s.len().min(n + 1)).rev() {
                if self.text[n - k..] == s[..k] {
                    hold = k;
                    break;
                }
            }
        }
        n - hold
    }

    /// The bytes not shown yet up to `end`, marking them shown.
    fn take(&mut self, end: usize) -> &[u8] {
        let from = self.shown.min(end);
        self.shown = self.shown.max(end);
        &self.text[from..end]
    }

    /// The output: the text up to the stop string.
    fn output(mut self) -> Vec<u8> {
        if let Some(cut) = self.cut {
            self.text.truncate(cut);
        }
        self.text
    }
}

/// Start of the first stop string in `text` that ends after byte `from`, if any.
fn find_stop(stops: &[Vec<u8>], text: &[u8], from: usize) -> Option<usize> {
    stops
        .iter()
        .filter(|s| s.len() <= text.len())
        .filter_map(|s| {
            let lo = (from + 1).saturating_sub(s.len());
            (lo..=text.len() - s.len()).find(|&start| text[start..start + s.len()] == s[..])
        })
        .min()
}

/// A model ready to decode, with its carried state.
pub struct Decoder<'a> {
    pub model: &'a MinGruLm,
    pub config: &'a ModelConfig,
    pub device: Device,
    /// Recurrent state, one row.
    pub state: State,
    /// Logits `[V]` after the last consumed token (`None` before any token: the model then
    /// starts from its initial state with a uniform first guess).
    pub last_logits: Option<Vec<f32>>,
    /// Every token consumed so far, for the repetition controls.
    pub history: Vec<u32>,
    /// The sampler and its seed (see [`DecoderState::sampler`]).
    pub sampler: Option<(u64, Rng)>,
    /// Host copies of the weights for the per-token steps on the CPU (see [`HostModel`]);
    /// `None` steps with Burn's forward.
    pub host: Option<&'a HostModel>,
}

impl<'a> Decoder<'a> {
    /// A decoder at the initial state for one stream.
    pub fn new(model: &'a MinGruLm, config: &'a ModelConfig, device: &Device) -> Self {
        Self::from_state(model, config, device, DecoderState::initial(config, 1, device))
    }

    /// A decoder continuing `state` (one row).
    pub fn from_state(model: &'a MinGruLm, config: &'a ModelConfig, device: &Device, state: DecoderState) -> Self {
        Self {
            model,
            config,
            device: device.clone(),
            state: state.state,
            last_logits: state.last_logits,
            history: state.history,
            sampler: state.sampler,
            host: None,
        }
    }

    /// Takes its per-token steps with `host` (the same model's weights, see [`HostModel`]).
    pub fn with_host(mut self, host: Option<&'a HostModel>) -> Self {
        self.host = host;
        self
    }

    /// What this decoder carries, to continue it later.
    pub fn into_state(self) -> DecoderState {
        DecoderState { state: self.state, last_logits: self.last_logits, history: self.history, sampler: self.sampler }
    }

    /// Consumes `tokens` with the parallel scan, carrying the state.
    pub fn feed(&mut self, tokens: &[u32]) {
        if tokens.is_empty() {
            return;
        }
        let t = tokens.len();
        let input = Tensor::<2, Int>::from_data(
            TensorData::new(tokens.iter().map(|&x| x as i64).collect::<Vec<_>>(), [1, t]),
            &self.device,
        );
        let state = std::mem::replace(&mut self.state, State { layers: vec![] });
        let (logits, state) = self.model.forward(input, state);
        self.state = state;
        let last = logits.narrow(1, t - 1, 1);
        self.last_logits = Some(last.into_data().convert::<f32>().try_to_vec::<f32>().unwrap_or_default());
        self.history.extend_from_slice(tokens);
    }

    /// Samples up to `cfg.max_new_tokens` tokens (no beam search, no stop strings: see
    /// [`run`](Self::run)) with the repetition controls looking at `history` (which replaces the
    /// decoder's own) and a sampler freshly seeded with `cfg.seed`. Calls `on_token` after each
    /// token and stops early when it returns false. `cfg` is assumed valid
    /// ([`SamplingConfig::validate`]). Returns the generated tokens.
    pub fn generate(&mut self, cfg: &SamplingConfig, history: &[u32], on_token: &mut dyn FnMut(u32) -> bool) -> Vec<u32> {
        self.history = history.to_vec();
        self.sampler = None;
        let cfg = SamplingConfig { beams: 1, stop: Vec::new(), ..cfg.clone() };
        match decode_rows(std::slice::from_mut(self), &cfg, None, &mut |_, tok, _| on_token(tok)) {
            Ok(mut g) if !g.is_empty() => g.swap_remove(0).tokens,
            _ => Vec::new(),
        }
    }

    /// Generates under `cfg` (validated first), decoding with `tokenizer` for stop strings and
    /// the text. Without beams, `on_text` receives the output as it is produced, piece by piece
    /// (bytes held back while they might begin a stop string; the pieces join to
    /// [`Generation::text`]); returning false stops. With beams, it receives the whole text at
    /// the end. The decoder is left after the generated tokens, ready to continue.
    pub fn run(&mut self, cfg: &SamplingConfig, tokenizer: &Tokenizer, on_text: &mut dyn FnMut(&[u8]) -> bool) -> Result<Generation> {
        cfg.validate_for(self.config.vocab_size)?;
        if cfg.beams > 1 {
            let g = self.beam_search(cfg, Some(tokenizer));
            on_text(&g.text);
            return Ok(g);
        }
        let mut out = decode_rows(std::slice::from_mut(self), cfg, Some(tokenizer), &mut |_, _, piece| on_text(piece))?;
        out.pop().ok_or_else(|| Error::Data("generation produced no result".into()))
    }

    /// Beam search from the current state: `cfg.beams` hypotheses, each on its own row of the
    /// recurrent state (rows reordered with [`State::select_rows`] as hypotheses are extended),
    /// scored by the sum of their log-probabilities after the repetition controls, divided by
    /// length^`length_penalty`. The greedy continuation is tracked on one more row, so the
    /// result never scores below greedy decoding. Ends when no live hypothesis can beat the
    /// best finished one (exact without a length penalty) or at `max_new_tokens`.
    ///
    /// [`run`](Self::run) calls this when `cfg.beams > 1`; any width works here (1 is greedy
    /// search). `cfg` is assumed valid; stop strings need `tokenizer`.
    pub fn beam_search(&mut self, cfg: &SamplingConfig, tokenizer: Option<&Tokenizer>) -> Generation {
        #[derive(Clone)]
        struct Hyp {
            tokens: Vec<u32>,
            score: f64,
            log_prob: f64,
            text: Vec<u8>,
            cut: Option<usize>,
            greedy: bool,
        }
        let vocab = self.config.vocab_size;
        let k = cfg.beams;
        let stops: Vec<Vec<u8>> = cfg.stop.iter().map(|s| s.as_bytes().to_vec()).collect();
        let norm = |h: &Hyp| {
            if cfg.length_penalty == 0.0 {
                h.score
            } else {
                h.score / (h.tokens.len().max(1) as f64).powf(cfg.length_penalty)
            }
        };
        let start = (self.state.clone(), self.last_logits.clone(), self.history.clone());
        let first = self.last_logits.clone().unwrap_or_else(|| vec![0.0; vocab]);
        let empty = Hyp { tokens: vec![], score: 0.0, log_prob: 0.0, text: vec![], cut: None, greedy: false };
        let mut alive = vec![empty.clone(), Hyp { greedy: true, ..empty }];
        let mut logits = vec![first.clone(), first];
        let mut steps = Stepper::new(self.model, self.host, &self.device, self.state.clone().select_rows(&[0, 0]));
        let mut finished: Vec<(Hyp, Finish)> = Vec::new();
        // Extends `h` by `tok`; returns it and how it finished, if it did.
        let extend = |h: &Hyp, tok: u32, lp: f64, raw: f64| -> (Hyp, Option<Finish>) {
            let mut n = h.clone();
            n.tokens.push(tok);
            n.score += lp;
            n.log_prob += raw;
            let may_end = n.tokens.len() >= cfg.min_new_tokens;
            if cfg.eos == Some(tok) {
                return (n, Some(Finish::Eos));
            }
            let from = n.text.len();
            if let Some(t) = tokenizer {
                n.text.extend(t.decode(&[tok]));
            }
            if may_end && !stops.is_empty() && n.text.len() > from {
                n.cut = find_stop(&stops, &n.text, from);
                if n.cut.is_some() {
                    return (n, Some(Finish::Stop));
                }
            }
            (n, None)
        };
        for _ in 0..cfg.max_new_tokens {
            let mut candidates: Vec<(f64, usize, u32, f64, f64)> = Vec::new();
            let mut greedy_next = None;
            for (i, h) in alive.iter().enumerate() {
                let raw = &logits[i];
                let lse_raw = log_sum_exp(raw.iter().map(|&x| x as f64));
                let processed = process(raw, cfg, &self.history, &h.tokens, h.tokens.len());
                let lse = log_sum_exp(processed.iter().copied());
                let lp: Vec<f64> = processed.iter().map(|x| x - lse).collect();
                if h.greedy {
                    let t = argmax(&lp);
                    greedy_next = Some((i, t as u32, lp[t], raw[t] as f64 - lse_raw));
                    continue;
                }
                let mut order: Vec<usize> = (0..lp.len()).filter(|&t| lp[t].is_finite()).collect();
                let take = (2 * k).min(order.len());
                if take < order.len() {
                    order.select_nth_unstable_by(take, |&a, &b| lp[b].total_cmp(&lp[a]).then(a.cmp(&b)));
                    order.truncate(take);
                }
                for t in order {
                    candidates.push((h.score + lp[t], i, t as u32, lp[t], raw[t] as f64 - lse_raw));
                }
            }
            candidates.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
            let mut next = Vec::new();
            let mut parents = Vec::new();
            for (rank, &(_, parent, tok, lp, raw)) in candidates.iter().enumerate() {
                if next.len() == k {
                    break;
                }
                match extend(&alive[parent], tok, lp, raw) {
                    (h, Some(f)) => {
                        if rank < k {
                            finished.push((h, f));
                        }
                    }
                    (h, None) => {
                        next.push(h);
                        parents.push(parent);
                    }
                }
            }
            if let Some((parent, tok, lp, raw)) = greedy_next {
                match extend(&alive[parent], tok, lp, raw) {
                    (h, Some(f)) => finished.push((h, f)),
                    (h, None) => {
                        next.push(h);
                        parents.push(parent);
                    }
                }
            }
            alive = next;
            if alive.is_empty() {
                break;
            }
            let best_finished = finished.iter().map(|(h, _)| norm(h)).fold(f64::NEG_INFINITY, f64::max);
            let best_alive = alive.iter().map(norm).fold(f64::NEG_INFINITY, f64::max);
            if best_alive <= best_finished {
                alive.clear();
                break;
            }
            let tokens: Vec<u32> = alive.iter().map(|h| h.tokens[h.tokens.len() - 1]).collect();
            steps.select_rows(&parents);
            logits = steps.step(&tokens, vocab).unwrap_or_else(|_| vec![vec![0.0; vocab]; tokens.len()]);
        }
        finished.extend(alive.into_iter().map(|h| (h, Finish::Length)));
        let best = finished
            .into_iter()
            .reduce(|a, b| if norm(&b.0) > norm(&a.0) { b } else { a });
        let (hyp, finish) = best.unwrap_or((
            Hyp { tokens: vec![], score: 0.0, log_prob: 0.0, text: vec![], cut: None, greedy: false },
            Finish::Length,
        ));
        // Leave the decoder after the chosen tokens.
        (self.state, self.last_logits, self.history) = start;
        self.feed(&hyp.tokens);
        let mut text = hyp.text;
        if let Some(cut) = hyp.cut {
            text.truncate(cut);
        }
        Generation { tokens: hyp.tokens, text, finish, log_prob: hyp.log_prob }
    }
}

/// Generates for several decoders (prompts) at once under `cfg` (validated first): their
/// states are stacked into one batch ([`State::stack`]) so every step is one forward for all of
/// them, and a row leaves the batch when it ends. Each decoder keeps its own history and sampler,
/// so row `i` produces exactly what [`Decoder::run`] would for it alone. `keep_going` is called
/// once per step; returning false cancels every row. With beams, the decoders are searched one
/// after the other. All decoders must share one model.
pub fn run_batch(
    decoders: &mut [Decoder<'_>],
    cfg: &SamplingConfig,
    tokenizer: &Tokenizer,
    keep_going: &mut dyn FnMut() -> bool,
) -> Result<Vec<Generation>> {
    let Some(first) = decoders.first() else { return Ok(Vec::new()) };
    cfg.validate_for(first.config.vocab_size)?;
    if decoders.iter().any(|d| !std::ptr::eq(d.model, first.model) || d.config != first.config) {
        return Err(Error::config("decoders", "a batch must share one model"));
    }
    if cfg.beams > 1 {
        let mut out = Vec::with_capacity(decoders.len());
        for d in decoders.iter_mut() {
            if !keep_going() {
                return Err(Error::Data("generation was cancelled".into()));
            }
            out.push(d.beam_search(cfg, Some(tokenizer)));
        }
        return Ok(out);
    }
    let mut last_row = usize::MAX;
    let mut going = true;
    decode_rows(decoders, cfg, Some(tokenizer), &mut |row, _, _| {
        if row <= last_row {
            going = keep_going();
        }
        last_row = row;
        going
    })
}

/// One row of [`decode_rows`].
struct Row {
    out: Vec<u32>,
    log_prob: f64,
    matcher: StopMatcher,
    rng: Rng,
    finish: Option<Finish>,
}

/// The sampling loop shared by one and many rows. `on_piece(row, token, text)` is called after
/// each token with the newly showable text; returning false ends that row.
fn decode_rows(
    decoders: &mut [Decoder<'_>],
    cfg: &SamplingConfig,
    tokenizer: Option<&Tokenizer>,
    on_piece: &mut dyn FnMut(usize, u32, &[u8]) -> bool,
) -> Result<Vec<Generation>> {
    let Some(first) = decoders.first() else { return Ok(Vec::new()) };
    let (model, vocab, device, first_host) = (first.model, first.config.vocab_size, first.device.clone(), first.host);
    let stops_on = tokenizer.is_some() && !cfg.stop.is_empty();
    let mut rows: Vec<Row> = decoders
        .iter_mut()
        .map(|d| Row {
            out: Vec::with_capacity(cfg.max_new_tokens),
            log_prob: 0.0,
            matcher: StopMatcher::new(if stops_on { &cfg.stop } else { &[] }),
            rng: match d.sampler.take() {
                Some((seed, rng)) if seed == cfg.seed => rng,
                _ => Rng::new(cfg.seed),
            },
            finish: None,
        })
        .collect();
    if cfg.max_new_tokens > 0 {
        let mut logits: Vec<Vec<f32>> =
            decoders.iter().map(|d| d.last_logits.clone().unwrap_or_else(|| vec![0.0; vocab])).collect();
        let mut active: Vec<usize> = (0..decoders.len()).collect();
        let state = State::stack(decoders.iter().map(|d| d.state.clone()).collect())?;
        let mut steps = Stepper::new(model, first_host, &device, state);
        while !active.is_empty() {
            let mut next = Vec::with_capacity(active.len());
            for (pos, &r) in active.iter().enumerate() {
                let row = &mut rows[r];
                let processed = process(&logits[pos], cfg, &decoders[r].history, &[], row.out.len());
                let tok = pick(&processed, cfg, &mut row.rng);
                row.log_prob += log_prob_of(&logits[pos], tok);
                next.push(tok);
            }
            let m = active.len();
            logits = steps.step(&next, vocab)?;
            let mut keep = Vec::with_capacity(m);
            for (pos, &r) in active.iter().enumerate() {
                let tok = next[pos];
                let row = &mut rows[r];
                decoders[r].history.push(tok);
                row.out.push(tok);
                let n = row.out.len();
                let mut finish = None;
                let end = if cfg.eos == Some(tok) {
                    finish = Some(Finish::Eos);
                    row.matcher.text.len()
                } else {
                    let bytes = tokenizer.map(|t| t.decode(&[tok])).unwrap_or_default();
                    row.matcher.push(&bytes, stops_on && n >= cfg.min_new_tokens);
                    match row.matcher.cut {
                        Some(cut) => {
                            finish = Some(Finish::Stop);
                            cut
                        }
                        None if n == cfg.max_new_tokens => row.matcher.text.len(),
                        None => row.matcher.safe_end(),
                    }
                };
                let piece = row.matcher.take(end);
                if !on_piece(r, tok, piece) && finish.is_none() {
                    finish = Some(Finish::Cancelled);
                }
                if finish.is_none() && n == cfg.max_new_tokens {
                    finish = Some(Finish::Length);
                }
                row.finish = finish;
                if finish.is_none() {
                    keep.push(pos);
                } else {
                    let d = &mut decoders[r];
                    d.state = steps.row(pos);
                    d.last_logits = Some(logits[pos].clone());
                }
            }
            if keep.len() < m {
                active = keep.iter().map(|&p| active[p]).collect();
                if !keep.is_empty() {
                    steps.select_rows(&keep);
                    logits = keep.iter().map(|&p| std::mem::take(&mut logits[p])).collect();
                }
            }
        }
    }
    Ok(decoders
        .iter_mut()
        .zip(rows)
        .map(|(d, row)| {
            d.sampler = Some((cfg.seed, row.rng));
            Generation {
                tokens: row.out,
                text: row.matcher.output(),
                finish: row.finish.unwrap_or(Finish::Length),
                log_prob: row.log_prob,
            }
        })
        .collect())
}

/// One forward per decoding step for a batch of rows: Burn's, or the host kernels of a
/// [`HostModel`] with the state kept on the host between steps.
enum Stepper<'m> {
    Burn { model: &'m MinGruLm, device: Device, state: State },
    Host { model: &'m HostModel, device: Device, state: HostState },
}

impl<'m> Stepper<'m> {
    fn new(model: &'m MinGruLm, host: Option<&'m HostModel>, device: &Device, state: State) -> Self {
        match host {
            Some(host) => Self::Host { model: host, device: device.clone(), state: HostState::from_state(&state) },
            None => Self::Burn { model, device: device.clone(), state },
        }
    }

    /// One token per row → the logits of each row, `[V]` each.
    fn step(&mut self, tokens: &[u32], vocab: usize) -> Result<Vec<Vec<f32>>> {
        let flat = match self {
            Self::Burn { model, device, state } => {
                let ids: Vec<i64> = tokens.iter().map(|&t| t as i64).collect();
                let input = Tensor::<2, Int>::from_data(TensorData::new(ids, [tokens.len(), 1]), &*device);
                let (out, next) = model.forward(input, std::mem::replace(state, State { layers: vec![] }));
                *state = next;
                out.into_data().convert::<f32>().try_to_vec::<f32>().unwrap_or_default()
            }
            Self::Host { model, state, .. } => model.step(tokens, state),
        };
        let logits: Vec<Vec<f32>> = flat.chunks(vocab).map(<[f32]>::to_vec).collect();
        if logits.len() != tokens.len() {
            return Err(Error::Data("the model returned logits of an unexpected shape".into()));
        }
        Ok(logits)
    }

    /// Keeps rows `rows`, in that order.
    fn select_rows(&mut self, rows: &[usize]) {
        match self {
            Self::Burn { state, .. } => *state = std::mem::replace(state, State { layers: vec![] }).select_rows(rows),
            Self::Host { state, .. } => *state = state.select_rows(rows),
        }
    }

    /// The state of row `pos` alone.
    fn row(&self, pos: usize) -> State {
        match self {
            Self::Burn { state, .. } if state.batch() == 1 => state.clone(),
            Self::Burn { state, .. } => state.clone().select_rows(&[pos]),
            Self::Host { state, device, .. } => state.select_rows(&[pos]).to_state(device),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_matcher_holds_back_possible_starts() {
        let mut m = StopMatcher::new(&["END".to_string(), "\n\n".to_string()]);
        let mut shown = Vec::new();
        for b in b"abE".iter() {
            m.push(&[*b], true);
            assert!(m.cut.is_none());
            let end = m.safe_end();
            shown.extend_from_slice(m.take(end));
        }
        assert_eq!(shown, b"ab"); // "E" might begin "END"
        m.push(b"x", true);
        let end = m.safe_end();
        shown.extend_from_slice(m.take(end));
        assert_eq!(shown, b"abEx");
        m.push(b"EN", true);
        assert_eq!(m.safe_end(), 4);
        m.push(b"D!", true); // a multi-byte piece that contains the stop string
        assert_eq!(m.cut, Some(4));
        assert_eq!(m.output(), b"abEx");
    }

    #[test]
    fn stop_found_only_when_checked() {
        let mut m = StopMatcher::new(&["ab".to_string()]);
        m.push(b"a", false);
        m.push(b"b", false);
        assert_eq!(m.cut, None);
        m.push(b"c", true); // the earlier "ab" does not end inside the new bytes
        assert_eq!(m.cut, None);
        assert_eq!(find_stop(&[b"ab".to_vec()], b"xxab", 3), Some(2));
        assert_eq!(find_stop(&[b"ab".to_vec(), b"b".to_vec()], b"xxab", 3), Some(2));
        assert_eq!(find_stop(&[b"zz".to_vec()], b"xxab", 3), None);
    }
}
