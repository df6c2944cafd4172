//! The training loop's policies: gradient accumulation, reduce-on-plateau (values and exact
//! resume), early stopping, non-finite steps (stop and skip), failed checkpoint writes.

mod common;

use std::path::{Path, PathBuf};

use common::{cpu, max_abs_diff, to_vec, Rng};
use grufinity::model::{MinGruLm, ModelConfig, State};
use grufinity::files::tensors;
use grufinity::train::config::OnNan;
use grufinity::train::eval::token_tensor;
use grufinity::train::optim::{accumulate_grads, GradMap, Plateau, Schedule};
use grufinity::train::{train, Event, TrainConfig};
use grufinity::Error;

// ---------------------------------------------------------------- accumulation

#[test]
fn accumulated_chunks_equal_one_stacked_batch() {
    let device = cpu().autodiff();
    let cfg = ModelConfig { vocab_size: 40, dim: 16, depth: 1, ..Default::default() };
    let model = MinGruLm::new(&cfg, 0, &device).unwrap();
    let (n, rows, t) = (3, 2, 16);
    let mut rng = Rng(11);
    let chunks: Vec<(Vec<u32>, Vec<u32>)> = (0..n)
        .map(|_| {
            let ids: Vec<u32> = (0..rows * (t + 1)).map(|_| (rng.next_u64() % cfg.vocab_size as u64) as u32).collect();
            let inputs = (0..rows).flat_map(|r| ids[r * (t + 1)..r * (t + 1) + t].to_vec()).collect();
            let targets = (0..rows).flat_map(|r| ids[r * (t + 1) + 1..(r + 1) * (t + 1)].to_vec()).collect();
            (inputs, targets)
        })
        .collect();

    // N chunks, one backward pass each, accumulated with scale 1/N (what the trainer does).
    let mut accumulated = GradMap::new();
    for (inputs, targets) in &chunks {
        let (loss, _) = model.loss(
            token_tensor(inputs, rows, t, &device),
            token_tensor(targets, rows, t, &device),
            State::zeros(&cfg, rows, &device),
        );
        accumulate_grads(&model, &loss.backward(), 1.0 / n as f32, &mut accumulated);
    }

    // The same chunks stacked as the rows of one batch, one backward pass.
    let inputs: Vec<u32> = chunks.iter().flat_map(|c| c.0.clone()).collect();
    let targets: Vec<u32> = chunks.iter().flat_map(|c| c.1.clone()).collect();
    let (loss, _) = model.loss(
        token_tensor(&inputs, n * rows, t, &device),
        token_tensor(&targets, n * rows, t, &device),
        State::zeros(&cfg, n * rows, &device),
    );
    let mut stacked = GradMap::new();
    accumulate_grads(&model, &loss.backward(), 1.0, &mut stacked);

    assert_eq!(accumulated.keys().collect::<Vec<_>>(), stacked.keys().collect::<Vec<_>>());
    assert!(stacked.len() > 5, "every parameter has a gradient: {:?}", stacked.keys());
    for (path, g) in &stacked {
        let (a, b) = (to_vec(accumulated[path].clone()), to_vec(g.clone()));
        let diff = max_abs_diff(&a, &b);
        assert!(diff <= 1e-5, "{path}: accumulated and stacked gradients differ by {diff}");
        assert!(b.iter().any(|&x| x != 0.0), "{path}: gradient is all zeros");
    }
}

// ---------------------------------------------------------------- plateau schedule

