//! Model configuration: every architectural knob, validation, parameter counting and sizing by
//! a parameter budget.

use crate::error::{Error, Result};
use crate::schema::{Bounds, Schema};

crate::choice_enum! {
    /// Feed-forward variant of each block.
    pub enum FeedForwardKind {
        /// `Linear(d, m d) -> GELU -> Linear(m d, d)`.
        Gelu = "gelu",
        /// `Linear(d, 2h) -> SiLU(a) * b -> Linear(h, d)` with `h = round(2/3 m d)` (same size as GELU).
        Swiglu = "swiglu",
    }
}

crate::settings! {
    /// Architecture of a minGRU language model.
    pub struct ModelConfig {
        /// Vocabulary size (set from the tokenizer: 256 for byte tokens).
        vocab_size: usize = 256; Bounds::DERIVED,
        /// Model width.
        dim: usize = 128; Bounds::at_least(1.0),
        /// Number of minGRU blocks.
        depth: usize = 3; Bounds::at_least(1.0),
        /// minGRU inner width / dim.
        expansion: f64 = 1.5; Bounds::above(0.0),
        /// Feed-forward width / dim.
        ff_mult: f64 = 4.0; Bounds::above(0.0),
        /// Feed-forward variant.
        ff_kind: FeedForwardKind = FeedForwardKind::Gelu; Bounds::ANY,
        /// Causal depthwise conv taps before each minGRU, 0 = off.
        conv_kernel: usize = 0; Bounds::ANY,
        /// Share the embedding matrix with the output head.
        tie_embeddings: bool = false; Bounds::ANY,
        /// Dropout probability after the minGRU and the feed-forward of each block.
        dropout: f64 = 0.0; Bounds::range(0.0, true, 1.0, false),
    }
}

impl ModelConfig {
    /// minGRU inner width `E = round(expansion * dim)`.
    pub fn inner(&self) -> usize {
        (self.expansion * self.dim as f64).round() as usize
    }

    /// Feed-forward hidden width.
    pub fn ff_hidden(&self) -> usize {
        let h = self.ff_mult * self.dim as f64;
        match self.ff_kind {
            FeedForwardKind::Gelu => h.round() as usize,
            FeedForwardKind::Swiglu => (h * 2.0 / 3.0).round() as usize,
        }
    }

    /// Rejects impossible values and combinations, naming the field.
    pub fn validate(&self) -> Result<()> {
        self.check()?;
        if self.vocab_size < 2 {
            return Err(Error::config("vocab_size", "must be at least 2"));
        }
        if self.inner() == 0 {
            return Err(Error::config("expansion", "must give an inner width of at least 1"));
        }
        if self.ff_hidden() == 0 {
            return Err(Error::config("ff_mult", "must give a hidden width of at least 1"));
        }
        if self.conv_kernel == 1 {
            return Err(Error::config("conv_kernel", "must be 0 (off) or at least 2"));
        }
        Ok(())
    }

    /// Exact parameter count:
    ///
    /// ```text
    /// embedding            V d
    /// per block            2 d                          (two RMSNorm gains)
    ///                    + (K d + d)     if conv        (taps + bias)
    ///                    + 2 E d + (E d if E != d)      (minGRU in / out, no bias)
    ///                    + d H + H + H d + d            (GELU feed-forward, with biases)
    ///                    | 2 d H + 2 H + H d + d        (SwiGLU feed-forward)
    /// final norm           d
    /// head                 d V           unless tied
    /// ```
    pub fn num_params(&self) -> usize {
        let head = if self.tie_embeddings { 0 } else { self.dim * self.vocab_size };
        self.embedding_params() + self.depth * self.block_params() + self.dim + head
    }

    /// Parameters of the embedding table.
    pub fn embedding_params(&self) -> usize {
        self.vocab_size * self.dim
    }

    /// Parameters of one block.
    pub fn block_params(&self) -> usize {
        let (d, e, h) = (self.dim, self.inner(), self.ff_hidden());
        let conv = if self.conv_kernel > 0 { self.conv_kernel * d + d } else { 0 };
        let mingru = 2 * e * d + if e != d { e * d } else { 0 };
        let ff = match self.ff_kind {
            FeedForwardKind::Gelu => d * h + h + h * d + d,
            FeedForwardKind::Swiglu => 2 * d * h + 2 * h + h * d + d,
        };
        2 * d + conv + mingru + ff
    }

    /// Parameters that take part in matrix multiplies per token (blocks and head, not the
    /// embedding lookup): the `N` of the `6 N` training FLOPs per token.
    pub fn matmul_params(&self) -> usize {
        self.depth * self.block_params() + self.dim * self.vocab_size
    }

    /// Picks `dim` and `depth` so that the model has about `budget` parameters, keeping the
    /// other fields. Depth grows slowly with size (4 up to ~10M, then 6, 8, ...), `dim` is a
    /// multiple of 64 (or 32 for tiny budgets).
    pub fn sized_for(mut self, budget: usize) -> Result<Self> {
        if budget < 10_000 {
            return Err(Error::config("params", "a budget below 10k parameters is too small for a language model"));
        }
        self.depth = match budget {
            0..=12_000_000 => 4,
            12_000_001..=40_000_000 => 6,
            40_000_001..=150_000_000 => 8,
            _ => 12,
        };
        let step = if budget < 1_000_000 { 32 } else { 64 };
        let mut best = (usize::MAX, step);
        let mut dim = step;
        while dim <= 8192 {
            self.dim = dim;
            let n = self.num_params();
            let diff = n.abs_diff(budget);
            if diff < best.0 {
                best = (diff, dim);
            }
            if n > budget {
                break;
            }
            dim += step;
        }
        self.dim = best.1;
        self.validate()?;
        Ok(self)
    }
}

/// Parses a human parameter budget: `5M`, `500k`, `1.5m`, `2000000`.
pub fn parse_param_budget(text: &str) -> Result<usize> {
    let t = text.trim().to_ascii_lowercase().replace('_', "");
    let (number, scale) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 1e3),
        Some('m') => (&t[..t.len() - 1], 1e6),
        Some('b') | Some('g') => (&t[..t.len() - 1], 1e9),
        _ => (t.as_str(), 1.0),
    };
    match number.parse::<f64>() {
        Ok(n) if n.is_finite() && n > 0.0 => Ok((n * scale).round() as usize),
        _ => Err(Error::config("params", format!("`{text}` is not a parameter count (try 5M, 500k or 2000000)"))),
    }
}
