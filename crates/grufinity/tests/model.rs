//! Model-level invariants: TBPTT chunking, step == parallel, parameter counts, gradients.

mod common;

use burn::module::Module;
use burn::tensor::{Int, Tensor, TensorData};
use common::{cpu, max_abs_diff, to_vec, Rng};
use grufinity::model::{FeedForwardKind, MinGruLm, ModelConfig, State};
use grufinity::train::params::{named_grads, named_params};

fn tokens(rng: &mut Rng, b: usize, t: usize, v: usize) -> Vec<i64> {
    (0..b * t).map(|_| (rng.next_u64() % v as u64) as i64).collect()
}

fn int2(values: &[i64], b: usize, t: usize) -> Tensor<2, Int> {
    Tensor::from_data(TensorData::new(values.to_vec(), [b, t]), &cpu())
}

fn configs() -> Vec<ModelConfig> {
    vec![
        ModelConfig { vocab_size: 50, dim: 16, depth: 2, ..Default::default() },
        ModelConfig { vocab_size: 50, dim: 16, depth: 2, conv_kernel: 4, ..Default::default() },
        ModelConfig { vocab_size: 50, dim: 16, depth: 1, expansion: 1.0, ff_kind: FeedForwardKind::Swiglu, tie_embeddings: true, conv_kernel: 3, ..Default::default() },
    ]
}

/// Slices row-major `[b, t]` ids to columns `[from, to)`.
fn cols(ids: &[i64], b: usize, t: usize, from: usize, to: usize) -> Vec<i64> {
    (0..b).flat_map(|r| ids[r * t + from..r * t + to].to_vec()).collect()
}

fn state_values(state: &State) -> Vec<f32> {
    state
        .layers
        .iter()
        .flat_map(|l| {
            let mut v = to_vec(l.log_h.clone().exp());
            if let Some(c) = &l.conv {
                v.extend(to_vec(c.clone()));
            }
            v
        })
        .collect()
}

#[test]
fn chunked_equals_unchunked() {
    let device = cpu();
    let (b, t) = (2, 60);
    for cfg in configs() {
        let model = MinGruLm::new(&cfg, 0, &device).unwrap();
        let mut rng = Rng(5);
        let ids = tokens(&mut rng, b, t, cfg.vocab_size);
        let (full, full_state) = model.forward(int2(&ids, b, t), State::zeros(&cfg, b, &device));
        let full = to_vec(full);
        for cuts in [vec![30], vec![7, 40], (1..17).map(|i| i * 3 + (i % 3)).collect::<Vec<_>>()] {
            let mut bounds = vec![0];
            bounds.extend(cuts.iter().copied());
            bounds.push(t);
            let mut state = State::zeros(&cfg, b, &device);
            let mut pieces: Vec<Tensor<3>> = vec![];
            for w in bounds.windows(2) {
                let (y, s) = model.forward(int2(&cols(&ids, b, t, w[0], w[1]), b, w[1] - w[0]), state);
                state = s;
                pieces.push(y);
            }
            let chunked = to_vec(Tensor::cat(pieces, 1));
            let err = max_abs_diff(&full, &chunked);
            assert!(err <= 1e-4, "{} chunks, conv {}: logits differ by {err}", bounds.len() - 1, cfg.conv_kernel);
            let serr = max_abs_diff(&state_values(&full_state), &state_values(&state));
            assert!(serr <= 1e-4, "final state differs by {serr}");
        }
    }
}

#[test]
fn step_by_step_equals_parallel() {
    let device = cpu();
    let (b, t) = (2, 25);
    for cfg in configs() {
        let model = MinGruLm::new(&cfg, 0, &device).unwrap();
        let ids = tokens(&mut Rng(9), b, t, cfg.vocab_size);
        let (full, _) = model.forward(int2(&ids, b, t), State::zeros(&cfg, b, &device));
        let mut state = State::zeros(&cfg, b, &device);
        let mut steps = vec![];
        for i in 0..t {
            let (y, s) = model.forward(int2(&cols(&ids, b, t, i, i + 1), b, 1), state);
            state = s;
            steps.push(y);
        }
        let err = max_abs_diff(&to_vec(full), &to_vec(Tensor::cat(steps, 1)));
        assert!(err <= 1e-4, "conv {}: step path differs by {err}", cfg.conv_kernel);
    }
}

#[test]
fn parameter_count_matches_formula() {
    let device = cpu();
    for cfg in configs().into_iter().chain([
        ModelConfig::default(),
        ModelConfig { dim: 64, depth: 3, expansion: 2.0, ff_mult: 3.0, ..Default::default() },
    ]) {
        let model = MinGruLm::new(&cfg, 0, &device).unwrap();
        assert_eq!(model.num_params(), cfg.num_params(), "{cfg:?}");
    }
}

#[test]
fn sizing_by_budget_lands_near_it() {
    for budget in [100_000usize, 1_000_000, 5_000_000, 20_000_000] {
        let cfg = ModelConfig::default().sized_for(budget).unwrap();
        let n = cfg.num_params() as f64;
        assert!((n / budget as f64 - 1.0).abs() < 0.35, "budget {budget}: got {n} with {cfg:?}");
    }
}

