//! Encoding a corpus into a token store, block by block on several threads.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Instant, SystemTime};


use super::corpus::{interrupted, Block, Corpus, SourceHash, BLOCK_BYTES};
use super::tokenizer::Tokenizer;
use super::prepare::{mb, DataEvent, OnData, Ticker};
use super::store::{StoreHeader, TokenStore, FORMAT, VERSION};
use crate::error::{Error, Result};
use crate::files::{write_file_atomically, TempFile};


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

pub(crate) fn dtype(width: usize) -> &'static str {
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

pub(crate) fn encode_store(header_path: &Path, corpus: &Corpus, sources: &[SourceHash], tokenizer: &Tokenizer, on: &mut OnData<'_>) -> Result<TokenStore> {
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
    // The writer's pid last: a file that lost a race with another encoder (or whose header was
    // never written) is removed once its writer is gone (Cache::remove_orphans).
    let tokens_name = format!("{base}-{nonce}-{}.tokens", std::process::id());
    let tmp = TempFile::for_path(&dir.join(&tokens_name));
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
    if let Err(e) = write_file_atomically(header_path, &json) {
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

