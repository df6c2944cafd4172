//! A trained model ready for inference: loading it from a run or checkpoint, and everything a
//! user does with it (forward passes with carried state, generation, batched generation,
//! evaluation, and a look inside). The Python binding only converts types around these.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use burn::tensor::{Device, Int, Tensor, TensorData};
use serde::Serialize;

use crate::data::Tokenizer;
use crate::error::{Error, Result};
use crate::generate::{run_batch, Decoder, DecoderState, Generation, SamplingConfig};
use crate::model::host::HostModel;
use crate::model::quant::{round_weights, WeightDtype};
use crate::model::{fused, MinGruLm, ModelConfig, State};
use crate::run::{resolve, RunDir};
use crate::schema::Bounds;
use crate::train::checkpoint::{inference_weights, load_module, read_tokenizer, read_trainer_state, TrainerState};
use crate::train::eval::{evaluate, EvalResult};

/// Tokens per forward call when inspecting a text.
const CHUNK: usize = 256;

crate::settings! {
    /// How a trained model is loaded for inference (besides the device, a training setting).
    pub struct LoadConfig {
        /// Weight matrices as bfloat16 (bf16): about half the time per generated token on the CPU
        /// for models larger than its caches, at a small loss cost (eval with the same dtype
        /// measures it).
        dtype: WeightDtype = WeightDtype::F32; Bounds::ANY,
    }
}

/// A model ready for inference, with everything its checkpoint says about it.
pub struct Loaded {
    pub checkpoint: PathBuf,
    pub model: MinGruLm,
    pub trainer: TrainerState,
    pub tokenizer: Tokenizer,
    pub device: Device,
    /// The matrices' element type (their values in `model` are already rounded to it).
    pub dtype: WeightDtype,
    host: OnceLock<Option<HostModel>>,
}

/// What the model makes of a text, token by token (see [`Loaded::inspect`]).
#[derive(Clone, Debug, Serialize)]
pub struct Inspection {
    pub tokens: Vec<u32>,
    /// The bytes each token stands for.
    pub pieces: Vec<Vec<u8>>,
    /// The model's surprise at each token, `-log p(token | everything before)` in nats; the
    /// first token has no prediction (`None`).
    pub surprise: Vec<Option<f32>>,
    /// Per block, per token: the mean update gate `z` over the minGRU's channels, in `[0, 1]`
    /// (near 1: the state is overwritten by the new input; near 0: the memory is kept).
    pub gates: Vec<Vec<f32>>,
}

impl Loaded {
    /// Loads `path` (a run: its best checkpoint, else its last; or a checkpoint directory) onto
    /// `device`, without autodiff, with its weight matrices as `dtype` values (the moving average
    /// of the weights when the run kept one).
    pub fn load(path: &Path, device: &Device, dtype: WeightDtype) -> Result<Self> {
        crate::alloc::keep_freed_memory();
        let checkpoint = resolve(path, "best")?;
        let trainer = read_trainer_state(&checkpoint)?;
        let tokenizer = read_tokenizer(&checkpoint, &trainer)?;
        let model = MinGruLm::new(&trainer.config.model, 0, device)?;
        let mut model = load_module(model, &inference_weights(&checkpoint), device)?;
        model = round_weights(model, dtype);
        Ok(Self { checkpoint, model, tokenizer, trainer, device: device.clone(), dtype, host: OnceLock::new() })
    }

    /// The architecture.
    pub fn config(&self) -> &ModelConfig {
        &self.trainer.config.model
    }

    /// The run this checkpoint belongs to, if it is inside one.
    pub fn run(&self) -> Option<RunDir> {
        RunDir::of_checkpoint(&self.checkpoint).ok()
    }

    /// Host copies of the weights for decoding steps on the CPU ([`HostModel`]), made on first
    /// use (evaluation never needs them); `None` on other devices.
    pub fn host(&self) -> Option<&HostModel> {
        self.host.get_or_init(|| fused::supported(&self.device).then(|| HostModel::new(&self.model, self.dtype))).as_ref()
    }

    /// The state before any token, for `batch` rows.
    pub fn initial_state(&self, batch: usize) -> DecoderState {
        DecoderState::initial(self.config(), batch, &self.device)
    }

    /// `tokens`: `batch` rows of `t` ids each, row-major → (logits `[batch, t, V]` row-major,
    /// the state after the last token). `state` (of `batch` rows) carries on from an earlier
    /// call; a one-row state also remembers the tokens and last logits, so that generation
    /// can continue from it.
    pub fn forward(&self, tokens: &[u32], batch: usize, state: Option<&DecoderState>) -> Result<(Vec<f32>, DecoderState)> {
        let vocab = self.config().vocab_size;
        if batch == 0 || tokens.is_empty() || tokens.len() % batch != 0 {
            return Err(Error::config("tokens", "need at least one token per row, every row of the same length"));
        }
        if let Some(bad) = tokens.iter().find(|&&x| x as usize >= vocab) {
            return Err(Error::config("tokens", format!("token id {bad} is outside the vocabulary [0, {vocab})")));
        }
        let t = tokens.len() / batch;
        let start = match state {
            Some(s) if s.state.batch() != batch => {
                return Err(Error::config("state", format!("has {} rows but tokens has {batch}", s.state.batch())))
            }
            Some(s) => s.state.clone(),
            None => State::zeros(self.config(), batch, &self.device),
        };
        let ids: Vec<i64> = tokens.iter().map(|&x| x as i64).collect();
        let input = Tensor::<2, Int>::from_data(TensorData::new(ids, [batch, t]), &self.device);
        let (logits, next) = self.model.forward(input, start);
        let logits = logits.into_data().convert::<f32>().try_into_vec::<f32>().map_err(|e| Error::Data(format!("{e:?}")))?;
        let one_row = batch == 1;
        let (mut history, sampler) = match state {
            Some(s) if one_row => (s.history.clone(), s.sampler.clone()),
            _ => (Vec::new(), None),
        };
        if one_row {
            history.extend_from_slice(tokens);
        }
        let last = one_row.then(|| logits[(t - 1) * vocab..].to_vec());
        Ok((logits, DecoderState { state: next, last_logits: last, history, sampler }))
    }

