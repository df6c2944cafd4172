//! The training loop: TBPTT over streams, AdamW, evaluation, samples, checkpoints, metrics.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::Module;
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::checkpoint::{
    load_module, load_tensors, point_link, save_module, save_tensors, write_dir_atomically, write_file_atomically,
};
use super::config::{OnNan, TrainConfig, MAX_BAD_STEPS};
use super::eval::{evaluate, token_tensor, EvalResult};
use super::optim::{accumulate_grads, clip_global_norm, params_finite, AdamW, AdamWConfig, GradMap, Plateau, Schedule};
use super::params::named_params;
use crate::rng::splitmix;
use crate::data::batcher::eval_regions;
use crate::data::tokenizer::TokenizerSpec;
use crate::data::{prepare, split_point, Cursor, DataEvent, StreamBatcher, TokenSource, TokenStore, Tokenizer};
use crate::device;
use crate::error::{Error, Result};
use crate::generate::{Decoder, SamplingConfig};
use crate::model::{LayerState, MinGruLm, ModelConfig, State};

/// Trainer state saved in every checkpoint (`trainer.json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainerState {
    pub step: u64,
    pub tokens: u64,
    pub elapsed: f64,
    pub best_val_loss: Option<f64>,
    pub best_step: Option<u64>,
    pub cursor: Cursor,
    pub optimizer_step: u64,
    /// Token count and hash of the corpus, to refuse resuming on other data.
    pub data_tokens: usize,
    pub data_hash: u64,
    pub config: TrainConfig,
    pub tokenizer: Tokenizer,
    /// Learning-rate multiplier and the validation history behind reduce-on-plateau and
    /// early stopping.
    #[serde(default)]
    pub plateau: Plateau,
    /// Skipped (non-finite) steps in a row, with `on_nan = "skip"`.
    #[serde(default)]
    pub bad_steps: u64,
}

/// What the trainer reports while it runs (also the lines of `metrics.jsonl`).
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "event", rename_all = "lowercase")]
pub enum Event {
    /// Data preparation (tokenizer, cache, encoding progress) of a large corpus (see
    /// [`crate::data::store::LARGE_INPUT`]), before `Start`; for a small one its messages
    /// are only in `Start::data_log`.
    Data(DataEvent),
    Start {
        run_dir: PathBuf,
        device: String,
        device_reason: String,
        /// Backends `auto` tried before the chosen one, with why each was skipped.
        device_skipped: Vec<(String, String)>,
        params: usize,
        train_tokens: usize,
        val_tokens: usize,
        total_steps: Option<u64>,
        max_time: Option<f64>,
        step: u64,
        resumed_from: Option<PathBuf>,
        data: String,
        /// What data preparation did (tokenizer, cache reuse or encoding).
        data_log: Vec<String>,
    },
    Step {
        step: u64,
        epoch: u64,
        tokens: u64,
        lr: f64,
        loss: f64,
        grad_norm: f64,
        tokens_per_sec: f64,
        elapsed: f64,
    },
    Eval {
        step: u64,
        tokens: u64,
        val_loss: f64,
        val_bpb: f64,
        val_bpt: f64,
        val_ppl: f64,
        best: bool,
        elapsed: f64,
    },
    Sample {
        step: u64,
        text: String,
    },
    /// A step whose loss, gradient norm or updated weights were not finite, skipped
    /// (`on_nan = "skip"`): the weights are unchanged and the learning-rate multiplier halved.
    /// Non-finite numbers are `null` in JSON.
    Skipped {
        step: u64,
        tokens: u64,
        lr: f64,
        loss: f64,
        grad_norm: f64,
        lr_scale: f64,
        /// Skipped steps in a row, including this one; the run stops at 5.
        consecutive: u64,
        elapsed: f64,
    },
    Saved {
        step: u64,
        path: PathBuf,
    },
    Done {
        step: u64,
        tokens: u64,
        elapsed: f64,
        reason: String,
        run_dir: PathBuf,
        checkpoint: PathBuf,
        val_loss: Option<f64>,
        best_val_loss: Option<f64>,
    },
}

/// The end of a run.
#[derive(Clone, Debug, Serialize)]
pub struct Outcome {
    pub run_dir: PathBuf,
    pub checkpoint: PathBuf,
    pub step: u64,
    /// True when the callback asked to stop (Ctrl-C).
    pub interrupted: bool,
    pub final_val_loss: Option<f64>,
}