#[test]
fn plateau_reduces_after_patience_and_stops_at_the_floor() {
    let mut p = Plateau::default();
    assert_eq!(p.scale, 1.0);
    // (val loss, reduced?, scale after, bad_evals after, evals_since_best after)
    let script = [
        (3.0, false, 1.0, 0, 0),   // first: best
        (2.9, false, 1.0, 0, 0),   // better
        (2.95, false, 1.0, 1, 1),  // worse: 1 of 2
        (2.9, false, 0.5, 0, 2),   // equal is no improvement: 2 of 2, reduce
        (3.1, false, 0.5, 1, 3),
        (3.1, false, 0.25, 0, 4),  // reduce again
        (2.0, false, 0.25, 0, 0),  // improvement resets both counters, keeps the scale
        (2.1, false, 0.25, 1, 1),
        (2.1, false, 0.125, 0, 2),
        (f64::NAN, false, 0.125, 1, 3), // a NaN never improves
        (2.1, false, 0.1, 0, 4),   // 0.0625 is below the floor: 0.1
        (2.1, false, 0.1, 1, 5),
        (2.1, false, 0.1, 0, 6),   // at the floor: no further reduction
    ];
    for (i, &(loss, _, scale, bad, since)) in script.iter().enumerate() {
        let before = p.scale;
        let reduced = p.observe(loss, true, 2, 0.5, 0.1);
        assert_eq!(reduced, p.scale < before, "eval {i}: reported reduction");
        assert!((p.scale - scale).abs() < 1e-12, "eval {i}: scale {} != {scale}", p.scale);
        assert_eq!((p.bad_evals, p.evals_since_best), (bad, since), "eval {i}: counters");
    }
    assert_eq!(p.best, Some(2.0));

    // Without `reduce` (another schedule) the scale never moves, but the early-stopping
    // counter still counts.
    let mut q = Plateau::default();
    for loss in [1.0, 1.5, 1.5, 1.5] {
        assert!(!q.observe(loss, false, 1, 0.5, 0.0));
    }
    assert_eq!((q.scale, q.evals_since_best), (1.0, 3));

    // The schedule itself: warmup, then the base rate (the trainer multiplies by the scale).
    let lr = |step, progress| Schedule::Plateau.lr_at(step, 1.0, 10, progress, 0.1);
    assert_eq!(lr(0, Some(0.0)), 0.1);
    assert_eq!(lr(4, Some(0.0)), 0.5);
    assert_eq!(lr(10, Some(0.5)), 1.0);
    assert_eq!(lr(99, Some(1.0)), 1.0);
    assert_eq!(lr(50, None), 1.0);

    // A checkpoint from before plateau existed reads as "no reduction yet".
    let old: Plateau = serde_json::from_str("{}").unwrap();
    assert_eq!(old, Plateau::default());
}

#[test]
fn new_config_keys_are_parsed_and_checked_by_name() {
    let cfg: TrainConfig = serde_json::from_str(
        r#"{"schedule": "plateau", "plateau_patience": 2, "plateau_factor": 0.25, "early_stop_patience": 4, "on_nan": "skip"}"#,
    )
    .unwrap();
    assert_eq!(cfg.schedule, Schedule::Plateau);
    assert_eq!((cfg.plateau_patience, cfg.plateau_factor, cfg.early_stop_patience, cfg.on_nan), (2, 0.25, 4, OnNan::Skip));
    let defaults = TrainConfig::default();
    assert_eq!((defaults.plateau_patience, defaults.plateau_factor, defaults.early_stop_patience, defaults.on_nan), (3, 0.5, 0, OnNan::Stop));

    let bad = serde_json::from_str::<TrainConfig>(r#"{"on_nan": "explode"}"#).unwrap_err().to_string();
    assert!(bad.contains("explode") && bad.contains("skip"), "{bad}");
    let base = TrainConfig { name: "x".into(), ..Default::default() };
    for (cfg, field) in [
        (TrainConfig { plateau_factor: 1.0, ..base.clone() }, "plateau_factor"),
        (TrainConfig { plateau_factor: 0.0, ..base.clone() }, "plateau_factor"),
        (TrainConfig { plateau_factor: f64::NAN, ..base.clone() }, "plateau_factor"),
        (TrainConfig { plateau_patience: 0, ..base.clone() }, "plateau_patience"),
    ] {
        match cfg.validate() {
            Err(Error::Config { field: f, .. }) => assert_eq!(f, field),
            other => panic!("{field}: expected a config error, got {other:?}"),
        }
    }
    base.validate().unwrap();
}

// ---------------------------------------------------------------- end to end

const SENTENCES: [&str; 4] = [
    "The quick brown fox jumps over the lazy dog. ",
    "A stitch in time saves nine. ",
    "All that glitters is not gold. ",
    "Where there is a will, there is a way. ",
];

/// A fresh directory with a small corpus, removed on drop.
struct Sandbox(PathBuf);

impl Sandbox {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("grufinity-trainer-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let text: String = (0..60).map(|i| SENTENCES[i % 4]).collect();
        std::fs::write(dir.join("corpus.txt"), text).unwrap();
        Sandbox(dir)
    }

    fn config(&self, name: &str) -> TrainConfig {
        TrainConfig {
            data: vec![self.0.join("corpus.txt")],
            out_dir: self.0.join("runs"),
            cache_dir: Some(self.0.join("cache")),
            name: name.into(),
            device: "cpu".into(),
            seed: 7,
            model: ModelConfig { dim: 16, depth: 1, ..Default::default() },
            batch_size: 2,
            chunk_len: 16,
            warmup: 0,
            eval_every: 0,
            eval_tokens: 128,
            sample_tokens: 0,
            log_every: 1,
            max_steps: Some(4),
            ..Default::default()
        }
    }

    fn run(&self, name: &str) -> PathBuf {
        self.0.join("runs").join(name)
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Trains, collecting every event as JSON.
fn run(mut cfg: TrainConfig, resume: Option<&Path>) -> (grufinity::Result<grufinity::train::Outcome>, Vec<serde_json::Value>) {
    let mut events = Vec::new();
    cfg.resume = resume.map(|p| p.display().to_string());
    let out = train(cfg, &mut |e: &Event| {
        events.push(serde_json::to_value(e).unwrap());
        true
    });
    (out, events)
}

fn of_kind<'a>(events: &'a [serde_json::Value], kind: &str) -> Vec<&'a serde_json::Value> {
    events.iter().filter(|e| e["event"] == kind).collect()
}

fn trainer_json(ckpt: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(ckpt.join("trainer.json")).unwrap()).unwrap()
}

