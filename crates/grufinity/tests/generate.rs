//! Decoding: greedy == argmax of a parallel forward, batched == unbatched, continued == one
//! long generation, every sampling control on a fixed logit vector, beam search, stop strings,
//! saved generation states.

mod common;

use burn::tensor::{Int, Tensor, TensorData};
use common::{cpu, max_abs_diff, to_vec};
use grufinity::data::Tokenizer;
use grufinity::generate::{
    pick, process_logits, run_batch, sample, Decoder, DecoderState, Finish, Generation, SamplingConfig,
};
use grufinity::model::{MinGruLm, ModelConfig, State};
use grufinity::rng::Rng;
use grufinity::Error;

fn configs() -> Vec<ModelConfig> {
    vec![
        ModelConfig { vocab_size: 256, dim: 16, depth: 1, ..Default::default() },
        ModelConfig { vocab_size: 256, dim: 16, depth: 2, conv_kernel: 3, ..Default::default() },
    ]
}

fn greedy(max_new_tokens: usize) -> SamplingConfig {
    SamplingConfig { temperature: 0.0, max_new_tokens, ..Default::default() }
}

/// Runs `cfg` after `prompt` on a fresh decoder; returns the generation and the decoder state.
fn run(model: &MinGruLm, config: &ModelConfig, prompt: &[u32], cfg: &SamplingConfig) -> (Generation, DecoderState) {
    let device = cpu();
    let mut dec = Decoder::new(model, config, &device);
    dec.feed(prompt);
    let g = dec.run(cfg, &Tokenizer::Byte, &mut |_| true).unwrap();
    (g, dec.into_state())
}

fn forward_logits(model: &MinGruLm, config: &ModelConfig, tokens: &[u32]) -> Vec<Vec<f32>> {
    let device = cpu();
    let t = tokens.len();
    let input = Tensor::<2, Int>::from_data(TensorData::new(tokens.iter().map(|&x| x as i64).collect::<Vec<_>>(), [1, t]), &device);
    let (logits, _) = model.forward(input, State::zeros(config, 1, &device));
    to_vec(logits).chunks(config.vocab_size).map(<[f32]>::to_vec).collect()
}

fn argmax(v: &[f32]) -> u32 {
    v.iter().enumerate().fold(0, |b, (i, &x)| if x > v[b] { i } else { b }) as u32
}

fn config_field(err: Error) -> String {
    match err {
        Error::Config { field, .. } => field,
        other => panic!("expected a config error, got {other}"),
    }
}

#[test]
fn greedy_equals_argmax_of_a_parallel_forward() {
    let prompt: Vec<u32> = b"Hello, world".iter().map(|&b| b as u32).collect();
    for config in configs() {
        let model = MinGruLm::new(&config, 0, &cpu()).unwrap();
        let (g, _) = run(&model, &config, &prompt, &greedy(24));
        assert_eq!(g.tokens.len(), 24);
        assert_eq!(g.finish, Finish::Length);
        let all: Vec<u32> = prompt.iter().chain(&g.tokens).copied().collect();
        let logits = forward_logits(&model, &config, &all);
        for (i, &tok) in g.tokens.iter().enumerate() {
            assert_eq!(argmax(&logits[prompt.len() - 1 + i]), tok, "token {i}");
        }
        // The reported log-probability is the model's, from the same forward.
        let expected: f64 = g
            .tokens
            .iter()
            .enumerate()
            .map(|(i, &tok)| {
                let l = &logits[prompt.len() - 1 + i];
                let max = l.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
                let lse = max + l.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln();
                l[tok as usize] as f64 - lse
            })
            .sum();
        assert!((g.log_prob - expected).abs() < 1e-3, "{} vs {expected}", g.log_prob);
    }
}