/// Appends events to `metrics.jsonl` and `metrics.csv`.
struct Metrics {
    jsonl: std::fs::File,
    csv: std::fs::File,
}

const CSV_HEADER: &str = "event,step,tokens,lr,loss,grad_norm,tokens_per_sec,elapsed,val_loss,val_bpb,val_ppl\n";

impl Metrics {
    /// Opens the files of `run_dir`, dropping lines past `step` (left by a run that went on
    /// after its last checkpoint) so that a resumed run never repeats a step.
    fn open(run_dir: &Path, step: u64) -> Result<Self> {
        let jsonl_path = run_dir.join("metrics.jsonl");
        let csv_path = run_dir.join("metrics.csv");
        let keep = |line: &str, step_of: &dyn Fn(&str) -> Option<u64>| step_of(line).map_or(false, |s| s <= step);
        let jsonl_step = |l: &str| serde_json::from_str::<serde_json::Value>(l).ok()?.get("step")?.as_u64();
        let csv_step = |l: &str| l.split(',').nth(1)?.parse().ok();
        let filter = |path: &Path, header: &str, step_of: &dyn Fn(&str) -> Option<u64>| -> Result<()> {
            let old = std::fs::read_to_string(path).unwrap_or_default();
            let mut out = String::from(header);
            out.extend(old.lines().filter(|l| keep(l, step_of)).map(|l| format!("{l}\n")));
            write_file_atomically(path, out.as_bytes())
        };
        filter(&jsonl_path, "", &jsonl_step)?;
        filter(&csv_path, CSV_HEADER, &csv_step)?;
        let open = |p: &Path| std::fs::OpenOptions::new().append(true).open(p).map_err(|e| Error::io(p, e));
        Ok(Self { jsonl: open(&jsonl_path)?, csv: open(&csv_path)? })
    }

    fn record(&mut self, event: &Event) {
        let line = match event {
            Event::Step { step, tokens, lr, loss, grad_norm, tokens_per_sec, elapsed, .. } => {
                format!("step,{step},{tokens},{lr:.6e},{loss:.6},{grad_norm:.6},{tokens_per_sec:.1},{elapsed:.3},,,\n")
            }
            Event::Eval { step, tokens, val_loss, val_bpb, val_ppl, elapsed, .. } => {
                format!("eval,{step},{tokens},,,,,{elapsed:.3},{val_loss:.6},{val_bpb:.6},{val_ppl:.4}\n")
            }
            Event::Skipped { step, tokens, lr, loss, grad_norm, elapsed, .. } => {
                format!("skip,{step},{tokens},{lr:.6e},{loss:.6},{grad_norm:.6},,{elapsed:.3},,,\n")
            }
            _ => String::new(),
        };
        if !line.is_empty() {
            let _ = self.csv.write_all(line.as_bytes());
            if let Ok(json) = serde_json::to_string(event) {
                let _ = writeln!(self.jsonl, "{json}");
            }
        }
    }
}

/// A run in progress.
struct Run {
    cfg: TrainConfig,
    run_dir: PathBuf,
    device: Device,
    autodiff: Device,
    tokenizer: Tokenizer,
    /// The whole corpus, memory-mapped: training reads `..n_train`, validation the rest.
    tokens: TokenStore,
    n_train: usize,
    /// The validation tokens one evaluation reads, and their bytes per token.
    eval_set: Vec<u32>,
    eval_bpt: f64,
    model: MinGruLm,
    opt: AdamW,
    state: State,
    batcher: StreamBatcher,
    ts: TrainerState,
}

impl Run {
    fn ckpt_dir(&self) -> PathBuf {
        self.run_dir.join("checkpoints")
    }

    /// Writes `checkpoints/step-<N>/` atomically and points `last` (and `best`) at it. Never
    /// writes non-finite weights; a failed write leaves the previous checkpoint as it was and
    /// says so.
    fn save(&mut self, best: bool) -> Result<PathBuf> {
        if !params_finite(&self.model) {
            return Err(Error::NonFinite { step: self.ts.step, value: f32::NAN });
        }
        self.write_checkpoint(best).map_err(|e| {
            let dir = self.ckpt_dir().join(format!("step-{}", self.ts.step));
            let previous = match std::fs::read_link(self.ckpt_dir().join("last")) {
                Ok(p) if p != Path::new(dir.file_name().unwrap_or_default()) => {
                    format!("the previous checkpoint {} is intact", p.display())
                }
                _ => "no earlier checkpoint of this run exists".to_string(),
            };
            Error::checkpoint(dir, format!("could not be written ({e}); {previous}"))
        })
    }

