//! Token stores: a corpus encoded once into a flat file of token ids (u8, u16 or u32 by
//! vocabulary size) plus a small JSON header, kept in a cache directory and memory-mapped for
//! training, so a corpus larger than RAM trains with flat memory.
//!
//! Cache layout (default `~/.cache/grufinity/tokens`, or `--cache-dir`, or `GRUFINITY_CACHE`):
//! - `<name>-<key>.json`: the header; `key` hashes the source paths and the tokenizer's kind,
//!   vocabulary size and separator, so a corpus has one entry per kind of tokenizer, replaced
//!   when a source or the tokenizer changes (the header records both exactly).
//! - `<name>-<key>-<nonce>.tokens`: the ids the header names.
//! - `tokenizer-<name>-<key>.json`: a `char`/`bpe` tokenizer built from the corpus, with the
//!   sources it was built from; `key` hashes the paths and the settings.
//!
//! Every file is written under a temporary name and renamed into place; the header is written
//! last, so a crash or an error never leaves an entry that looks valid.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use memmap2::Mmap;
use serde::{Deserialize, Serialize};

use super::batcher::TokenSource;
use super::corpus::{interrupted, Block, Corpus, SourceHash, BLOCK_BYTES};
use super::tokenizer::{Bpe, CharVocab, Cut, Tokenizer, TokenizerSpec, DEFAULT_BPE_VOCAB};
use crate::error::{Error, Result};

/// Header `format` value.
pub const FORMAT: &str = "grufinity-tokens";
/// Header version; a store of another version is rebuilt.
pub const VERSION: u32 = 1;

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
    fn say(stage: &str, message: String, total: u64) -> Self {
        Self { stage: stage.into(), message, done: 0, total }
    }
}

/// The receiver of [`DataEvent`]s; returning false asks to stop.
pub type OnData<'a> = dyn FnMut(&DataEvent) -> bool + 'a;

/// Inputs of at least this many bytes are "large": they get progress updates (once a second),
/// and the trainer shows their data events live rather than only in its `start` event.
pub const LARGE_INPUT: u64 = 32 << 20;

/// Throttles progress updates to one a second.
struct Ticker {
    last: Instant,
    total: u64,
    stage: &'static str,
    verb: &'static str,
}

impl Ticker {
    fn new(stage: &'static str, verb: &'static str, total: u64) -> Self {
        Self { last: Instant::now(), total, stage, verb }
    }

    fn tick(&mut self, done: u64, on: &mut OnData<'_>) -> bool {
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

fn mb(bytes: u64) -> String {
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

// ------------------------------------------------------------------ cache

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
    fn built_tokenizer(
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
        write_atomically(&path, &json)?;
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
        if let Ok(store) = TokenStore::open(&header_path) {
            let h = &store.header;
            if h.sources == sources && h.tokenizer_fingerprint == fingerprint {
                on(&DataEvent::say("cache", format!("reusing {} cached tokens from {}", h.tokens, header_path.display()), total));
                return Ok(store);
            }
            on(&DataEvent::say("cache", "the corpus changed since it was cached; encoding it again".into(), total));
            old_tokens = Some(store.tokens_path);
        }
        self.create()?;
        let store = encode_store(&header_path, corpus, sources, tokenizer, on)?;
        if let Some(old) = old_tokens.filter(|p| *p != store.tokens_path) {
            let _ = std::fs::remove_file(old);
        }
        Ok(store)
    }
}

/// A cached tokenizer built from a corpus, with the sources it was built from.
#[derive(Serialize, Deserialize)]
struct BuiltTokenizer {
    sources: Vec<SourceHash>,
    tokenizer: Tokenizer,
}

/// A short, file-name-safe name for a corpus: its first file's stem.
fn stem(corpus: &Corpus) -> String {
    let raw = corpus.files.first().and_then(|f| f.path.file_stem()).map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let clean: String = raw
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '_' })
        .take(32)
        .collect();
    if clean.is_empty() { "corpus".into() } else { clean }
}

