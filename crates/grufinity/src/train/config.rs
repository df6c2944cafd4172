//! Training configuration: one struct with every knob, serialised into each run.

use std::path::PathBuf;

use super::optim::Schedule;
use crate::error::{Error, Result};
use crate::data::tokenizer::TokenizerSpec;
use crate::model::{parse_param_budget, ModelConfig};
use crate::schema::{Bounds, Schema};

crate::choice_enum! {
    /// What the trainer does with a step whose loss, gradient norm or updated weights are not
    /// finite.
    pub enum OnNan {
        /// Stop with an error; the last checkpoint (always finite) is kept.
        Stop = "stop",
        /// Skip the update, halve the learning-rate multiplier, and stop after
        /// [`MAX_BAD_STEPS`] bad steps in a row.
        Skip = "skip",
    }
}

crate::choice_enum! {
    /// The number format of training's matrix products and activations. Master weights,
    /// optimiser state and checkpoints stay f32 whatever it is, so runs move between devices.
    pub enum Precision {
        /// Everything in f32.
        F32 = "f32",
        /// bfloat16 products (f32 accumulation): CPUs with AMX-BF16 or AVX512-BF16, and GPUs.
        Bf16 = "bf16",
        /// float16 products with loss scaling: GPUs only.
        F16 = "f16",
    }
}

/// Consecutive skipped steps after which `on_nan = "skip"` gives up.
pub const MAX_BAD_STEPS: u64 = 5;

/// The wall-clock budget of a run given no budget at all, in seconds: `grufinity train` with no
/// arguments trains for about three minutes.
pub const DEFAULT_MAX_TIME: f64 = 180.0;

