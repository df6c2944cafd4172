//! GRUfinity: minGRU language models on Burn.
//!
//! - [`model`]: the minGRU scan, layer, block and language model.
//! - [`alloc`]: allocator settings for step-after-step reuse of large buffers.
//! - [`data`]: tokenizers, corpora, the TBPTT stream batcher.
//! - [`train`]: the trainer, optimiser, checkpoints.
//! - [`generate`]: stateful decoding and sampling.
//! - [`device`]: backend selection.
//! - [`load`]: a trained model back from a run or checkpoint.
//! - [`rng`]: seedable random numbers independent of Burn's process-wide generator.

pub mod alloc;
pub mod data;
pub mod denormals;
pub mod device;
pub mod error;
pub mod generate;
pub mod load;
pub mod model;
pub mod rng;
pub mod train;

pub use error::{Error, Result};
