//! The fuzz targets: every loader a user can point at a file, fed bytes. A tokenizer.json (ours
//! and Hugging Face's), a checkpoint's trainer.json, weights, optimiser and carried state (loaded
//! for inference and resumed for one step), the token cache's header and token file, a saved
//! generation state, and safetensors bytes. Every input must load or be refused with a one-line
//! error; nothing may panic or hang.
//!
//! One file, two drivers: the cargo-fuzz targets in `fuzz/fuzz_targets/` (libFuzzer, nightly;
//! the long runs) and `crates/grufinity/tests/fuzz.rs` (stable; replays the seeds and the corpus
//! libFuzzer kept in `fuzz/corpus/`, in CI). The seeds are real files: two tiny runs trained at
//! start-up (byte and bpe tokenizers) and what they leave in the token cache.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use burn::tensor::Device;
use grufinity::data::{prepare, DataEvent, DataOptions, Tokenizer};
use grufinity::files::tensors;
use grufinity::generate::{DecoderState, SamplingConfig};
use grufinity::model::quant::WeightDtype;
use grufinity::model::ModelConfig;
use grufinity::train::{train, TrainConfig};
use grufinity::Loaded;

/// What a target made of an input: loaded, or refused with this message.
pub type Verdict = Result<(), String>;

/// A loader under test.
pub struct Target {
    pub name: &'static str,
    /// Real files of the kind the loader reads.
    pub seeds: Vec<Vec<u8>>,
    /// Longest time one input may take.
    pub limit: Duration,
    pub run: Arc<dyn Fn(&[u8]) -> Verdict + Send + Sync>,
}

/// The names of every target (each has a cargo-fuzz binary of the same name).
pub const NAMES: [&str; 9] = [
    "trainer_json",
    "model_safetensors",
    "optimizer_safetensors",
    "state_safetensors",
    "tokenizer_json",
    "token_cache_header",
    "token_cache_tokens",
    "generation_state",
    "safetensors_bytes",
];

/// The target called `name`.
pub fn target(name: &str) -> Target {
    match name {
        "trainer_json" => checkpoint_target("trainer_json", "trainer.json", true),
        "model_safetensors" => checkpoint_target("model_safetensors", "model.safetensors", true),
        "optimizer_safetensors" => checkpoint_target("optimizer_safetensors", "optimizer.safetensors", false),
        "state_safetensors" => checkpoint_target("state_safetensors", "state.safetensors", false),
        "tokenizer_json" => tokenizer_target(),
        "token_cache_header" => cache_target("token_cache_header", true),
        "token_cache_tokens" => cache_target("token_cache_tokens", false),
        "generation_state" => generation_state_target(),
        "safetensors_bytes" => safetensors_target(),
        _ => panic!("no fuzz target {name}"),
    }
}

/// Why `verdict` is a failure: a refusal must be one non-empty line.
pub fn failure(verdict: &Verdict) -> Option<String> {
    match verdict {
        Err(m) if m.trim().is_empty() || m.trim().contains('\n') => Some(format!("not a one-line message: {m:?}")),
        _ => None,
    }
}

/// The libFuzzer entry: runs `input` through the target `name` (built once per process) and
/// panics (a crash to libFuzzer) on a message that is not one line. Panics inside the loader
/// and time-outs are libFuzzer's to catch.
pub fn check(name: &'static str, input: &[u8]) {
    static TARGET: OnceLock<Target> = OnceLock::new();
    let target = TARGET.get_or_init(|| target(name));
    if let Some(f) = failure(&(target.run)(input)) {
        panic!("{name}: {f}");
    }
}

fn cpu() -> Device {
    Device::flex()
}

/// The files the seeds come from, made once per test process.
struct Fixture {
    dir: PathBuf,
    corpus: PathBuf,
    cache: PathBuf,
    /// A checkpoint of a byte-tokenizer run, and its step.
    checkpoint: PathBuf,
    step: u64,
    bpe_tokenizer: Vec<u8>,
    generation_state: Vec<u8>,
}

const BPE_VOCAB: usize = 300;

const SEED_TEXT: &str = "The quick brown fox jumps over the lazy dog. A stitch in time saves nine.\n\
                         def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n";

