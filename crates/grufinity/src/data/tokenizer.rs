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

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

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
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenizerSpec {
    Byte,
    /// Built from the corpus.
    Char,
    /// Trained on the corpus.
    Bpe,
    /// Loaded: a `tokenizer.json` (ours or Hugging Face's) or a run / checkpoint directory.
    File(PathBuf),
}

impl TokenizerSpec {
    /// `byte`, `char`, `bpe`, or a path to a `tokenizer.json` or a run directory.
    pub fn parse(spec: &str) -> Result<Self> {
        match spec {
            "byte" => Ok(Self::Byte),
            "char" => Ok(Self::Char),
            "bpe" => Ok(Self::Bpe),
            "" => Err(Error::config("tokenizer", format!("is empty (choose: {KINDS}, or a path to a tokenizer.json)"))),
            other => {
                let path = PathBuf::from(other);
                if path.exists() {
                    Ok(Self::File(path))
                } else if other.contains(['/', '\\']) || other.ends_with(".json") {
                    Err(Error::NotFound(path))
                } else {
                    Err(Error::config(
                        "tokenizer",
                        format!("unknown tokenizer `{other}` (choose: {KINDS}, or a path to a tokenizer.json or a run)"),
                    ))
                }
            }
        }
    }

    /// Checks `vocab_size` against the spec and returns the vocabulary size when it is known
    /// before seeing the corpus (`char` is not). Loads a `File` spec to find out.
    pub fn planned_vocab_size(&self, vocab_size: Option<usize>, doc_separator: bool) -> Result<Option<usize>> {
        let sep = usize::from(doc_separator);
        match self {
            Self::Byte | Self::Char if vocab_size.is_some() => Err(Error::config(
                "vocab_size",
                "only applies to --tokenizer bpe (byte has 256 tokens, char one per character of the corpus)",
            )),
            Self::Byte => Ok(Some(256 + sep)),
            Self::Char => Ok(None),
            Self::Bpe => Ok(Some(check_bpe_vocab(vocab_size.unwrap_or(DEFAULT_BPE_VOCAB), doc_separator)?)),
            Self::File(path) => {
                if vocab_size.is_some() {
                    return Err(Error::config(
                        "vocab_size",
                        format!("cannot be changed for a loaded tokenizer ({}); drop --vocab-size", path.display()),
                    ));
                }
                Ok(Some(Tokenizer::from_file(path)?.with_doc_separator(doc_separator)?.vocab_size()))
            }
        }
    }
}

/// Checks a requested BPE vocabulary size; returns it.
pub fn check_bpe_vocab(vocab: usize, doc_separator: bool) -> Result<usize> {
    let min = 257 + usize::from(doc_separator);
    if vocab < min || vocab > MAX_BPE_VOCAB {
        return Err(Error::config(
            "vocab_size",
            format!(
                "{vocab} is out of range for bpe: it must be between {min} (the 256 byte tokens{} plus one merge) and {MAX_BPE_VOCAB}",
                if doc_separator { ", the separator" } else { "" }
            ),
        ));
    }
    Ok(vocab)
}

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

fn utf8(bytes: &[u8]) -> std::result::Result<&str, EncodeError> {
    std::str::from_utf8(bytes).map_err(|e| {
        let offset = e.valid_up_to();
        EncodeError::NotUtf8 { offset, byte: bytes.get(offset).copied().unwrap_or(0) }
    })
}

fn ascii_non_space(b: u8) -> bool {
    b.is_ascii() && !b.is_ascii_whitespace() && b != 0x0b
}

/// Cut points where the GPT-2 pre-tokenizer regex (used by byte-level BPE) starts a new
/// pre-token whether or not the text continues, so encoding in blocks gives the same ids as
/// encoding the whole text: after a single `\n` between two ASCII non-space characters, or
/// before a space that sits between an ASCII non-space character and an ASCII letter. (A run
/// of whitespace at the end of a block would otherwise be split differently: `\s+(?!\S)`.)
fn bpe_split(bytes: &[u8]) -> Option<usize> {
    let n = bytes.len();
    (2..n - 1).rev().find(|&p| {
        let newline = bytes[p - 1] == b'\n' && ascii_non_space(bytes[p - 2]) && ascii_non_space(bytes[p]);
        let space = bytes[p] == b' ' && ascii_non_space(bytes[p - 1]) && bytes[p + 1].is_ascii_alphabetic();
        newline || space
    })
}

