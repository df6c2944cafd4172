//! The TBPTT stream batcher.
//!
//! The training tokens are cut into `B` contiguous regions, one per batch row (a *stream*).
//! Step `s` of an epoch gives row `i` the `T` tokens that follow the ones it got at step `s - 1`
//! (and their `T` next-token targets), so the hidden state carried from step to step is the
//! state of exactly the preceding text. When the regions are used up, a new epoch starts: every
//! stream restarts (its state must be reset) and the regions shift by a random offset in
//! `[0, T)` drawn from the seed, so chunk boundaries differ from epoch to epoch.
//!
//! Coverage: one epoch reads every training token once as a target except fewer than
//! `(B + 1) * T` at the start and at region ends.
//!
//! Documents: with a separator token set ([`StreamBatcher::with_doc_separator`]), a row whose
//! previous chunk contained a separator is flagged in [`Batch::resets`], so its carried state
//! can be reset: the state then never carries one document into the next chunk of another.
//! (The reset is per chunk: the tokens after a separator in the same chunk still follow the
//! old document's state, which the separator token itself tells the model about.)

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::rng::splitmix;

/// Where a batcher is: everything needed to continue at the exact next token.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    pub epoch: u64,
    /// Steps already taken in this epoch.
    pub step: u64,
}

/// One training step's data.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    /// `[B * T]` row-major input tokens.
    pub inputs: Vec<u32>,
    /// `[B * T]` row-major targets (the inputs shifted by one).
    pub targets: Vec<u32>,
    /// True when every stream starts a new region here (reset the carried state).
    pub restart: bool,
    /// Per row: the previous chunk crossed a document boundary (reset that row's state).
    /// All false without a separator.
    pub resets: Vec<bool>,
    /// The epoch this batch belongs to.
    pub epoch: u64,
}

/// Layout of one epoch: region start positions and steps per region.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EpochLayout {
    pub starts: Vec<usize>,
    pub steps: u64,
}

/// Streams `batch` rows of `chunk` tokens over `n_tokens` training tokens.
#[derive(Clone, Debug)]
pub struct StreamBatcher {
    n_tokens: usize,
    batch: usize,
    chunk: usize,
    seed: u64,
    cursor: Cursor,
    doc_separator: Option<u32>,
}

/// Random access to token ids: an in-memory slice or a memory-mapped store.
pub trait TokenSource {
    /// Number of tokens.
    fn len(&self) -> usize;
    /// Appends tokens `start..end` to `out` (panics past the end, like slicing).
    fn read_into(&self, start: usize, end: usize, out: &mut Vec<u32>);
}

impl TokenSource for [u32] {
    fn len(&self) -> usize {
        <[u32]>::len(self)
    }
    fn read_into(&self, start: usize, end: usize, out: &mut Vec<u32>) {
        out.extend_from_slice(&self[start..end]);
    }
}

impl TokenSource for Vec<u32> {
    fn len(&self) -> usize {
        Vec::len(self)
    }
    fn read_into(&self, start: usize, end: usize, out: &mut Vec<u32>) {
        out.extend_from_slice(&self[start..end]);
    }
}

impl StreamBatcher {
    /// Fails when the training tokens cannot give every row at least one chunk.
    pub fn new(n_tokens: usize, batch: usize, chunk: usize, seed: u64) -> Result<Self> {
        if batch == 0 {
            return Err(Error::config("batch_size", "must be at least 1"));
        }
        if chunk == 0 {
            return Err(Error::config("chunk_len", "must be at least 1"));
        }
        // Worst-case offset is chunk - 1; each region then needs chunk + 1 tokens.
        let needed = batch * (chunk + 1) + chunk;
        if n_tokens < needed {
            return Err(Error::Data(format!(
                "the training split has {n_tokens} tokens but batch_size x chunk_len needs at least {needed}; \
                 use a larger corpus or lower --batch-size / --chunk-len"
            )));
        }
        Ok(Self { n_tokens, batch, chunk, seed, cursor: Cursor::default(), doc_separator: None })
    }

    /// Flags rows whose previous chunk held `separator` in [`Batch::resets`].
    pub fn with_doc_separator(mut self, separator: Option<u32>) -> Self {
        self.doc_separator = separator;
        self
    }

