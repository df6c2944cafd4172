//! Corpus statistics (`grufinity data stats`): bytes, tokens, vocabulary usage, the most
//! frequent tokens, and the distribution of line lengths.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;

use super::batcher::TokenSource;
use super::tokenizer::Cut;
use super::prepare::{prepare, DataOptions, OnData};
use super::store::StoreHeader;
use crate::error::Result;

/// Statistics of a corpus under a tokenizer.
#[derive(Clone, Debug, Serialize)]
pub struct CorpusStats {
    pub files: usize,
    pub bytes: u64,
    pub tokenizer: String,
    pub vocab_size: usize,
    pub tokens: u64,
    /// Bytes of text per token (separators count 0 bytes).
    pub bytes_per_token: f64,
    /// Distinct token ids that occur.
    pub used_tokens: usize,
    /// Characters outside a `char` vocabulary.
    pub unknown: u64,
    /// The most frequent tokens, most frequent first.
    pub top: Vec<TopToken>,
    pub lines: LineStats,
    /// The token store these figures come from.
    pub store: StoreInfo,
}

/// One frequent token.
#[derive(Clone, Debug, Serialize)]
pub struct TopToken {
    pub id: u32,
    /// Its text (lossy UTF-8).
    pub text: String,
    pub count: u64,
    pub fraction: f64,
}

/// Line lengths in bytes (without the newline).
#[derive(Clone, Debug, Default, Serialize)]
pub struct LineStats {
    pub count: u64,
    pub mean: f64,
    pub min: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub max: u64,
    /// `(upper bound, lines)` for lengths `0`, `1`, `2..=3`, `4..=7`, ... (powers of two).
    pub histogram: Vec<(u64, u64)>,
}

/// Where the tokens live and how long they took.
#[derive(Clone, Debug, Serialize)]
pub struct StoreInfo {
    pub path: PathBuf,
    pub header: StoreHeader,
    pub tokenizer_seconds: f64,
}

/// Statistics of `files` under the tokenizer of `opts` (built, encoded and cached like for
/// training), with the `top` most frequent tokens.
pub fn corpus_stats(files: &[PathBuf], opts: &DataOptions, top: usize, on: &mut OnData<'_>) -> Result<CorpusStats> {
    let p = prepare(files, opts, None, &|_| Ok(()), on)?;
    let tok = &p.tokenizer;
    let store = &p.store;
    let mut counts = vec![0u64; tok.vocab_size()];
    let mut text_bytes = 0u64;
    let mut buf = Vec::with_capacity(1 << 20);
    let mut start = 0;
    while start < store.len() {
        let end = (start + (1 << 20)).min(store.len());
        buf.clear();
        store.read_into(start, end, &mut buf);
        for &t in &buf {
            if let Some(c) = counts.get_mut(t as usize) {
                *c += 1;
            }
            text_bytes += tok.token_len(t) as u64;
        }
        start = end;
    }
    let n = store.len() as u64;
    let mut order: Vec<u32> = (0..counts.len() as u32).filter(|&i| counts[i as usize] > 0).collect();
    let used = order.len();
    order.sort_by(|&a, &b| counts[b as usize].cmp(&counts[a as usize]).then(a.cmp(&b)));
    let top = order
        .into_iter()
        .take(top)
        .map(|id| TopToken {
            id,
            text: String::from_utf8_lossy(&tok.decode(&[id])).into_owned(),
            count: counts[id as usize],
            fraction: counts[id as usize] as f64 / n.max(1) as f64,
        })
        .collect();
    Ok(CorpusStats {
        files: p.corpus.files.len(),
        bytes: p.corpus.total_bytes(),
        tokenizer: tok.name().into(),
        vocab_size: tok.vocab_size(),
        tokens: n,
        bytes_per_token: text_bytes as f64 / n.max(1) as f64,
        used_tokens: used,
        unknown: store.header.unknown,
        top,
        lines: line_stats(&p.corpus)?,
        store: StoreInfo {
            path: store.tokens_path.clone(),
            header: store.header.clone(),
            tokenizer_seconds: p.tokenizer_seconds,
        },
    })
}

/// Line-length distribution over every file (a last line without a newline counts).
fn line_stats(corpus: &super::corpus::Corpus) -> Result<LineStats> {
    let mut lengths: BTreeMap<u64, u64> = BTreeMap::new();
    for f in 0..corpus.files.len() {
        let one = super::corpus::Corpus { files: vec![corpus.files[f].clone()] };
        let mut current = 0u64;
        for block in one.blocks(Cut::Anywhere, 1 << 20) {
            for &b in &block?.bytes {
                if b == b'\n' {
                    *lengths.entry(current).or_default() += 1;
                    current = 0;
                } else {
                    current += 1;
                }
            }
        }
        if current > 0 {
            *lengths.entry(current).or_default() += 1;
        }
    }
    let count: u64 = lengths.values().sum();
    if count == 0 {
        return Ok(LineStats::default());
    }
    let total: u64 = lengths.iter().map(|(l, c)| l * c).sum();
    let quantile = |q: f64| {
        let rank = ((q * count as f64).ceil() as u64).clamp(1, count);
        let mut seen = 0;
        for (&l, &c) in &lengths {
            seen += c;
            if seen >= rank {
                return l;
            }
        }
        0
    };
    let mut histogram: Vec<(u64, u64)> = Vec::new();
    for (&l, &c) in &lengths {
        // Bucket upper bounds 0, 1, 3, 7, 15, ...
        let upper = if l == 0 { 0 } else { (l + 1).next_power_of_two() - 1 };
        match histogram.last_mut() {
            Some((u, n)) if *u == upper => *n += c,
            _ => histogram.push((upper, c)),
        }
    }
    Ok(LineStats {
        count,
        mean: total as f64 / count as f64,
        min: lengths.keys().next().copied().unwrap_or(0),
        p50: quantile(0.5),
        p90: quantile(0.9),
        p99: quantile(0.99),
        max: lengths.keys().next_back().copied().unwrap_or(0),
        histogram,
    })
}
