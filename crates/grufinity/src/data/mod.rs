//! Data: tokenizers, corpora, token stores (memory-mapped caches), splits and the TBPTT
//! stream batcher.

pub mod batcher;
pub mod cache;
pub mod corpus;
pub mod encode;
pub mod prepare;
pub mod stats;
pub mod store;
pub mod tokenizer;

pub use batcher::{split_point, Batch, Cursor, StreamBatcher, TokenSource};
pub use prepare::{prepare, DataEvent, DataOptions, Prepared, LARGE_INPUT};
pub use store::TokenStore;
pub use tokenizer::Tokenizer;
