//! Turning corpus files into tokens: the tokenizer (built, cached or given) and the token
//! store (encoded once, cached, memory-mapped), with progress events.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::corpus::{Corpus, SourceHash};
use super::tokenizer::{Tokenizer, TokenizerSpec};
use super::cache::Cache;
use super::store::TokenStore;
use crate::error::Result;


/// How to turn files into tokens (the data part of a training config).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DataOptions {
    /// `byte`, `char`, `bpe`, or a path to a tokenizer.json or a run.
    pub tokenizer: String,
    /// BPE vocabulary size to train (default [`DEFAULT_BPE_VOCAB`]).
    pub vocab_size: Option<usize>,
    /// Insert the separator token between files.
    pub doc_separator: bool,
    /// Token cache directory (default: `GRUFINITY_CACHE`, else `~/.cache/grufinity/tokens`).
    pub cache_dir: Option<PathBuf>,
}

/// Progress of data preparation, for a progress display or a log.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DataEvent {
    /// `scan`, `tokenizer`, `encode` or `cache`.
    pub stage: String,
    /// A line for people; empty for bare progress updates.
    pub message: String,
    /// Bytes processed so far (0 when not a progress update) and the corpus size, which
    /// tells a display whether the input is large enough to show live (see [`LARGE_INPUT`]).
    pub done: u64,
    pub total: u64,
}

impl DataEvent {
    pub(crate) fn say(stage: &str, message: String, total: u64) -> Self {
        Self { stage: stage.into(), message, done: 0, total }
    }
}

/// The receiver of [`DataEvent`]s; returning false asks to stop.
pub type OnData<'a> = dyn FnMut(&DataEvent) -> bool + 'a;

/// Inputs of at least this many bytes are "large": they get progress updates (once a second),
/// and the trainer shows their data events live rather than only in its `start` event.
pub const LARGE_INPUT: u64 = 32 << 20;

/// Throttles progress updates to one a second.
pub(crate) struct Ticker {
    last: Instant,
    total: u64,
    stage: &'static str,
    verb: &'static str,
}

impl Ticker {
    pub(crate) fn new(stage: &'static str, verb: &'static str, total: u64) -> Self {
        Self { last: Instant::now(), total, stage, verb }
    }

    pub(crate) fn tick(&mut self, done: u64, on: &mut OnData<'_>) -> bool {
        if self.total < LARGE_INPUT || self.last.elapsed() < Duration::from_secs(1) {
            return true;
        }
        self.last = Instant::now();
        let pct = 100.0 * done as f64 / self.total.max(1) as f64;
        let message = if done >= self.total {
            format!("{} finishing", self.verb)
        } else {
            format!("{} {:.0}% ({} of {})", self.verb, pct, mb(done), mb(self.total))
        };
        on(&DataEvent { stage: self.stage.into(), message, done, total: self.total })
    }
}

pub(crate) fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

/// Everything the trainer needs from the data.
pub struct Prepared {
    pub corpus: Corpus,
    pub sources: Vec<SourceHash>,
    pub tokenizer: Tokenizer,
    pub store: TokenStore,
    /// Seconds spent building the tokenizer (0 when loaded or cached).
    pub tokenizer_seconds: f64,
}

/// Opens `files`, builds or loads the tokenizer (unless `tokenizer` is given, e.g. from a
/// checkpoint) and returns the memory-mapped tokens, encoding only when the cache has no
/// up-to-date store. `precheck(max_tokens)` runs before anything is read or written, with an
/// upper bound on the token count, so hopeless inputs fail without touching the cache.
pub fn prepare(
    files: &[PathBuf],
    opts: &DataOptions,
    tokenizer: Option<Tokenizer>,
    precheck: &dyn Fn(u64) -> Result<()>,
    on: &mut OnData<'_>,
) -> Result<Prepared> {
    let corpus = Corpus::open(files)?;
    // Every tokenizer gives at most one token per byte, plus the separators.
    let seps = if opts.doc_separator || tokenizer.as_ref().and_then(Tokenizer::doc_separator).is_some() {
        corpus.files.len() as u64 - 1
    } else {
        0
    };
    precheck(corpus.total_bytes() + seps)?;
    let spec = match &tokenizer {
        Some(_) => None,
        None => {
            let spec = TokenizerSpec::parse(&opts.tokenizer)?;
            spec.planned_vocab_size(opts.vocab_size, opts.doc_separator)?;
            Some(spec)
        }
    };
    let loaded = match (&spec, tokenizer) {
        (_, Some(t)) => Some(t),
        (Some(TokenizerSpec::Byte), None) => Some(Tokenizer::Byte.with_doc_separator(opts.doc_separator)?),
        (Some(TokenizerSpec::File(p)), None) => Some(Tokenizer::from_file(p)?.with_doc_separator(opts.doc_separator)?),
        _ => None,
    };
    let cache = Cache::new(opts.cache_dir.clone())?;
    let utf8_for = match (&loaded, &spec) {
        (Some(t), _) => t.needs_utf8().then_some(t.name()),
        (None, Some(TokenizerSpec::Char)) => Some("char"),
        (None, _) => Some("bpe"),
    };
    let total = corpus.total_bytes();
    let mut ticker = Ticker::new("scan", "checking the corpus:", total);
    let sources = corpus.scan(utf8_for, &mut |done| ticker.tick(done, on))?;
    let clock = Instant::now();
    let (tokenizer, built) = match loaded {
        Some(t) => (t, false),
        None => cache.built_tokenizer(&corpus, &sources, spec.as_ref(), opts, on)?,
    };
    let tokenizer_seconds = if built { clock.elapsed().as_secs_f64() } else { 0.0 };
    let store = cache.store(&corpus, &sources, &tokenizer, on)?;
    Ok(Prepared { corpus, sources, tokenizer, store, tokenizer_seconds })
}

