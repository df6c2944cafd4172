//! The training loop: TBPTT over streams, AdamW, evaluation, samples, checkpoints.
//!
//! Each step reads one chunk per stream, carries each stream's state (detached) to the next
//! step, and updates once per `accum` chunks. Every `eval_every` steps the model is evaluated
//! on the held-out tail, a sample is written and a checkpoint saved. Every event goes to the
//! caller's callback, and a `false` from it (Ctrl-C) stops the run at the next safe point with
//! a checkpoint: after the current step, or in the middle of an evaluation or a sample.

use std::path::PathBuf;
use std::time::Instant;

use burn::module::Module;
use burn::tensor::Device;

use super::checkpoint::{self, module_tensors, CheckpointParts, TrainerState};
use super::config::{OnNan, Precision, TrainConfig, MAX_BAD_STEPS};
use super::eval::{evaluate, token_tensor, EvalResult};
use super::events::{Event, OnEvent, Outcome};
use super::ema::Ema;
use super::histogram::Histogram;
use super::metrics::{append_sample, Metrics};
use super::optim::{accumulate_grads, clip_global_norm, params_finite, AdamW, GradMap, Schedule};
use super::params::named_params;
use super::setup::{host_values, start, EvalSet, StartInfo};
use crate::data::{StreamBatcher, TokenStore, Tokenizer};
use crate::error::{Error, Result};
use crate::generate::{Decoder, SamplingConfig};
use crate::model::dense::Bf16Products;
use crate::model::{MinGruLm, State};
use crate::rng::splitmix;
use crate::run::RunDir;

/// Trains as `config` says: a new run, or the continuation `config.resume` names (see
/// [`super::resume`]). `on_event` sees every event; returning `false` stops at the next safe
/// point with a checkpoint. One process at a time may write a run: a second fails at once.
pub fn train(config: TrainConfig, on_event: &mut OnEvent<'_>) -> Result<Outcome> {
    crate::alloc::keep_freed_memory();
    let _flush = crate::denormals::FlushDenormals::new();
    let (mut run, info, _lock) = start(config, on_event)?;
    // bf16 products on this thread (the step and its backward pass run here) while training.
    let _bf16 = (run.cfg.precision == Precision::Bf16).then(Bf16Products::enable).flatten();
    run.train_loop(info, on_event)
}

/// A run in progress.
pub struct Run {
    pub(super) cfg: TrainConfig,
    pub(super) run_dir: RunDir,
    pub(super) device: Device,
    pub(super) autodiff: Device,
    pub(super) tokenizer: Tokenizer,
    /// The whole corpus, memory-mapped: training reads `..n_train`, validation the rest.
    pub(super) tokens: TokenStore,
    pub(super) n_train: usize,
    pub(super) eval: EvalSet,
    pub(super) sample_prompt: Vec<u32>,
    pub(super) model: MinGruLm,
    pub(super) opt: AdamW,
    /// The moving average of the weights, with `ema` on.
    pub(super) ema: Option<Ema>,
    pub(super) state: State,
    pub(super) batcher: StreamBatcher,
    pub(super) ts: TrainerState,
    pub(super) metrics: Metrics,
}

/// Sends events to the metrics files and the caller, remembering a request to stop.
struct Reporter<'a, 'b> {
    on_event: &'a mut OnEvent<'b>,
    stop: bool,
}

impl Reporter<'_, '_> {
    fn emit(&mut self, metrics: &mut Metrics, e: Event) {
        metrics.record(&e);
        if !(self.on_event)(&e) {
            self.stop = true;
        }
    }

    /// Whether to go on with long work; asks the caller.
    fn keep_going(&mut self, phase: &'static str) -> bool {
        if !self.stop && !(self.on_event)(&Event::Heartbeat { phase }) {
            self.stop = true;
        }
        !self.stop
    }
}

/// Why the loop ended.
#[derive(Clone, Copy, PartialEq, Eq)]
enum End {
    Budget,
    Time,
    EarlyStop,
    Interrupted,
}

impl End {
    fn word(self) -> &'static str {
        match self {
            End::Budget => "budget",
            End::Time => "time",
            End::EarlyStop => "early_stop",
            End::Interrupted => "interrupted",
        }
    }
}