// ------------------------------------------------------------------ char

/// A character vocabulary: id 0 is the unknown token, ids `1..=n` the characters in code point
/// order, then the separator when enabled.
#[derive(Clone, Serialize, Deserialize)]
#[serde(try_from = "CharRepr", into = "CharRepr")]
pub struct CharVocab {
    chars: Vec<char>,
    doc_separator: bool,
    index: HashMap<char, u32>,
    /// Ids of ASCII characters (0 = unknown), the common case without hashing.
    ascii: [u32; 128],
}

#[derive(Serialize, Deserialize)]
struct CharRepr {
    /// Every character of the vocabulary, in id order.
    chars: String,
    #[serde(default, skip_serializing_if = "is_false")]
    doc_separator: bool,
}

impl TryFrom<CharRepr> for CharVocab {
    type Error = String;
    fn try_from(r: CharRepr) -> std::result::Result<Self, String> {
        let chars: Vec<char> = r.chars.chars().collect();
        let mut sorted = chars.clone();
        sorted.sort_unstable();
        sorted.dedup();
        if sorted.len() != chars.len() {
            return Err("the char vocabulary lists a character twice".into());
        }
        Ok(Self::new(chars, r.doc_separator))
    }
}

impl From<CharVocab> for CharRepr {
    fn from(v: CharVocab) -> Self {
        CharRepr { chars: v.chars.iter().collect(), doc_separator: v.doc_separator }
    }
}

impl PartialEq for CharVocab {
    fn eq(&self, other: &Self) -> bool {
        self.chars == other.chars && self.doc_separator == other.doc_separator
    }
}

impl std::fmt::Debug for CharVocab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CharVocab({} chars, separator: {})", self.chars.len(), self.doc_separator)
    }
}

impl CharVocab {
    fn new(chars: Vec<char>, doc_separator: bool) -> Self {
        let mut ascii = [0u32; 128];
        let mut index = HashMap::with_capacity(chars.len());
        for (i, &c) in chars.iter().enumerate() {
            let id = i as u32 + 1;
            if (c as u32) < 128 {
                ascii[c as usize] = id;
            }
            index.insert(c, id);
        }
        Self { chars, doc_separator, index, ascii }
    }

    /// The vocabulary of every character in `texts` (sorted by code point).
    pub fn build<'a>(texts: impl IntoIterator<Item = &'a str>, doc_separator: bool) -> Result<Self> {
        let mut seen = std::collections::BTreeSet::new();
        for t in texts {
            seen.extend(t.chars());
        }
        Self::from_chars(seen, doc_separator)
    }

    /// The vocabulary of a set of characters.
    pub fn from_chars(chars: impl IntoIterator<Item = char>, doc_separator: bool) -> Result<Self> {
        let mut chars: Vec<char> = chars.into_iter().collect();
        chars.sort_unstable();
        chars.dedup();
        if chars.is_empty() {
            return Err(Error::Data("the corpus has no characters to build a char vocabulary from".into()));
        }
        Ok(Self::new(chars, doc_separator))
    }

    /// The characters, in id order (id = position + 1).
    pub fn chars(&self) -> &[char] {
        &self.chars
    }

    fn vocab_size(&self) -> usize {
        self.chars.len() + 1 + usize::from(self.doc_separator)
    }

    fn encode(&self, text: &str) -> Encoded {
        let mut ids = Vec::with_capacity(text.len());
        let mut unknown = 0;
        for c in text.chars() {
            let id = if (c as u32) < 128 { self.ascii[c as usize] } else { self.index.get(&c).copied().unwrap_or(0) };
            unknown += u64::from(id == 0);
            ids.push(id);
        }
        Encoded { ids, unknown }
    }

    /// UTF-8 bytes of token `id`.
    fn piece(&self, id: u32) -> Vec<u8> {
        let n = self.chars.len() as u32;
        let mut buf = [0u8; 4];
        match id {
            0 => UNKNOWN_CHAR.encode_utf8(&mut buf).as_bytes().to_vec(),
            i if i <= n => self.chars[i as usize - 1].encode_utf8(&mut buf).as_bytes().to_vec(),
            i if i == n + 1 && self.doc_separator => DOC_SEPARATOR.as_bytes().to_vec(),
            _ => Vec::new(),
        }
    }
}