    fn write_checkpoint(&mut self, best: bool) -> Result<PathBuf> {
        let name = format!("step-{}", self.ts.step);
        let dir = self.ckpt_dir().join(&name);
        self.ts.cursor = self.batcher.cursor();
        self.ts.optimizer_step = self.opt.step;
        let meta = HashMap::from([
            ("format".to_string(), "grufinity".to_string()),
            ("model_config".to_string(), serde_json::to_string(&self.cfg.model).unwrap_or_default()),
        ]);
        let opt_tensors = self
            .opt
            .state_tensors()
            .into_iter()
            .map(|(k, t)| {
                let n = t.dims()[0];
                (k, vec![n], t)
            })
            .collect();
        let state_tensors = state_to_tensors(&self.state);
        let trainer_json = serde_json::to_vec_pretty(&self.ts).map_err(|e| Error::Data(e.to_string()))?;
        let tokenizer_json = self.tokenizer.to_file_json()?;
        write_dir_atomically(&dir, |tmp| {
            save_module(&self.model, &tmp.join("model.safetensors"), Some(meta))?;
            save_tensors(&tmp.join("optimizer.safetensors"), opt_tensors, None)?;
            save_tensors(&tmp.join("state.safetensors"), state_tensors, None)?;
            std::fs::write(tmp.join("tokenizer.json"), &tokenizer_json).map_err(|e| Error::io(tmp, e))?;
            // Written last: its presence marks a complete checkpoint.
            std::fs::write(tmp.join("trainer.json"), &trainer_json).map_err(|e| Error::io(tmp, e))
        })?;
        point_link(&self.ckpt_dir(), "last", &name)?;
        if best {
            point_link(&self.ckpt_dir(), "best", &name)?;
        }
        self.prune()?;
        Ok(dir)
    }

    /// Keeps the newest `keep_last` step checkpoints and the best one.
    fn prune(&self) -> Result<()> {
        let dir = self.ckpt_dir();
        let best = std::fs::read_link(dir.join("best")).ok();
        let mut steps: Vec<(u64, PathBuf)> = std::fs::read_dir(&dir)
            .map_err(|e| Error::io(&dir, e))?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().to_string();
                let n = name.strip_prefix("step-")?.parse().ok()?;
                Some((n, e.path()))
            })
            .collect();
        steps.sort();
        let keep = self.cfg.keep_last.max(1);
        if steps.len() > keep {
            for (_, path) in &steps[..steps.len() - keep] {
                if best.as_deref() != path.file_name().map(Path::new) {
                    let _ = std::fs::remove_dir_all(path);
                }
            }
        }
        Ok(())
    }

    fn evaluate(&self) -> EvalResult {
        let model = self.model.valid();
        let (loss, count) = evaluate(&model, &self.cfg.model, &self.eval_set, self.cfg.batch_size, self.cfg.chunk_len, self.cfg.eval_tokens, 0, &self.device);
        EvalResult::from_loss(loss, count, self.eval_bpt)
    }

    fn sample(&self) -> String {
        let model = self.model.valid();
        let mut dec = Decoder::new(&model, &self.cfg.model, &self.device);
        let prompt = self.tokenizer.encode(self.cfg.sample_prompt.as_bytes());
        dec.feed(&prompt);
        let cfg = SamplingConfig { max_new_tokens: self.cfg.sample_tokens, seed: self.cfg.seed, ..Default::default() };
        let out = dec.generate(&cfg, &prompt, &mut |_| true);
        let mut all = prompt;
        all.extend(out);
        String::from_utf8_lossy(&self.tokenizer.decode(&all)).into_owned()
    }
}