impl Run {
    fn train_loop(&mut self, info: StartInfo, on_event: &mut OnEvent<'_>) -> Result<Outcome> {
        let mut out = Reporter { on_event, stop: false };
        let total = self.cfg.total_steps(self.batcher.steps_per_epoch());
        let start = Event::Start {
            run_dir: self.run_dir.root.clone(),
            device: info.selected.name.clone(),
            device_reason: info.selected.reason.clone(),
            device_skipped: info.selected.skipped.clone(),
            params: self.cfg.model.num_params(),
            train_tokens: self.n_train,
            val_tokens: self.tokens.len() - self.n_train,
            total_steps: total,
            max_time: self.cfg.max_time,
            step: self.ts.step,
            resumed_from: info.resumed_from,
            branched_from: info.branched_from,
            data: self.cfg.data_description.clone(),
            data_log: info.data_log,
            debris_removed: info.debris_removed,
            precision: info.precision,
        };
        out.emit(&mut self.metrics, start);
        let clock = Instant::now();
        let elapsed0 = self.ts.elapsed;
        let mut window = (Instant::now(), 0u64, 0u64);
        // The last evaluation and checkpoint, and the step they were made at.
        let mut last_eval: Option<f64> = None;
        let mut last_saved: Option<(u64, PathBuf)> = None;
        let mut evaluated_at: Option<u64> = None;
        let end = loop {
            let elapsed = elapsed0 + clock.elapsed().as_secs_f64();
            if out.stop {
                break End::Interrupted;
            }
            if total.is_some_and(|n| self.ts.step >= n) {
                break End::Budget;
            }
            if self.cfg.max_time.is_some_and(|m| elapsed >= m) {
                break End::Time;
            }
            let progress = match (total, self.cfg.max_time) {
                (Some(n), Some(m)) => Some((self.ts.step as f64 / n as f64).max(elapsed / m)),
                (Some(n), None) => Some(self.ts.step as f64 / n as f64),
                (None, Some(m)) => Some(elapsed / m),
                (None, None) => None,
            };
            let lr = self.cfg.schedule.lr_at(self.ts.step, self.cfg.lr, self.cfg.warmup, progress, self.cfg.min_lr_ratio)
                * self.ts.plateau.scale;
            let step = self.step(lr)?;
            self.ts.step += 1;
            self.ts.tokens += self.cfg.tokens_per_step();
            self.ts.elapsed = elapsed0 + clock.elapsed().as_secs_f64();
            window.1 += self.cfg.tokens_per_step();
            window.2 += 1;
            let n = self.ts.step;
            match step.bad {
                Some(value) => {
                    self.skipped(lr, &step, &mut out);
                    if self.ts.bad_steps >= MAX_BAD_STEPS {
                        return Err(Error::NonFinite { step: n, value });
                    }
                }
                None => self.ts.bad_steps = 0,
            }
            if step.bad.is_none() && (n % self.cfg.log_every == 0 || n == 1) {
                let secs = window.0.elapsed().as_secs_f64().max(1e-9);
                let e = Event::Step {
                    step: n,
                    epoch: step.epoch,
                    tokens: self.ts.tokens,
                    lr,
                    loss: step.loss,
                    grad_norm: step.grad_norm,
                    tokens_per_sec: window.1 as f64 / secs,
                    step_time: secs / window.2.max(1) as f64,
                    elapsed: self.ts.elapsed,
                };
                out.emit(&mut self.metrics, e);
                window = (Instant::now(), 0, 0);
            }
            let finishing = total.is_some_and(|total| n >= total);
            if self.cfg.eval_every > 0 && n % self.cfg.eval_every == 0 && !finishing {
                let (r, path) = self.eval_and_save(&mut out)?;
                last_eval = r.map(|r| r.loss).or(last_eval);
                evaluated_at = r.is_some().then_some(n);
                last_saved = Some((n, path));
                window = (Instant::now(), 0, 0);
                let patience = self.cfg.early_stop_patience;
                if r.is_some() && patience > 0 && self.ts.plateau.evals_since_best >= patience {
                    break End::EarlyStop;
                }
            } else if self.cfg.save_every > 0 && n % self.cfg.save_every == 0 && !finishing {
                let path = self.save(false)?;
                out.emit(&mut self.metrics, Event::Saved { step: n, path: path.clone() });
                last_saved = Some((n, path));
            }
        };
        let n = self.ts.step;
        let saved_now = last_saved.filter(|(s, _)| *s == n).map(|(_, p)| p);
        let checkpoint = match saved_now {
            // Saved at this very step (after an evaluation, or just before an interruption): the
            // same weights are not evaluated or written twice.
            Some(p) if evaluated_at == Some(n) || end == End::Interrupted => p,
            // Interrupted: save without evaluating, the user is waiting.
            _ if end == End::Interrupted => {
                let p = self.save(false)?;
                out.emit(&mut self.metrics, Event::Saved { step: n, path: p.clone() });
                p
            }
            _ => {
                let (r, p) = self.eval_and_save(&mut out)?;
                last_eval = r.map(|r| r.loss).or(last_eval);
                p
            }
        };
        let interrupted = end == End::Interrupted || out.stop;
        let done = Event::Done {
            step: n,
            tokens: self.ts.tokens,
            elapsed: self.ts.elapsed,
            reason: if interrupted { End::Interrupted.word() } else { end.word() }.to_string(),
            run_dir: self.run_dir.root.clone(),
            checkpoint: checkpoint.clone(),
            val_loss: last_eval,
            best_val_loss: self.ts.best_val_loss,
        };
        out.emit(&mut self.metrics, done);
        Ok(Outcome { run_dir: self.run_dir.root.clone(), checkpoint, step: n, interrupted, final_val_loss: last_eval })
    }

