//! The data pipeline: tokenizers (round trips, serialisation, unknowns), token stores (cache
//! reuse and invalidation, atomicity, separators), splits and document resets, bad input.

mod common;

use std::cell::Cell;
use std::path::{Path, PathBuf};

use common::Rng;
use grufinity::data::batcher::{split_point, StreamBatcher, TokenSource};
use grufinity::data::tokenizer::{Bpe, CharVocab, Cut, Tokenizer, DOC_SEPARATOR};
use grufinity::data::{prepare, DataEvent, DataOptions, Prepared};
use grufinity::Error;

/// A fresh directory under the system temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let dir = std::env::temp_dir().join(format!("grufinity-test-{name}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
    fn path(&self, rel: &str) -> PathBuf {
        self.0.join(rel)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The shared reference corpus, if this machine has it.
fn shared(rel: &str) -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data").join(rel);
    p.is_file().then_some(p)
}

fn options(tokenizer: &str, cache: &Path) -> DataOptions {
    DataOptions { tokenizer: tokenizer.into(), vocab_size: None, doc_separator: false, cache_dir: Some(cache.to_path_buf()) }
}

/// Prepares `files`, returning the result and the event messages.
fn prep(files: &[PathBuf], opts: &DataOptions) -> (Result<Prepared, Error>, Vec<String>) {
    let mut messages = Vec::new();
    let r = prepare(files, opts, None, &|_| Ok(()), &mut |e: &DataEvent| {
        messages.push(e.message.clone());
        true
    });
    (r, messages)
}

fn all_tokens(p: &Prepared) -> Vec<u32> {
    p.store.to_vec(0, p.store.len())
}

/// Files in a directory (recursively none expected), sorted.
fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = match std::fs::read_dir(dir) {
        Ok(rd) => rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect(),
        Err(_) => vec![],
    };
    v.sort();
    v
}

// ------------------------------------------------------------------ round trips

#[test]
fn byte_round_trips_random_bytes_in_memory_and_through_the_store() {
    let mut rng = Rng(7);
    let mut bytes: Vec<u8> = (0..=255u8).collect();
    bytes.extend((0..300_000).map(|_| rng.next_u64() as u8));
    let tok = Tokenizer::byte();
    let ids = tok.encode(&bytes);
    assert_eq!(ids.len(), bytes.len());
    assert_eq!(tok.decode(&ids), bytes);
    assert_eq!(tok.bytes_per_token(&ids), 1.0);

    let dir = TempDir::new("byte");
    let file = dir.path("random.bin");
    std::fs::write(&file, &bytes).unwrap();
    let (p, _) = prep(&[file], &options("byte", &dir.path("cache")));
    let p = p.unwrap();
    assert_eq!(p.store.header.dtype, "u8");
    assert_eq!(tok.decode(&all_tokens(&p)), bytes);
}

#[test]
fn every_tokenizer_round_trips_tinyshakespeare() {
    let Some(path) = shared("tinyshakespeare/input.txt") else {
        eprintln!("skipped: ../shared/data/tinyshakespeare/input.txt is absent");
        return;
    };
    let text = std::fs::read(&path).unwrap();
    let dir = TempDir::new("shakespeare");
    for (kind, vocab) in [("byte", None), ("char", None), ("bpe", Some(512))] {
        let mut opts = options(kind, &dir.path("cache"));
        opts.vocab_size = vocab;
        let (p, _) = prep(&[path.clone()], &opts);
        let p = p.unwrap();
        let tokens = all_tokens(&p);
        assert_eq!(p.tokenizer.decode(&tokens), text, "{kind}: decode(encode(x)) == x");
        assert_eq!(p.store.header.unknown, 0);
        // Encoding in blocks (in parallel) gives exactly the ids of encoding the whole text.
        assert_eq!(tokens, p.tokenizer.encode(&text), "{kind}: block encoding matches whole encoding");
        // The tokenizer saved in a checkpoint is the same tokenizer.
        let json = serde_json::to_string(&p.tokenizer).unwrap();
        let back: Tokenizer = serde_json::from_str(&json).unwrap();
        assert_eq!(back, p.tokenizer);
        assert_eq!(back.encode(&text[..5000]), tokens[..back.encode(&text[..5000]).len()]);
        let bpt = p.tokenizer.bytes_per_token(&tokens);
        match kind {
            "byte" => assert_eq!(bpt, 1.0),
            // All ASCII: one byte per character.
            "char" => {
                assert_eq!(p.tokenizer.vocab_size(), 66, "65 characters + unknown");
                assert!((bpt - 1.0).abs() < 1e-12);
            }
            _ => {
                assert_eq!(p.tokenizer.vocab_size(), 512);
                assert_eq!(p.store.header.dtype, "u16");
                assert!(bpt > 1.5, "bpe compresses: {bpt} bytes/token");
                let exact = text.len() as f64 / tokens.len() as f64;
                assert!((bpt - exact).abs() < 1e-9, "bytes/token is the real ratio");
            }
        }
    }
}

