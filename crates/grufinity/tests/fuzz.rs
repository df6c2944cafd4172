//! Fuzzing of every loader a user can point at a file (see `fuzzing/` for the fuzzer): a
//! tokenizer.json (ours and Hugging Face's), a checkpoint's trainer.json, weights, optimiser and
//! carried state (loaded for inference and resumed for one step), the token cache's header and
//! token file, a saved generation state, and safetensors bytes. Every input must load or be
//! refused with a one-line error; nothing may panic or hang.
//!
//! The seeds are real files: two tiny runs trained here (byte and bpe tokenizers) and what they
//! leave in the token cache. A few seconds per target by default; for the long runs:
//!
//! ```sh
//! GRUFINITY_FUZZ_SECS=600 RAYON_NUM_THREADS=1 cargo test --release -p grufinity --test fuzz -- --test-threads 1 --nocapture
//! ```

mod common;
mod fuzzing;

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use common::cpu;
use fuzzing::{fuzz, Target, Verdict};
use grufinity::data::{prepare, DataEvent, DataOptions, Tokenizer};
use grufinity::files::tensors;
use grufinity::generate::{DecoderState, SamplingConfig};
use grufinity::model::quant::WeightDtype;
use grufinity::model::ModelConfig;
use grufinity::train::{train, TrainConfig};
use grufinity::Loaded;

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

#[test]
fn fuzz_trainer_json() {
    fuzz(checkpoint_target("trainer_json", "trainer.json", true));
}

#[test]
fn fuzz_model_safetensors() {
    fuzz(checkpoint_target("model_safetensors", "model.safetensors", true));
}

#[test]
fn fuzz_optimizer_safetensors() {
    fuzz(checkpoint_target("optimizer_safetensors", "optimizer.safetensors", false));
}

#[test]
fn fuzz_state_safetensors() {
    fuzz(checkpoint_target("state_safetensors", "state.safetensors", false));
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

#[test]
fn fuzz_tokenizer_json() {
    let f = fixture();
    let mut seeds = seed_files(&[&f.checkpoint.join("tokenizer.json")]);
    seeds.push(f.bpe_tokenizer.clone());
    seeds.push(HF_TOKENIZER.as_bytes().to_vec());
    fuzz(Target {
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
    });
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

#[test]
fn fuzz_token_cache_header() {
    fuzz(cache_target("token_cache_header", true));
}

#[test]
fn fuzz_token_cache_tokens() {
    fuzz(cache_target("token_cache_tokens", false));
}

#[test]
fn fuzz_generation_state() {
    let f = fixture();
    let loaded = Arc::new(Loaded::load(&f.checkpoint, &cpu(), WeightDtype::F32).unwrap());
    fuzz(Target {
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
    });
}

#[test]
fn fuzz_safetensors_bytes() {
    let f = fixture();
    let files = ["model.safetensors", "optimizer.safetensors", "state.safetensors"].map(|n| f.checkpoint.join(n));
    let mut seeds = seed_files(&files.iter().map(PathBuf::as_path).collect::<Vec<_>>());
    seeds.push(f.generation_state.clone());
    fuzz(Target {
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
    });
}
