//! Tokenizers, saved with each run so that `generate` and `eval` never need to be told again.
//!
//! - `byte`: one token per byte (vocab 256): any file, no unknown symbols.
//! - `char`: one token per Unicode character seen in the corpus, plus an explicit unknown token
//!   (id 0) for characters seen later; needs UTF-8 text.
//! - `bpe`: byte-level BPE (the Hugging Face `tokenizers` crate), trained on the corpus or loaded
//!   from a `tokenizer.json`; needs UTF-8 text.
//!
//! Every kind may add a document separator token ([`DOC_SEPARATOR`]) that the token store
//! inserts between the files of a corpus.

mod bpe;
mod char;
mod spec;

use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

pub use bpe::Bpe;
pub use char::CharVocab;
pub use spec::{check_bpe_vocab, TokenizerSpec};

/// Text of the document separator token (the same as GPT-2's, so a GPT-2 `tokenizer.json`
/// already has it).
pub const DOC_SEPARATOR: &str = "<|endoftext|>";
/// What the `char` tokenizer's unknown token decodes to.
pub const UNKNOWN_CHAR: char = '\u{FFFD}';
/// BPE vocabulary size when `--vocab-size` is not given.
pub const DEFAULT_BPE_VOCAB: usize = 4096;
/// Upper bound on a trained BPE vocabulary (the embedding would dwarf any model we train).
pub const MAX_BPE_VOCAB: usize = 1 << 20;
/// Names accepted by [`TokenizerSpec::parse`].
pub const KINDS: &str = "byte, char, bpe";

/// A tokenizer. Serialised (JSON, tagged by `kind`) into every checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(from = "TokenizerRepr", into = "TokenizerRepr")]
pub enum Tokenizer {
    /// One token per byte.
    Byte,
    /// One token per byte, and token 256 the document separator (JSON: `byte` with
    /// `"doc_separator": true`).
    ByteSeparated,
    /// One token per character of a vocabulary built from the corpus.
    Char(CharVocab),
    /// Byte-level BPE.
    Bpe(Bpe),
}

/// The JSON form: every kind is tagged by `kind`; a separator is a `doc_separator` flag.
#[derive(Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
enum TokenizerRepr {
    Byte {
        #[serde(default, skip_serializing_if = "is_false")]
        doc_separator: bool,
    },
    Char(CharVocab),
    Bpe(Bpe),
}

impl From<TokenizerRepr> for Tokenizer {
    fn from(r: TokenizerRepr) -> Self {
        match r {
            TokenizerRepr::Byte { doc_separator: false } => Tokenizer::Byte,
            TokenizerRepr::Byte { doc_separator: true } => Tokenizer::ByteSeparated,
            TokenizerRepr::Char(c) => Tokenizer::Char(c),
            TokenizerRepr::Bpe(b) => Tokenizer::Bpe(b),
        }
    }
}

impl From<Tokenizer> for TokenizerRepr {
    fn from(t: Tokenizer) -> Self {
        match t {
            Tokenizer::Byte => TokenizerRepr::Byte { doc_separator: false },
            Tokenizer::ByteSeparated => TokenizerRepr::Byte { doc_separator: true },
            Tokenizer::Char(c) => TokenizerRepr::Char(c),
            Tokenizer::Bpe(b) => TokenizerRepr::Bpe(b),
        }
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// What a block of text encoded to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Encoded {
    pub ids: Vec<u32>,
    /// Characters that were not in a `char` vocabulary (encoded as the unknown token).
    pub unknown: u64,
}

/// Why a block could not be encoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EncodeError {
    /// Not UTF-8: the first bad byte's offset in the block and its value.
    NotUtf8 { offset: usize, byte: u8 },
    /// The Hugging Face tokenizer failed.
    Tokenizer(String),
}

impl EncodeError {
    /// A user-facing error for a block of `path` that starts at byte `base`.
    pub fn into_error(self, tokenizer: &str, path: &Path, base: u64) -> Error {
        match self {
            EncodeError::NotUtf8 { offset, byte } => not_utf8(tokenizer, path, base + offset as u64, byte),
            EncodeError::Tokenizer(m) => Error::Data(format!("{}: the {tokenizer} tokenizer failed: {m}", path.display())),
        }
    }
}

/// The error for non-UTF-8 input to a tokenizer that needs text.
pub fn not_utf8(tokenizer: &str, path: &Path, offset: u64, byte: u8) -> Error {
    Error::Data(format!(
        "{}: not UTF-8 text (byte 0x{byte:02x} at offset {offset}), but the {tokenizer} tokenizer needs UTF-8 text; \
         use --tokenizer byte for binary or non-UTF-8 data, or convert the file to UTF-8",
        path.display()
    ))
}

/// A tokenizer as requested on the command line, before it is built.
impl Tokenizer {
    /// The byte tokenizer without a separator.
    pub fn byte() -> Self {
        Tokenizer::Byte
    }

    /// Builds the tokenizer called `name` when it needs no corpus (only `byte`).
    pub fn from_name(name: &str) -> Result<Self> {
        match TokenizerSpec::parse(name)? {
            TokenizerSpec::Byte => Ok(Self::byte()),
            TokenizerSpec::File(path) => Self::from_file(&path),
            _ => Err(Error::config("tokenizer", format!("`{name}` is built from a corpus; train with it first"))),
        }
    }