/// A small Hugging Face tokenizer.json of another form (whitespace pre-tokenizer, no byte-level
/// decoder, a normaliser, an added token), written for these tests.
const HF_TOKENIZER: &str = r#"{"version":"1.0","truncation":null,"padding":null,
 "added_tokens":[{"id":0,"content":"[UNK]","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true}],
 "normalizer":{"type":"Lowercase"},"pre_tokenizer":{"type":"Whitespace"},"post_processor":null,"decoder":null,
 "model":{"type":"BPE","dropout":null,"unk_token":"[UNK]","continuing_subword_prefix":null,"end_of_word_suffix":null,
  "fuse_unk":false,"byte_fallback":false,"ignore_merges":false,
  "vocab":{"[UNK]":0,"a":1,"b":2,"c":3,"h":4,"t":5,"e":6,"th":7,"the":8,"ab":9},"merges":["t h","th e","a b"]}}"#;

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("grufinity-fuzz-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let corpus = dir.join("corpus.txt");
        std::fs::write(&corpus, SEED_TEXT.repeat(30)).unwrap();
        let cache = dir.join("cache");
        let run = |name: &str, tokenizer: &str| {
            let cfg = TrainConfig {
                tokenizer: tokenizer.into(),
                vocab_size: (tokenizer == "bpe").then_some(BPE_VOCAB),
                name: name.into(),
                max_steps: Some(2),
                ..base_config(&dir, &corpus, &cache)
            };
            train(cfg, &mut |_| true).unwrap().checkpoint
        };
        let checkpoint = run("byte", "byte");
        let bpe = run("bpe", "bpe");
        let loaded = Loaded::load(&checkpoint, &cpu(), WeightDtype::F32).unwrap();
        let sampling = SamplingConfig { max_new_tokens: 5, seed: 3, ..Default::default() };
        let (_, state) = loaded.generate(b"The quick", &sampling, None, &mut |_| true).unwrap();
        Fixture {
            generation_state: state.to_bytes(loaded.config()).unwrap(),
            bpe_tokenizer: std::fs::read(bpe.join("tokenizer.json")).unwrap(),
            step: loaded.trainer.step,
            checkpoint,
            dir,
            corpus,
            cache,
        }
    })
}

/// The settings of the fixture's runs (a resumed one gives the same values).
fn base_config(dir: &Path, corpus: &Path, cache: &Path) -> TrainConfig {
    TrainConfig {
        data: vec![corpus.to_path_buf()],
        out_dir: dir.join("runs"),
        cache_dir: Some(cache.to_path_buf()),
        device: "cpu".into(),
        model: ModelConfig { dim: 16, depth: 1, ..Default::default() },
        batch_size: 2,
        chunk_len: 16,
        eval_every: 0,
        eval_tokens: 64,
        sample_tokens: 4,
        ..Default::default()
    }
}

/// A scratch directory for one target, emptied before each input.
fn scratch(name: &str) -> PathBuf {
    let dir = fixture().dir.join("scratch").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn seed_files(paths: &[&Path]) -> Vec<Vec<u8>> {
    paths.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// A copy of the fixture's checkpoint in a run of its own, with `file` replaced by `input`.
fn checkpoint_with(name: &str, file: &str, input: &[u8]) -> PathBuf {
    let f = fixture();
    let ckpt = scratch(name).join("run").join("checkpoints").join(format!("step-{}", f.step));
    std::fs::create_dir_all(&ckpt).unwrap();
    for entry in std::fs::read_dir(&f.checkpoint).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), ckpt.join(entry.file_name())).unwrap();
    }
    std::fs::write(ckpt.join(file), input).unwrap();
    ckpt
}

/// What `grufinity generate` does with a checkpoint: load it, generate a few tokens.
fn load_and_generate(ckpt: &Path) -> Verdict {
    let loaded = Loaded::load(ckpt, &cpu(), WeightDtype::F32).map_err(err)?;
    let sampling = SamplingConfig { max_new_tokens: 4, top_k: 5, seed: 1, ..Default::default() };
    loaded.generate(b"the ", &sampling, None, &mut |_| true).map_err(err)?;
    Ok(())
}