    /// One optimiser step over `accum` chunks at learning rate `lr`. A non-finite loss,
    /// gradient norm or update is an error, or with `on_nan = "skip"` a step left out (weights
    /// and optimiser unchanged).
    fn step(&mut self, lr: f64) -> Result<StepResult> {
        let (b, t, accum) = (self.cfg.batch_size, self.cfg.chunk_len, self.cfg.accum);
        let skip_bad = self.cfg.on_nan == OnNan::Skip;
        let next_step = self.ts.step + 1;
        let mut grads = GradMap::new();
        let mut loss_sum = 0.0f64;
        let mut epoch = self.batcher.cursor().epoch;
        for micro in 0..accum {
            let batch = self.batcher.next_batch(&self.tokens);
            epoch = batch.epoch;
            if batch.restart {
                self.state = State::zeros(&self.cfg.model, b, &self.autodiff);
            } else if batch.resets.iter().any(|&r| r) {
                self.state = std::mem::replace(&mut self.state, State { layers: vec![] }).reset_rows(&batch.resets);
            }
            let inputs = token_tensor(&batch.inputs, b, t, &self.autodiff);
            let targets = token_tensor(&batch.targets, b, t, &self.autodiff);
            let state = std::mem::replace(&mut self.state, State { layers: vec![] });
            let (loss, next) = if self.cfg.model.dropout > 0.0 {
                // Seeding per micro-step makes dropout masks a function of the step alone, so a
                // resumed run draws exactly what an uninterrupted one would.
                let seed = splitmix(self.cfg.seed ^ splitmix(self.ts.step * accum as u64 + micro as u64));
                crate::device::with_seed(&self.device, seed, || self.model.loss(inputs, targets, state))
            } else {
                self.model.loss(inputs, targets, state)
            };
            let grad = loss.backward();
            let value = loss.into_scalar::<f32>();
            if !value.is_finite() {
                if !skip_bad {
                    return Err(Error::NonFinite { step: next_step, value });
                }
                return Ok(StepResult { loss: value as f64, grad_norm: f64::NAN, epoch, bad: Some(value) });
            }
            loss_sum += value as f64;
            accumulate_grads(&self.model, &grad, 1.0 / accum as f32, &mut grads);
            self.state = next.detach();
        }
        let loss = loss_sum / accum as f64;
        let grad_norm = clip_global_norm(&mut grads, self.cfg.grad_clip);
        if !grad_norm.is_finite() {
            if !skip_bad {
                return Err(Error::NonFinite { step: next_step, value: grad_norm });
            }
            return Ok(StepResult { loss, grad_norm: grad_norm as f64, epoch, bad: Some(grad_norm) });
        }
        let before = skip_bad.then(|| (self.model.clone(), self.opt.moments.clone(), self.opt.step));
        self.model = self.opt.update(self.model.clone(), &grads, lr);
        // Finite gradients can still overflow the weights (a huge learning rate); such weights
        // are never kept, so a checkpoint is never written with them.
        if !params_finite(&self.model) {
            let Some((model, moments, step)) = before else {
                return Err(Error::NonFinite { step: next_step, value: f32::NAN });
            };
            self.model = model;
            self.opt.moments = moments;
            self.opt.step = step;
            return Ok(StepResult { loss, grad_norm: grad_norm as f64, epoch, bad: Some(f32::NAN) });
        }
        if let Some(ema) = &mut self.ema {
            ema.update(&self.model, self.opt.step);
        }
        Ok(StepResult { loss, grad_norm: grad_norm as f64, epoch, bad: None })
    }

