//! Checkpoint averaging (`grufinity average RUN --last K`): the element-wise mean of the K
//! newest checkpoints' weights, written as a checkpoint that loads like any other.

mod common;

use std::path::PathBuf;

use common::cpu;
use grufinity::files::tensors;
use grufinity::model::quant::WeightDtype;
use grufinity::run::average::{average_last, AVERAGE_FILE};
use grufinity::train::{train, TrainConfig};
use grufinity::Loaded;

/// A run of 4 steps with a checkpoint at each (all kept); `ema` adds a moving average.
fn run(name: &str, ema: Option<f64>) -> PathBuf {
    let dir = common::sandbox(&format!("average-{name}"));
    let cfg = TrainConfig { save_every: 1, keep_last: 10, ema, max_steps: Some(4), ..common::tiny_run(&dir) };
    train(cfg, &mut |_| true).unwrap();
    dir.join("runs").join("r")
}

fn weights(path: PathBuf) -> Vec<(String, Vec<f32>)> {
    let (named, _) = tensors::read(&path).unwrap();
    named.into_iter().map(|(n, t)| (n.clone(), t.f32_values(&n).unwrap().to_vec())).collect()
}

#[test]
fn the_average_is_the_mean_of_the_newest_checkpoints_and_loads() {
    let run = run("mean", None);
    let done = average_last(&run, 3).unwrap();
    assert_eq!(done.steps, [2, 3, 4]);
    assert_eq!(done.files, ["model.safetensors"]);
    let ckpts = run.join("checkpoints");
    let parts: Vec<_> = [2, 3, 4].iter().map(|s| weights(ckpts.join(format!("step-{s}")).join("model.safetensors"))).collect();
    let mean = weights(done.path.join("model.safetensors"));
    assert_eq!(mean.len(), parts[0].len());
    for (i, (name, values)) in mean.iter().enumerate() {
        for (j, v) in values.iter().enumerate() {
            let expected = parts.iter().map(|p| f64::from(p[i].1[j])).sum::<f64>() / 3.0;
            assert!((f64::from(*v) - expected).abs() < 1e-6, "{name}[{j}]: {v} vs {expected}");
        }
    }
    // The weights moved between steps, so the mean is none of them.
    assert_ne!(mean[0].1, parts[2][0].1);
    let record: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(done.path.join(AVERAGE_FILE)).unwrap()).unwrap();
    assert_eq!(record["steps"], serde_json::json!([2, 3, 4]));
    // It is a checkpoint: it loads, and the run's own listing is unchanged.
    Loaded::load(&done.path, &cpu(), WeightDtype::F32).unwrap();
    let listed: Vec<u64> = grufinity::run::RunDir::new(&run).checkpoints().unwrap().iter().map(|c| c.step).collect();
    assert_eq!(listed, [1, 2, 3, 4]);
    // Averaging again replaces it.
    assert_eq!(average_last(&run, 2).unwrap().steps, [3, 4]);
    std::fs::remove_dir_all(run.parent().unwrap().parent().unwrap()).unwrap();
}

#[test]
fn moving_averages_are_averaged_too() {
    let run = run("ema", Some(0.9));
    let done = average_last(&run, 2).unwrap();
    assert_eq!(done.files, ["model.safetensors", "ema.safetensors"]);
    std::fs::remove_dir_all(run.parent().unwrap().parent().unwrap()).unwrap();
}

#[test]
fn too_few_checkpoints_or_not_a_run_is_one_line_naming_it() {
    let run = run("few", None);
    let one = average_last(&run, 1).unwrap_err().to_string();
    assert_eq!(one, "invalid config `last`: got 1; average at least 2 checkpoints");
    let many = average_last(&run, 9).unwrap_err().to_string();
    assert!(many.contains("has 4 checkpoint(s) (steps 1, 2, 3, 4)") && many.contains("--keep-last"), "{many}");
    let nothing = average_last(&run.join("checkpoints").join("step-1"), 2).unwrap_err().to_string();
    assert!(nothing.contains("has no checkpoints to average"), "{nothing}");
    let file = average_last(&run.join("config.json"), 2).unwrap_err().to_string();
    assert!(file.contains("has no checkpoints to average"), "{file}");
    std::fs::remove_dir_all(run.parent().unwrap().parent().unwrap()).unwrap();
}
