//! Data: tokenizers, corpora, token stores (memory-mapped caches), splits and the TBPTT
//! stream batcher.

pub mod batcher;
pub mod corpus;
pub mod stats;
pub mod store;
pub mod tokenizer;

pub use batcher::{split_point, Batch, Cursor, StreamBatcher, TokenSource};
pub use store::{prepare, DataEvent, DataOptions, Prepared, TokenStore};
pub use tokenizer::Tokenizer;