#[test]
fn batched_equals_unbatched() {
    let device = cpu();
    let prompts: Vec<Vec<u32>> = vec![b"The cat".to_vec(), b"A".to_vec(), vec![], b"Once upon a time".to_vec()]
        .into_iter()
        .map(|p| p.into_iter().map(u32::from).collect())
        .collect();
    for config in configs() {
        let model = MinGruLm::new(&config, 0, &device).unwrap();
        for cfg in [greedy(10), SamplingConfig { temperature: 1.0, top_k: 50, max_new_tokens: 10, seed: 3, ..Default::default() }] {
            let mut decoders: Vec<Decoder> = prompts
                .iter()
                .map(|p| {
                    let mut d = Decoder::new(&model, &config, &device);
                    d.feed(p);
                    d
                })
                .collect();
            let batched = run_batch(&mut decoders, &cfg, &Tokenizer::Byte, &mut || true).unwrap();
            for (i, p) in prompts.iter().enumerate() {
                let (single, state) = run(&model, &config, p, &cfg);
                assert_eq!(batched[i].tokens, single.tokens, "prompt {i}");
                assert_eq!(batched[i].text, single.text);
                assert!((batched[i].log_prob - single.log_prob).abs() < 1e-3);
                // Each row is left with its own state.
                let a = decoders[i].last_logits.clone().unwrap();
                let b = state.last_logits.clone().unwrap();
                assert!(max_abs_diff(&a, &b) < 1e-4);
                assert_eq!(decoders[i].state.batch(), 1);
                assert_eq!(decoders[i].history, state.history);
            }
        }
    }
}

#[test]
fn batch_rows_end_independently() {
    let device = cpu();
    let config = configs().remove(0);
    let model = MinGruLm::new(&config, 0, &device).unwrap();
    // Row 0 ends at its end-of-sequence token (its own greedy pick), row 1 runs on.
    let mut probe = Decoder::new(&model, &config, &device);
    probe.feed(&[1, 2, 3]);
    let eos = probe.run(&greedy(1), &Tokenizer::Byte, &mut |_| true).unwrap().tokens[0];
    let cfg = SamplingConfig { eos: Some(eos), ..greedy(8) };
    let mut decoders: Vec<Decoder> = [vec![1, 2, 3], vec![9, 8]]
        .iter()
        .map(|p| {
            let mut d = Decoder::new(&model, &config, &device);
            d.feed(p);
            d
        })
        .collect();
    let out = run_batch(&mut decoders, &cfg, &Tokenizer::Byte, &mut || true).unwrap();
    assert_eq!(out[0].finish, Finish::Eos);
    assert_eq!(out[0].tokens, vec![eos]);
    assert!(out[0].text.is_empty(), "the end-of-sequence token is not part of the text");
    let (alone, _) = run(&model, &config, &[9, 8], &cfg);
    assert_eq!(out[1].tokens, alone.tokens);
}

#[test]
fn continued_generation_equals_one_long_generation() {
    let device = cpu();
    let prompt: Vec<u32> = b"def f(x):".iter().map(|&b| b as u32).collect();
    for config in configs() {
        let model = MinGruLm::new(&config, 0, &device).unwrap();
        for base in [greedy(0), SamplingConfig { temperature: 0.9, top_p: 0.95, repetition_penalty: 1.3, seed: 11, ..Default::default() }] {
            let long = SamplingConfig { max_new_tokens: 30, ..base.clone() };
            let (whole, _) = run(&model, &config, &prompt, &long);
            // 12 tokens, save to bytes, load, 18 more.
            let (first, state) = run(&model, &config, &prompt, &SamplingConfig { max_new_tokens: 12, ..base.clone() });
            let bytes = state.to_bytes(&config).unwrap();
            let restored = DecoderState::from_bytes(&bytes, &config, &device).unwrap();
            assert_eq!(restored.history, state.history);
            let mut dec = Decoder::from_state(&model, &config, &device, restored);
            let second = dec.run(&SamplingConfig { max_new_tokens: 18, ..base.clone() }, &Tokenizer::Byte, &mut |_| true).unwrap();
            let joined: Vec<u32> = first.tokens.iter().chain(&second.tokens).copied().collect();
            assert_eq!(joined, whole.tokens);
        }
    }
}

