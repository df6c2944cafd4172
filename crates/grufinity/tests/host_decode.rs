//! The host decoding step (`model::host`) against the Burn forward it replaces when decoding on
//! the CPU: same logits and state, token after token, for every kind of block; same generations
//! through the decoder (sampling, batches whose rows end at different times, beam search).

mod common;

use burn::tensor::{Int, Tensor, TensorData};
use common::{cpu, max_abs_diff, to_vec};
use grufinity::data::Tokenizer;
use grufinity::generate::{run_batch, Decoder, SamplingConfig};
use grufinity::model::host::{HostModel, HostState};
use grufinity::model::quant::{round_weights, WeightDtype};
use grufinity::model::{FeedForwardKind, MinGruLm, ModelConfig, State};

fn configs() -> Vec<ModelConfig> {
    vec![
        // Widths that are not multiples of the kernels' 16 lanes.
        ModelConfig { vocab_size: 256, dim: 40, depth: 2, ..Default::default() },
        ModelConfig {
            vocab_size: 300,
            dim: 24,
            depth: 2,
            conv_kernel: 4,
            ff_kind: FeedForwardKind::Swiglu,
            tie_embeddings: true,
            ..Default::default()
        },
        // No output projection (E == D); matrices big enough to be split between threads.
        ModelConfig { vocab_size: 256, dim: 256, depth: 1, expansion: 1.0, conv_kernel: 2, ..Default::default() },
    ]
}

/// Feeds `steps` tokens one at a time to three rows (started from different prefilled prompts)
/// through Burn and through `host`; returns the largest logit and `log h` differences.
fn compare(model: &MinGruLm, host: &HostModel, config: &ModelConfig, steps: usize) -> (f32, f32) {
    let device = cpu();
    let prompts: [&[i64]; 3] = [&[1, 2, 3, 4], &[9], &[200, 7, 7]];
    let states: Vec<State> = prompts
        .iter()
        .map(|p| {
            let input = Tensor::<2, Int>::from_data(TensorData::new(p.to_vec(), [1, p.len()]), &device);
            model.forward(input, State::zeros(config, 1, &device)).1
        })
        .collect();
    let mut burn_state = State::stack(states).unwrap();
    let mut host_state = HostState::from_state(&burn_state);
    let (mut logits_diff, mut state_diff) = (0.0f32, 0.0f32);
    for s in 0..steps {
        let tokens: Vec<u32> = (0..3).map(|r| ((s * 37 + r * 101) % config.vocab_size) as u32).collect();
        let ids: Vec<i64> = tokens.iter().map(|&t| t as i64).collect();
        let input = Tensor::<2, Int>::from_data(TensorData::new(ids, [3, 1]), &device);
        let (logits, next) = model.forward(input, burn_state);
        burn_state = next;
        let host_logits = host.step(&tokens, &mut host_state);
        logits_diff = logits_diff.max(max_abs_diff(&to_vec(logits), &host_logits));
    }
    let back = host_state.to_state(&device);
    for (a, b) in burn_state.layers.into_iter().zip(back.layers) {
        state_diff = state_diff.max(max_abs_diff(&to_vec(a.log_h), &to_vec(b.log_h)));
        if let (Some(a), Some(b)) = (a.conv, b.conv) {
            state_diff = state_diff.max(max_abs_diff(&to_vec(a), &to_vec(b)));
        }
    }
    (logits_diff, state_diff)
}

#[test]
fn host_step_equals_the_burn_forward() {
    for config in configs() {
        let model = MinGruLm::new(&config, 5, &cpu()).unwrap();
        let (logits, state) = compare(&model, &HostModel::new(&model, WeightDtype::F32), &config, 24);
        assert!(logits < 1e-4, "{config:?}: logits differ by {logits}");
        assert!(state < 1e-4, "{config:?}: state differs by {state}");
    }
}

/// bf16 and int8 steps equal the Burn forward of the model whose weights were rounded (or
/// quantised and dequantised) the same way, token by token.
#[test]
fn low_precision_steps_equal_the_forward_of_the_rounded_model() {
    for dtype in [WeightDtype::Bf16, WeightDtype::Int8] {
        for config in configs() {
            let model = MinGruLm::new(&config, 5, &cpu()).unwrap();
            let rounded = round_weights(model.clone(), dtype);
            let host = HostModel::new(&rounded, dtype);
            let (logits, state) = compare(&rounded, &host, &config, 24);
            assert!(logits < 1e-4, "{dtype} {config:?}: logits differ by {logits}");
            assert!(state < 1e-4, "{dtype} {config:?}: state differs by {state}");
            // The rounding is real: the f32 model's steps differ from it, a little.
            let (to_f32, _) = compare(&model, &host, &config, 4);
            assert!(to_f32 > 1e-5 && to_f32 < 0.2, "{dtype} {config:?}: vs f32 logits differ by {to_f32}");
        }
    }
}

