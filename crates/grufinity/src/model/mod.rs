//! The minGRU model family: the scan, the layer, the block, the language model, its state.

pub mod block;
pub mod config;
pub mod dense;
pub mod conv;
pub mod fused;
pub mod fused_ff;
pub mod fused_norm;
pub mod gemm_bf16;
mod gemv;
pub mod host;
pub mod init;
pub mod lm;
pub mod mingru;
pub mod quant;
pub mod scan;
pub mod state;

pub use config::{parse_param_budget, FeedForwardKind, ModelConfig};
pub use lm::{cross_entropy, MinGruLm};
pub use state::{LayerState, State};