fn weights(ckpt: &Path) -> Vec<(String, Vec<f32>)> {
    file_weights(&ckpt.join("model.safetensors"))
}

fn file_weights(path: &Path) -> Vec<(String, Vec<f32>)> {
    let (named, _) = tensors::read(path).unwrap();
    named.into_iter().map(|(k, t)| (k.clone(), t.f32_values(&k).unwrap().to_vec())).collect()
}

fn assert_finite_checkpoint(ckpt: &Path) {
    for (name, values) in weights(ckpt) {
        assert!(values.iter().all(|v| v.is_finite()), "{}: `{name}` is not finite", ckpt.display());
    }
}

#[test]
fn plateau_state_is_checkpointed_and_resume_is_exact() {
    let sb = Sandbox::new("plateau");
    // A rate this high makes the validation loss bounce, so the plateau rule fires.
    let base_lr = 3.0;
    let cfg = |name: &str, steps| TrainConfig {
        schedule: Schedule::Plateau,
        plateau_patience: 1,
        plateau_factor: 0.5,
        min_lr_ratio: 0.01,
        lr: base_lr,
        eval_every: 2,
        max_steps: Some(steps),
        ..sb.config(name)
    };
    let (a, events_a) = run(cfg("a", 16), None);
    let a = a.unwrap();
    let (b1, _) = run(cfg("b", 8), None);
    b1.unwrap();
    let (b2, events_b) = run(cfg("b", 16), Some(&sb.run("b").join("checkpoints").join("last")));
    let b2 = b2.unwrap();

    let (ta, tb) = (trainer_json(&a.checkpoint), trainer_json(&b2.checkpoint));
    let scale = ta["plateau"]["scale"].as_f64().unwrap();
    assert!(scale < 1.0, "the test must see at least one reduction: {}", ta["plateau"]);
    assert_eq!(ta["plateau"], tb["plateau"], "plateau state after resume");
    assert_eq!(weights(&a.checkpoint), weights(&b2.checkpoint), "weights after resume");

    // The learning rate of every step is the base rate times the multiplier in force.
    let lrs = |events: &[serde_json::Value]| -> Vec<(u64, f64)> {
        of_kind(events, "step").iter().map(|e| (e["step"].as_u64().unwrap(), e["lr"].as_f64().unwrap())).collect()
    };
    let (la, lb) = (lrs(&events_a), lrs(&events_b));
    assert_eq!(&la[8..], &lb[..], "steps 9-16 use the same learning rates");
    assert!(la.iter().any(|&(_, lr)| lr < base_lr - 1e-12), "{la:?}");
    assert!(la.iter().all(|&(_, lr)| lr >= base_lr * 0.01 - 1e-12), "floor: {la:?}");
}

#[test]
fn early_stopping_stops_after_patience_evaluations_without_a_new_best() {
    let sb = Sandbox::new("early");
    // A learning rate this small leaves the weights (nearly) unchanged: no new best.
    let cfg = TrainConfig { lr: 1e-12, eval_every: 1, early_stop_patience: 2, max_steps: Some(50), ..sb.config("e") };
    let (out, events) = run(cfg, None);
    let out = out.unwrap();
    let done = of_kind(&events, "done");
    assert_eq!(done.len(), 1);
    assert_eq!(done[0]["reason"], "early_stop");
    assert!(out.step < 50, "stopped at step {}", out.step);
    let evals = of_kind(&events, "eval");
    assert_eq!(evals.last().unwrap()["step"].as_u64().unwrap(), out.step, "no second evaluation at the end");
    let tail: Vec<bool> = evals.iter().rev().take(2).map(|e| e["best"].as_bool().unwrap()).collect();
    assert_eq!(tail, [false, false], "the last two evaluations were not new bests");
    assert_eq!(trainer_json(&out.checkpoint)["plateau"]["evals_since_best"], 2);
    assert!(out.checkpoint.ends_with(format!("step-{}", out.step)));
}