/// The validation tokens `evaluate` reads from the tail after `n_train` with `rows` rows and a
/// cap of `cap` tokens, gathered into a compact vector that `evaluate` reads in exactly the
/// same rows and order (so memory is the cap, not the whole tail), with the real bytes per
/// token of the predicted targets.
fn eval_set(store: &TokenStore, n_train: usize, rows: usize, cap: usize, tokenizer: &Tokenizer) -> (Vec<u32>, f64) {
    let (starts, region) = eval_regions(store.len() - n_train, rows);
    let mut per_row = region - 1;
    if cap > 0 {
        per_row = per_row.min(cap.div_ceil(starts.len()).max(1));
    }
    let mut out = Vec::with_capacity(starts.len() * (per_row + 1));
    let (mut bytes, mut count) = (0usize, 0usize);
    for s in starts {
        let begin = out.len();
        store.read_into(n_train + s, n_train + s + per_row + 1, &mut out);
        for &t in &out[begin + 1..] {
            bytes += tokenizer.token_len(t);
            count += 1;
        }
    }
    (out, bytes.max(1) as f64 / count.max(1) as f64)
}

fn state_to_tensors(state: &State) -> Vec<(String, Vec<usize>, Tensor<1>)> {
    let mut out = Vec::new();
    for (i, l) in state.layers.iter().enumerate() {
        let flat = |t: &Tensor<3>| {
            let dims = t.dims().to_vec();
            let n: usize = dims.iter().product();
            (dims, t.clone().reshape([n]))
        };
        let (dims, t) = flat(&l.log_h);
        out.push((format!("layers.{i}.log_h"), dims, t));
        if let Some(c) = &l.conv {
            let (dims, t) = flat(c);
            out.push((format!("layers.{i}.conv"), dims, t));
        }
    }
    out
}

fn state_from_file(path: &Path, config: &ModelConfig, batch: usize, device: &Device) -> Result<State> {
    let (mut tensors, _) = load_tensors(path)?;
    let mut state = State::zeros(config, batch, device);
    let mut take = |name: String, like: &Tensor<3>| -> Result<Tensor<3>> {
        let t = tensors.remove(&name).ok_or_else(|| Error::checkpoint(path, format!("carried state `{name}` is missing")))?;
        let dims = like.dims();
        if t.shape != dims.to_vec() {
            return Err(Error::checkpoint(path, format!("carried state `{name}` has shape {:?}, expected {:?}", t.shape, dims)));
        }
        Ok(t.to_flat(device).reshape(dims))
    };
    for (i, l) in state.layers.iter_mut().enumerate() {
        *l = LayerState {
            log_h: take(format!("layers.{i}.log_h"), &l.log_h)?,
            conv: match &l.conv {
                Some(c) => Some(take(format!("layers.{i}.conv"), c)?),
                None => None,
            },
        };
    }
    Ok(state)
}

/// Reads a checkpoint's `trainer.json`.
pub fn read_trainer_state(ckpt: &Path) -> Result<TrainerState> {
    let path = ckpt.join("trainer.json");
    let text = std::fs::read_to_string(&path).map_err(|_| Error::checkpoint(ckpt, "has no trainer.json (not a complete checkpoint)"))?;
    serde_json::from_str(&text).map_err(|e| Error::checkpoint(ckpt, format!("trainer.json is unreadable: {e}")))
}

/// The settings a resumed run may change: budgets, cadence, device, output.
fn apply_overrides(saved: TrainConfig, new: &TrainConfig) -> TrainConfig {
    TrainConfig {
        max_steps: new.max_steps,
        max_tokens: new.max_tokens,
        max_time: new.max_time,
        epochs: new.epochs,
        eval_every: new.eval_every,
        eval_tokens: new.eval_tokens,
        save_every: new.save_every,
        keep_last: new.keep_last,
        log_every: new.log_every,
        device: new.device.clone(),
        sample_tokens: new.sample_tokens,
        early_stop_patience: new.early_stop_patience,
        on_nan: new.on_nan,
        cache_dir: new.cache_dir.clone(),
        ..saved
    }
}

