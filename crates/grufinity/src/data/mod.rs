//! Data: tokenizers, corpora, splits and the TBPTT stream batcher.

pub mod batcher;
pub mod corpus;
pub mod tokenizer;

pub use batcher::{split_point, Batch, Cursor, StreamBatcher};
pub use tokenizer::Tokenizer;
