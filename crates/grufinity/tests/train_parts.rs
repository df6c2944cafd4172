//! Batcher contiguity and coverage, splits, schedules, clipping, checkpoint atomicity.

mod common;

use std::collections::BTreeMap;

use burn::tensor::{Tensor, TensorData};
use common::{cpu, to_vec};
use grufinity::data::batcher::{split_point, StreamBatcher};
use grufinity::files::write_dir_atomically;
use grufinity::model::{MinGruLm, ModelConfig};
use grufinity::train::optim::{clip_global_norm, decays, AdamW, AdamWConfig, GradMap, Schedule};
use grufinity::train::params::named_params;
use grufinity::Error;

#[test]
fn streams_are_contiguous_and_cover_the_epoch() {
    let n = 10_000;
    let tokens: Vec<u32> = (0..n as u32).collect();
    for (b, t) in [(1, 7), (4, 16), (16, 50)] {
        let mut batcher = StreamBatcher::new(n, b, t, 42).unwrap();
        let steps = batcher.steps_per_epoch();
        let mut seen = vec![0u32; n];
        let mut prev: Option<Vec<u32>> = None;
        for s in 0..steps {
            let batch = batcher.next_batch(&tokens);
            assert_eq!(batch.restart, s == 0);
            for row in 0..b {
                let inp = &batch.inputs[row * t..(row + 1) * t];
                let tgt = &batch.targets[row * t..(row + 1) * t];
                for i in 0..t {
                    assert_eq!(tgt[i], inp[i] + 1, "targets are inputs shifted by one");
                    if i > 0 {
                        assert_eq!(inp[i], inp[i - 1] + 1, "a chunk is contiguous");
                    }
                    seen[tgt[i] as usize] += 1;
                }
                if let Some(p) = &prev {
                    assert_eq!(inp[0], p[row] + 1, "row {row} continues where it stopped");
                }
            }
            prev = Some((0..b).map(|r| batch.inputs[r * t + t - 1]).collect());
        }
        assert!(seen.iter().all(|&c| c <= 1), "no token is read twice in an epoch");
        let missed = seen.iter().filter(|&&c| c == 0).count();
        assert!(missed < (b + 1) * t, "b={b} t={t}: {missed} tokens missed");
        // The next epoch restarts every stream.
        assert!(batcher.next_batch(&tokens).restart);
    }
}

#[test]
fn epochs_shift_chunk_boundaries_reproducibly() {
    let a = StreamBatcher::new(5_000, 4, 64, 7).unwrap();
    let b = StreamBatcher::new(5_000, 4, 64, 7).unwrap();
    let starts: Vec<_> = (0..6).map(|e| a.layout(e).starts[0]).collect();
    assert_eq!(starts, (0..6).map(|e| b.layout(e).starts[0]).collect::<Vec<_>>());
    assert!(starts.iter().any(|&s| s != starts[0]), "offsets vary across epochs: {starts:?}");
}

#[test]
fn resuming_a_batcher_continues_at_the_next_token() {
    let tokens: Vec<u32> = (0..3_000).collect();
    let mut a = StreamBatcher::new(tokens.len(), 3, 10, 1).unwrap();
    for _ in 0..17 {
        a.next_batch(&tokens);
    }
    let mut b = StreamBatcher::new(tokens.len(), 3, 10, 1).unwrap();
    b.set_cursor(a.cursor());
    for _ in 0..200 {
        assert_eq!(a.next_batch(&tokens), b.next_batch(&tokens));
    }
}

#[test]
fn bad_splits_and_sizes_are_rejected() {
    assert!(matches!(split_point(1000, 0.0), Err(Error::Config { .. })));
    assert!(matches!(split_point(1000, 1.0), Err(Error::Config { .. })));
    assert_eq!(split_point(1000, 0.1).unwrap(), 900);
    let err = StreamBatcher::new(100, 16, 64, 0).unwrap_err().to_string();
    assert!(err.contains("--batch-size"), "{err}");
}

#[test]
fn schedules_have_the_documented_values() {
    let lr = |s: Schedule, step, p| s.lr_at(step, 1.0, 10, p, 0.1);
    assert_eq!(lr(Schedule::Cosine, 0, Some(0.0)), 0.1);
    assert_eq!(lr(Schedule::Cosine, 9, Some(0.0)), 1.0);
    assert!((lr(Schedule::Cosine, 50, Some(0.5)) - 0.55).abs() < 1e-12);
    assert!((lr(Schedule::Cosine, 99, Some(1.0)) - 0.1).abs() < 1e-12);
    assert!((lr(Schedule::Linear, 50, Some(0.5)) - 0.55).abs() < 1e-12);
    assert_eq!(lr(Schedule::Constant, 50, Some(0.9)), 1.0);
    assert_eq!(lr(Schedule::Cosine, 50, None), 1.0);
}

#[test]
fn global_clipping_matches_a_hand_computation() {
    let d = cpu();
    let mut grads = BTreeMap::new();
    grads.insert("a".to_string(), Tensor::<1>::from_data(TensorData::new(vec![3.0f32, 0.0], [2]), &d));
    grads.insert("b".to_string(), Tensor::<1>::from_data(TensorData::new(vec![0.0f32, 4.0], [2]), &d));
    let norm = clip_global_norm(&mut grads, 1.0);
    assert!((norm - 5.0).abs() < 1e-6);
    let a = to_vec(grads["a"].clone());
    let b = to_vec(grads["b"].clone());
    assert!((a[0] - 0.6).abs() < 1e-5 && (b[1] - 0.8).abs() < 1e-5, "{a:?} {b:?}");
    // Below the threshold nothing changes.
    let norm = clip_global_norm(&mut grads, 10.0);
    assert!((norm - 1.0).abs() < 1e-5);
    assert!((to_vec(grads["a"].clone())[0] - 0.6).abs() < 1e-5);
}

