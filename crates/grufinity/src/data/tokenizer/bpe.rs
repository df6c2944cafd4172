//! Byte-level BPE on the Hugging Face `tokenizers` crate.

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

use super::*;


/// Bytes of one BPE token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Piece {
    pub(crate) bytes: Box<[u8]>,
    /// Added special token (e.g. the separator): not part of the original text.
    pub(crate) special: bool,
}

/// A byte-level BPE tokenizer (Hugging Face `tokenizers`), kept with its JSON so that it is
/// saved exactly as it was trained or loaded.
#[derive(Clone, Serialize, Deserialize)]
#[serde(try_from = "BpeRepr", into = "BpeRepr")]
pub struct Bpe {
    /// The Hugging Face `tokenizer.json`.
    pub(crate) hf: serde_json::Value,
    pub(crate) doc_separator: bool,
    pub(crate) inner: Arc<tokenizers::Tokenizer>,
    /// Bytes of every id (decoding and bits per byte without going through strings, so a
    /// token that is part of a UTF-8 character decodes to its exact bytes).
    pub(crate) pieces: Arc<Vec<Piece>>,
    pub(crate) sep_id: Option<u32>,
    /// Byte-level pre-tokenizer and decoder: `pieces` decode exactly.
    pub(crate) byte_level: bool,
    /// The GPT-2 regex byte-level form, where [`bpe_split`] is valid.
    pub(crate) splittable: bool,
}

#[derive(Serialize, Deserialize)]
struct BpeRepr {
    pub(crate) tokenizer: serde_json::Value,
    #[serde(default, skip_serializing_if = "is_false")]
    pub(crate) doc_separator: bool,
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
pub(crate) fn char_to_byte() -> HashMap<char, u8> {
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
    pub(crate) fn from_hf(hf: serde_json::Value, doc_separator: bool) -> std::result::Result<Self, String> {
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
        // Ids index a table of pieces (and the model's embedding): one stray id of 2^31 would
        // ask for tens of gigabytes (found by fuzzing).
        if size > MAX_BPE_VOCAB {
            return Err(format!("its largest token id is {}, above the {MAX_BPE_VOCAB} tokens supported", size - 1));
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
    pub(crate) fn with_separator(self) -> std::result::Result<Self, String> {
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

    pub(crate) fn encode(&self, text: &str) -> std::result::Result<Encoded, EncodeError> {
        let enc = self.inner.encode_fast(text, false).map_err(|e| EncodeError::Tokenizer(e.to_string()))?;
        Ok(Encoded { ids: enc.get_ids().to_vec(), unknown: 0 })
    }

    pub(crate) fn decode(&self, tokens: &[u32]) -> Vec<u8> {
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