#[test]
fn saved_state_is_checked_against_the_model() {
    let device = cpu();
    let config = configs().remove(1);
    let model = MinGruLm::new(&config, 0, &device).unwrap();
    let (_, state) = run(&model, &config, &[1, 2, 3], &greedy(4));
    let bytes = state.to_bytes(&config).unwrap();
    let other = ModelConfig { dim: 32, ..config.clone() };
    let err = DecoderState::from_bytes(&bytes, &other, &device).unwrap_err();
    assert!(err.to_string().contains("different model"), "{err}");
    assert!(DecoderState::from_bytes(b"not a state", &config, &device).is_err());
    assert!(DecoderState::from_bytes(&bytes[..bytes.len() - 3], &config, &device).is_err());
    // Dropout does not change inference: a state loads into the same model with other dropout.
    assert!(DecoderState::from_bytes(&bytes, &ModelConfig { dropout: 0.1, ..config.clone() }, &device).is_ok());
}

#[test]
fn state_stack_then_select_rows_round_trips() {
    let device = cpu();
    let config = configs().remove(1);
    let model = MinGruLm::new(&config, 0, &device).unwrap();
    let (_, a) = run(&model, &config, &[1, 2, 3], &greedy(2));
    let (_, b) = run(&model, &config, &[7], &greedy(2));
    let stacked = State::stack(vec![a.state.clone(), b.state.clone(), a.state.clone()]).unwrap();
    assert_eq!(stacked.batch(), 3);
    let back = stacked.select_rows(&[1]);
    for (x, y) in back.layers.iter().zip(&b.state.layers) {
        assert_eq!(to_vec(x.log_h.clone()), to_vec(y.log_h.clone()));
        assert_eq!(to_vec(x.conv.clone().unwrap()), to_vec(y.conv.clone().unwrap()));
    }
    assert!(State::stack(vec![]).is_err());
    let other = State::zeros(&ModelConfig { dim: 32, ..config.clone() }, 1, &device);
    assert!(State::stack(vec![a.state, other]).is_err());
}

// ---------------------------------------------------------------- controls on fixed logits

/// Distinct tokens drawn from `logits` under `cfg` over many seeds.
fn support(logits: &[f32], cfg: &SamplingConfig, history: &[u32]) -> Vec<u32> {
    let mut seen: Vec<u32> = (0..400).map(|s| sample(logits, cfg, history, &mut Rng::new(s))).collect();
    seen.sort_unstable();
    seen.dedup();
    seen
}

fn logits_of(probs: &[f64]) -> Vec<f32> {
    probs.iter().map(|p| p.ln() as f32).collect()
}

#[test]
fn no_controls_sample_the_whole_distribution() {
    let l = logits_of(&[0.4, 0.3, 0.2, 0.1]);
    let cfg = SamplingConfig { temperature: 1.0, ..Default::default() };
    assert_eq!(support(&l, &cfg, &[]), vec![0, 1, 2, 3]);
    // Frequencies follow the probabilities.
    let n = 4000;
    let zeros = (0..n).filter(|&s| sample(&l, &cfg, &[], &mut Rng::new(s)) == 0).count() as f64 / n as f64;
    assert!((zeros - 0.4).abs() < 0.05, "{zeros}");
}

#[test]
fn temperature_zero_is_argmax() {
    let l = logits_of(&[0.2, 0.5, 0.3]);
    assert_eq!(support(&l, &SamplingConfig { temperature: 0.0, ..Default::default() }, &[]), vec![1]);
    // A tiny temperature is nearly greedy, a large one spreads out.
    assert_eq!(support(&l, &SamplingConfig { temperature: 0.01, ..Default::default() }, &[]), vec![1]);
    assert_eq!(support(&l, &SamplingConfig { temperature: 5.0, ..Default::default() }, &[]), vec![0, 1, 2]);
}

