//! Token stores: a corpus encoded once into a flat file of token ids (u8, u16 or u32 by
//! vocabulary size) plus a small JSON header, memory-mapped for training, so a corpus larger
//! than RAM trains with flat memory. Where they live is [`super::cache`].


use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use serde::{Deserialize, Serialize};

use super::batcher::TokenSource;
use super::corpus::SourceHash;
use crate::error::{Error, Result};

/// Header `format` value.
pub const FORMAT: &str = "grufinity-tokens";
/// Header version; a store of another version is rebuilt.
pub const VERSION: u32 = 1;


/// The JSON header of a token store.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoreHeader {
    pub format: String,
    pub version: u32,
    /// Tokenizer kind, vocabulary size and identity.
    pub tokenizer: String,
    pub vocab_size: usize,
    pub tokenizer_fingerprint: String,
    pub doc_separator: Option<u32>,
    /// `u8`, `u16` or `u32`, little-endian.
    pub dtype: String,
    /// Token count, source bytes, unknown characters.
    pub tokens: u64,
    pub bytes: u64,
    pub unknown: u64,
    /// FNV-1a of the ids (what a checkpoint records to refuse resuming on other data).
    pub token_hash: u64,
    pub sources: Vec<SourceHash>,
    /// The token file, beside the header.
    pub tokens_file: String,
    pub encode_seconds: f64,
}

/// Memory-mapped token ids with their header.
pub struct TokenStore {
    pub header: StoreHeader,
    pub tokens_path: PathBuf,
    map: Option<Mmap>,
    width: usize,
    len: usize,
}

impl std::fmt::Debug for TokenStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenStore({} x {}, {})", self.len, self.header.dtype, self.tokens_path.display())
    }
}

impl TokenStore {
    /// Opens the store whose header is `header_path`, checking that the token file is whole.
    pub fn open(header_path: &Path) -> Result<Self> {
        let bad = |m: String| Error::Data(format!("token store {}: {m}", header_path.display()));
        let text = std::fs::read_to_string(header_path).map_err(|e| Error::io(header_path, e))?;
        let header: StoreHeader = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        if header.format != FORMAT || header.version != VERSION {
            return Err(bad(format!("format {} v{} is not {FORMAT} v{VERSION}", header.format, header.version)));
        }
        let width = match header.dtype.as_str() {
            "u8" => 1,
            "u16" => 2,
            "u32" => 4,
            other => return Err(bad(format!("unknown dtype {other}"))),
        };
        let tokens_path = header_path.with_file_name(&header.tokens_file);
        let file = File::open(&tokens_path).map_err(|e| Error::io(&tokens_path, e))?;
        let size = file.metadata().map_err(|e| Error::io(&tokens_path, e))?.len();
        if size != header.tokens * width as u64 {
            return Err(bad(format!("the token file has {size} bytes, expected {}", header.tokens * width as u64)));
        }
        let len = usize::try_from(header.tokens).map_err(|_| bad("too many tokens for this machine".into()))?;
        // SAFETY: the token file is written once under a temporary name and renamed into
        // place; GRUfinity never modifies it afterwards (a new encoding is a new file), so
        // the mapped bytes do not change while they are read.
        let map = if size > 0 { Some(unsafe { Mmap::map(&file) }.map_err(|e| Error::io(&tokens_path, e))?) } else { None };
        // Ids the model cannot embed would fail deep inside training: a damaged token file
        // (found by fuzzing) is refused here instead, and the cache encodes the corpus again.
        let vocab = header.vocab_size as u64;
        if let Some(map) = map.as_ref().filter(|_| vocab < 1u64 << (8 * width)) {
            let largest = largest_id(map, width);
            if largest >= vocab {
                return Err(bad(format!("the token file holds id {largest}, outside the vocabulary of {vocab}; it is damaged")));
            }
        }
        Ok(Self { header, tokens_path, map, width, len })
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when the store holds no token.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Tokens `start..end` as a vector.
    pub fn to_vec(&self, start: usize, end: usize) -> Vec<u32> {
        let mut out = Vec::with_capacity(end.saturating_sub(start));
        self.read_into(start, end, &mut out);
        out
    }
}

/// The largest id in `bytes`, little-endian ids of `width` bytes (read in parallel: a cache can
/// be gigabytes).
fn largest_id(bytes: &[u8], width: usize) -> u64 {
    use rayon::prelude::*;
    let chunk = width << 20;
    bytes
        .par_chunks(chunk)
        .map(|c| match width {
            1 => c.iter().copied().max().map_or(0, u64::from),
            2 => c.chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]])).max().map_or(0, u64::from),
            _ => c.chunks_exact(4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])).max().map_or(0, u64::from),
        })
        .max()
        .unwrap_or(0)
}

impl TokenSource for TokenStore {
    fn len(&self) -> usize {
        self.len
    }

    fn read_into(&self, start: usize, end: usize, out: &mut Vec<u32>) {
        let Some(map) = &self.map else { return };
        let bytes = &map[start * self.width..end * self.width];
        match self.width {
            1 => out.extend(bytes.iter().map(|&b| b as u32)),
            2 => out.extend(bytes.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]]) as u32)),
            _ => out.extend(bytes.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))),
        }
    }
}