    /// Generates after `prompt` (bytes; fed after `state` when given) under `cfg`. `on_text`
    /// sees the output as it is produced (see [`Decoder::run`]); returning false stops. Returns
    /// the generation and the state after every generated token.
    pub fn generate(
        &self,
        prompt: &[u8],
        cfg: &SamplingConfig,
        state: Option<DecoderState>,
        on_text: &mut dyn FnMut(&[u8]) -> bool,
    ) -> Result<(Generation, DecoderState)> {
        cfg.validate_for(self.config().vocab_size)?;
        let start = match state {
            Some(s) if s.state.batch() != 1 => return Err(Error::config("state", "generation takes a one-row state")),
            Some(s) => s,
            None => self.initial_state(1),
        };
        let mut dec = Decoder::from_state(&self.model, self.config(), &self.device, start).with_host(self.host());
        dec.feed(&self.tokenizer.encode(prompt));
        let g = dec.run(cfg, &self.tokenizer, on_text)?;
        Ok((g, dec.into_state()))
    }

    /// Generates after each of `prompts` at once (one forward per step for all rows); row `i`
    /// equals [`generate`](Self::generate) of `prompts[i]` alone. `keep_going` is asked once per
    /// step.
    pub fn generate_batch(
        &self,
        prompts: &[Vec<u8>],
        cfg: &SamplingConfig,
        keep_going: &mut dyn FnMut() -> bool,
    ) -> Result<Vec<Generation>> {
        cfg.validate_for(self.config().vocab_size)?;
        let mut decoders: Vec<Decoder> = prompts
            .iter()
            .map(|p| {
                let mut dec = Decoder::new(&self.model, self.config(), &self.device).with_host(self.host());
                dec.feed(&self.tokenizer.encode(p));
                dec
            })
            .collect();
        run_batch(&mut decoders, cfg, &self.tokenizer, keep_going)
    }

    /// Loss on `text` with the state carried throughout, read as `rows` streams in chunks of
    /// `chunk` tokens (`None`: the run's `chunk_len`; `reset_every` > 0 resets the state that
    /// often). `progress(done, total)`
    /// is asked before each chunk; stopping there is an [`Error::Interrupted`].
    pub fn evaluate(
        &self,
        text: &[u8],
        rows: usize,
        chunk: Option<usize>,
        reset_every: usize,
        progress: &mut dyn FnMut(usize, usize) -> bool,
    ) -> Result<EvalResult> {
        let tokens = self.tokenizer.encode(text);
        if tokens.len() < 2 {
            return Err(Error::Data("need at least 2 tokens of text to evaluate".into()));
        }
        if rows == 0 {
            return Err(Error::config("rows", "must be at least 1"));
        }
        let chunk = chunk.unwrap_or(self.trainer.config.chunk_len);
        if chunk == 0 {
            return Err(Error::config("chunk_len", "must be at least 1"));
        }
        let bytes_per_token = self.tokenizer.bytes_per_token(&tokens[1..]);
        let (loss, n) = evaluate(&self.model, self.config(), &tokens, rows, chunk, 0, reset_every, &self.device, progress)
            .ok_or_else(|| Error::Interrupted("evaluation stopped".into()))?;
        Ok(EvalResult::from_loss(loss, n, bytes_per_token))
    }

    /// The model's surprise at each token of `text` and each block's mean update gate there,
    /// with the state carried through the whole text.
    pub fn inspect(&self, text: &[u8]) -> Result<Inspection> {
        let tokens = self.tokenizer.encode(text);
        if tokens.is_empty() {
            return Err(Error::Data("need some text to inspect".into()));
        }
        let (depth, vocab) = (self.config().depth, self.config().vocab_size);
        let mut state = State::zeros(self.config(), 1, &self.device);
        let mut surprise = vec![None];
        let mut gates = vec![Vec::with_capacity(tokens.len()); depth];
        for (c, piece) in tokens.chunks(CHUNK).enumerate() {
            let ids: Vec<i64> = piece.iter().map(|&x| x as i64).collect();
            let input = Tensor::<2, Int>::from_data(TensorData::new(ids, [1, piece.len()]), &self.device);
            let mut z = Vec::with_capacity(depth);
            let (logits, next) = self.model.forward_observed(input, state, Some(&mut z));
            state = next;
            for (layer, z) in z.into_iter().enumerate() {
                let mean = z.mean_dim(2).into_data().convert::<f32>().try_into_vec::<f32>().unwrap_or_default();
                gates[layer].extend(mean);
            }
            let log_probs = burn::tensor::activation::log_softmax(logits, 2);
            let lp = log_probs.into_data().convert::<f32>().try_into_vec::<f32>().unwrap_or_default();
            // Position i predicts token i + 1 (the next chunk's first token for the last one).
            let start = c * CHUNK;
            for (i, row) in lp.chunks(vocab).enumerate() {
                if let Some(&next) = tokens.get(start + i + 1) {
                    surprise.push(Some(-row[next as usize]));
                }
            }
        }
        let pieces = tokens.iter().map(|&t| self.tokenizer.decode(&[t])).collect();
        Ok(Inspection { tokens, pieces, surprise, gates })
    }
}