#[test]
fn bpe_cut_points_do_not_change_the_encoding() {
    let text: String = match shared("tinyshakespeare/input.txt") {
        Some(p) => std::fs::read_to_string(p).unwrap().chars().take(30_000).collect(),
        None => "Hello there, world!\nThe quick  brown fox\n\n  jumps; over 12 lazy dogs' tails.\r\nA\tB\n".repeat(300),
    };
    let bpe = Tokenizer::Bpe(Bpe::train(std::iter::once(text.clone()), 400, false).unwrap());
    assert_eq!(bpe.cut(), Cut::Words);
    let bytes = text.as_bytes();
    let whole = bpe.encode(bytes);
    let mut checked = 0;
    for k in (100..bytes.len()).step_by(bytes.len() / 60) {
        let Some(p) = Cut::Words.find(&bytes[..k]) else { continue };
        let mut parts = bpe.encode(&bytes[..p]);
        parts.extend(bpe.encode(&bytes[p..]));
        assert_eq!(parts, whole, "cut at {p}");
        checked += 1;
    }
    assert!(checked > 30);
}

#[test]
fn char_tokenizer_counts_unknown_characters() {
    let vocab = CharVocab::build(["abc é"], false).unwrap();
    let tok = Tokenizer::Char(vocab);
    assert_eq!(tok.vocab_size(), 6, "5 characters + unknown");
    let enc = tok.encode_block("abzé€".as_bytes()).unwrap();
    assert_eq!(enc.unknown, 2);
    assert_eq!(enc.ids[2], 0, "unknown characters are token 0");
    assert_eq!(String::from_utf8(tok.decode(&enc.ids)).unwrap(), "ab\u{FFFD}é\u{FFFD}");
    // A corpus encoded with a loaded char tokenizer reports its unknowns.
    let dir = TempDir::new("unknown");
    let tok_path = dir.path("tokenizer.json");
    std::fs::write(&tok_path, tok.to_file_json().unwrap()).unwrap();
    let file = dir.path("c.txt");
    std::fs::write(&file, "abc xyz").unwrap();
    let (p, messages) = prep(&[file], &options(tok_path.to_str().unwrap(), &dir.path("cache")));
    let p = p.unwrap();
    assert_eq!(p.store.header.unknown, 3, "x, y and z");
    assert!(messages.iter().any(|m| m.contains("unknown token")), "{messages:?}");
}

