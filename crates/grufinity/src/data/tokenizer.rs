//! Tokenizers. `byte` maps every byte to its own token (vocab 256): any file, no unknown symbols.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A tokenizer, saved with each run so that `generate` and `eval` never need to be told again.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Tokenizer {
    /// One token per byte.
    Byte,
}

impl Tokenizer {
    /// Builds the tokenizer called `name` (only `byte` so far).
    pub fn from_name(name: &str) -> Result<Self> {
        match name {
            "byte" => Ok(Tokenizer::Byte),
            other => Err(Error::config("tokenizer", format!("unknown tokenizer `{other}` (choose: byte)"))),
        }
    }

    /// Short name, as accepted by [`Tokenizer::from_name`].
    pub fn name(&self) -> &'static str {
        match self {
            Tokenizer::Byte => "byte",
        }
    }

    /// Vocabulary size.
    pub fn vocab_size(&self) -> usize {
        match self {
            Tokenizer::Byte => 256,
        }
    }

    /// Text or raw bytes to token ids.
    pub fn encode(&self, bytes: &[u8]) -> Vec<u32> {
        match self {
            Tokenizer::Byte => bytes.iter().map(|&b| b as u32).collect(),
        }
    }

    /// Token ids back to bytes (not necessarily valid UTF-8 mid-character).
    pub fn decode(&self, tokens: &[u32]) -> Vec<u8> {
        match self {
            Tokenizer::Byte => tokens.iter().map(|&t| t.min(255) as u8).collect(),
        }
    }

    /// Average bytes per token on `tokens`, to turn nats/token into bits/byte.
    pub fn bytes_per_token(&self, tokens: &[u32]) -> f64 {
        match self {
            Tokenizer::Byte => {
                let _ = tokens;
                1.0
            }
        }
    }
}