/// A step of several rows equals one step per row bit for bit, for every weight type: nine rows
/// take the kernel of four streams at a time (where the CPU has it) for two groups and the
/// one-row kernel for the last, over widths with a tail past the blocks of 16 and matrices whose
/// row counts are not multiples of four.
#[test]
fn a_step_of_several_rows_equals_one_step_per_row() {
    let device = cpu();
    // configs() has only row counts that are multiples of four; dim 30 gives 90, 30 and 258.
    let odd = ModelConfig { vocab_size: 258, dim: 30, depth: 1, ..Default::default() };
    for dtype in [WeightDtype::F32, WeightDtype::Bf16, WeightDtype::Int8] {
        for config in configs().into_iter().chain([odd.clone()]) {
            let model = MinGruLm::new(&config, 5, &device).unwrap();
            let host = HostModel::new(&model, dtype);
            let rows = 9;
            let mut together = HostState::from_state(&State::zeros(&config, rows, &device));
            let mut alone: Vec<HostState> = (0..rows).map(|r| together.select_rows(&[r])).collect();
            for s in 0..6 {
                let tokens: Vec<u32> = (0..rows).map(|r| ((s * 37 + r * 101) % config.vocab_size) as u32).collect();
                let batched = host.step(&tokens, &mut together);
                let v = config.vocab_size;
                for (r, state) in alone.iter_mut().enumerate() {
                    let single = host.step(&tokens[r..r + 1], state);
                    assert!(single == batched[r * v..(r + 1) * v], "{dtype} {config:?}: row {r} differs at step {s}");
                }
            }
        }
    }
}

#[test]
fn decoding_with_host_steps_generates_the_same() {
    let device = cpu();
    let sampled = SamplingConfig { temperature: 1.0, top_k: 40, max_new_tokens: 30, seed: 9, ..Default::default() };
    let beams = SamplingConfig { temperature: 0.0, beams: 3, max_new_tokens: 12, ..Default::default() };
    for config in configs() {
        let model = MinGruLm::new(&config, 1, &device).unwrap();
        let host = HostModel::new(&model, WeightDtype::F32);
        for cfg in [sampled.clone(), beams.clone()] {
            let decode = |with_host: bool| {
                let mut d = Decoder::new(&model, &config, &device).with_host(with_host.then_some(&host));
                d.feed(&[5, 6, 7]);
                let g = d.run(&cfg, &Tokenizer::Byte, &mut |_| true).unwrap();
                (g, d.into_state())
            };
            let ((a, sa), (b, sb)) = (decode(false), decode(true));
            assert_eq!(a.tokens, b.tokens, "{config:?} beams {}", cfg.beams);
            assert!((a.log_prob - b.log_prob).abs() < 1e-3);
            assert!(max_abs_diff(&sa.last_logits.unwrap(), &sb.last_logits.unwrap()) < 1e-4);
            let h = |s: State| to_vec(s.layers[0].log_h.clone());
            assert!(max_abs_diff(&h(sa.state), &h(sb.state)) < 1e-4);
        }
        // A batch whose rows end at different lengths (an end-of-sequence token) keeps each row's
        // own state when it leaves.
        let eos_cfg = SamplingConfig { eos: Some(b'e' as u32), ..sampled.clone() };
        let batch = |with_host: bool| {
            let mut ds: Vec<Decoder> = [vec![1u32, 2], vec![3], vec![4, 5, 6]]
                .iter()
                .map(|p| {
                    let mut d = Decoder::new(&model, &config, &device).with_host(with_host.then_some(&host));
                    d.feed(p);
                    d
                })
                .collect();
            let out = run_batch(&mut ds, &eos_cfg, &Tokenizer::Byte, &mut || true).unwrap();
            let logits: Vec<Vec<f32>> = ds.into_iter().map(|d| d.last_logits.unwrap()).collect();
            (out, logits)
        };
        let ((a, la), (b, lb)) = (batch(false), batch(true));
        for i in 0..3 {
            assert_eq!(a[i].tokens, b[i].tokens, "row {i}");
            assert!(max_abs_diff(&la[i], &lb[i]) < 1e-4);
        }
    }
}