#[test]
fn a_diverging_run_stops_with_a_clear_error_and_a_finite_checkpoint() {
    let sb = Sandbox::new("nan-stop");
    let cfg = TrainConfig { lr: 1e6, save_every: 1, keep_last: 100, max_steps: Some(60), ..sb.config("n") };
    let (out, events) = run(cfg, None);
    let err = out.unwrap_err();
    assert!(matches!(err, Error::NonFinite { .. }), "{err:?}");
    let message = err.to_string();
    assert!(!message.contains('\n') && message.contains("--lr"), "{message}");
    assert!(of_kind(&events, "saved").len() >= 1, "at least one checkpoint before the divergence");
    let ckpts = sb.run("n").join("checkpoints");
    for entry in std::fs::read_dir(&ckpts).unwrap() {
        let path = entry.unwrap().path();
        if path.join("model.safetensors").exists() {
            assert_finite_checkpoint(&path);
        }
    }
    for e in of_kind(&events, "step") {
        assert!(e["loss"].as_f64().is_some_and(f64::is_finite), "{e}");
    }
}

#[test]
fn skipping_non_finite_steps_halves_the_lr_and_gives_up_after_five() {
    let sb = Sandbox::new("nan-skip");
    let cfg = TrainConfig { lr: 1e6, on_nan: OnNan::Skip, save_every: 1, max_steps: Some(60), ..sb.config("s") };
    let (out, events) = run(cfg, None);
    let err = out.unwrap_err();
    assert!(matches!(err, Error::NonFinite { .. }), "{err:?}");
    let skipped = of_kind(&events, "skipped");
    assert!(skipped.len() >= 5, "{skipped:?}");
    let last5 = &skipped[skipped.len() - 5..];
    for (i, e) in last5.iter().enumerate() {
        assert_eq!(e["consecutive"].as_u64().unwrap(), i as u64 + 1, "{e}");
        if i > 0 {
            assert_eq!(e["step"].as_u64().unwrap(), last5[i - 1]["step"].as_u64().unwrap() + 1);
            let (now, before) = (e["lr_scale"].as_f64().unwrap(), last5[i - 1]["lr_scale"].as_f64().unwrap());
            assert_eq!(now, before * 0.5, "each skip halves the multiplier");
        }
    }
    // Skipped steps never reach the weights: every checkpoint is finite, including one saved
    // after skipped steps, and the saved multiplier is the halved one.
    let last = sb.run("s").join("checkpoints").join("last");
    assert_finite_checkpoint(&last);
    let ts = trainer_json(&last);
    assert!(ts["plateau"]["scale"].as_f64().unwrap() < 1.0, "{}", ts["plateau"]);
    assert!(ts["bad_steps"].as_u64().unwrap() >= 1);
    // The metrics have a row for each skip.
    let csv = std::fs::read_to_string(sb.run("s").join("metrics.csv")).unwrap();
    assert_eq!(csv.lines().filter(|l| l.starts_with("skip,")).count(), skipped.len());
}

#[test]
fn a_failed_checkpoint_write_keeps_the_previous_checkpoint() {
    let sb = Sandbox::new("ckpt-fail");
    let cfg = TrainConfig { save_every: 1, max_steps: Some(4), ..sb.config("f") };
    let ckpts = sb.run("f").join("checkpoints");
    let mut first: Option<Vec<(PathBuf, Vec<u8>)>> = None;
    let out = train(cfg, &mut |e: &Event| {
        if let Event::Saved { step: 1, path } = e {
            first = Some(
                std::fs::read_dir(path).unwrap().map(|f| f.unwrap().path()).map(|p| (p.clone(), std::fs::read(p).unwrap())).collect(),
            );
            // Where the next checkpoint is built becomes unwritable (a file, not a directory:
            // works even as root, where permissions would not stop the write).
            std::fs::write(ckpts.join(format!(".tmp-step-2-{}", std::process::id())), b"in the way").unwrap();
        }
        true
    });
    let err = out.unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, Error::Checkpoint { .. }), "{err:?}");
    assert!(!message.contains('\n'), "{message}");
    assert!(message.contains("step-2") && message.contains("previous checkpoint step-1 is intact"), "{message}");
    assert!(!ckpts.join("step-2").exists());
    assert_eq!(std::fs::read_link(ckpts.join("last")).unwrap(), Path::new("step-1"));
    for (path, bytes) in first.expect("a first checkpoint was saved") {
        assert_eq!(std::fs::read(&path).unwrap(), bytes, "{} changed", path.display());
    }
}