#[test]
fn invalid_configs_name_the_field() {
    let bad = [
        (ModelConfig { dim: 0, ..Default::default() }, "dim"),
        (ModelConfig { depth: 0, ..Default::default() }, "depth"),
        (ModelConfig { conv_kernel: 1, ..Default::default() }, "conv_kernel"),
        (ModelConfig { dropout: 1.0, ..Default::default() }, "dropout"),
        (ModelConfig { expansion: -1.0, ..Default::default() }, "expansion"),
    ];
    for (cfg, field) in bad {
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains(field), "{err}");
    }
}

#[test]
fn gradient_reaches_every_parameter() {
    let device = cpu().autodiff();
    for cfg in configs() {
        let model = MinGruLm::new(&cfg, 0, &device).unwrap();
        let (b, t) = (2, 12);
        let mut rng = Rng(1);
        let ids = tokens(&mut rng, b, t, cfg.vocab_size);
        let tgt = tokens(&mut rng, b, t, cfg.vocab_size);
        let to = |v: &[i64]| Tensor::<2, Int>::from_data(TensorData::new(v.to_vec(), [b, t]), &device);
        let (loss, _) = model.loss(to(&ids), to(&tgt), State::zeros(&cfg, b, &device));
        let grads = loss.backward();
        let g = named_grads(&model, &grads);
        for (name, _) in named_params(&model) {
            let grad = g.get(&name).unwrap_or_else(|| panic!("no gradient for {name}"));
            let v = to_vec(grad.value.clone());
            assert!(v.iter().all(|x| x.is_finite()), "{name}: non-finite gradient");
            assert!(v.iter().any(|&x| x != 0.0), "{name}: gradient is all zero");
        }
    }
}

/// Central finite differences (f32, so a loose tolerance) of the loss w.r.t. a few weights.
#[test]
fn gradients_match_finite_differences() {
    let device = cpu().autodiff();
    let cfg = ModelConfig { vocab_size: 11, dim: 8, depth: 1, conv_kernel: 2, ..Default::default() };
    let model = MinGruLm::new(&cfg, 0, &device).unwrap();
    let (b, t) = (1, 9);
    let mut rng = Rng(2);
    let ids = tokens(&mut rng, b, t, cfg.vocab_size);
    let tgt = tokens(&mut rng, b, t, cfg.vocab_size);
    let plain = cpu();
    let to = |v: &[i64], d: &burn::tensor::Device| Tensor::<2, Int>::from_data(TensorData::new(v.to_vec(), [b, t]), d);
    let (loss, _) = model.loss(to(&ids, &device), to(&tgt, &device), State::zeros(&cfg, b, &device));
    let grads = named_grads(&model, &loss.backward());
    let loss_at = |m: &MinGruLm| -> f64 {
        let m = m.valid();
        let (l, _) = m.loss(to(&ids, &plain), to(&tgt, &plain), State::zeros(&cfg, b, &plain));
        l.into_scalar::<f32>() as f64
    };
    let eps = 1e-2f32;
    for name in ["blocks.0.mingru.to_hz.weight", "blocks.0.conv.weight", "blocks.0.ff.up.weight", "head.weight"] {
        let analytic = to_vec(grads[name].value.clone());
        for idx in [0usize, 5, 15] {
            let bump = |delta: f32| {
                grufinity::train::params::map_params(model.clone(), &mut |path, p| {
                    if path != name {
                        return p;
                    }
                    let mut v = to_vec(p.clone());
                    v[idx] += delta;
                    Tensor::from_data(TensorData::new(v.clone(), [v.len()]), &p.device())
                })
            };
            let numeric = (loss_at(&bump(eps)) - loss_at(&bump(-eps))) / (2.0 * eps as f64);
            let a = analytic[idx] as f64;
            assert!((a - numeric).abs() <= 2e-3 + 0.05 * a.abs(), "{name}[{idx}]: analytic {a} vs numeric {numeric}");
        }
    }
}

#[test]
fn a_seed_gives_the_same_weights_while_other_models_initialise() {
    let cfg = ModelConfig { vocab_size: 50, dim: 32, depth: 2, conv_kernel: 4, ..Default::default() };
    let weights = |seed| -> Vec<(String, Vec<f32>)> {
        let model = MinGruLm::new(&cfg, seed, &cpu()).unwrap();
        named_params(&model).into_iter().map(|(k, p)| (k, to_vec(p.value))).collect()
    };
    let alone = weights(7);
    // Other models drawing at the same time must not shift this model's draws.
    let others: Vec<_> = (0..4)
        .map(|s| {
            let cfg = cfg.clone();
            std::thread::spawn(move || (0..20).for_each(|_| drop(MinGruLm::new(&cfg, s, &cpu()))))
        })
        .collect();
    let busy: Vec<_> = (0..20).map(|_| weights(7)).collect();
    others.into_iter().for_each(|t| t.join().unwrap());
    assert!(busy.iter().all(|w| *w == alone), "seed 7 gave different weights under concurrency");
    assert_ne!(weights(8), alone, "different seeds give different weights");
}
