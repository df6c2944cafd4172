//! Several prompts decoded together: one forward per step for all rows, each row with its own
//! history, sampler and stop strings.

use burn::tensor::{Device, Int, Tensor, TensorData};

use super::sampling::{log_prob_of, pick, process, SamplingConfig};
use super::stop::StopMatcher;
use super::{Decoder, Finish, Generation};
use crate::data::Tokenizer;
use crate::error::{Error, Result};
use crate::model::host::{HostModel, HostState};
use crate::model::{MinGruLm, State};
use crate::rng::Rng;

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
pub(super) fn decode_rows(
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
pub(super) enum Stepper<'m> {
    Burn { model: &'m MinGruLm, device: Device, state: State },
    Host { model: &'m HostModel, device: Device, state: HostState },
}

impl<'m> Stepper<'m> {
    pub(super) fn new(model: &'m MinGruLm, host: Option<&'m HostModel>, device: &Device, state: State) -> Self {
        match host {
            Some(host) => Self::Host { model: host, device: device.clone(), state: HostState::from_state(&state) },
            None => Self::Burn { model, device: device.clone(), state },
        }
    }

    /// One token per row → the logits of each row, `[V]` each.
    pub(super) fn step(&mut self, tokens: &[u32], vocab: usize) -> Result<Vec<Vec<f32>>> {
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
    pub(super) fn select_rows(&mut self, rows: &[usize]) {
        match self {
            Self::Burn { state, .. } => *state = std::mem::replace(state, State { layers: vec![] }).select_rows(rows),
            Self::Host { state, .. } => *state = state.select_rows(rows),
        }
    }

    /// The state of row `pos` alone.
    pub(super) fn row(&self, pos: usize) -> State {
        match self {
            Self::Burn { state, .. } if state.batch() == 1 => state.clone(),
            Self::Burn { state, .. } => state.clone().select_rows(&[pos]),
            Self::Host { state, device, .. } => state.select_rows(&[pos]).to_state(device),
        }
    }
}
