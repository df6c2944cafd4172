//! Stateful decoding: the prompt goes through the parallel scan once (prefill), then each new
//! token is one recurrent step per layer on the carried state, so time and memory per token do
//! not grow with the context.
//!
//! - [`SamplingConfig`] ([`sampling`]): every decoding control and how logits become tokens.
//! - [`Decoder`]: one stream with its carried [`DecoderState`]; [`Decoder::run`] samples or
//!   beam-searches ([`beam`]), streaming the text, holding back possible stop strings ([`stop`]).
//! - [`run_batch`] ([`batch`]): several decoders (prompts) that share one forward per step.
//! - [`DecoderState::to_bytes`] / [`DecoderState::from_bytes`]: save a generation to continue it
//!   later.

pub mod batch;
mod beam;
pub mod sampling;
mod stop;

use std::collections::BTreeMap;

use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::data::Tokenizer;
use crate::error::{Error, Result};
use crate::files::tensors::{self, HostTensor, Values};
use crate::model::host::HostModel;
use crate::model::{MinGruLm, ModelConfig, State};
use crate::rng::Rng;

pub use batch::run_batch;
pub use sampling::{pick, process_logits, sample, SamplingConfig, MAX_BEAMS};

crate::choice_enum! {
    /// Why a generation ended.
    pub enum Finish {
        /// `max_new_tokens` were generated.
        Length = "length",
        /// The end-of-sequence token was generated.
        Eos = "eos",
        /// A stop string was generated.
        Stop = "stop",
        /// The caller's callback asked to stop.
        Cancelled = "cancelled",
    }
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

    /// Serialises the state as safetensors bytes: the recurrent state ([`State::to_host`]),
    /// `last_logits` (`[V]`) and `history` (`[N]`, u32), tagged with `config` so that it can
    /// only be loaded back into the same kind of model.
    pub fn to_bytes(&self, config: &ModelConfig) -> Result<Vec<u8>> {
        let mut named = self.state.to_host();
        if let Some(l) = &self.last_logits {
            named.insert("last_logits".into(), HostTensor::f32(vec![l.len()], l.clone()));
        }
        if !self.history.is_empty() {
            named.insert("history".into(), HostTensor { shape: vec![self.history.len()], data: Values::U32(self.history.clone()) });
        }
        let model = serde_json::to_string(&inference_shape(config)).map_err(state_error)?;
        let mut meta = BTreeMap::from([
            ("format".to_string(), STATE_FORMAT.to_string()),
            ("version".to_string(), STATE_VERSION.to_string()),
            ("model".to_string(), model),
        ]);
        if let Some((seed, rng)) = &self.sampler {
            meta.insert("sampler_seed".into(), seed.to_string());
            meta.insert("sampler_position".into(), rng.position().to_string());
        }
        tensors::to_bytes(&named, &meta)
    }

    /// Reads bytes written by [`to_bytes`](Self::to_bytes) onto `device`; fails unless they were
    /// saved by a model of the same config (`config`).
    pub fn from_bytes(bytes: &[u8], config: &ModelConfig, device: &Device) -> Result<Self> {
        let (mut named, meta) = tensors::from_bytes(bytes).map_err(state_error)?;
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
        let state = State::from_host(&mut named, config, None, device).map_err(state_error)?;
        let last_logits = match named.remove("last_logits") {
            Some(t) if t.shape == [config.vocab_size] => Some(t.f32_values("last_logits").map_err(state_error)?.to_vec()),
            Some(t) => {
                return Err(state_error(format!("`last_logits` has shape {:?}, expected [{}]", t.shape, config.vocab_size)))
            }
            None => None,
        };
        let history = match named.remove("history") {
            Some(HostTensor { shape, data: Values::U32(h) }) if shape.len() == 1 => {
                if let Some(bad) = h.iter().find(|&&t| t as usize >= config.vocab_size) {
                    return Err(state_error(format!("history token {bad} is outside the vocabulary")));
                }
                h
            }
            Some(_) => return Err(state_error("`history` must be a one-dimensional U32 tensor")),
            None => Vec::new(),
        };
        if let Some(extra) = named.keys().next() {
            return Err(state_error(format!("unexpected tensor `{extra}`")));
        }
        let number = |key: &str| meta.get(key).and_then(|v| v.parse::<u64>().ok());
        let sampler = match (number("sampler_seed"), number("sampler_position")) {
            (Some(seed), Some(pos)) => Some((seed, Rng::at_position(pos))),
            _ => None,
        };
        Ok(Self { state, last_logits, history, sampler })
    }
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
        match batch::decode_rows(std::slice::from_mut(self), &cfg, None, &mut |_, tok, _| on_token(tok)) {
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
        let mut out = batch::decode_rows(std::slice::from_mut(self), cfg, Some(tokenizer), &mut |_, _, piece| on_text(piece))?;
        out.pop().ok_or_else(|| Error::Data("generation produced no result".into()))
    }

}