#[test]
fn tokenizers_serialise_and_load() {
    let legacy: Tokenizer = serde_json::from_str(r#"{"kind":"byte"}"#).unwrap();
    assert_eq!(legacy, Tokenizer::byte());
    assert_eq!(serde_json::to_string(&legacy).unwrap(), r#"{"kind":"byte"}"#);
    let sep = Tokenizer::byte().with_doc_separator(true).unwrap();
    assert_eq!(sep.vocab_size(), 257);
    assert_eq!(sep.doc_separator(), Some(256));
    assert_eq!(sep.decode(&[104, 256, 105]), format!("h{DOC_SEPARATOR}i").into_bytes());
    assert_eq!(sep.token_len(256), 0, "the separator is not text");

    let bpe = Bpe::train(std::iter::once("to be or not to be, that is the question ".repeat(50)), 300, true).unwrap();
    let tok = Tokenizer::Bpe(bpe);
    let id = tok.doc_separator().unwrap();
    assert_eq!(tok.decode(&[id]), DOC_SEPARATOR.as_bytes());
    let back: Tokenizer = serde_json::from_str(&serde_json::to_string(&tok).unwrap()).unwrap();
    assert_eq!(back, tok);
    // The checkpoint's tokenizer.json of a bpe run is a Hugging Face file, loadable again.
    let dir = TempDir::new("serde");
    let path = dir.path("tokenizer.json");
    std::fs::write(&path, tok.to_file_json().unwrap()).unwrap();
    let value: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert!(value.get("model").is_some());
    let loaded = Tokenizer::from_file(&path).unwrap().with_doc_separator(true).unwrap();
    assert_eq!(loaded.encode(b"to be or not"), tok.encode(b"to be or not"));
    assert_eq!(loaded.doc_separator(), Some(id));

    // A token id far past the vocabulary is refused before anything is sized by it.
    let mut huge = value.clone();
    huge["model"]["vocab"]["stray"] = serde_json::json!(4_000_000_000u64);
    std::fs::write(&path, huge.to_string()).unwrap();
    let err = Tokenizer::from_file(&path).unwrap_err().to_string();
    assert!(err.contains("largest token id is 4000000000"), "{err}");
}

// ------------------------------------------------------------------ stores and the cache

#[test]
fn cache_is_reused_and_invalidated() {
    let dir = TempDir::new("cache");
    let cache = dir.path("cache");
    let file = dir.path("a.txt");
    std::fs::write(&file, "the cat sat on the mat\n".repeat(200)).unwrap();
    let opts = options("char", &cache);

    let (first, m1) = prep(&[file.clone()], &opts);
    let first = first.unwrap();
    assert!(m1.iter().any(|m| m.starts_with("encoded")), "{m1:?}");
    let (second, m2) = prep(&[file.clone()], &opts);
    let second = second.unwrap();
    assert!(m2.iter().any(|m| m.starts_with("reusing") && m.contains("cached tokens")), "{m2:?}");
    assert!(m2.iter().any(|m| m.contains("reusing the char tokenizer")), "{m2:?}");
    assert!(!m2.iter().any(|m| m.starts_with("encoded")));
    assert_eq!(second.store.tokens_path, first.store.tokens_path);
    assert_eq!(all_tokens(&second), all_tokens(&first));

    // A changed source (same size even) is encoded again and replaces the old entry.
    std::fs::write(&file, "the dog sat on the mat\n".repeat(200)).unwrap();
    let (third, m3) = prep(&[file.clone()], &opts);
    let third = third.unwrap();
    assert!(m3.iter().any(|m| m.contains("changed")), "{m3:?}");
    assert_ne!(third.store.header.token_hash, first.store.header.token_hash);
    assert!(!first.store.tokens_path.exists(), "the old token file is removed");
    assert_eq!(third.tokenizer.decode(&all_tokens(&third)), "the dog sat on the mat\n".repeat(200).into_bytes());
    let names = files_in(&cache);
    assert_eq!(names.iter().filter(|n| n.ends_with(".tokens")).count(), 1, "{names:?}");
    assert_eq!(names.iter().filter(|n| n.starts_with("tokenizer-")).count(), 1, "{names:?}");
    assert!(!names.iter().any(|n| n.starts_with(".tmp")), "{names:?}");
    // A damaged token file whose ids fall outside the vocabulary (found by fuzzing) is refused
    // and encoded again, not handed to the model.
    let mut bytes = std::fs::read(&third.store.tokens_path).unwrap();
    bytes[7] = 250;
    std::fs::write(&third.store.tokens_path, &bytes).unwrap();
    let (fourth, m4) = prep(&[file.clone()], &opts);
    assert!(m4.iter().any(|m| m.contains("holds id 250, outside the vocabulary") && m.ends_with("encoding the corpus again")), "{m4:?}");
    let fourth = fourth.unwrap();
    assert!(fourth.tokenizer.decode(&all_tokens(&fourth)) == "the dog sat on the mat\n".repeat(200).into_bytes(), "re-encoded whole");
    // The header says what and from where.
    let h = &third.store.header;
    assert_eq!((h.tokenizer.as_str(), h.dtype.as_str(), h.tokens, h.bytes), ("char", "u8", 4600, 4600));
    assert_eq!(h.sources.len(), 1);
    assert_eq!(h.sources[0].size, 4600);
    assert_eq!(h.sources[0].hash.len(), 32);
}

#[test]
fn token_files_of_dead_writers_that_no_header_names_are_removed() {
    // Two processes encoding one corpus at once both write a token file; the header names the
    // last one, and the other was left behind for good (found by benches/crash_campaign.py).
    let dir = TempDir::new("orphans");
    let cache = dir.path("cache");
    let file = dir.path("a.txt");
    std::fs::write(&file, "the cat sat on the mat\n".repeat(50)).unwrap();
    let opts = options("byte", &cache);
    let first = prep(&[file.clone()], &opts).0.unwrap();
    let current = first.store.tokens_path.file_name().unwrap().to_string_lossy().into_owned();
    let stem = first.store.tokens_path.to_string_lossy().rsplitn(3, '-').last().unwrap().to_string();
    assert!(current.ends_with(&format!("-{}.tokens", std::process::id())), "{current}");
    // A pid above Linux's pid_max stands for a dead writer; this process for a live one.
    let dead = PathBuf::from(format!("{stem}-0badf00d-4194305.tokens"));
    let live = PathBuf::from(format!("{stem}-0badcafe-{}.tokens", std::process::id()));
    let other = cache.join("another-corpus-0123456789abcdef-0badf00d-4194305.tokens");
    for p in [&dead, &live, &other] {
        std::fs::write(p, b"ids").unwrap();
    }
    let second = prep(&[file.clone()], &opts).0.unwrap();
    assert_eq!(second.store.tokens_path, first.store.tokens_path, "the entry is reused");
    assert!(!dead.exists(), "a dead writer's token file is removed");
    assert!(live.exists(), "a live writer's token file stays");
    assert!(other.exists(), "another entry's file is left to that entry");
    assert_eq!(all_tokens(&second), all_tokens(&first));
}

#[test]
fn separators_go_between_documents() {
    let dir = TempDir::new("sep");
    let files: Vec<PathBuf> = ["one", "two", "three"]
        .iter()
        .map(|name| {
            let p = dir.path(&format!("{name}.txt"));
            std::fs::write(&p, name).unwrap();
            p
        })
        .collect();
    let mut opts = options("byte", &dir.path("cache"));
    opts.doc_separator = true;
    let (p, _) = prep(&files, &opts);
    let p = p.unwrap();
    let mut expected: Vec<u32> = b"one".iter().map(|&b| b as u32).collect();
    expected.push(256);
    expected.extend(b"two".iter().map(|&b| b as u32));
    expected.push(256);
    expected.extend(b"three".iter().map(|&b| b as u32));
    assert_eq!(all_tokens(&p), expected);
    assert_eq!(p.store.header.dtype, "u16", "257 tokens need 16 bits");
    assert_eq!(p.store.header.doc_separator, Some(256));
}

#[test]
fn a_stop_request_leaves_no_cache() {
    let dir = TempDir::new("stop");
    let file = dir.path("a.txt");
    std::fs::write(&file, "some text ".repeat(100)).unwrap();
    let cache = dir.path("cache");
    let r = prepare(&[file], &options("byte", &cache), None, &|_| Ok(()), &mut |e: &DataEvent| !e.message.starts_with("encoding"));
    assert!(r.is_err());
    assert!(files_in(&cache).is_empty(), "{:?}", files_in(&cache));
}

// ------------------------------------------------------------------ splits and resets

/// Records the highest index read.
struct Recorder<'a> {
    tokens: &'a [u32],
    max: Cell<usize>,
}

impl TokenSource for Recorder<'_> {
    fn len(&self) -> usize {
        self.tokens.len()
    }
    fn read_into(&self, start: usize, end: usize, out: &mut Vec<u32>) {
        self.max.set(self.max.get().max(end));
        out.extend_from_slice(&self.tokens[start..end]);
    }
}