// ---------------------------------------------------------------- moving average of the weights

#[test]
fn ema_follows_its_formula_and_resumes_exactly() {
    let sb = Sandbox::new("ema");
    let decay = 0.9;
    let cfg = |name: &str, steps| TrainConfig {
        ema: Some(decay),
        // A constant rate: a cosine one would decay over each run's own budget.
        schedule: Schedule::Constant,
        save_every: 1,
        keep_last: 20,
        max_steps: Some(steps),
        ..sb.config(name)
    };
    let (a, _) = run(cfg("a", 6), None);
    let a = a.unwrap();
    let ckpt = |run: &str, step: u64| sb.run(run).join("checkpoints").join(format!("step-{step}"));
    // ema_t = d_t ema_{t-1} + (1 - d_t) w_t, d_t = min(decay, (1 + t) / (10 + t)).
    for t in 2..=6u64 {
        let d = decay.min((1.0 + t as f64) / (10.0 + t as f64)) as f32;
        let (prev, w, now) =
            (file_weights(&ckpt("a", t - 1).join("ema.safetensors")), weights(&ckpt("a", t)), file_weights(&ckpt("a", t).join("ema.safetensors")));
        for (((name, p), (_, w)), (_, n)) in prev.iter().zip(&w).zip(&now) {
            let expected: Vec<f32> = p.iter().zip(w).map(|(p, w)| d * p + (1.0 - d) * w).collect();
            assert!(max_abs_diff(&expected, n) < 1e-6, "step {t} `{name}`");
        }
        assert_ne!(weights(&ckpt("a", t)), file_weights(&ckpt("a", t).join("ema.safetensors")), "the average is not the weights");
    }
    // Interrupted at step 3 and resumed, the average is the uninterrupted one, bit for bit.
    run(cfg("b", 3), None).0.unwrap();
    let (b, _) = run(cfg("b", 6), Some(&sb.run("b").join("checkpoints").join("last")));
    let b = b.unwrap();
    assert_eq!(file_weights(&a.checkpoint.join("ema.safetensors")), file_weights(&b.checkpoint.join("ema.safetensors")));
    // Inference loads the average.
    let loaded = grufinity::Loaded::load(&a.checkpoint, &cpu(), grufinity::model::quant::WeightDtype::F32).unwrap();
    let lw: Vec<(String, Vec<f32>)> = grufinity::train::checkpoint::module_tensors(&loaded.model)
        .into_iter()
        .map(|(k, t)| (k.clone(), t.f32_values(&k).unwrap().to_vec()))
        .collect();
    assert_eq!(lw, file_weights(&a.checkpoint.join("ema.safetensors")));
}

// ---------------------------------------------------------------- bf16 products

#[test]
fn bf16_training_stays_close_to_f32() {
    let sb = Sandbox::new("bf16");
    let cfg = |name: &str, precision| TrainConfig {
        precision,
        schedule: Schedule::Constant,
        max_steps: Some(8),
        ..sb.config(name)
    };
    let (a, ea) = run(cfg("f32", grufinity::train::config::Precision::F32), None);
    let (b, eb) = run(cfg("bf16", grufinity::train::config::Precision::Bf16), None);
    a.unwrap();
    b.unwrap();
    let losses = |events: &[serde_json::Value]| -> Vec<f64> { of_kind(events, "step").iter().map(|e| e["loss"].as_f64().unwrap()).collect() };
    let (la, lb) = (losses(&ea), losses(&eb));
    assert_eq!(la.len(), 8);
    for (x, y) in la.iter().zip(&lb) {
        assert!((x - y).abs() < 0.05, "bf16 loss {y} vs f32 {x}");
    }
    let precision = of_kind(&eb, "start")[0]["precision"].as_str().unwrap().to_string();
    if grufinity::model::gemm_bf16::available() {
        assert!(precision.starts_with("bf16"), "{precision}");
        assert_ne!(la, lb, "bf16 products round the operands");
    } else {
        assert!(precision.contains("neither AMX-BF16 nor AVX512-BF16"), "{precision}");
        assert_eq!(la, lb);
    }
}
