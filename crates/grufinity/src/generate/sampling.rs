//! Decoding controls ([`SamplingConfig`]) and how they turn logits into the next token.

use crate::error::{Error, Result};
use crate::rng::Rng;
use crate::schema::{Bounds, Schema};

/// Largest accepted beam width.
pub const MAX_BEAMS: usize = 256;

crate::settings! {
    /// Decoding controls: the keyword arguments of Python's `Model.generate` and the options of
    /// `grufinity generate` and `chat`.
    pub struct SamplingConfig {
        /// Tokens to generate at most.
        max_new_tokens: usize = 256; Bounds::ANY,
        /// Sampling temperature, 0 = greedy.
        temperature: f64 = 0.8; Bounds::at_least(0.0),
        /// Sample from the k most likely tokens, 0 = off.
        top_k: usize = 0; Bounds::ANY,
        /// Nucleus sampling: the smallest set of tokens whose probability reaches this, 1 = off.
        top_p: f64 = 1.0; Bounds::range(0.0, false, 1.0, true),
        /// Drop tokens less likely than min_p times the most likely one, 0 = off.
        min_p: f64 = 0.0; Bounds::range(0.0, true, 1.0, false),
        /// Penalise tokens already seen (their logits are divided by this), 1 = off.
        repetition_penalty: f64 = 1.0; Bounds::above(0.0),
        /// Never repeat an n-gram of this many tokens (prompt included), 0 = off.
        no_repeat_ngram_size: usize = 0; Bounds::ANY,
        /// Tokens to write before a stop string or eos may end the output.
        min_new_tokens: usize = 0; Bounds::ANY,
        /// End the output when it ends with one of these strings (left out of the output).
        stop: Vec<String> = Vec::new(); Bounds::ANY,
        /// End-of-sequence token id (the byte tokenizer has none).
        eos: Option<u32> = None; Bounds::ANY,
        /// Beam search width, 1 = off (beam search is deterministic: temperature, top-k/p, min-p
        /// and seed do not apply).
        beams: usize = 1; Bounds::range(1.0, true, MAX_BEAMS as f64, true),
        /// Beam score = log-probability / length^this, 0 = plain sum.
        length_penalty: f64 = 0.0; Bounds::ANY,
        /// Sampler seed.
        seed: u64 = 0; Bounds::ANY,
    }
}

impl SamplingConfig {
    /// Rejects out-of-range values and combinations, naming the field.
    pub fn validate(&self) -> Result<()> {
        self.check()?;
        if self.min_new_tokens > self.max_new_tokens {
            return Err(Error::config(
                "min_new_tokens",
                format!("must not exceed max_new_tokens ({}), got {}", self.max_new_tokens, self.min_new_tokens),
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
pub(super) fn process(logits: &[f32], cfg: &SamplingConfig, older: &[u32], recent: &[u32], generated: usize) -> Vec<f64> {
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
pub(super) fn argmax(values: &[f64]) -> usize {
    values.iter().enumerate().fold(0, |best, (i, &x)| if x > values[best] { i } else { best })
}

/// `log(sum(exp(values)))`, stable.
pub(super) fn log_sum_exp(values: impl Iterator<Item = f64> + Clone) -> f64 {
    let max = values.clone().fold(f64::NEG_INFINITY, f64::max);
    if max == f64::NEG_INFINITY {
        return max;
    }
    max + values.map(|x| (x - max).exp()).sum::<f64>().ln()
}

/// Log-probability of `token` under the softmax of `logits` (`[V]`).
pub(super) fn log_prob_of(logits: &[f32], token: u32) -> f64 {
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