crate::settings! {
    /// Everything that defines a training run. Field names are the CLI flags (dashes as
    /// underscores), the keys of a TOML config and the fields of Python's `TrainConfig`; the
    /// `model` section's keys are flattened there.
    pub struct TrainConfig {
        [section] model: ModelConfig;
        /// Corpus files, directories or globs, read in order.
        data: Vec<PathBuf> = vec![]; Bounds::ANY,
        /// What the corpus is, for people reading the run (default: its files and size).
        data_description: String = String::new(); Bounds::ANY,
        /// Parent directory of runs.
        out_dir: PathBuf = PathBuf::from("runs"); Bounds::ANY,
        /// Run name: the run goes to OUT_DIR/NAME (default: run-DATE-TIME).
        name: String = String::new(); Bounds::ANY,
        /// auto, cpu, cuda[:N], vulkan[:N] or wgpu; the CLI also reads GRUFINITY_DEVICE.
        device: String = "auto".into(); Bounds::ANY,
        /// Random seed: the same seed gives the same run on the CPU.
        seed: u64 = 1337; Bounds::ANY,
        /// Size the model by parameter count instead, e.g. 5M or 500k (picks dim and depth).
        params: Option<String> = None; Bounds::ANY,
        /// byte, char (vocabulary from the corpus), bpe (byte-level BPE trained on the corpus), or a
        /// tokenizer.json / run directory to reuse.
        tokenizer: String = "byte".into(); Bounds::ANY,
        /// Vocabulary size of a bpe tokenizer trained on the corpus (default 4096).
        vocab_size: Option<usize> = None; Bounds::ANY,
        /// Insert a separator token between corpus files (documents).
        doc_separator: bool = false; Bounds::ANY,
        /// Reset a stream's carried state after it crosses a document boundary (needs
        /// doc_separator).
        reset_at_doc: bool = false; Bounds::ANY,
        /// Token cache directory (default: GRUFINITY_CACHE, else ~/.cache/grufinity/tokens).
        cache_dir: Option<PathBuf> = None; Bounds::ANY,
        /// Parallel streams (rows) per step.
        batch_size: usize = 16; Bounds::at_least(1.0),
        /// Tokens per stream per step (the TBPTT length).
        chunk_len: usize = 128; Bounds::at_least(1.0),
        /// Tail of the corpus held out for validation.
        val_fraction: f64 = 0.1; Bounds::range(0.0, false, 1.0, false),
        /// Peak learning rate.
        lr: f64 = 3e-3; Bounds::above(0.0),
        /// Linear warmup steps.
        warmup: u64 = 50; Bounds::ANY,
        /// Decay after warmup; plateau: constant, reduced when the validation loss stops improving.
        schedule: Schedule = Schedule::Cosine; Bounds::ANY,
        /// Final lr as a fraction of lr (the floor of plateau reductions).
        min_lr_ratio: f64 = 0.1; Bounds::range(0.0, true, 1.0, true),
        /// plateau: evaluations without a new best before the lr is reduced.
        plateau_patience: u64 = 3; Bounds::at_least(1.0),
        /// plateau: what each reduction multiplies the lr by.
        plateau_factor: f64 = 0.5; Bounds::range(0.0, false, 1.0, false),
        /// Stop after this many evaluations without a new best validation loss, 0 = never.
        early_stop_patience: u64 = 0; Bounds::ANY,
        /// A non-finite loss or gradient: stop the run, or skip the step and halve the lr
        /// (stopping after 5 in a row).
        on_nan: OnNan = OnNan::Stop; Bounds::ANY,
        /// AdamW decoupled weight decay (matrices only).
        weight_decay: f64 = 0.1; Bounds::at_least(0.0),
        /// AdamW beta1.
        beta1: f64 = 0.9; Bounds::range(0.0, true, 1.0, false),
        /// AdamW beta2.
        beta2: f64 = 0.99; Bounds::range(0.0, true, 1.0, false),
        /// AdamW epsilon.
        eps: f64 = 1e-8; Bounds::above(0.0),
        /// Clip the global gradient norm to this, 0 = off.
        grad_clip: f64 = 1.0; Bounds::at_least(0.0),
        /// Number format of the matrix products: f32, bf16 (f32 master weights and optimiser
        /// state) or f16 (GPUs, with loss scaling).
        precision: Precision = Precision::F32; Bounds::ANY,
        /// Exponential moving average of the weights with this decay (e.g. 0.999): evaluation,
        /// samples, the best checkpoint and inference use the average.
        ema: Option<f64> = None; Bounds::range(0.0, false, 1.0, false),
        /// Chunks accumulated per optimiser step.
        accum: usize = 1; Bounds::at_least(1.0),
        /// Stop after this many steps.
        max_steps: Option<u64> = None; Bounds::at_least(1.0),
        /// Stop after this many training tokens.
        max_tokens: Option<u64> = None; Bounds::at_least(1.0),
        /// Stop after this many seconds (180 when no budget is given at all).
        max_time: Option<f64> = None; Bounds::above(0.0),
        /// Stop after this many passes over the training split.
        epochs: Option<f64> = None; Bounds::above(0.0),
        /// Steps between evaluations, 0 = only at the end.
        eval_every: u64 = 100; Bounds::ANY,
        /// Validation tokens per evaluation, 0 = all.
        eval_tokens: usize = 65_536; Bounds::ANY,
        /// Steps between extra checkpoints, 0 = at evaluations only.
        save_every: u64 = 0; Bounds::ANY,
        /// Step checkpoints to keep (the best is always kept).
        keep_last: usize = 3; Bounds::at_least(1.0),
        /// Steps between progress events.
        log_every: u64 = 10; Bounds::at_least(1.0),
        /// Prompt of the sample written at each evaluation (default: the start of the
        /// validation text).
        sample_prompt: String = String::new(); Bounds::ANY,
        /// Length of that sample in tokens, 0 = none.
        sample_tokens: usize = 200; Bounds::ANY,
        /// Continue a run: auto (the run named by name, if it exists) or a run / checkpoint path.
        resume: Option<String> = None; Bounds::ANY,
        /// Log scalars, samples and histograms of weights and update gates for TensorBoard
        /// (needs the tensorboard extra).
        tensorboard: bool = false; Bounds::ANY,
    }
}

impl TrainConfig {
    /// Rejects values that cannot work, naming the field.
    pub fn validate(&self) -> Result<()> {
        self.check()?;
        self.model.validate()?;
        if self.reset_at_doc && !self.doc_separator {
            return Err(Error::config("reset_at_doc", "needs doc_separator (--doc-separator), the boundaries it resets at"));
        }
        if !self.name.is_empty() && (self.name.contains(['/', '\\']) || self.name.starts_with('.') || self.name == "..") {
            return Err(Error::config("name", format!("must be a plain directory name, got {:?}", self.name)));
        }
        Ok(())
    }

    /// Completes the settings of a new run: sizes the model for `params` if given, sets the
    /// default time budget when no budget is given, and the vocabulary size when the tokenizer
    /// decides it before seeing the corpus.
    pub fn resolve_new_run(&mut self) -> Result<()> {
        if let Some(budget) = &self.params {
            self.model = self.model.clone().sized_for(parse_param_budget(budget)?)?;
        }
        if self.max_steps.is_none() && self.max_tokens.is_none() && self.max_time.is_none() && self.epochs.is_none() {
            self.max_time = Some(DEFAULT_MAX_TIME);
        }
        let spec = TokenizerSpec::parse(&self.tokenizer)?;
        if let Some(v) = spec.planned_vocab_size(self.vocab_size, self.doc_separator)? {
            self.model.vocab_size = v;
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
