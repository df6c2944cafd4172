//! What the trainer reports while it runs ([`Event`], also the lines of `metrics.jsonl`) and how
//! a run ended ([`Outcome`]).

use std::path::PathBuf;

use serde::Serialize;

use super::histogram::Histogram;
use crate::data::DataEvent;

/// One thing that happened in a run. The callback that receives it returns whether to go on.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "event", rename_all = "lowercase")]
pub enum Event {
    /// Data preparation (tokenizer, cache, encoding progress) of a large corpus (see
    /// [`crate::data::LARGE_INPUT`]), before `Start`; for a small one its messages
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
        /// The run this one branched from (resumed from one of its older checkpoints).
        branched_from: Option<PathBuf>,
        data: String,
        /// What data preparation did (tokenizer, cache reuse or encoding).
        data_log: Vec<String>,
        /// Bytes of temporary files left by killed writers of this run, removed at start.
        debris_removed: u64,
        /// What the matrix products run in (`f32`, or bf16 where the device has it).
        precision: String,
    },
    Step {
        step: u64,
        epoch: u64,
        tokens: u64,
        lr: f64,
        loss: f64,
        grad_norm: f64,
        tokens_per_sec: f64,
        /// Seconds per optimiser step over the logging window.
        step_time: f64,
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
    /// At each evaluation with `tensorboard` on: value distributions of every weight matrix and
    /// of each block's update gate `z` over the first validation chunk.
    Histograms {
        step: u64,
        histograms: Vec<Histogram>,
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
    /// Sent now and then during long work between the other events (evaluation, sampling), so
    /// that a receiver can ask to stop there too. Not written to the metrics.
    Heartbeat {
        /// `eval` or `sample`.
        phase: &'static str,
    },
    Done {
        step: u64,
        tokens: u64,
        elapsed: f64,
        /// `budget`, `time`, `early_stop` or `interrupted`.
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

/// The receiver of a run's events; returning false stops the run after the current step (or
/// the current evaluation), with a checkpoint.
pub type OnEvent<'a> = dyn FnMut(&Event) -> bool + 'a;
