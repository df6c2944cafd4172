//! The token cache directory: token stores and built tokenizers, keyed by their sources and
//! settings.
//!
//! Cache layout (default `~/.cache/grufinity/tokens`, or `--cache-dir`, or `GRUFINITY_CACHE`):
//! - `<name>-<key>.json`: the header; `key` hashes the source paths and the tokenizer's kind,
//!   vocabulary size and separator, so a corpus has one entry per kind of tokenizer, replaced
//!   when a source or the tokenizer changes (the header records both exactly).
//! - `<name>-<key>-<nonce>-<pid>.tokens`: the ids the header names (`pid`: the writer's); other
//!   token files of the entry are removed once their writer is gone.
//! - `tokenizer-<name>-<key>.json`: a `char`/`bpe` tokenizer built from the corpus, with the
//!   sources it was built from; `key` hashes the paths and the settings.
//!
//! Every file is written under a temporary name and renamed into place; the header is written
//! last, so a crash or an error never leaves an entry that looks valid.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::corpus::{interrupted, Corpus, SourceHash, BLOCK_BYTES};
use super::tokenizer::{Bpe, CharVocab, Cut, Tokenizer, TokenizerSpec, DEFAULT_BPE_VOCAB};
use super::encode::{encode_store, encode_threads, for_each_parallel};
use super::prepare::{mb, DataEvent, DataOptions, OnData, Ticker};
use super::store::{TokenStore, VERSION};
use crate::error::{Error, Result};
use crate::files::atomic::process_alive;
use crate::files::{remove_stale_temporaries, write_file_atomically};

/// The token cache directory.
#[derive(Clone, Debug)]
pub struct Cache {
    pub dir: PathBuf,
}

impl Cache {
    /// `dir`, else `GRUFINITY_CACHE`, else `$XDG_CACHE_HOME/grufinity/tokens`, else
    /// `~/.cache/grufinity/tokens`. Nothing is created until something is written.
    pub fn new(dir: Option<PathBuf>) -> Result<Self> {
        let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
        let dir = dir
            .or_else(|| env("GRUFINITY_CACHE"))
            .or_else(|| env("XDG_CACHE_HOME").map(|d| d.join("grufinity").join("tokens")))
            .or_else(|| env("HOME").map(|d| d.join(".cache").join("grufinity").join("tokens")))
            .ok_or_else(|| {
                Error::config("cache_dir", "no cache directory: HOME is not set; give --cache-dir or set GRUFINITY_CACHE")
            })?;
        if dir.exists() && !dir.is_dir() {
            return Err(Error::config("cache_dir", format!("{} is not a directory; give another --cache-dir", dir.display())));
        }
        Ok(Self { dir })
    }

    fn create(&self) -> Result<()> {
        std::fs::create_dir_all(&self.dir).map_err(|e| {
            Error::io(&self.dir, std::io::Error::new(e.kind(), format!("cannot create the token cache ({e}); give another --cache-dir or set GRUFINITY_CACHE")))
        })?;
        remove_stale_temporaries(&self.dir);
        Ok(())
    }