// ------------------------------------------------------------------ bpe

/// Bytes of one BPE token.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Piece {
    bytes: Box<[u8]>,
    /// Added special token (e.g. the separator): not part of the original text.
    special: bool,
}

/// A byte-level BPE tokenizer (Hugging Face `tokenizers`), kept with its JSON so that it is
/// saved exactly as it was trained or loaded.
#[derive(Clone, Serialize, Deserialize)]
#[serde(try_from = "BpeRepr", into = "BpeRepr")]
pub struct Bpe {
    /// The Hugging Face `tokenizer.json`.
    hf: serde_json::Value,
    doc_separator: bool,
    inner: Arc<tokenizers::Tokenizer>,
    /// Bytes of every id (decoding and bits per byte without going through strings, so a
    /// token that is part of a UTF-8 character decodes to its exact bytes).
    pieces: Arc<Vec<Piece>>,
    sep_id: Option<u32>,
    /// Byte-level pre-tokenizer and decoder: `pieces` decode exactly.
    byte_level: bool,
    /// The GPT-2 regex byte-level form, where [`bpe_split`] is valid.
    splittable: bool,
}

#[derive(Serialize, Deserialize)]
struct BpeRepr {
    tokenizer: serde_json::Value,
    #[serde(default, skip_serializing_if = "is_false")]
    doc_separator: bool,
}

impl TryFrom<BpeRepr> for Bpe {
    type Error = String;
    fn try_from(r: BpeRepr) -> std::result::Result<Self, String> {
        Bpe::from_hf(r.tokenizer, r.doc_separator)
    }
}

impl From<Bpe> for BpeRepr {
    fn from(b: Bpe) -> Self {
        BpeRepr { tokenizer: b.hf, doc_separator: b.doc_separator }
    }
}

impl PartialEq for Bpe {
    fn eq(&self, other: &Self) -> bool {
        self.hf == other.hf && self.doc_separator == other.doc_separator
    }
}

impl std::fmt::Debug for Bpe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Bpe({} tokens, byte-level: {}, separator: {:?})", self.pieces.len(), self.byte_level, self.sep_id)
    }
}

/// GPT-2's map from bytes to printable characters, inverted: byte-level BPE tokens are strings
/// of these characters.
fn char_to_byte() -> HashMap<char, u8> {
    let mut map = HashMap::with_capacity(256);
    let mut n = 0u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        let c = if printable {
            char::from(b)
        } else {
            n += 1;
            char::from_u32(255 + n).unwrap_or('\0')
        };
        map.insert(c, b);
    }
    map
}

impl Bpe {
    /// Wraps a Hugging Face `tokenizer.json` (its BPE model).
    fn from_hf(hf: serde_json::Value, doc_separator: bool) -> std::result::Result<Self, String> {
        let model = hf.pointer("/model/type").and_then(|t| t.as_str()).unwrap_or("BPE");
        if model != "BPE" {
            return Err(format!("its model is {model}; only BPE tokenizers are supported"));
        }
        let inner: tokenizers::Tokenizer = serde_json::from_value(hf.clone()).map_err(|e| e.to_string())?;
        let kind = |p: &str| hf.pointer(p).and_then(|t| t.as_str()).map(str::to_owned);
        let byte_level = kind("/decoder/type").as_deref() == Some("ByteLevel");
        let splittable = byte_level
            && hf.get("normalizer").map_or(true, |n| n.is_null())
            && kind("/pre_tokenizer/type").as_deref() == Some("ByteLevel")
            && hf.pointer("/pre_tokenizer/add_prefix_space").and_then(|v| v.as_bool()) == Some(false)
            && hf.pointer("/pre_tokenizer/use_regex").and_then(|v| v.as_bool()) != Some(false);
        let vocab = inner.get_vocab(true);
        let size = vocab.values().max().map_or(0, |&m| m as usize + 1);
        if size < 2 {
            return Err("its vocabulary is empty".into());
        }
        let specials = inner.get_added_tokens_decoder();
        let map = char_to_byte();
        let mut pieces = vec![Piece { bytes: Box::new([]), special: false }; size];
        for (token, id) in vocab {
            let special = specials.get(&id).is_some_and(|t| t.special);
            let bytes: Vec<u8> = if special || !byte_level {
                if byte_level { token.into_bytes() } else { inner.decode(&[id], false).unwrap_or_default().into_bytes() }
            } else {
                // Like the ByteLevel decoder: map every character, or keep the token's own text
                // when a character is outside the byte alphabet (a literal added token).
                token.chars().map(|c| map.get(&c).copied()).collect::<Option<Vec<u8>>>().unwrap_or_else(|| token.into_bytes())
            };
            pieces[id as usize] = Piece { bytes: bytes.into(), special };
        }
        let sep_id = inner.token_to_id(DOC_SEPARATOR);
        if doc_separator && sep_id.is_none() {
            return Err(format!("it has no {DOC_SEPARATOR} token for the document separator"));
        }
        Ok(Self { hf, doc_separator, inner: Arc::new(inner), pieces: Arc::new(pieces), sep_id, byte_level, splittable })
    }