#[test]
fn weight_decay_skips_norms_biases_embeddings_and_conv() {
    assert!(decays("blocks.0.mingru.to_hz.weight"));
    assert!(decays("head.weight"));
    assert!(!decays("embedding.weight"));
    assert!(!decays("blocks.0.norm_mix.gamma"));
    assert!(!decays("blocks.0.ff.up.bias"));
    assert!(!decays("blocks.0.conv.weight"));
}

#[test]
fn a_failed_checkpoint_write_leaves_the_old_one() {
    let root = std::env::temp_dir().join(format!("grufinity-atomic-{}", std::process::id()));
    let dir = root.join("step-1");
    write_dir_atomically(&dir, |tmp| std::fs::write(tmp.join("a"), b"good").map_err(|e| Error::io(tmp, e))).unwrap();
    let failed = write_dir_atomically(&dir, |tmp| {
        std::fs::write(tmp.join("a"), b"half").map_err(|e| Error::io(tmp, e))?;
        Err(Error::Data("disk full".into()))
    });
    assert!(failed.is_err());
    assert_eq!(std::fs::read(dir.join("a")).unwrap(), b"good");
    let leftovers: Vec<_> = std::fs::read_dir(&root).unwrap().filter_map(|e| e.ok()).map(|e| e.file_name()).collect();
    assert_eq!(leftovers.len(), 1, "no temporary directory left behind: {leftovers:?}");
    std::fs::remove_dir_all(&root).unwrap();
}

/// AdamW in f64, one parameter value at a time, as `AdamW::update` documents it.
fn adamw_reference(p: &mut [f64], m: &mut [f64], v: &mut [f64], g: &[f64], t: i32, lr: f64, wd: f64, c: &AdamWConfig) {
    for i in 0..p.len() {
        m[i] = c.beta1 * m[i] + (1.0 - c.beta1) * g[i];
        v[i] = c.beta2 * v[i] + (1.0 - c.beta2) * g[i] * g[i];
        let update = (m[i] / (1.0 - c.beta1.powi(t))) / ((v[i] / (1.0 - c.beta2.powi(t))).sqrt() + c.eps);
        p[i] = p[i] - lr * wd * p[i] - lr * update;
    }
}

#[test]
fn adamw_fused_and_tensor_op_updates_match_the_equations() {
    let d = cpu();
    let config = ModelConfig { vocab_size: 64, dim: 48, depth: 1, ..Default::default() };
    let c = AdamWConfig { beta1: 0.9, beta2: 0.99, eps: 1e-8, weight_decay: 0.1 };
    let start = MinGruLm::new(&config, 3, &d).unwrap();
    let host = |m: &MinGruLm| -> BTreeMap<String, Vec<f64>> {
        named_params(m).into_iter().map(|(k, f)| (k, to_vec(f.value).into_iter().map(f64::from).collect())).collect()
    };
    let mut reference = host(&start);
    let mut moments: BTreeMap<String, (Vec<f64>, Vec<f64>)> =
        reference.iter().map(|(k, p)| (k.clone(), (vec![0.0; p.len()], vec![0.0; p.len()]))).collect();
    let (mut fused, mut plain) = (AdamW::new(c.clone()), AdamW::new(c.clone()));
    plain.fused = false;
    let (mut a, mut b) = (start.clone(), start.clone());
    let snapshot = host(&start);
    for t in 1..=3 {
        // Gradients of all signs and sizes, different every step.
        let mut grads = GradMap::new();
        let mut host_grads = BTreeMap::new();
        for (k, p) in &reference {
            let g: Vec<f32> = (0..p.len()).map(|i| ((i * 7 + t * 13) % 23) as f32 / 7.0 - 1.5).collect();
            host_grads.insert(k.clone(), g.iter().map(|&x| x as f64).collect::<Vec<_>>());
            grads.insert(k.clone(), Tensor::<1>::from_data(TensorData::new(g, [p.len()]), &d));
        }
        let lr = 1e-2 * t as f64;
        a = fused.update(a, &grads, lr);
        b = plain.update(b, &grads, lr);
        for (k, p) in reference.iter_mut() {
            let (m, v) = moments.get_mut(k).unwrap();
            let wd = if decays(k) { c.weight_decay } else { 0.0 };
            adamw_reference(p, m, v, &host_grads[k], t as i32, lr, wd, &c);
        }
    }
    let (ha, hb) = (host(&a), host(&b));
    for (k, want) in &reference {
        for (name, got) in [("fused", &ha[k]), ("tensor ops", &hb[k])] {
            let err = got.iter().zip(want).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
            assert!(err < 1e-5, "{name}: {k} differs from the equations by {err}");
        }
    }
    assert!(reference.values().zip(snapshot.values()).any(|(p, q)| p != q), "the parameters moved");
    // Updating in place never reaches a model that shares the old weights.
    assert_eq!(host(&start), snapshot);
}