    /// The current position.
    pub fn cursor(&self) -> Cursor {
        self.cursor
    }

    /// Jumps to `cursor` (for resuming).
    pub fn set_cursor(&mut self, cursor: Cursor) {
        self.cursor = cursor;
    }

    /// Region starts and steps of `epoch`.
    pub fn layout(&self, epoch: u64) -> EpochLayout {
        let offset = (splitmix(self.seed ^ splitmix(epoch.wrapping_add(1))) % self.chunk as u64) as usize;
        // Each region needs one extra token: the last target.
        let region = (self.n_tokens - offset - 1) / self.batch;
        let steps = (region / self.chunk) as u64;
        let starts = (0..self.batch).map(|i| offset + i * region).collect();
        EpochLayout { starts, steps }
    }

    /// Steps in one epoch (the same for every epoch up to one step).
    pub fn steps_per_epoch(&self) -> u64 {
        self.layout(0).steps
    }

    /// The next batch, read from `tokens` (only its first `n_tokens`); advances the cursor.
    pub fn next_batch<S: TokenSource + ?Sized>(&mut self, tokens: &S) -> Batch {
        let mut layout = self.layout(self.cursor.epoch);
        if self.cursor.step >= layout.steps {
            self.cursor = Cursor { epoch: self.cursor.epoch + 1, step: 0 };
            layout = self.layout(self.cursor.epoch);
        }
        let t = self.chunk;
        let mut inputs = Vec::with_capacity(self.batch * t);
        let mut targets = Vec::with_capacity(self.batch * t);
        let mut resets = vec![false; self.batch];
        let mut row = Vec::with_capacity(t + 1);
        for (i, &start) in layout.starts.iter().enumerate() {
            let p = start + self.cursor.step as usize * t;
            row.clear();
            tokens.read_into(p, p + t + 1, &mut row);
            inputs.extend_from_slice(&row[..t]);
            targets.extend_from_slice(&row[1..]);
            if let (Some(sep), true) = (self.doc_separator, self.cursor.step > 0) {
                // The previous chunk's inputs are the t tokens before p.
                let mut prev = Vec::with_capacity(t);
                tokens.read_into(p - t, p, &mut prev);
                resets[i] = prev.contains(&sep);
            }
        }
        let batch = Batch { inputs, targets, restart: self.cursor.step == 0, resets, epoch: self.cursor.epoch };
        self.cursor.step += 1;
        batch
    }
}

/// SplitMix64 finaliser: a good 64-bit hash for seeds.

/// Splits `n` tokens into a training head and a validation tail of fraction `val_fraction`.
/// Returns the number of training tokens.
pub fn split_point(n: usize, val_fraction: f64) -> Result<usize> {
    if !(val_fraction > 0.0 && val_fraction < 1.0) {
        return Err(Error::config("val_fraction", "must be between 0 and 1 (exclusive), e.g. 0.1"));
    }
    let n_val = ((n as f64) * val_fraction).round() as usize;
    if n_val < 2 {
        // A larger fraction helps only while the training head keeps some tokens.
        let hint = if n >= 4 {
            format!("give more text or a larger --val-fraction (at least {:.2})", 2.0 / n as f64)
        } else {
            "give more text".to_string()
        };
        return Err(Error::Data(format!(
            "the corpus has only {n} tokens: too few for a validation split of {val_fraction}; {hint}"
        )));
    }
    Ok(n - n_val)
}

/// Validation layout: `rows` contiguous regions of the `n_tokens` validation tokens, each
/// evaluated from a fresh state with the state carried across chunks, predicting at most `cap`
/// tokens in all (0 = no cap). Returns `(starts, per_row)`: the region starts and the targets
/// each region predicts (it reads `per_row + 1` tokens).
pub fn eval_layout(n_tokens: usize, rows: usize, cap: usize) -> (Vec<usize>, usize) {
    let rows = rows.clamp(1, (n_tokens / 2).max(1));
    let len = n_tokens / rows;
    let mut per_row = len - 1;
    if cap > 0 {
        per_row = per_row.min(cap.div_ceil(rows).max(1));
    }
    ((0..rows).map(|i| i * len).collect(), per_row)
}
