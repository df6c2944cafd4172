//! Training configuration: one struct with every knob, serialised into each run.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::optim::Schedule;
use crate::error::{Error, Result};
use crate::model::ModelConfig;

/// What the trainer does with a step whose loss, gradient norm or updated weights are not
/// finite.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnNan {
    /// Stop with an error; the last checkpoint (always finite) is kept.
    #[default]
    Stop,
    /// Skip the update, halve the learning-rate multiplier, and stop after
    /// [`MAX_BAD_STEPS`] bad steps in a row.
    Skip,
}

/// Consecutive skipped steps after which `on_nan = "skip"` gives up.
pub const MAX_BAD_STEPS: u64 = 5;

/// Everything that defines a training run. Field names match the CLI flags (dashes as
/// underscores) and the keys of a TOML config.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Corpus files, concatenated in order.
    pub data: Vec<PathBuf>,
    /// What the corpus is, for humans (e.g. "Python standard library, 412 files").
    pub data_description: String,
    /// Parent directory of runs.
    pub out_dir: PathBuf,
    /// Run name; the run lives in `out_dir/name`.
    pub name: String,
    pub device: String,
    pub seed: u64,
    pub model: ModelConfig,
    /// `byte`, `char`, `bpe`, or a path to a tokenizer.json (ours or Hugging Face's) or a run.
    pub tokenizer: String,
    /// Vocabulary size of a `bpe` tokenizer trained on the corpus (default 4096).
    pub vocab_size: Option<usize>,
    /// Insert a separator token between the corpus files (documents).
    pub doc_separator: bool,
    /// Reset a stream's carried state after a chunk that crossed a document boundary.
    pub reset_at_doc: bool,
    /// Token cache directory (default: `GRUFINITY_CACHE`, else `~/.cache/grufinity/tokens`).
    pub cache_dir: Option<PathBuf>,
    pub batch_size: usize,
    pub chunk_len: usize,
    /// Fraction of the corpus (its tail) held out for validation.
    pub val_fraction: f64,
    pub lr: f64,
    /// Linear warmup steps.
    pub warmup: u64,
    pub schedule: Schedule,
    /// Final learning rate as a fraction of `lr` (linear and cosine schedules); the floor of
    /// the `plateau` schedule's reductions.
    pub min_lr_ratio: f64,
    /// `plateau` schedule: evaluations without a new best validation loss before the learning
    /// rate is reduced.
    pub plateau_patience: u64,
    /// `plateau` schedule: what each reduction multiplies the learning rate by.
    pub plateau_factor: f64,
    /// Stop after this many evaluations without a new best validation loss (0 = never).
    pub early_stop_patience: u64,
    /// What a non-finite loss, gradient norm or update does: stop the run, or skip the step.
    pub on_nan: OnNan,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Maximum global gradient norm (0 = no clipping).
    pub grad_clip: f64,
    /// Chunks accumulated per optimiser step.
    pub accum: usize,
    /// Steps between evaluations (0 = only at the end).
    pub eval_every: u64,
    /// Cap on validation tokens per evaluation (0 = the whole validation tail).
    pub eval_tokens: usize,
    /// Steps between checkpoints besides evaluations and the end (0 = none).
    pub save_every: u64,
    /// Step checkpoints to keep (the best one is always kept).
    pub keep_last: usize,
    /// Steps between progress events.
    pub log_every: u64,
    pub max_steps: Option<u64>,
    pub max_tokens: Option<u64>,
    /// Wall-clock budget in seconds.
    pub max_time: Option<f64>,
    pub epochs: Option<f64>,
    /// Prompt of the sample written at each evaluation.
    pub sample_prompt: String,
    /// Length of that sample in tokens (0 = no samples).
    pub sample_tokens: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            data: vec![],
            data_description: String::new(),
            out_dir: PathBuf::from("runs"),
            name: String::new(),
            device: "auto".into(),
            seed: 1337,
            model: ModelConfig::default(),
            tokenizer: "byte".into(),
            vocab_size: None,
            doc_separator: false,
            reset_at_doc: false,
            cache_dir: None,
            batch_size: 16,
            chunk_len: 256,
            val_fraction: 0.1,
            lr: 2e-3,
            warmup: 100,
            schedule: Schedule::Cosine,
            min_lr_ratio: 0.1,
            plateau_patience: 3,
            plateau_factor: 0.5,
            early_stop_patience: 0,
            on_nan: OnNan::Stop,
            weight_decay: 0.1,
            beta1: 0.9,
            beta2: 0.99,
            eps: 1e-8,
            grad_clip: 1.0,
            accum: 1,
            eval_every: 200,
            eval_tokens: 65_536,
            save_every: 0,
            keep_last: 3,
            log_every: 10,
            max_steps: Some(1000),
            max_tokens: None,
            max_time: None,
            epochs: None,
            sample_prompt: "\n".into(),
            sample_tokens: 200,
        }
    }
}