/// Trains as `config` says, or continues the checkpoint `resume` (the run's directory is the
/// checkpoint's grandparent; budgets and cadence come from `config`, everything else from the
/// checkpoint). `on_event` sees every event; returning `false` stops after the current step
/// with a checkpoint.
pub fn train(config: TrainConfig, resume: Option<&Path>, on_event: &mut dyn FnMut(&Event) -> bool) -> Result<Outcome> {
    crate::alloc::keep_freed_memory();
    let _flush = crate::denormals::FlushDenormals::new();
    let (cfg, saved, run_dir) = match resume {
        Some(ckpt) => {
            let ts = read_trainer_state(ckpt)?;
            let run_dir = ckpt
                .canonicalize()
                .map_err(|e| Error::io(ckpt, e))?
                .parent()
                .and_then(Path::parent)
                .map(Path::to_path_buf)
                .ok_or_else(|| Error::checkpoint(ckpt, "is not inside a run directory"))?;
            let cfg = apply_overrides(ts.config.clone(), &config);
            (cfg, Some((ckpt.to_path_buf(), ts)), run_dir)
        }
        None => {
            let run_dir = config.out_dir.join(&config.name);
            // A fresh run never writes over an existing one.
            if run_dir.join("checkpoints").exists() {
                return Err(Error::Data(format!(
                    "run {} already exists; resume it with --resume, or choose another --name",
                    run_dir.display()
                )));
            }
            (config, None, run_dir)
        }
    };
    let mut cfg = cfg;
    // Cheap checks first: a bad config or device fails before any data is read.
    let planned = match &saved {
        Some((_, ts)) => Some(ts.tokenizer.vocab_size()),
        None => TokenizerSpec::parse(&cfg.tokenizer)?.planned_vocab_size(cfg.vocab_size, cfg.doc_separator)?,
    };
    if let Some(v) = planned {
        cfg.model.vocab_size = v;
    }
    cfg.validate()?;
    let selected = device::select(&cfg.device)?;
    let device = selected.device.clone();
    let autodiff = device.clone().autodiff();

    // Tokens come from the cache (encoded once, memory-mapped). The precheck bounds the token
    // count by the byte count, so a corpus too small for the split or the batch fails before
    // anything is encoded or cached.
    let (val_fraction, batch_size, chunk_len) = (cfg.val_fraction, cfg.batch_size, cfg.chunk_len);
    let precheck = move |max_tokens: u64| -> Result<()> {
        let n_train = split_point(usize::try_from(max_tokens).unwrap_or(usize::MAX), val_fraction)?;
        StreamBatcher::new(n_train, batch_size, chunk_len, 0).map(|_| ())
    };
    let saved_tokenizer = saved.as_ref().map(|(_, ts)| ts.tokenizer.clone());
    let mut data_log = Vec::new();
    let data = prepare(&cfg.data, &cfg.data_options(), saved_tokenizer, &precheck, &mut |e: &DataEvent| {
        if e.done == 0 {
            data_log.push(e.message.clone());
        }
        e.total < crate::data::store::LARGE_INPUT || on_event(&Event::Data(e.clone()))
    })?;
    let tokenizer = data.tokenizer;
    let tokens = data.store;
    cfg.model.vocab_size = tokenizer.vocab_size();
    cfg.validate()?;
    let n_train = split_point(tokens.len(), cfg.val_fraction)?;
    let separator = if cfg.reset_at_doc { tokenizer.doc_separator() } else { None };
    let batcher = StreamBatcher::new(n_train, cfg.batch_size, cfg.chunk_len, cfg.seed)?.with_doc_separator(separator);
    let data_hash = tokens.header.token_hash;
    let (eval_set, eval_bpt) = eval_set(&tokens, n_train, cfg.batch_size, cfg.eval_tokens, &tokenizer);

    let mut model = MinGruLm::new(&cfg.model, cfg.seed, &autodiff)?;
    let mut opt = AdamW::new(AdamWConfig { beta1: cfg.beta1, beta2: cfg.beta2, eps: cfg.eps, weight_decay: cfg.weight_decay });
    let mut state = State::zeros(&cfg.model, cfg.batch_size, &autodiff);
    let mut batcher = batcher;
    let ts = match &saved {
        Some((ckpt, ts)) => {
            if ts.data_tokens != tokens.len() || ts.data_hash != data_hash {
                return Err(Error::checkpoint(ckpt, "was trained on different data (the corpus changed); start a new run with another --name"));
            }
            model = load_module(model, &ckpt.join("model.safetensors"), &autodiff)?;
            let (opt_tensors, _) = load_tensors(&ckpt.join("optimizer.safetensors"))?;
            let sizes = named_params(&model).into_iter().map(|(k, v)| (k, v.shape.iter().product())).collect();
            let flat = opt_tensors.into_iter().map(|(k, t)| (k, t.to_flat(&autodiff).without_autodiff())).collect();
            opt.load_state(ts.optimizer_step, flat, &sizes)
                .map_err(|e| Error::checkpoint(ckpt, e.to_string()))?;
            state = state_from_file(&ckpt.join("state.safetensors"), &cfg.model, cfg.batch_size, &autodiff)?;
            batcher.set_cursor(ts.cursor);
            TrainerState { config: cfg.clone(), ..ts.clone() }
        }
        None => TrainerState {
            step: 0,
            tokens: 0,
            elapsed: 0.0,
            best_val_loss: None,
            best_step: None,
            cursor: Cursor::default(),
            optimizer_step: 0,
            data_tokens: tokens.len(),
            data_hash,
            config: cfg.clone(),
            tokenizer: tokenizer.clone(),
            plateau: Plateau::default(),
            bad_steps: 0,
        },
    };
    std::fs::create_dir_all(&run_dir).map_err(|e| Error::io(&run_dir, e))?;
    let config_json = serde_json::to_vec_pretty(&cfg).map_err(|e| Error::Data(e.to_string()))?;
    write_file_atomically(&run_dir.join("config.json"), &config_json)?;
    let mut metrics = Metrics::open(&run_dir, ts.step)?;
    let mut run = Run { cfg, run_dir, device, autodiff, tokenizer, tokens, n_train, eval_set, eval_bpt, model, opt, state, batcher, ts };
    run.loop_(&selected, saved.map(|(p, _)| p), data_log, on_event, &mut metrics)
}

