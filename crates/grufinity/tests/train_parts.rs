//! Batcher contiguity and coverage, splits, schedules, clipping, checkpoint atomicity.

mod common;

use std::collections::BTreeMap;

use burn::tensor::{Tensor, TensorData};
use common::{cpu, to_vec};
use grufinity::data::batcher::{split_point, StreamBatcher};
use grufinity::train::checkpoint::write_dir_atomically;
use grufinity::train::optim::{clip_global_norm, decays, Schedule};
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