#[test]
fn top_k_keeps_the_k_most_likely() {
    let l = logits_of(&[0.1, 0.35, 0.05, 0.3, 0.2]);
    let cfg = SamplingConfig { temperature: 1.0, top_k: 2, ..Default::default() };
    assert_eq!(support(&l, &cfg, &[]), vec![1, 3]);
    assert_eq!(support(&l, &SamplingConfig { top_k: 1, ..cfg }, &[]), vec![1]);
}

#[test]
fn top_p_keeps_the_nucleus() {
    let l = logits_of(&[0.5, 0.3, 0.15, 0.05]);
    let cfg = SamplingConfig { temperature: 1.0, top_p: 0.7, ..Default::default() };
    assert_eq!(support(&l, &cfg, &[]), vec![0, 1]);
    assert_eq!(support(&l, &SamplingConfig { top_p: 0.45, ..cfg.clone() }, &[]), vec![0]);
    assert_eq!(support(&l, &SamplingConfig { top_p: 0.9, ..cfg }, &[]), vec![0, 1, 2]);
}

#[test]
fn min_p_drops_the_unlikely() {
    let l = logits_of(&[0.5, 0.3, 0.15, 0.05]);
    let cfg = SamplingConfig { temperature: 1.0, min_p: 0.5, ..Default::default() };
    assert_eq!(support(&l, &cfg, &[]), vec![0, 1]);
    assert_eq!(support(&l, &SamplingConfig { min_p: 0.2, ..cfg }, &[]), vec![0, 1, 2]);
}

#[test]
fn repetition_penalty_demotes_seen_tokens() {
    let l = vec![2.0, 1.9, -1.0, -1.2];
    let cfg = SamplingConfig { temperature: 0.0, repetition_penalty: 2.0, ..Default::default() };
    assert_eq!(sample(&l, &SamplingConfig { repetition_penalty: 1.0, ..cfg.clone() }, &[0], &mut Rng::new(0)), 0);
    assert_eq!(sample(&l, &cfg, &[0], &mut Rng::new(0)), 1);
    let p = process_logits(&l, &cfg, &[0, 2], 0);
    assert_eq!(p, vec![1.0, 1.9f32 as f64, -2.0, -1.2f32 as f64]);
}

#[test]
fn no_repeat_ngram_bans_completing_a_seen_ngram() {
    let l = vec![3.0, 2.0, 1.0, 0.0];
    let cfg = SamplingConfig { temperature: 0.0, no_repeat_ngram_size: 2, ..Default::default() };
    // History "1 0 ... 1": the bigram (1, 0) was seen, so 0 may not follow 1 again.
    assert_eq!(sample(&l, &cfg, &[1, 0, 3, 1], &mut Rng::new(0)), 1);
    // After 3, nothing was seen: 0 is fine.
    assert_eq!(sample(&l, &cfg, &[1, 0, 3], &mut Rng::new(0)), 0);
    // Size 1 bans every token seen; size 3 looks at trigrams.
    assert_eq!(sample(&l, &SamplingConfig { no_repeat_ngram_size: 1, ..cfg.clone() }, &[0, 1], &mut Rng::new(0)), 2);
    let tri = SamplingConfig { no_repeat_ngram_size: 3, ..cfg.clone() };
    assert_eq!(sample(&l, &tri, &[2, 1, 0, 2, 1], &mut Rng::new(0)), 1);
    assert_eq!(sample(&l, &tri, &[2, 1, 0, 3, 1], &mut Rng::new(0)), 0);
    // When every token would be banned, the bans are lifted.
    assert_eq!(sample(&l, &SamplingConfig { no_repeat_ngram_size: 1, ..cfg }, &[0, 1, 2, 3], &mut Rng::new(0)), 0);
}