impl Run {
    fn loop_(
        &mut self,
        selected: &device::Selected,
        resumed_from: Option<PathBuf>,
        data_log: Vec<String>,
        on_event: &mut dyn FnMut(&Event) -> bool,
        metrics: &mut Metrics,
    ) -> Result<Outcome> {
        let steps_per_epoch = self.batcher.steps_per_epoch();
        let total = self.cfg.total_steps(steps_per_epoch);
        let mut emit = |e: Event, metrics: &mut Metrics| {
            metrics.record(&e);
            on_event(&e)
        };
        let start = Event::Start {
            run_dir: self.run_dir.clone(),
            device: selected.name.clone(),
            device_reason: selected.reason.clone(),
            device_skipped: selected.skipped.clone(),
            params: self.cfg.model.num_params(),
            train_tokens: self.n_train,
            val_tokens: self.tokens.len() - self.n_train,
            total_steps: total,
            max_time: self.cfg.max_time,
            step: self.ts.step,
            resumed_from,
            data: self.cfg.data_description.clone(),
            data_log,
        };
        let mut keep_going = emit(start, metrics);
        let clock = Instant::now();
        let elapsed0 = self.ts.elapsed;
        let (b, t, accum) = (self.cfg.batch_size, self.cfg.chunk_len, self.cfg.accum);
        let mut window = (Instant::now(), 0u64);
        let mut last_eval: Option<f64> = None;
        let mut last_saved: Option<PathBuf> = None;
        let mut evaluated_at: Option<u64> = None;
        let mut epoch = self.batcher.cursor().epoch;
        let reason = loop {
            let elapsed = elapsed0 + clock.elapsed().as_secs_f64();
            if !keep_going {
                break "interrupted";
            }
            if total.is_some_and(|n| self.ts.step >= n) {
                break "budget";
            }
            if self.cfg.max_time.is_some_and(|m| elapsed >= m) {
                break "time";
            }
            let progress = match (total, self.cfg.max_time) {
                (Some(n), Some(m)) => Some((self.ts.step as f64 / n as f64).max(elapsed / m)),
                (Some(n), None) => Some(self.ts.step as f64 / n as f64),
                (None, Some(m)) => Some(elapsed / m),
                (None, None) => None,
            };
            let lr = self.cfg.schedule.lr_at(self.ts.step, self.cfg.lr, self.cfg.warmup, progress, self.cfg.min_lr_ratio)
                * self.ts.plateau.scale;
            let skip_bad = self.cfg.on_nan == OnNan::Skip;
            let mut grads = GradMap::new();
            let mut loss_sum = 0.0f64;
            // The first non-finite number of this step: loss, gradient norm or weights.
            let mut bad: Option<f32> = None;
            for micro in 0..accum {
                let batch = self.batcher.next_batch(&self.tokens);
                epoch = batch.epoch;
                if batch.restart {
                    self.state = State::zeros(&self.cfg.model, b, &self.autodiff);
                } else if batch.resets.iter().any(|&r| r) {
                    let state = std::mem::replace(&mut self.state, State { layers: vec![] });
                    self.state = state.reset_rows(&batch.resets);
                }
                let inputs = token_tensor(&batch.inputs, b, t, &self.autodiff);
                let targets = token_tensor(&batch.targets, b, t, &self.autodiff);
                let state = std::mem::replace(&mut self.state, State { layers: vec![] });
                let (loss, next) = if self.cfg.model.dropout > 0.0 {
                    // Seeding per micro-step makes dropout masks a function of the step alone,
                    // so a resumed run draws exactly what an uninterrupted one would.
                    let seed = splitmix(self.cfg.seed ^ splitmix(self.ts.step * accum as u64 + micro as u64));
                    crate::device::with_seed(&self.device, seed, || self.model.loss(inputs, targets, state))
                } else {
                    self.model.loss(inputs, targets, state)
                };
                let grad = loss.backward();
                let value = loss.into_scalar::<f32>();
                if !value.is_finite() {
                    if !skip_bad {
                        return Err(Error::NonFinite { step: self.ts.step + 1, value });
                    }
                    bad = Some(value);
                    loss_sum = value as f64;
                    break;
                }
                loss_sum += value as f64;
                accumulate_grads(&self.model, &grad, 1.0 / accum as f32, &mut grads);
                self.state = next.detach();
            }
            let grad_norm = if bad.is_none() { clip_global_norm(&mut grads, self.cfg.grad_clip) } else { f32::NAN };
            if bad.is_none() && !grad_norm.is_finite() {
                if !skip_bad {
                    return Err(Error::NonFinite { step: self.ts.step + 1, value: grad_norm });
                }
                bad = Some(grad_norm);
            }
            if bad.is_none() {
                let before = skip_bad.then(|| (self.model.clone(), self.opt.moments.clone(), self.opt.step));
                self.model = self.opt.update(self.model.clone(), &grads, lr);
                // Finite gradients can still overflow the weights (a huge learning rate); such
                // weights are never kept, so a checkpoint is never written with them.
                if !params_finite(&self.model) {
                    match before {
                        Some((model, moments, step)) => {
                            self.model = model;
                            self.opt.moments = moments;
                            self.opt.step = step;
                            bad = Some(f32::NAN);
                        }
                        None => return Err(Error::NonFinite { step: self.ts.step + 1, value: f32::NAN }),
                    }
                }
            }
            self.ts.step += 1;
            self.ts.tokens += self.cfg.tokens_per_step();
            self.ts.elapsed = elapsed0 + clock.elapsed().as_secs_f64();
            window.1 += self.cfg.tokens_per_step();
            let step = self.ts.step;
            if let Some(value) = bad {
                // Skipped: weights and optimiser unchanged; the streams go on from a fresh
                // state (the carried one may be what overflowed).
                self.state = State::zeros(&self.cfg.model, b, &self.autodiff);
                self.ts.bad_steps += 1;
                self.ts.plateau.scale *= 0.5;
                keep_going &= emit(
                    Event::Skipped {
                        step,
                        tokens: self.ts.tokens,
                        lr,
                        loss: loss_sum / accum as f64,
                        grad_norm: grad_norm as f64,
                        lr_scale: self.ts.plateau.scale,
                        consecutive: self.ts.bad_steps,
                        elapsed: self.ts.elapsed,
                    },
                    metrics,
                );
                if self.ts.bad_steps >= MAX_BAD_STEPS {
                    return Err(Error::NonFinite { step, value });
                }
            } else {
                self.ts.bad_steps = 0;
            }
            if bad.is_none() && (step % self.cfg.log_every == 0 || step == 1) {
                let secs = window.0.elapsed().as_secs_f64().max(1e-9);
                keep_going &= emit(
                    Event::Step {
                        step,
                        epoch,
                        tokens: self.ts.tokens,
                        lr,
                        loss: loss_sum / accum as f64,
                        grad_norm: grad_norm as f64,
                        tokens_per_sec: window.1 as f64 / secs,
                        elapsed: self.ts.elapsed,
                    },
                    metrics,
                );
                window = (Instant::now(), 0);
            }
            let finishing = total.is_some_and(|n| step >= n);
            if self.cfg.eval_every > 0 && step % self.cfg.eval_every == 0 && !finishing {
                let (r, saved) = self.eval_and_save(&mut emit, metrics)?;
                last_eval = Some(r.loss);
                last_saved = Some(saved);
                evaluated_at = Some(step);
                window = (Instant::now(), 0);
                let patience = self.cfg.early_stop_patience;
                if patience > 0 && self.ts.plateau.evals_since_best >= patience {
                    break "early_stop";
                }
            } else if self.cfg.save_every > 0 && step % self.cfg.save_every == 0 && !finishing {
                let path = self.save(false)?;
                keep_going &= emit(Event::Saved { step, path: path.clone() }, metrics);
                last_saved = Some(path);
            }
        };
        let interrupted = reason == "interrupted";
        let checkpoint = if let Some(p) = last_saved.clone().filter(|_| evaluated_at == Some(self.ts.step)) {
            // Evaluated and saved at this very step (early stopping, or a time or token budget
            // that ran out right after an evaluation): the same weights, not evaluated twice.
            p
        } else if interrupted {
            // Save without evaluating: the user is waiting.
            match last_saved.filter(|p| p.ends_with(format!("step-{}", self.ts.step))) {
                Some(p) => p,
                None => {
                    let p = self.save(false)?;
                    emit(Event::Saved { step: self.ts.step, path: p.clone() }, metrics);
                    p
                }
            }
        } else {
            let (r, p) = self.eval_and_save(&mut emit, metrics)?;
            last_eval = Some(r.loss);
            p
        };
        emit(
            Event::Done {
                step: self.ts.step,
                tokens: self.ts.tokens,
                elapsed: self.ts.elapsed,
                reason: reason.to_string(),
                run_dir: self.run_dir.clone(),
                checkpoint: checkpoint.clone(),
                val_loss: last_eval,
                best_val_loss: self.ts.best_val_loss,
            },
            metrics,
        );
        Ok(Outcome { run_dir: self.run_dir.clone(), checkpoint, step: self.ts.step, interrupted, final_val_loss: last_eval })
    }