    /// Records a skipped step: the streams go on from a fresh state (the carried one may be what
    /// overflowed) and the learning-rate multiplier halves.
    fn skipped(&mut self, lr: f64, step: &StepResult, out: &mut Reporter<'_, '_>) {
        self.state = State::zeros(&self.cfg.model, self.cfg.batch_size, &self.autodiff);
        self.ts.bad_steps += 1;
        self.ts.plateau.scale *= 0.5;
        let e = Event::Skipped {
            step: self.ts.step,
            tokens: self.ts.tokens,
            lr,
            loss: step.loss,
            grad_norm: step.grad_norm,
            lr_scale: self.ts.plateau.scale,
            consecutive: self.ts.bad_steps,
            elapsed: self.ts.elapsed,
        };
        out.emit(&mut self.metrics, e);
    }

    /// Writes `checkpoints/step-<N>/` atomically and points `last` (and `best`) at it. Never
    /// writes non-finite weights; a failed write leaves the previous checkpoint as it was and
    /// says so.
    fn save(&mut self, best: bool) -> Result<PathBuf> {
        if !params_finite(&self.model) {
            return Err(Error::NonFinite { step: self.ts.step, value: f32::NAN });
        }
        let step = self.ts.step;
        let dir = self.run_dir.checkpoint(step);
        self.write_checkpoint(&dir, best).map_err(|e| {
            let previous = match self.run_dir.link_step("last") {
                Some(s) if s != step => format!("the previous checkpoint step-{s} is intact"),
                _ => "no earlier checkpoint of this run exists".to_string(),
            };
            Error::checkpoint(&dir, format!("could not be written ({e}); {previous}"))
        })?;
        Ok(dir)
    }

    fn write_checkpoint(&mut self, dir: &std::path::Path, best: bool) -> Result<()> {
        self.ts.cursor = self.batcher.cursor();
        self.ts.optimizer_step = self.opt.step;
        let model_meta = [
            ("format".to_string(), "grufinity".to_string()),
            ("model_config".to_string(), serde_json::to_string(&self.cfg.model).unwrap_or_default()),
        ];
        let optimizer = self
            .opt
            .state_tensors()
            .into_iter()
            .map(|(k, t)| {
                let n = t.dims()[0];
                (k, crate::files::HostTensor::from_tensor(t, vec![n]))
            })
            .collect();
        let parts = CheckpointParts {
            model: module_tensors(&self.model),
            model_meta: model_meta.into_iter().collect(),
            optimizer,
            state: self.state.to_host(),
            ema: self.ema.as_ref().map(|e| module_tensors(&e.apply(self.model.valid()))),
            tokenizer: &self.tokenizer,
            trainer: &self.ts,
        };
        checkpoint::write(dir, &parts)?;
        self.run_dir.point("last", self.ts.step)?;
        if best {
            self.run_dir.point("best", self.ts.step)?;
        }
        self.run_dir.prune(self.cfg.keep_last)
    }

    /// Validation loss with the state carried across chunks, or `None` when the caller asked
    /// to stop during it.
    /// The weights evaluated, sampled and used for inference: the moving average when kept.
    fn eval_model(&self) -> MinGruLm {
        let model = self.model.valid();
        match &self.ema {
            Some(ema) => ema.apply(model),
            None => model,
        }
    }

    fn evaluate(&self, out: &mut Reporter<'_, '_>) -> Option<EvalResult> {
        let model = self.eval_model();
        let e = &self.eval;
        let (loss, count) = evaluate(&model, &self.cfg.model, &e.tokens, e.rows, self.cfg.chunk_len, 0, 0, &self.device, &mut |_, _| {
            out.keep_going("eval")
        })?;
        Some(EvalResult::from_loss(loss, count, e.bytes_per_token))
    }