    /// Loads a tokenizer: our own `tokenizer.json` (any kind), a Hugging Face `tokenizer.json`
    /// with a BPE model, or the tokenizer of a run or checkpoint directory.
    pub fn from_file(path: &Path) -> Result<Self> {
        if !path.exists() {
            return Err(Error::NotFound(path.to_path_buf()));
        }
        if path.is_dir() {
            let ckpt = crate::run::resolve(path, "best")?;
            return Self::from_file(&ckpt.join(crate::run::TOKENIZER_FILE));
        }
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let bad = |m: String| Error::config("tokenizer", format!("{} is not a usable tokenizer.json: {m}", path.display()));
        let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        if value.get("kind").is_some() {
            return serde_json::from_value(value).map_err(|e| bad(e.to_string()));
        }
        if value.get("model").is_some() {
            return Bpe::from_hf(value, false).map(Tokenizer::Bpe).map_err(|e| bad(e));
        }
        Err(bad("it has neither `kind` (GRUfinity) nor `model` (Hugging Face)".into()))
    }

    /// The JSON written as a checkpoint's `tokenizer.json`: the Hugging Face format for `bpe`
    /// (loadable by `tokenizers` and by `--tokenizer`), ours for the other kinds.
    pub fn to_file_json(&self) -> Result<Vec<u8>> {
        let json = match self {
            Tokenizer::Bpe(b) => serde_json::to_vec_pretty(&b.hf),
            other => serde_json::to_vec_pretty(other),
        };
        json.map_err(|e| Error::Data(format!("cannot serialise the tokenizer: {e}")))
    }

    /// This tokenizer with the document separator (added if missing and `on`).
    pub fn with_doc_separator(self, on: bool) -> Result<Self> {
        if !on || self.doc_separator().is_some() {
            return Ok(self);
        }
        Ok(match self {
            Tokenizer::Byte | Tokenizer::ByteSeparated => Tokenizer::ByteSeparated,
            Tokenizer::Char(c) => Tokenizer::Char(CharVocab { doc_separator: true, ..c }),
            Tokenizer::Bpe(b) => Tokenizer::Bpe(b.with_separator().map_err(|e| Error::config("tokenizer", e))?),
        })
    }

    /// An independent copy (a clone shares the BPE model and its word cache).
    pub fn fork(&self) -> Self {
        match self {
            Tokenizer::Bpe(b) => Tokenizer::Bpe(Bpe { inner: Arc::new((*b.inner).clone()), ..b.clone() }),
            other => other.clone(),
        }
    }

