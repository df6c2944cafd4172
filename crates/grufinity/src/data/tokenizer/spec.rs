//! A tokenizer as requested (`byte`, `char`, `bpe` or a file), before it is built.

use std::path::PathBuf;


use crate::error::{Error, Result};

use super::{Tokenizer, DEFAULT_BPE_VOCAB, KINDS, MAX_BPE_VOCAB};

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
                let path = PathBuf::from(crate::schema::expand_home(other));
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