    /// Evaluates, writes a sample, saves a checkpoint (marking it best if it is). An
    /// evaluation on the `eval_every` cadence also drives reduce-on-plateau and early stopping
    /// (an extra one at the end of a budget does not, so a run stopped and resumed there
    /// continues as an uninterrupted one).
    fn eval_and_save(
        &mut self,
        emit: &mut dyn FnMut(Event, &mut Metrics) -> bool,
        metrics: &mut Metrics,
    ) -> Result<(EvalResult, PathBuf)> {
        let r = self.evaluate();
        if self.cfg.eval_every > 0 && self.ts.step % self.cfg.eval_every == 0 {
            let c = &self.cfg;
            let reduce = c.schedule == Schedule::Plateau;
            self.ts.plateau.observe(r.loss, reduce, c.plateau_patience, c.plateau_factor, c.min_lr_ratio);
        }
        let best = self.ts.best_val_loss.map_or(true, |b| r.loss < b);
        if best {
            self.ts.best_val_loss = Some(r.loss);
            self.ts.best_step = Some(self.ts.step);
        }
        let step = self.ts.step;
        emit(
            Event::Eval {
                step,
                tokens: self.ts.tokens,
                val_loss: r.loss,
                val_bpb: r.bits_per_byte,
                val_bpt: r.bits_per_token,
                val_ppl: r.perplexity,
                best,
                elapsed: self.ts.elapsed,
            },
            metrics,
        );
        if self.cfg.sample_tokens > 0 {
            let text = self.sample();
            let path = self.run_dir.join("samples.txt");
            if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(&path) {
                let _ = writeln!(f, "=== step {step} (val loss {:.4})\n{text}\n", r.loss);
            }
            emit(Event::Sample { step, text }, metrics);
        }
        let path = self.save(best)?;
        emit(Event::Saved { step, path: path.clone() }, metrics);
        Ok((r, path))
    }
}
