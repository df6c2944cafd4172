//! Everything before the first step: where the run goes ([`super::resume`]), the device, the
//! run's lock, the data, and the model, optimiser and streams (new, or from a checkpoint).

use std::collections::BTreeMap;
use std::path::PathBuf;

use burn::tensor::Tensor;

use super::checkpoint::{load_module, read_tokenizer, EMA_FILE, OPTIMIZER_FILE, STATE_FILE};
use super::ema::Ema;
use super::config::{Precision, TrainConfig};
use super::events::{Event, OnEvent};
use super::metrics::Metrics;
use super::optim::{AdamW, AdamWConfig, Plateau};
use super::params::named_params;
use super::resume::{plan, Start};
use super::trainer::Run;
use crate::data::batcher::eval_layout;
use crate::data::{prepare, split_point, Cursor, DataEvent, StreamBatcher, TokenSource, TokenStore, Tokenizer};
use crate::device;
use crate::error::{Error, Result};
use crate::files::{tensors, write_file_atomically, DirLock};
use crate::model::{gemm_bf16, MinGruLm, State};
use crate::train::checkpoint::TrainerState;

/// What the `Start` event reports besides the run's own figures.
pub struct StartInfo {
    pub selected: device::Selected,
    pub resumed_from: Option<PathBuf>,
    pub branched_from: Option<PathBuf>,
    pub data_log: Vec<String>,
    pub debris_removed: u64,
    /// What the matrix products run in, in words.
    pub precision: String,
}

/// Builds the run `config` asks for, holding its lock (released when the run is dropped).
pub fn start(config: TrainConfig, on_event: &mut OnEvent<'_>) -> Result<(Run, StartInfo, DirLock)> {
    let plan = plan(config)?;
    let (run_dir, start) = (plan.run, plan.start);
    let mut cfg = plan.config;
    // Cheap checks first: a bad config or device fails before anything is read or written.
    if let Start::Fresh = start {
        cfg.resolve_new_run()?;
    }
    cfg.validate()?;
    let selected = device::select(&cfg.device)?;
    let precision = check_precision(cfg.precision, &selected)?;
    let existed = run_dir.root.exists();
    let lock = run_dir.lock()?;
    let built = build(cfg, run_dir.clone(), start, selected, precision, on_event);
    if built.is_err() && !existed {
        // Nothing was written yet: leave no empty run directory behind.
        let _ = std::fs::remove_file(&lock.path);
        let _ = std::fs::remove_dir(&run_dir.root);
    }
    built.map(|(run, info)| (run, info, lock))
}

