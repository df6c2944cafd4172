//! Stateful decoding: the prompt goes through the parallel scan once (prefill), then each new
//! token is one recurrent step per layer on the carried state, so time and memory per token do
//! not grow with the context.

use burn::tensor::{Device, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::data::batcher::splitmix;
use crate::error::{Error, Result};
use crate::model::{MinGruLm, ModelConfig, State};

/// Sampling controls.
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
    /// Tokens to generate.
    pub max_new_tokens: usize,
    /// Seed of the sampler.
    pub seed: u64,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        Self { temperature: 0.8, top_k: 0, top_p: 1.0, min_p: 0.0, repetition_penalty: 1.0, max_new_tokens: 256, seed: 0 }
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
        Ok(())
    }
}

/// A small, fast, seedable random generator (SplitMix64).
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(splitmix(seed))
    }
    /// Uniform in `[0, 1)`.
    pub fn uniform(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(1);
        (splitmix(self.0) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Picks the next token from `logits` (`[V]`) under `cfg`. `history` is the text so far (for the
/// repetition penalty).
pub fn sample(logits: &[f32], cfg: &SamplingConfig, history: &[u32], rng: &mut Rng) -> u32 {
    let mut l: Vec<f64> = logits.iter().map(|&x| x as f64).collect();
    if cfg.repetition_penalty != 1.0 {
        let mut seen = vec![false; l.len()];
        for &t in history {
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
    let argmax = l.iter().enumerate().fold(0, |best, (i, &x)| if x > l[best] { i } else { best });
    if cfg.temperature == 0.0 {
        return argmax as u32;
    }
    let max = l[argmax];
    let mut probs: Vec<(usize, f64)> = l.iter().enumerate().map(|(i, &x)| (i, ((x - max) / cfg.temperature).exp())).collect();
    probs.sort_by(|a, b| b.1.total_cmp(&a.1));
    let mut keep = probs.len();
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

/// A model ready to decode, with its carried state.
pub struct Decoder<'a> {
    pub model: &'a MinGruLm,
    pub config: &'a ModelConfig,
    pub device: Device,
    pub state: State,
    /// Logits after the last consumed token (`None` before any token: the model then starts
    /// from its initial state with a uniform first guess).
    pub last_logits: Option<Vec<f32>>,
}

impl<'a> Decoder<'a> {
    /// A decoder at the initial state for one stream.
    pub fn new(model: &'a MinGruLm, config: &'a ModelConfig, device: &Device) -> Self {
        Self { model, config, device: device.clone(), state: State::zeros(config, 1, device), last_logits: None }
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
    }

    /// Generates up to `cfg.max_new_tokens` tokens, calling `on_token` after each; stops early
    /// when `on_token` returns false. Returns the generated tokens.
    pub fn generate(&mut self, cfg: &SamplingConfig, history: &[u32], on_token: &mut dyn FnMut(u32) -> bool) -> Vec<u32> {
        let mut rng = Rng::new(cfg.seed);
        let mut hist = history.to_vec();
        let mut out = Vec::with_capacity(cfg.max_new_tokens);
        for _ in 0..cfg.max_new_tokens {
            let logits = self.last_logits.clone().unwrap_or_else(|| vec![0.0; self.config.vocab_size]);
            let next = sample(&logits, cfg, &hist, &mut rng);
            out.push(next);
            hist.push(next);
            self.feed(&[next]);
            if !on_token(next) {
                break;
            }
        }
        out
    }
}