    /// This tokenizer with the separator token (added as a special token if missing).
    fn with_separator(self) -> std::result::Result<Self, String> {
        if self.sep_id.is_some() {
            return Bpe::from_hf(self.hf, true);
        }
        let mut inner = (*self.inner).clone();
        inner.add_special_tokens(&[tokenizers::AddedToken::from(DOC_SEPARATOR, true)]);
        let json = inner.to_string(false).map_err(|e| e.to_string())?;
        Bpe::from_hf(serde_json::from_str(&json).map_err(|e| e.to_string())?, true)
    }

    /// Trains a byte-level BPE of (at most) `vocab_size` tokens on `texts`. Each text is
    /// pre-tokenized on its own, so cut a corpus with [`Cut::Words`].
    pub fn train<I>(texts: I, vocab_size: usize, doc_separator: bool) -> Result<Self>
    where
        I: Iterator<Item = String> + Send,
    {
        use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
        use tokenizers::models::TrainerWrapper;
        use tokenizers::pre_tokenizers::byte_level::ByteLevel;

        check_bpe_vocab(vocab_size, doc_separator)?;
        let fail = |e: tokenizers::Error| Error::Data(format!("training the bpe tokenizer failed: {e}"));
        let specials = if doc_separator { vec![tokenizers::AddedToken::from(DOC_SEPARATOR, true)] } else { vec![] };
        let mut trainer: TrainerWrapper = BpeTrainerBuilder::new()
            .show_progress(false)
            .vocab_size(vocab_size)
            // A pair seen once is noise, not structure.
            .min_frequency(2)
            .special_tokens(specials)
            // Every byte gets a token, so any UTF-8 text encodes without unknowns.
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .build()
            .into();
        let mut tok = tokenizers::Tokenizer::new(BPE::default());
        tok.with_pre_tokenizer(Some(ByteLevel::default().add_prefix_space(false)));
        tok.with_decoder(Some(ByteLevel::default()));
        tok.train(&mut trainer, texts).map_err(fail)?;
        let json = tok.to_string(false).map_err(fail)?;
        let hf = serde_json::from_str(&json).map_err(|e| Error::Data(e.to_string()))?;
        Bpe::from_hf(hf, doc_separator).map_err(Error::Data)
    }

    fn encode(&self, text: &str) -> std::result::Result<Encoded, EncodeError> {
        let enc = self.inner.encode_fast(text, false).map_err(|e| EncodeError::Tokenizer(e.to_string()))?;
        Ok(Encoded { ids: enc.get_ids().to_vec(), unknown: 0 })
    }

    fn decode(&self, tokens: &[u32]) -> Vec<u8> {
        if self.byte_level {
            let mut out = Vec::with_capacity(tokens.len() * 4);
            for &t in tokens {
                if let Some(p) = self.pieces.get(t as usize) {
                    out.extend_from_slice(&p.bytes);
                }
            }
            out
        } else {
            self.inner.decode(tokens, false).unwrap_or_default().into_bytes()
        }
    }
}