    /// The `char` / `bpe` tokenizer `spec` asks for, from the cache when the same sources and
    /// settings built one before. Returns whether it was built now.
    pub(crate) fn built_tokenizer(
        &self,
        corpus: &Corpus,
        sources: &[SourceHash],
        spec: Option<&TokenizerSpec>,
        opts: &DataOptions,
        on: &mut OnData<'_>,
    ) -> Result<(Tokenizer, bool)> {
        let total = corpus.total_bytes();
        let kind = match spec {
            Some(TokenizerSpec::Char) => "char",
            _ => "bpe",
        };
        let vocab = opts.vocab_size.unwrap_or(DEFAULT_BPE_VOCAB);
        let paths: Vec<&str> = sources.iter().map(|s| s.path.as_str()).collect();
        let id = serde_json::json!({"v": VERSION, "kind": kind, "vocab": vocab, "sep": opts.doc_separator, "paths": paths});
        let key = format!("{:016x}", xxhash_rust::xxh3::xxh3_64(id.to_string().as_bytes()));
        let path = self.dir.join(format!("tokenizer-{}-{key}.json", stem(corpus)));
        if let Ok(text) = std::fs::read_to_string(&path) {
            if let Ok(cached) = serde_json::from_str::<BuiltTokenizer>(&text) {
                if cached.sources == sources {
                    on(&DataEvent::say("tokenizer", format!("reusing the {kind} tokenizer cached at {}", path.display()), total));
                    return Ok((cached.tokenizer, false));
                }
            }
        }
        let tokenizer = if kind == "char" {
            if !on(&DataEvent::say("tokenizer", format!("building the char vocabulary of {}", mb(total)), total)) {
                return Err(interrupted());
            }
            let mut ticker = Ticker::new("tokenizer", "building the char vocabulary:", total);
            let mut seen = std::collections::BTreeSet::new();
            let mut done = 0;
            for_each_parallel(
                encode_threads(),
                corpus.blocks(Cut::Char, BLOCK_BYTES),
                |_, b| {
                    let text = std::str::from_utf8(&b.bytes).map_err(|_| Error::Data("not UTF-8".into()))?;
                    Ok(text.chars().collect::<std::collections::BTreeSet<char>>())
                },
                |b, set| {
                    seen.extend(set);
                    done += b.bytes.len() as u64;
                    Ok(ticker.tick(done, on))
                },
            )?;
            Tokenizer::Char(CharVocab::from_chars(seen, opts.doc_separator)?)
        } else {
            if !on(&DataEvent::say("tokenizer", format!("training a bpe tokenizer (vocab {vocab}) on {}", mb(total)), total)) {
                return Err(interrupted());
            }
            // Trained on blocks cut like the encoder cuts them. The trainer pulls them from its
            // own threads and reports nothing, so it runs on a helper thread while this one
            // reports progress and turns a stop request into the end of the input; I/O errors
            // are kept aside (its iterator cannot return them).
            let failure: Mutex<Option<Error>> = Mutex::new(None);
            let (fed, stop) = (AtomicU64::new(0), AtomicBool::new(false));
            let texts = corpus.blocks(Cut::Words, BLOCK_BYTES).map_while(|b| match b {
                _ if stop.load(Ordering::Relaxed) => None,
                Ok(b) => {
                    fed.fetch_add(b.bytes.len() as u64, Ordering::Relaxed);
                    Some(String::from_utf8_lossy(&b.bytes).into_owned())
                }
                Err(e) => {
                    if let Ok(mut f) = failure.lock() {
                        f.get_or_insert(e);
                    }
                    None
                }
            });
            let mut ticker = Ticker::new("tokenizer", "training the bpe tokenizer:", total);
            let trained = std::thread::scope(|s| {
                let worker = s.spawn(|| Bpe::train(texts, vocab, opts.doc_separator));
                while !worker.is_finished() {
                    std::thread::sleep(Duration::from_millis(20));
                    if !ticker.tick(fed.load(Ordering::Relaxed), on) {
                        stop.store(true, Ordering::Relaxed);
                    }
                }
                worker.join()
            });
            let bpe = trained.map_err(|_| Error::Data("training the bpe tokenizer failed (its thread panicked)".into()))??;
            if stop.load(Ordering::Relaxed) {
                return Err(interrupted());
            }
            if let Some(e) = failure.lock().ok().and_then(|mut f| f.take()) {
                return Err(e);
            }
            Tokenizer::Bpe(bpe)
        };
        if !on(&DataEvent::say("tokenizer", format!("built a {kind} tokenizer of {} tokens", tokenizer.vocab_size()), total)) {
            return Err(interrupted());
        }
        self.create()?;
        let built = BuiltTokenizer { sources: sources.to_vec(), tokenizer };
        let json = serde_json::to_vec(&built).map_err(|e| Error::Data(e.to_string()))?;
        write_file_atomically(&path, &json)?;
        Ok((built.tokenizer, true))
    }