#[test]
fn min_new_tokens_holds_back_the_end_of_sequence_token() {
    let l = vec![0.0, 5.0, 1.0];
    let cfg = SamplingConfig { temperature: 0.0, eos: Some(1), min_new_tokens: 2, max_new_tokens: 4, ..Default::default() };
    assert_eq!(process_logits(&l, &cfg, &[], 0)[1], f64::NEG_INFINITY);
    assert_eq!(process_logits(&l, &cfg, &[], 1)[1], f64::NEG_INFINITY);
    assert_eq!(process_logits(&l, &cfg, &[], 2)[1], 5.0);
    assert_eq!(pick(&process_logits(&l, &cfg, &[], 0), &cfg, &mut Rng::new(0)), 2);
}

#[test]
fn same_seed_same_samples() {
    let l = logits_of(&[0.25, 0.25, 0.25, 0.25]);
    let cfg = SamplingConfig { temperature: 1.0, ..Default::default() };
    let a: Vec<u32> = (0..20).map(|s| sample(&l, &cfg, &[], &mut Rng::new(s))).collect();
    let b: Vec<u32> = (0..20).map(|s| sample(&l, &cfg, &[], &mut Rng::new(s))).collect();
    assert_eq!(a, b);
}

// ---------------------------------------------------------------- beams, stops, validation

#[test]
fn beam_search_of_width_one_is_greedy_and_wider_is_no_worse() {
    let device = cpu();
    let prompt: Vec<u32> = b"import os\n".iter().map(|&b| b as u32).collect();
    for config in configs() {
        let model = MinGruLm::new(&config, 0, &device).unwrap();
        let (g, _) = run(&model, &config, &prompt, &greedy(16));
        let mut dec = Decoder::new(&model, &config, &device);
        dec.feed(&prompt);
        let one = dec.beam_search(&SamplingConfig { beams: 1, ..greedy(16) }, Some(&Tokenizer::Byte));
        assert_eq!(one.tokens, g.tokens);
        for beams in [2, 4] {
            let cfg = SamplingConfig { beams, temperature: 0.8, seed: 5, ..greedy(16) };
            let (b, state) = run(&model, &config, &prompt, &cfg);
            assert_eq!(b.tokens.len(), 16);
            assert!(b.log_prob >= g.log_prob - 1e-4, "beams {beams}: {} < greedy {}", b.log_prob, g.log_prob);
            // Deterministic whatever the seed, and the decoder is left after the chosen tokens.
            let (again, _) = run(&model, &config, &prompt, &SamplingConfig { seed: 99, ..cfg });
            assert_eq!(again.tokens, b.tokens);
            let all: Vec<u32> = prompt.iter().chain(&b.tokens).copied().collect();
            let logits = forward_logits(&model, &config, &all);
            assert!(max_abs_diff(state.last_logits.as_ref().unwrap(), &logits[all.len() - 1]) < 1e-4);
            assert_eq!(state.history, all);
        }
    }
}

/// A valid one-character string found in `bytes`, with where it starts.
fn some_char(bytes: &[u8]) -> Option<(usize, String)> {
    (0..bytes.len()).find_map(|i| {
        (1..=4).filter(|n| i + n <= bytes.len()).find_map(|n| {
            std::str::from_utf8(&bytes[i..i + n]).ok().filter(|s| s.chars().count() == 1).map(|s| (i, s.to_string()))
        })
    })
}