#[test]
fn training_never_reads_the_validation_tail() {
    let tokens: Vec<u32> = (0..20_000).collect();
    for (val, b, t) in [(0.1, 4, 32), (0.5, 7, 13), (0.02, 1, 100)] {
        let n_train = split_point(tokens.len(), val).unwrap();
        let rec = Recorder { tokens: &tokens, max: Cell::new(0) };
        let mut batcher = StreamBatcher::new(n_train, b, t, 3).unwrap();
        for _ in 0..batcher.steps_per_epoch() * 3 + 2 {
            let batch = batcher.next_batch(&rec);
            assert!(batch.inputs.iter().chain(&batch.targets).all(|&x| (x as usize) < n_train));
        }
        assert!(rec.max.get() <= n_train, "read up to {} of {n_train}", rec.max.get());
        // The validation tail is everything after the split, and nothing before.
        assert_eq!(tokens.len() - n_train, (tokens.len() as f64 * val).round() as usize);
    }
}

#[test]
fn rows_are_flagged_for_reset_after_a_document_boundary() {
    const SEP: u32 = 9999;
    let n = 2_000;
    let mut tokens: Vec<u32> = (0..n as u32).collect();
    for p in [100, 101, 555, 1234] {
        tokens[p] = SEP;
    }
    let (b, t) = (3, 20);
    let mut batcher = StreamBatcher::new(n, b, t, 5).unwrap().with_doc_separator(Some(SEP));
    let mut plain = StreamBatcher::new(n, b, t, 5).unwrap();
    let mut prev: Option<Vec<u32>> = None;
    for _ in 0..batcher.steps_per_epoch() {
        let batch = batcher.next_batch(&tokens);
        assert_eq!(plain.next_batch(&tokens).resets, vec![false; b], "no flags without a separator");
        for row in 0..b {
            let expected = prev.as_ref().is_some_and(|p| p[row * t..(row + 1) * t].contains(&SEP));
            assert_eq!(batch.resets[row], expected, "row {row}");
        }
        prev = Some(batch.inputs.clone());
    }
}

