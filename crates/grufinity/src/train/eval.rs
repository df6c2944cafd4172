//! Validation: loss over a held-out token stream with the state carried across chunks.

use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::data::batcher::eval_layout;
use crate::model::{cross_entropy, MinGruLm, ModelConfig, State};

/// Loss figures of one evaluation.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct EvalResult {
    /// Mean cross-entropy, nats per token.
    pub loss: f64,
    /// Bits per token.
    pub bits_per_token: f64,
    /// Bits per byte of the original text.
    pub bits_per_byte: f64,
    pub perplexity: f64,
    /// Tokens predicted.
    pub tokens: usize,
}

impl EvalResult {
    /// Figures from a mean loss in nats per token and the corpus' bytes per token.
    pub fn from_loss(loss: f64, tokens: usize, bytes_per_token: f64) -> Self {
        let bits_per_token = loss / std::f64::consts::LN_2;
        Self { loss, bits_per_token, bits_per_byte: bits_per_token / bytes_per_token, perplexity: loss.exp(), tokens }
    }
}

/// Builds an `[rows, t]` integer tensor from row-major token ids.
pub fn token_tensor(tokens: &[u32], rows: usize, t: usize, device: &Device) -> Tensor<2, Int> {
    Tensor::from_data(TensorData::new(tokens.iter().map(|&x| x as i64).collect::<Vec<_>>(), [rows, t]), device)
}

/// Mean loss (nats/token) of `model` on `tokens`, read as `rows` contiguous streams (each from
/// the initial state, carried across chunks of `chunk` tokens). `cap` (0 = none) limits the
/// tokens predicted. `reset_every` (0 = never) resets the state every that many tokens, to show
/// what the carried context buys. `model` must be without autodiff (`model.valid()`).
/// `progress(done, total)` (tokens predicted) is asked before each chunk whether to go on;
/// `None` when it said stop.
#[allow(clippy::too_many_arguments)]
pub fn evaluate(
    model: &MinGruLm,
    config: &ModelConfig,
    tokens: &[u32],
    rows: usize,
    chunk: usize,
    cap: usize,
    reset_every: usize,
    device: &Device,
    progress: &mut dyn FnMut(usize, usize) -> bool,
) -> Option<(f64, usize)> {
    let (starts, per_row) = eval_layout(tokens.len(), rows, cap);
    let rows = starts.len();
    let mut state = State::zeros(config, rows, device);
    let (mut total, mut count) = (0.0f64, 0usize);
    let mut pos = 0;
    while pos < per_row {
        if !progress(pos * rows, per_row * rows) {
            return None;
        }
        let mut t = chunk.min(per_row - pos);
        if reset_every > 0 {
            if pos % reset_every == 0 && pos > 0 {
                state = State::zeros(config, rows, device);
            }
            t = t.min(reset_every - pos % reset_every);
        }
        let mut inputs = Vec::with_capacity(rows * t);
        let mut targets = Vec::with_capacity(rows * t);
        for &s in &starts {
            inputs.extend_from_slice(&tokens[s + pos..s + pos + t]);
            targets.extend_from_slice(&tokens[s + pos + 1..s + pos + t + 1]);
        }
        let (logits, next) = model.forward(token_tensor(&inputs, rows, t, device), state);
        state = next;
        let loss = cross_entropy(logits, token_tensor(&targets, rows, t, device)).into_scalar::<f32>() as f64;
        total += loss * (rows * t) as f64;
        count += rows * t;
        pos += t;
    }
    Some((total / count.max(1) as f64, count))
}