#[test]
fn stop_strings_end_generation_and_are_left_out() {
    let device = cpu();
    let config = configs().remove(0);
    let model = MinGruLm::new(&config, 0, &device).unwrap();
    let prompt = [65, 66, 67];
    // All-distinct tokens so the output has characters to stop at.
    let base = SamplingConfig { no_repeat_ngram_size: 1, ..greedy(60) };
    let (free, _) = run(&model, &config, &prompt, &base);
    let (at, stop) = some_char(&free.text).expect("the output holds a valid character");
    let cfg = SamplingConfig { stop: vec![stop.clone()], ..base.clone() };
    let mut dec = Decoder::new(&model, &config, &device);
    dec.feed(&prompt);
    let mut pieces = Vec::new();
    let g = dec
        .run(&cfg, &Tokenizer::Byte, &mut |p| {
            pieces.extend_from_slice(p);
            true
        })
        .unwrap();
    assert_eq!(g.finish, Finish::Stop);
    assert_eq!(g.text, free.text[..at].to_vec());
    assert_eq!(pieces, g.text, "streamed pieces join to the text");
    assert_eq!(g.tokens, free.tokens[..at + stop.len()].to_vec(), "the stop string's tokens were consumed");
    // With min_new_tokens past it, that occurrence does not count.
    let later = SamplingConfig { min_new_tokens: at + stop.len() + 1, ..cfg };
    let (g2, _) = run(&model, &config, &prompt, &later);
    assert!(g2.tokens.len() > at + stop.len());
    assert_eq!(g2.tokens[..at + stop.len()], free.tokens[..at + stop.len()]);
}

#[test]
fn cancelling_from_the_callback_stops() {
    let device = cpu();
    let config = configs().remove(0);
    let model = MinGruLm::new(&config, 0, &device).unwrap();
    let mut dec = Decoder::new(&model, &config, &device);
    let mut calls = 0;
    let g = dec
        .run(&greedy(50), &Tokenizer::Byte, &mut |_| {
            calls += 1;
            calls < 5
        })
        .unwrap();
    assert_eq!(g.finish, Finish::Cancelled);
    assert_eq!(g.tokens.len(), 5);
}

#[test]
fn bad_values_name_the_field() {
    let ok = SamplingConfig::default();
    assert!(ok.validate().is_ok());
    let cases = [
        (SamplingConfig { beams: 0, ..ok.clone() }, "beams"),
        (SamplingConfig { beams: 100_000, ..ok.clone() }, "beams"),
        (SamplingConfig { temperature: -0.5, ..ok.clone() }, "temperature"),
        (SamplingConfig { top_p: 0.0, ..ok.clone() }, "top_p"),
        (SamplingConfig { top_p: 1.5, ..ok.clone() }, "top_p"),
        (SamplingConfig { min_p: 1.0, ..ok.clone() }, "min_p"),
        (SamplingConfig { repetition_penalty: 0.0, ..ok.clone() }, "repetition_penalty"),
        (SamplingConfig { min_new_tokens: 10, max_new_tokens: 5, ..ok.clone() }, "min_new_tokens"),
        (SamplingConfig { stop: vec![String::new()], ..ok.clone() }, "stop"),
        (SamplingConfig { length_penalty: f64::NAN, ..ok.clone() }, "length_penalty"),
    ];
    for (cfg, field) in cases {
        assert_eq!(config_field(cfg.validate().unwrap_err()), field);
    }
    let eos = SamplingConfig { eos: Some(300), ..ok.clone() };
    assert!(eos.validate().is_ok());
    assert_eq!(config_field(eos.validate_for(256).unwrap_err()), "eos");
    // Decoder::run validates before generating anything.
    let config = configs().remove(0);
    let model = MinGruLm::new(&config, 0, &cpu()).unwrap();
    let mut dec = Decoder::new(&model, &config, &cpu());
    let err = dec.run(&SamplingConfig { beams: 0, ..ok }, &Tokenizer::Byte, &mut |_| true).unwrap_err();
    assert_eq!(config_field(err), "beams");
    assert!(dec.history.is_empty());
}

#[test]
fn sampling_config_json_defaults_and_unknown_keys() {
    let cfg: SamplingConfig = serde_json::from_str(r#"{"beams": 3, "stop": ["\n"]}"#).unwrap();
    assert_eq!(cfg.beams, 3);
    assert_eq!(cfg.stop, vec!["\n".to_string()]);
    assert_eq!(cfg.eos, None);
    assert!(serde_json::from_str::<SamplingConfig>(r#"{"beam": 3}"#).is_err());
}