fn build(
    mut cfg: TrainConfig,
    run_dir: crate::run::RunDir,
    start: Start,
    selected: device::Selected,
    precision: String,
    on_event: &mut OnEvent<'_>,
) -> Result<(Run, StartInfo)> {
    let debris_removed = run_dir.remove_debris();
    let device = selected.device.clone();
    let autodiff = device.clone().autodiff();
    let (resumed_from, branched_from, saved) = match start {
        Start::Fresh => (None, None, None),
        Start::Resume { checkpoint, saved, branched_from } => (Some(checkpoint), branched_from, Some(*saved)),
    };
    let saved_tokenizer = match (&resumed_from, &saved) {
        (Some(ckpt), Some(ts)) => Some(read_tokenizer(ckpt, ts)?),
        _ => None,
    };

    // Tokens come from the cache (encoded once, memory-mapped). The precheck bounds the token
    // count by the byte count, so a corpus too small for the split or the batch fails before
    // anything is encoded or cached.
    let (val_fraction, batch_size, chunk_len) = (cfg.val_fraction, cfg.batch_size, cfg.chunk_len);
    let precheck = move |max_tokens: u64| -> Result<()> {
        let n_train = split_point(usize::try_from(max_tokens).unwrap_or(usize::MAX), val_fraction)?;
        StreamBatcher::new(n_train, batch_size, chunk_len, 0).map(|_| ())
    };
    let mut data_log = Vec::new();
    let mut stopped = false;
    let data = prepare(&cfg.data, &cfg.data_options(), saved_tokenizer, &precheck, &mut |e: &DataEvent| {
        if e.done == 0 {
            data_log.push(e.message.clone());
        }
        let go = e.total < crate::data::LARGE_INPUT || on_event(&Event::Data(e.clone()));
        stopped |= !go;
        go
    });
    let data = match data {
        Err(_) if stopped => return Err(Error::Interrupted("while preparing the data; nothing was saved".into())),
        other => other?,
    };
    let (tokenizer, tokens) = (data.tokenizer, data.store);
    cfg.model.vocab_size = tokenizer.vocab_size();
    cfg.validate()?;
    let n_train = split_point(tokens.len(), cfg.val_fraction)?;
    let separator = if cfg.reset_at_doc { tokenizer.doc_separator() } else { None };
    let mut batcher = StreamBatcher::new(n_train, cfg.batch_size, cfg.chunk_len, cfg.seed)?.with_doc_separator(separator);
    let data_hash = tokens.header.token_hash;
    let eval = EvalSet::gather(&tokens, n_train, cfg.batch_size, cfg.eval_tokens, &tokenizer);

    let mut model = MinGruLm::new(&cfg.model, cfg.seed, &autodiff)?;
    let mut opt = AdamW::new(AdamWConfig { beta1: cfg.beta1, beta2: cfg.beta2, eps: cfg.eps, weight_decay: cfg.weight_decay });
    let mut state = State::zeros(&cfg.model, cfg.batch_size, &autodiff);
    let mut ema = None;
    let ts = match (&resumed_from, saved) {
        (Some(ckpt), Some(ts)) => {
            if ts.data_tokens != tokens.len() || ts.data_hash != data_hash {
                return Err(Error::checkpoint(ckpt, "was trained on different data (the corpus changed); start a new run with another --name"));
            }
            model = load_module(model, &ckpt.join(crate::train::checkpoint::MODEL_FILE), &autodiff)?;
            let (moments, _) = tensors::read(&ckpt.join(OPTIMIZER_FILE))?;
            let sizes = named_params(&model).into_iter().map(|(k, v)| (k, v.shape.iter().product())).collect();
            let mut flat = BTreeMap::new();
            for (k, t) in moments {
                let t: Tensor<1> = t.to_flat(&k, &autodiff).map_err(|e| Error::checkpoint(ckpt, e.to_string()))?;
                flat.insert(k, t.without_autodiff());
            }
            opt.load_state(ts.optimizer_step, flat, &sizes).map_err(|e| Error::checkpoint(ckpt, e.to_string()))?;
            let state_path = ckpt.join(STATE_FILE);
            let (mut carried, _) = tensors::read(&state_path)?;
            state = State::from_host(&mut carried, &cfg.model, Some(cfg.batch_size), &autodiff)
                .map_err(|e| Error::checkpoint(&state_path, e.to_string()))?;
            batcher.set_cursor(ts.cursor);
            if let Some(decay) = cfg.ema {
                let averaged = ckpt.join(EMA_FILE);
                // A checkpoint without one (a run from before `ema` existed) starts it now.
                let start = if averaged.is_file() { load_module(model.clone(), &averaged, &autodiff)? } else { model.clone() };
                ema = Some(Ema::new(decay, &start));
            }
            let mut ts = TrainerState { config: cfg.clone(), ..ts };
            if branched_from.is_some() {
                // A branch is a new run: its best checkpoint is one of its own.
                ts.best_val_loss = None;
                ts.best_step = None;
            }
            ts
        }
        _ => TrainerState {
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
            plateau: Plateau::default(),
            bad_steps: 0,
        },
    };
    if ema.is_none() {
        ema = cfg.ema.map(|decay| Ema::new(decay, &model));
    }
    let config_json = serde_json::to_vec_pretty(&cfg).map_err(|e| Error::Data(e.to_string()))?;
    write_file_atomically(&run_dir.config_file(), &config_json)?;
    let metrics = Metrics::open(&run_dir, ts.step)?;
    let sample_prompt = match cfg.sample_prompt.as_str() {
        "" => eval.start(32),
        text => tokenizer.encode(text.as_bytes()),
    };
    let info = StartInfo { selected, resumed_from: resumed_from.map(|p| p.canonicalize().unwrap_or(p)), branched_from, data_log, debris_removed, precision };
    Ok((Run { cfg, run_dir, device, autodiff, tokenizer, tokens, n_train, eval, sample_prompt, model, opt, ema, state, batcher, ts, metrics }, info))
}