    /// Short name: `byte`, `char` or `bpe`.
    pub fn name(&self) -> &'static str {
        match self {
            Tokenizer::Byte | Tokenizer::ByteSeparated => "byte",
            Tokenizer::Char(_) => "char",
            Tokenizer::Bpe(_) => "bpe",
        }
    }

    /// Vocabulary size (one past the largest id).
    pub fn vocab_size(&self) -> usize {
        match self {
            Tokenizer::Byte => 256,
            Tokenizer::ByteSeparated => 257,
            Tokenizer::Char(c) => c.vocab_size(),
            Tokenizer::Bpe(b) => b.pieces.len(),
        }
    }

    /// Id of the document separator, when enabled.
    pub fn doc_separator(&self) -> Option<u32> {
        match self {
            Tokenizer::Byte => None,
            Tokenizer::ByteSeparated => Some(256),
            Tokenizer::Char(c) => c.doc_separator.then(|| c.chars.len() as u32 + 1),
            Tokenizer::Bpe(b) => b.doc_separator.then_some(b.sep_id).flatten(),
        }
    }

    /// True when the tokenizer only accepts UTF-8 text.
    pub fn needs_utf8(&self) -> bool {
        !matches!(self, Tokenizer::Byte | Tokenizer::ByteSeparated)
    }

    /// A stable 64-bit identity of this tokenizer (ids and rules), for cache keys.
    pub fn fingerprint(&self) -> u64 {
        let json = serde_json::to_string(self).unwrap_or_default();
        xxhash_rust::xxh3::xxh3_64(json.as_bytes())
    }

    /// Text or raw bytes to token ids, leniently (for prompts): invalid UTF-8 is replaced and
    /// unknown characters become the unknown token.
    pub fn encode(&self, bytes: &[u8]) -> Vec<u32> {
        match self.encode_block(bytes) {
            Ok(e) => e.ids,
            Err(_) => {
                let text = String::from_utf8_lossy(bytes);
                self.encode_block(text.as_bytes()).map(|e| e.ids).unwrap_or_default()
            }
        }
    }

    /// Strictly encodes one block of a corpus: text tokenizers fail on non-UTF-8 input.
    pub fn encode_block(&self, bytes: &[u8]) -> std::result::Result<Encoded, EncodeError> {
        match self {
            Tokenizer::Byte | Tokenizer::ByteSeparated => Ok(Encoded { ids: bytes.iter().map(|&b| b as u32).collect(), unknown: 0 }),
            Tokenizer::Char(c) => Ok(c.encode(utf8(bytes)?)),
            Tokenizer::Bpe(b) => b.encode(utf8(bytes)?),
        }
    }

    /// Token ids back to bytes (not necessarily valid UTF-8 mid-character). Ids outside the
    /// vocabulary decode to nothing.
    pub fn decode(&self, tokens: &[u32]) -> Vec<u8> {
        match self {
            Tokenizer::Byte | Tokenizer::ByteSeparated => {
                let mut out = Vec::with_capacity(tokens.len());
                for &t in tokens {
                    match t {
                        0..=255 => out.push(t as u8),
                        256 => out.extend_from_slice(DOC_SEPARATOR.as_bytes()),
                        _ => {}
                    }
                }
                out
            }
            Tokenizer::Char(c) => {
                let mut out = Vec::with_capacity(tokens.len());
                for &t in tokens {
                    out.extend_from_slice(&c.piece(t));
                }
                out
            }
            Tokenizer::Bpe(b) => b.decode(tokens),
        }
    }

    /// Bytes of the original text that token `id` stands for: 0 for the separator (inserted,
    /// not part of the text) and for ids outside the vocabulary.
    pub fn token_len(&self, id: u32) -> usize {
        if Some(id) == self.doc_separator() {
            return 0;
        }
        match self {
            Tokenizer::Byte | Tokenizer::ByteSeparated => usize::from(id < 256),
            Tokenizer::Char(c) => c.piece(id).len(),
            Tokenizer::Bpe(b) => b.pieces.get(id as usize).map_or(0, |p| if p.special { 0 } else { p.bytes.len() }),
        }
    }

    /// Average bytes of original text per token on `tokens`, to turn nats/token into
    /// bits/byte. Separators count as 0 bytes.
    pub fn bytes_per_token(&self, tokens: &[u32]) -> f64 {
        if tokens.is_empty() {
            return 1.0;
        }
        let bytes: usize = tokens.iter().map(|&t| self.token_len(t)).sum();
        (bytes.max(1)) as f64 / tokens.len() as f64
    }

    /// Where a corpus may be cut into blocks that encode independently.
    pub fn cut(&self) -> Cut {
        match self {
            Tokenizer::Byte | Tokenizer::ByteSeparated => Cut::Anywhere,
            Tokenizer::Char(_) => Cut::Char,
            Tokenizer::Bpe(b) if b.splittable => Cut::Words,
            Tokenizer::Bpe(_) => Cut::Never,
        }
    }
}

/// A rule for cutting text into blocks that encode to the same ids apart as together (so a
/// corpus can be encoded in parallel, in bounded memory).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cut {
    /// Any byte boundary (`byte`).
    Anywhere,
    /// Any character boundary (`char`).
    Char,
    /// Boundaries the GPT-2 pre-tokenizer regex always splits at (byte-level `bpe`).
    Words,
    /// Nowhere: whole files (a loaded tokenizer of another form).
    Never,
}

impl Cut {
    /// Largest cut `p` in `1..len` of `bytes` (which do not end their file), or None when
    /// there is none (read more).
    pub fn find(self, bytes: &[u8]) -> Option<usize> {
        let n = bytes.len();
        if n < 2 {
            return None;
        }
        match self {
            Cut::Anywhere => Some(n - 1),
            // The first of the last 4 bytes that is not a UTF-8 continuation byte. Invalid
            // text is reported by the encoder wherever it is cut.
            Cut::Char => (n.saturating_sub(4).max(1)..n).rev().find(|&p| bytes[p] & 0xC0 != 0x80).or(Some(n - 1)),
            Cut::Words => bpe_split(bytes),
            Cut::Never => None,
        }
    }
}

pub(crate) fn utf8(bytes: &[u8]) -> std::result::Result<&str, EncodeError> {
    std::str::from_utf8(bytes).map_err(|e| {
        let offset = e.valid_up_to();
        EncodeError::NotUtf8 { offset, byte: bytes.get(offset).copied().unwrap_or(0) }
    })
}

pub(crate) fn ascii_non_space(b: u8) -> bool {
    b.is_ascii() && !b.is_ascii_whitespace() && b != 0x0b
}

/// Cut points where the GPT-2 pre-tokenizer regex (used by byte-level BPE) starts a new
/// pre-token whether or not the text continues, so encoding in blocks gives the same ids as
/// encoding the whole text: after a single `\n` between two ASCII non-space characters, or
/// before a space that sits between an ASCII non-space character and an ASCII letter. (A run
/// of whitespace at the end of a block would otherwise be split differently: `\s+(?!\S)`.)
pub(crate) fn bpe_split(bytes: &[u8]) -> Option<usize> {
    let n = bytes.len();
    (2..n - 1).rev().find(|&p| {
        let newline = bytes[p - 1] == b'\n' && ascii_non_space(bytes[p - 2]) && ascii_non_space(bytes[p]);
        let space = bytes[p] == b' ' && ascii_non_space(bytes[p - 1]) && bytes[p + 1].is_ascii_alphabetic();
        newline || space
    })
}