/// What `grufinity train --resume` does with a checkpoint: one more step, saved.
fn resume(ckpt: &Path) -> Verdict {
    let f = fixture();
    let cfg = TrainConfig {
        resume: Some(ckpt.display().to_string()),
        max_steps: Some(f.step + 1),
        // Given, so taken over the saved ones: a damaged file cannot ask for hours of sampling.
        eval_every: 0,
        eval_tokens: 32,
        sample_tokens: 2,
        ..base_config(&f.dir, &f.corpus, &f.cache)
    };
    train(cfg, &mut |_| true).map(|_| ()).map_err(err)
}

fn checkpoint_target(name: &'static str, file: &'static str, load: bool) -> Target {
    let seeds = seed_files(&[&fixture().checkpoint.join(file)]);
    Target {
        name,
        seeds,
        limit: Duration::from_secs(20),
        run: Arc::new(move |input| {
            let ckpt = checkpoint_with(name, file, input);
            if load {
                load_and_generate(&ckpt)?;
            }
            resume(&ckpt)
        }),
    }
}

/// A loaded tokenizer used as `generate` and `train --tokenizer FILE` would.
fn use_tokenizer(t: &Tokenizer) -> Verdict {
    let text = "Hello, wörld! the ab\n\u{1F600}".as_bytes();
    let ids = t.encode(text);
    let v = t.vocab_size() as u32;
    let _ = t.decode(&ids);
    let _ = t.decode(&[0, 1, v.saturating_sub(1), v, u32::MAX]);
    let _ = (t.bytes_per_token(&ids), t.token_len(u32::MAX), t.cut().find(text), t.fingerprint());
    let _ = t.encode_block(text);
    let json = t.to_file_json().map_err(err)?;
    let dir = scratch("tokenizer_roundtrip");
    std::fs::write(dir.join("tokenizer.json"), json).unwrap();
    let back = Tokenizer::from_file(&dir.join("tokenizer.json")).map_err(err)?;
    assert_eq!(back.vocab_size(), t.vocab_size(), "a saved tokenizer reloads with its vocabulary");
    t.clone().with_doc_separator(true).map(|_| ()).map_err(err)
}

fn tokenizer_target() -> Target {
    let f = fixture();
    let mut seeds = seed_files(&[&f.checkpoint.join("tokenizer.json")]);
    seeds.push(f.bpe_tokenizer.clone());
    seeds.push(HF_TOKENIZER.as_bytes().to_vec());
    Target {
        name: "tokenizer_json",
        seeds,
        limit: Duration::from_secs(10),
        run: Arc::new(|input| {
            let path = scratch("tokenizer_json").join("tokenizer.json");
            std::fs::write(&path, input).unwrap();
            let t = Tokenizer::from_file(&path).map_err(err)?;
            use_tokenizer(&t)?;
            // The same file as a checkpoint's tokenizer.
            load_and_generate(&checkpoint_with("tokenizer_json_ckpt", "tokenizer.json", input))
        }),
    }
}

/// The fixture's token cache entry (header, token file) of the run with tokenizer `kind`.
fn cache_entry(kind: &str) -> (PathBuf, PathBuf) {
    let f = fixture();
    let header_of = |p: &Path| -> Option<serde_json::Value> { serde_json::from_slice(&std::fs::read(p).ok()?).ok() };
    let header = std::fs::read_dir(&f.cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| header_of(p).is_some_and(|h| h["format"] == "grufinity-tokens" && h["tokenizer"] == kind))
        .expect("the run's cache entry");
    let tokens = f.cache.join(header_of(&header).unwrap()["tokens_file"].as_str().unwrap());
    (header, tokens)
}