    /// A sample after the sample prompt, or `None` when the caller asked to stop during it.
    fn sample(&self, out: &mut Reporter<'_, '_>) -> Option<String> {
        let model = self.eval_model();
        let mut dec = Decoder::new(&model, &self.cfg.model, &self.device);
        dec.feed(&self.sample_prompt);
        let cfg = SamplingConfig { max_new_tokens: self.cfg.sample_tokens, seed: self.cfg.seed, ..Default::default() };
        let mut n = 0usize;
        let generated = dec.generate(&cfg, &self.sample_prompt, &mut |_| {
            n += 1;
            n % 16 != 0 || out.keep_going("sample")
        });
        if out.stop {
            return None;
        }
        let mut all = self.sample_prompt.clone();
        all.extend(generated);
        Some(String::from_utf8_lossy(&self.tokenizer.decode(&all)).into_owned())
    }

    /// Value histograms of every parameter and of each block's update gate over the first
    /// validation chunk.
    fn histograms(&self) -> Vec<Histogram> {
        let model = self.eval_model();
        let mut out: Vec<Histogram> = named_params(&model)
            .into_iter()
            .map(|(name, p)| Histogram::of(format!("weights/{name}"), &host_values(p.value)))
            .collect();
        let (tokens, t) = self.eval.first_chunk(self.cfg.chunk_len);
        let state = State::zeros(&self.cfg.model, self.eval.rows, &self.device);
        let mut gates = Vec::new();
        model.forward_observed(token_tensor(&tokens, self.eval.rows, t, &self.device), state, Some(&mut gates));
        for (i, z) in gates.into_iter().enumerate() {
            out.push(Histogram::of(format!("gates/z/block.{i}"), &host_values(z)));
        }
        out
    }

    /// Evaluates, writes a sample, saves a checkpoint (marking it best if it is). An
    /// evaluation on the `eval_every` cadence also drives reduce-on-plateau and early stopping
    /// (an extra one at the end of a budget does not, so a run stopped and resumed there
    /// continues as an uninterrupted one). Stopped during the evaluation or the sample, it saves
    /// the checkpoint without the rest.
    fn eval_and_save(&mut self, out: &mut Reporter<'_, '_>) -> Result<(Option<EvalResult>, PathBuf)> {
        let step = self.ts.step;
        let Some(r) = self.evaluate(out) else {
            let path = self.save(false)?;
            out.emit(&mut self.metrics, Event::Saved { step, path: path.clone() });
            return Ok((None, path));
        };
        if self.cfg.eval_every > 0 && step % self.cfg.eval_every == 0 {
            let c = &self.cfg;
            let reduce = c.schedule == Schedule::Plateau;
            self.ts.plateau.observe(r.loss, reduce, c.plateau_patience, c.plateau_factor, c.min_lr_ratio);
        }
        let best = self.ts.best_val_loss.map_or(true, |b| r.loss < b);
        if best {
            self.ts.best_val_loss = Some(r.loss);
            self.ts.best_step = Some(step);
        }
        let e = Event::Eval {
            step,
            tokens: self.ts.tokens,
            val_loss: r.loss,
            val_bpb: r.bits_per_byte,
            val_bpt: r.bits_per_token,
            val_ppl: r.perplexity,
            best,
            elapsed: self.ts.elapsed,
        };
        out.emit(&mut self.metrics, e);
        if self.cfg.tensorboard && !out.stop {
            let histograms = self.histograms();
            out.emit(&mut self.metrics, Event::Histograms { step, histograms });
        }
        if self.cfg.sample_tokens > 0 && !out.stop {
            if let Some(text) = self.sample(out) {
                append_sample(&self.run_dir, step, r.loss, &text);
                out.emit(&mut self.metrics, Event::Sample { step, text });
            }
        }
        let path = self.save(best)?;
        out.emit(&mut self.metrics, Event::Saved { step, path: path.clone() });
        Ok((Some(r), path))
    }
}

/// What one optimiser step did.
struct StepResult {
    loss: f64,
    grad_norm: f64,
    epoch: u64,
    /// The first non-finite number of the step (loss, gradient norm or weights), if any.
    bad: Option<f32>,
}