// ------------------------------------------------------------------ bad input

#[test]
fn bad_input_fails_clearly_and_leaves_no_cache() {
    let dir = TempDir::new("bad");
    let cache = dir.path("cache");
    let empty = dir.path("empty.txt");
    std::fs::write(&empty, "").unwrap();
    let binary = dir.path("random.bin");
    let mut rng = Rng(1);
    std::fs::write(&binary, (0..5000).map(|_| rng.next_u64() as u8).collect::<Vec<u8>>()).unwrap();
    let latin1 = dir.path("latin1.txt");
    std::fs::write(&latin1, b"caf\xe9 au lait, s'il vous pla\xeet\n".repeat(20)).unwrap();
    let small = dir.path("small.txt");
    std::fs::write(&small, "tiny").unwrap();

    let msg = |r: Result<Prepared, Error>| r.err().map(|e| e.to_string()).unwrap_or_default();
    let missing = prep(&[dir.path("nope.txt")], &options("byte", &cache)).0;
    assert!(matches!(missing, Err(Error::NotFound(_))));
    assert!(msg(prep(&[empty.clone()], &options("byte", &cache)).0).contains("empty"));
    let d = msg(prep(&[dir.0.clone()], &options("byte", &cache)).0);
    assert!(d.contains("is a directory"), "{d}");
    for kind in ["char", "bpe"] {
        let m = msg(prep(&[binary.clone()], &options(kind, &cache)).0);
        assert!(m.contains("not UTF-8") && m.contains("--tokenizer byte") && m.contains(kind), "{m}");
        let m = msg(prep(&[latin1.clone()], &options(kind, &cache)).0);
        assert!(m.contains("offset 3") && m.contains("0xe9"), "{m}");
    }
    // Too small for the split or the batch: refused before anything is encoded.
    let precheck = |max: u64| -> grufinity::Result<()> {
        let n_train = split_point(max as usize, 0.1)?;
        StreamBatcher::new(n_train, 2, 16, 0).map(|_| ())
    };
    let r = prepare(&[small], &options("byte", &cache), None, &precheck, &mut |_: &DataEvent| true);
    let m = msg(r);
    assert!(m.contains("too few") && m.contains("--val-fraction"), "{m}");
    assert!(files_in(&cache).is_empty(), "nothing cached: {:?}", files_in(&cache));
    // Binary data is fine for the byte tokenizer.
    assert!(prep(&[binary], &options("byte", &cache)).0.is_ok());
}

#[test]
fn tokenizer_specs_are_checked() {
    use grufinity::data::tokenizer::TokenizerSpec;
    assert!(matches!(TokenizerSpec::parse("wordpiece"), Err(Error::Config { .. })));
    assert!(matches!(TokenizerSpec::parse("missing/tokenizer.json"), Err(Error::NotFound(_))));
    let bpe = TokenizerSpec::parse("bpe").unwrap();
    assert_eq!(bpe.planned_vocab_size(None, false).unwrap(), Some(4096));
    assert_eq!(bpe.planned_vocab_size(Some(1000), true).unwrap(), Some(1000));
    assert!(bpe.planned_vocab_size(Some(100), false).is_err());
    assert!(TokenizerSpec::parse("byte").unwrap().planned_vocab_size(Some(300), false).is_err());
    assert_eq!(TokenizerSpec::parse("char").unwrap().planned_vocab_size(None, true).unwrap(), None);
}
