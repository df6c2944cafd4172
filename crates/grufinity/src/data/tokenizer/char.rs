//! The `char` tokenizer: a vocabulary of the characters of the corpus.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

use super::*;


/// A character vocabulary: id 0 is the unknown token, ids `1..=n` the characters in code point
/// order, then the separator when enabled.
#[derive(Clone, Serialize, Deserialize)]
#[serde(try_from = "CharRepr", into = "CharRepr")]
pub struct CharVocab {
    pub(crate) chars: Vec<char>,
    pub(crate) doc_separator: bool,
    pub(crate) index: HashMap<char, u32>,
    /// Ids of ASCII characters (0 = unknown), the common case without hashing.
    pub(crate) ascii: [u32; 128],
}

#[derive(Serialize, Deserialize)]
struct CharRepr {
    /// Every character of the vocabulary, in id order.
    pub(crate) chars: String,
    #[serde(default, skip_serializing_if = "is_false")]
    pub(crate) doc_separator: bool,
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
    pub(crate) fn new(chars: Vec<char>, doc_separator: bool) -> Self {
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

    pub(crate) fn vocab_size(&self) -> usize {
        self.chars.len() + 1 + usize::from(self.doc_separator)
    }

    pub(crate) fn encode(&self, text: &str) -> Encoded {
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
    pub(crate) fn piece(&self, id: u32) -> Vec<u8> {
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

