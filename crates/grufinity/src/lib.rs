//! GRUfinity: minGRU language models on Burn.
//!
//! - [`schema`]: the one declaration of every setting (types, defaults, ranges, help).
//! - [`model`]: the minGRU scan, layer, block and language model, its state.
//! - [`data`]: tokenizers, corpora, token stores, the TBPTT stream batcher.
//! - [`train`]: the trainer, optimiser, checkpoints, resuming.
//! - [`generate`]: stateful decoding and sampling.
//! - [`inference`]: a trained model loaded for forward passes, generation, evaluation.
//! - [`run`]: the layout of a run directory; [`files`]: atomic writes, safetensors, locks.
//! - [`device`]: backend selection.
//! - [`alloc`], [`denormals`]: process settings that keep the CPU fast.
//! - [`rng`]: seedable random numbers independent of Burn's process-wide generator.

pub mod alloc;
pub mod data;
pub mod denormals;
pub mod device;
pub mod error;
pub mod files;
pub mod generate;
pub mod inference;
pub mod model;
pub mod rng;
pub mod run;
pub mod schema;
pub mod train;

pub use error::{Error, Result};
pub use inference::Loaded;