impl TrainConfig {
    /// Rejects values that cannot work, naming the field.
    pub fn validate(&self) -> Result<()> {
        self.model.validate()?;
        let positive = |name: &str, v: f64| {
            if v.is_finite() && v > 0.0 { Ok(()) } else { Err(Error::config(name, "must be a positive number")) }
        };
        positive("lr", self.lr)?;
        positive("eps", self.eps)?;
        if self.batch_size == 0 {
            return Err(Error::config("batch_size", "must be at least 1"));
        }
        if self.chunk_len == 0 {
            return Err(Error::config("chunk_len", "must be at least 1"));
        }
        if self.accum == 0 {
            return Err(Error::config("accum", "must be at least 1"));
        }
        if !(self.val_fraction > 0.0 && self.val_fraction < 1.0) {
            return Err(Error::config("val_fraction", "must be between 0 and 1 (exclusive), e.g. 0.1"));
        }
        if self.reset_at_doc && !self.doc_separator {
            return Err(Error::config("reset_at_doc", "needs --doc-separator (the boundaries it resets at)"));
        }
        for (name, v) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&v) {
                return Err(Error::config(name, "must be in [0, 1)"));
            }
        }
        if !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()) {
            return Err(Error::config("weight_decay", "must be >= 0"));
        }
        if !(self.grad_clip >= 0.0 && self.grad_clip.is_finite()) {
            return Err(Error::config("grad_clip", "must be >= 0 (0 = off)"));
        }
        if !(0.0..=1.0).contains(&self.min_lr_ratio) {
            return Err(Error::config("min_lr_ratio", "must be in [0, 1]"));
        }
        if self.plateau_patience == 0 {
            return Err(Error::config("plateau_patience", "must be at least 1"));
        }
        if !(self.plateau_factor > 0.0 && self.plateau_factor < 1.0) {
            return Err(Error::config("plateau_factor", "must be between 0 and 1 (exclusive), e.g. 0.5"));
        }
        if self.log_every == 0 {
            return Err(Error::config("log_every", "must be at least 1"));
        }
        if let Some(t) = self.max_time {
            positive("max_time", t)?;
        }
        if let Some(e) = self.epochs {
            positive("epochs", e)?;
        }
        if self.max_steps == Some(0) {
            return Err(Error::config("max_steps", "must be at least 1"));
        }
        if self.max_steps.is_none() && self.max_tokens.is_none() && self.max_time.is_none() && self.epochs.is_none() {
            return Err(Error::config("max_steps", "give a budget: max_steps, max_tokens, max_time or epochs"));
        }
        if self.name.is_empty() || self.name.contains('/') || self.name.starts_with('.') {
            return Err(Error::config("name", "must be a plain directory name"));
        }
        Ok(())
    }

    /// The data part of the config.
    pub fn data_options(&self) -> crate::data::DataOptions {
        crate::data::DataOptions {
            tokenizer: self.tokenizer.clone(),
            vocab_size: self.vocab_size,
            doc_separator: self.doc_separator,
            cache_dir: self.cache_dir.clone(),
        }
    }

    /// Tokens consumed per optimiser step.
    pub fn tokens_per_step(&self) -> u64 {
        (self.batch_size * self.chunk_len * self.accum) as u64
    }

    /// The step count the budgets imply, if any is step-like (`time` is handled separately).
    pub fn total_steps(&self, steps_per_epoch: u64) -> Option<u64> {
        let per_step = self.tokens_per_step();
        [
            self.max_steps,
            self.max_tokens.map(|t| t.div_ceil(per_step)),
            self.epochs.map(|e| ((e * steps_per_epoch as f64) / self.accum as f64).ceil().max(1.0) as u64),
        ]
        .into_iter()
        .flatten()
        .min()
    }
}