/// Removes temporaries left by processes that died mid-write (older than a day, so a live
/// writer's file is never touched).
fn remove_stale_temporaries(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let day = Duration::from_secs(24 * 3600);
    for e in entries.flatten() {
        let stale = e.file_name().to_string_lossy().starts_with(".tmp-")
            && e.metadata().and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok()).is_some_and(|age| age > day);
        if stale {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// A temporary file that is removed unless [`Temp::keep`] renames it into place.
struct Temp {
    path: PathBuf,
    armed: bool,
}

impl Temp {
    fn new(dir: &Path, name: &str) -> Self {
        let nonce = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        Self { path: dir.join(format!(".tmp-{name}-{}-{nonce}", std::process::id())), armed: true }
    }

    fn keep(mut self, to: &Path) -> Result<()> {
        std::fs::rename(&self.path, to).map_err(|e| Error::io(to, e))?;
        self.armed = false;
        Ok(())
    }
}

impl Drop for Temp {
    fn drop(&mut self) {
        if self.armed {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn write_atomically(path: &Path, contents: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = Temp::new(dir, &name);
    std::fs::write(&tmp.path, contents).map_err(|e| Error::io(&tmp.path, e))?;
    tmp.keep(path)
}

// ------------------------------------------------------------------ encoding

/// Threads that encode: every core (at most 16), or `GRUFINITY_ENCODE_THREADS` (for
/// measuring how encoding scales).
pub fn encode_threads() -> usize {
    std::env::var("GRUFINITY_ENCODE_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .clamp(1, 16)
}

/// Runs `work(thread, block)` on the blocks on `threads` threads (a bounded number of blocks
/// in flight) and hands the results to `sink` in corpus order; `sink` returning false stops
/// with an error.
pub fn for_each_parallel<T: Send>(
    threads: usize,
    blocks: impl Iterator<Item = Result<Block>>,
    work: impl Fn(usize, &Block) -> Result<T> + Sync,
    mut sink: impl FnMut(&Block, T) -> Result<bool>,
) -> Result<()> {
    let threads = threads.max(1);
    let mut blocks = blocks.peekable();
    while blocks.peek().is_some() {
        let round: Vec<Block> = blocks.by_ref().take(threads * 4).collect::<Result<_>>()?;
        let results: Vec<Result<T>> = if round.len() == 1 || threads == 1 {
            round.iter().map(|b| work(0, b)).collect()
        } else {
            let next = AtomicUsize::new(0);
            let slots: Vec<Mutex<Option<Result<T>>>> = round.iter().map(|_| Mutex::new(None)).collect();
            let (next, slots_ref, round_ref, work_ref) = (&next, &slots, &round, &work);
            std::thread::scope(|s| {
                for thread in 0..threads.min(round.len()) {
                    s.spawn(move || loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(block) = round_ref.get(i) else { break };
                        let r = work_ref(thread, block);
                        if let Ok(mut slot) = slots_ref[i].lock() {
                            *slot = Some(r);
                        }
                    });
                }
            });
            slots
                .into_iter()
                .map(|m| m.into_inner().ok().flatten().unwrap_or_else(|| Err(Error::Data("an encoder thread failed".into()))))
                .collect()
        };
        for (block, r) in round.iter().zip(results) {
            if !sink(block, r?)? {
                return Err(interrupted());
            }
        }
    }
    Ok(())
}

/// Bytes per stored token for a vocabulary.
pub fn width_for(vocab: usize) -> usize {
    match vocab {
        0..=256 => 1,
        257..=65_536 => 2,
        _ => 4,
    }
}

fn dtype(width: usize) -> &'static str {
    match width {
        1 => "u8",
        2 => "u16",
        _ => "u32",
    }
}

/// FNV-1a over token ids, the corpus identity a checkpoint records (the same function the
/// trainer used on in-memory tokens, so older runs still resume).
pub fn fnv_step(h: u64, t: u32) -> u64 {
    (h ^ t as u64).wrapping_mul(0x0100_0000_01b3)
}
/// FNV-1a offset basis.
pub const FNV_START: u64 = 0xcbf2_9ce4_8422_2325;

fn encode_store(header_path: &Path, corpus: &Corpus, sources: &[SourceHash], tokenizer: &Tokenizer, on: &mut OnData<'_>) -> Result<TokenStore> {
    let clock = Instant::now();
    let total = corpus.total_bytes();
    let width = width_for(tokenizer.vocab_size());
    let threads = encode_threads();
    let start = format!("encoding {} in {} file(s) with the {} tokenizer ({threads} threads)", mb(total), corpus.files.len(), tokenizer.name());
    if !on(&DataEvent::say("encode", start, total)) {
        return Err(interrupted());
    }
    let dir = header_path.parent().unwrap_or(Path::new("."));
    let base = header_path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    let nonce = format!("{:08x}", xxhash_rust::xxh3::xxh3_64(&[now.to_le_bytes(), u64::from(std::process::id()).to_le_bytes()].concat()) as u32);
    let tokens_name = format!("{base}-{nonce}.tokens");
    let tmp = Temp::new(dir, &tokens_name);
    let file = File::create(&tmp.path).map_err(|e| Error::io(&tmp.path, e))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let (mut count, mut unknown, mut hash, mut done) = (0u64, 0u64, FNV_START, 0u64);
    let sep = tokenizer.doc_separator();
    let mut ticker = Ticker::new("encode", "encoding:", total);
    let mut last_file = None;
    let write_err = |e: std::io::Error| Error::io(&tmp.path, e);
    // One tokenizer per thread: the BPE word cache behind a shared one is a lock that threads
    // would contend for (and skip when busy).
    let workers: Vec<Tokenizer> = (0..threads).map(|_| tokenizer.fork()).collect();
    for_each_parallel(
        threads,
        corpus.blocks(tokenizer.cut(), BLOCK_BYTES),
        |thread, b| {
            let path = &corpus.files[b.file].path;
            let enc = workers[thread].encode_block(&b.bytes).map_err(|e| e.into_error(tokenizer.name(), path, b.offset))?;
            let mut bytes = Vec::with_capacity(enc.ids.len() * width);
            for &t in &enc.ids {
                bytes.extend_from_slice(&t.to_le_bytes()[..width]);
            }
            Ok((enc, bytes))
        },
        |b, (enc, bytes)| {
            if let (Some(sep), Some(prev)) = (sep, last_file) {
                if prev != b.file {
                    out.write_all(&sep.to_le_bytes()[..width]).map_err(write_err)?;
                    hash = fnv_step(hash, sep);
                    count += 1;
                }
            }
            last_file = Some(b.file);
            out.write_all(&bytes).map_err(write_err)?;
            hash = enc.ids.iter().fold(hash, |h, &t| fnv_step(h, t));
            count += enc.ids.len() as u64;
            unknown += enc.unknown;
            done += b.bytes.len() as u64;
            Ok(ticker.tick(done, on))
        },
    )?;
    let file = out.into_inner().map_err(|e| write_err(e.into_error()))?;
    // Durable before the header points at it.
    file.sync_all().map_err(write_err)?;
    drop(file);
    let seconds = clock.elapsed().as_secs_f64();
    let header = StoreHeader {
        format: FORMAT.into(),
        version: VERSION,
        tokenizer: tokenizer.name().into(),
        vocab_size: tokenizer.vocab_size(),
        tokenizer_fingerprint: format!("{:016x}", tokenizer.fingerprint()),
        doc_separator: sep,
        dtype: dtype(width).into(),
        tokens: count,
        bytes: total,
        unknown,
        token_hash: hash,
        sources: sources.to_vec(),
        tokens_file: tokens_name.clone(),
        encode_seconds: seconds,
    };
    let tokens_path = dir.join(&tokens_name);
    tmp.keep(&tokens_path)?;
    let json = serde_json::to_vec_pretty(&header).map_err(|e| Error::Data(e.to_string()))?;
    if let Err(e) = write_atomically(header_path, &json) {
        let _ = std::fs::remove_file(&tokens_path);
        return Err(e);
    }
    let rate = total as f64 / 1e6 / seconds.max(1e-9);
    on(&DataEvent::say(
        "encode",
        format!(
            "encoded {count} tokens ({:.2} bytes/token) in {seconds:.1} s ({rate:.1} MB/s) into {}",
            total as f64 / count.max(1) as f64,
            header_path.display()
        ), total));
    if unknown > 0 {
        on(&DataEvent::say(
            "encode",
            format!("{unknown} character(s) are not in the char vocabulary and were encoded as the unknown token"), total));
    }
    TokenStore::open(header_path)
}

// ------------------------------------------------------------------ store

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