/// Prepares the corpus as `train --tokenizer KIND` does, with a cache holding the fixture's
/// entry with `header` and `tokens` as given; the tokens it hands out must be inside the
/// vocabulary (the model indexes its embedding with them).
fn prepare_with_cache(name: &str, kind: &str, header: &[u8], tokens: &[u8]) -> Verdict {
    let f = fixture();
    let (header_path, tokens_path) = cache_entry(kind);
    let cache = scratch(name);
    for entry in std::fs::read_dir(&f.cache).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name().to_string_lossy().starts_with("tokenizer-") {
            std::fs::copy(entry.path(), cache.join(entry.file_name())).unwrap();
        }
    }
    std::fs::write(cache.join(header_path.file_name().unwrap()), header).unwrap();
    std::fs::write(cache.join(tokens_path.file_name().unwrap()), tokens).unwrap();
    let opts = DataOptions {
        tokenizer: kind.into(),
        vocab_size: (kind == "bpe").then_some(BPE_VOCAB),
        cache_dir: Some(cache),
        ..Default::default()
    };
    let p = prepare(&[f.corpus.clone()], &opts, None, &|_| Ok(()), &mut |_: &DataEvent| true).map_err(err)?;
    let vocab = p.tokenizer.vocab_size();
    let ids = p.store.to_vec(0, p.store.len());
    assert_eq!(ids.len(), p.store.len(), "the store holds the tokens it says");
    assert!(ids.iter().all(|&t| (t as usize) < vocab), "the cache handed out token ids outside the vocabulary");
    Ok(())
}

fn cache_target(name: &'static str, header_is_input: bool) -> Target {
    let kinds = ["byte", "bpe"];
    let entries: Vec<(Vec<u8>, Vec<u8>)> =
        kinds.iter().map(|k| cache_entry(k)).map(|(h, t)| (std::fs::read(h).unwrap(), std::fs::read(t).unwrap())).collect();
    // Seeds of both entries; each input is tried as that file of both.
    let seeds = entries.iter().map(|(h, t)| if header_is_input { h.clone() } else { t.clone() }).collect();
    Target {
        name,
        seeds,
        limit: Duration::from_secs(10),
        run: Arc::new(move |input| {
            for (kind, (header, tokens)) in kinds.iter().zip(&entries) {
                let (h, t) = if header_is_input { (input, tokens.as_slice()) } else { (header.as_slice(), input) };
                prepare_with_cache(name, kind, h, t)?;
            }
            Ok(())
        }),
    }
}

fn generation_state_target() -> Target {
    let f = fixture();
    let loaded = Arc::new(Loaded::load(&f.checkpoint, &cpu(), WeightDtype::F32).unwrap());
    Target {
        name: "generation_state",
        seeds: vec![f.generation_state.clone()],
        limit: Duration::from_secs(10),
        run: Arc::new(move |input| {
            // `grufinity generate --continue FILE`: read the state, continue from it.
            let state = DecoderState::from_bytes(input, loaded.config(), &loaded.device).map_err(err)?;
            for sampling in [
                SamplingConfig { max_new_tokens: 3, seed: 2, repetition_penalty: 1.3, no_repeat_ngram_size: 2, ..Default::default() },
                SamplingConfig { max_new_tokens: 3, temperature: 0.0, ..Default::default() },
                SamplingConfig { max_new_tokens: 3, beams: 2, ..Default::default() },
            ] {
                let (_, after) = loaded.generate(b"", &sampling, Some(state.clone()), &mut |_| true).map_err(err)?;
                after.to_bytes(loaded.config()).map_err(err)?;
            }
            Ok(())
        }),
    }
}

fn safetensors_target() -> Target {
    let f = fixture();
    let files = ["model.safetensors", "optimizer.safetensors", "state.safetensors"].map(|n| f.checkpoint.join(n));
    let mut seeds = seed_files(&files.iter().map(PathBuf::as_path).collect::<Vec<_>>());
    seeds.push(f.generation_state.clone());
    Target {
        name: "safetensors_bytes",
        seeds,
        limit: Duration::from_secs(5),
        run: Arc::new(|input| {
            let (named, meta) = tensors::from_bytes(input).map_err(err)?;
            let again = tensors::to_bytes(&named, &meta).map_err(err)?;
            let (back, back_meta) = tensors::from_bytes(&again).map_err(err)?;
            let third = tensors::to_bytes(&back, &back_meta).map_err(err)?;
            assert!(third == again, "read, written and read again, the tensors are the same");
            Ok(())
        }),
    }
}