    /// The header path of the store of `corpus` encoded by `tokenizer`.
    pub fn header_path(&self, corpus: &Corpus, tokenizer: &Tokenizer) -> PathBuf {
        // Not the exact tokenizer: a char vocabulary or a BPE rebuilt after a source changed
        // replaces the old entry instead of leaving it behind.
        let vocab = if matches!(tokenizer, Tokenizer::Char(_)) { 0 } else { tokenizer.vocab_size() };
        let id = serde_json::json!({
            "v": VERSION,
            "tokenizer": [tokenizer.name(), &vocab.to_string(), &format!("{:?}", tokenizer.doc_separator())],
            "paths": corpus.files.iter().map(|f| super::corpus::display_path(&f.path)).collect::<Vec<_>>(),
        });
        let key = format!("{:016x}", xxhash_rust::xxh3::xxh3_64(id.to_string().as_bytes()));
        self.dir.join(format!("{}-{key}.json", stem(corpus)))
    }

    /// The up-to-date store of `corpus` (whose contents are `sources`) under `tokenizer`:
    /// the cached one, else a new encoding that replaces it.
    pub fn store(&self, corpus: &Corpus, sources: &[SourceHash], tokenizer: &Tokenizer, on: &mut OnData<'_>) -> Result<TokenStore> {
        let total = corpus.total_bytes();
        let header_path = self.header_path(corpus, tokenizer);
        let fingerprint = format!("{:016x}", tokenizer.fingerprint());
        let mut old_tokens = None;
        match TokenStore::open(&header_path) {
            Ok(store) => {
                let h = &store.header;
                if h.sources == sources && h.tokenizer_fingerprint == fingerprint {
                    on(&DataEvent::say("cache", format!("reusing {} cached tokens from {}", h.tokens, header_path.display()), total));
                    remove_orphans(&header_path, &h.tokens_file);
                    return Ok(store);
                }
                on(&DataEvent::say("cache", "the corpus changed since it was cached; encoding it again".into(), total));
                old_tokens = Some(store.tokens_path);
            }
            Err(e) if header_path.exists() => {
                on(&DataEvent::say("cache", format!("{e}; encoding the corpus again"), total));
            }
            Err(_) => {}
        }
        self.create()?;
        let store = encode_store(&header_path, corpus, sources, tokenizer, on)?;
        if let Some(old) = old_tokens.filter(|p| *p != store.tokens_path) {
            let _ = std::fs::remove_file(old);
        }
        remove_orphans(&header_path, &store.header.tokens_file);
        Ok(store)
    }
}

/// Removes the token files of the entry `header_path` other than `current` whose writer is gone:
/// those of an encoding that lost a race with another process encoding the same corpus, or that
/// was killed before it wrote its header. Files of live writers stay (they may still be reading
/// them). Names are `<header stem>-<nonce>-<pid>.tokens`.
fn remove_orphans(header_path: &Path, current: &str) {
    let (Some(dir), Some(base)) = (header_path.parent(), header_path.file_stem().and_then(|s| s.to_str())) else { return };
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.filter_map(|e| e.ok()) {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(base).and_then(|r| r.strip_prefix('-')).and_then(|r| r.strip_suffix(".tokens")) else {
            continue;
        };
        let Some((nonce, pid)) = rest.split_once('-') else { continue };
        let ours = nonce.len() == 8 && nonce.bytes().all(|b| b.is_ascii_hexdigit());
        if ours && name != current && pid.parse::<u32>().is_ok_and(|pid| !process_alive(pid)) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// A cached tokenizer built from a corpus, with the sources it was built from.
#[derive(Serialize, Deserialize)]
pub(crate) struct BuiltTokenizer {
    sources: Vec<SourceHash>,
    tokenizer: Tokenizer,
}

/// A short, file-name-safe name for a corpus: its first file's stem.
pub(crate) fn stem(corpus: &Corpus) -> String {
    let raw = corpus.files.first().and_then(|f| f.path.file_stem()).map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let clean: String = raw
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '_' })
        .take(32)
        .collect();
    if clean.is_empty() { "corpus".into() } else { clean }
}