/// Whether `precision` can train on the selected device.
fn check_precision(precision: Precision, selected: &device::Selected) -> Result<String> {
    let cpu = crate::model::fused::supported(&selected.device);
    match precision {
        Precision::F32 => Ok(precision.word().into()),
        Precision::Bf16 if cpu => Ok(match gemm_bf16::Kernel::best() {
            Some(kernel) => format!("bf16 products ({}), f32 weights", kernel.name()),
            None => "f32 products: this CPU has neither AMX-BF16 nor AVX512-BF16 for bf16 ones".into(),
        }),
        Precision::F16 if cpu => Err(Error::config(
            "precision",
            "f16 trains on GPUs only (CPUs have no fast f16 products); use bf16 or f32 on the CPU",
        )),
        _ => Err(Error::config("precision", format!("{precision} training is not available on {} in this build", selected.name))),
    }
}

/// The validation tokens one evaluation reads: `rows` streams from the tail after the training
/// split, each `row_len` tokens, gathered into one compact vector that evaluation reads in the
/// same rows and order (so memory is the cap, not the whole tail).
pub struct EvalSet {
    pub tokens: Vec<u32>,
    pub rows: usize,
    pub row_len: usize,
    /// Bytes of text per predicted token (to report bits per byte).
    pub bytes_per_token: f64,
}

impl EvalSet {
    /// The set `evaluate` reads with `rows` rows and a cap of `cap` tokens (0 = none).
    fn gather(store: &TokenStore, n_train: usize, rows: usize, cap: usize, tokenizer: &Tokenizer) -> Self {
        let (starts, per_row) = eval_layout(store.len() - n_train, rows, cap);
        let mut out = Vec::with_capacity(starts.len() * (per_row + 1));
        let (mut bytes, mut count) = (0usize, 0usize);
        for &s in &starts {
            let begin = out.len();
            store.read_into(n_train + s, n_train + s + per_row + 1, &mut out);
            for &t in &out[begin + 1..] {
                bytes += tokenizer.token_len(t);
                count += 1;
            }
        }
        let bytes_per_token = bytes.max(1) as f64 / count.max(1) as f64;
        Self { tokens: out, rows: starts.len(), row_len: per_row + 1, bytes_per_token }
    }

    /// The first `n` tokens of the validation text (a sample's default prompt).
    pub fn start(&self, n: usize) -> Vec<u32> {
        self.tokens[..n.min(self.row_len).min(self.tokens.len())].to_vec()
    }

    /// The first `t` tokens of every row, `[rows, t]` row-major, with `t`.
    pub fn first_chunk(&self, t: usize) -> (Vec<u32>, usize) {
        let t = t.min(self.row_len).max(1);
        let mut out = Vec::with_capacity(self.rows * t);
        for r in 0..self.rows {
            out.extend_from_slice(&self.tokens[r * self.row_len..r * self.row_len + t]);
        }
        (out, t)
    }
}

/// Device tensors come back as this for the histograms.
pub fn host_values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_into_vec::<f32>().unwrap_or_default()
}
