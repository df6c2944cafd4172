//! Helpers shared by the integration tests.
#![allow(dead_code)]

use burn::tensor::{Device, Tensor, TensorData};

/// The CPU device the tests run on.
pub fn cpu() -> Device {
    Device::flex()
}

/// Deterministic pseudo-random numbers (SplitMix64) so tests need no RNG crate.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(1e-300);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
    pub fn normals(&mut self, n: usize, scale: f64) -> Vec<f64> {
        (0..n).map(|_| self.normal() * scale).collect()
    }
}

pub fn tensor<const D: usize>(values: &[f64], shape: [usize; D], device: &Device) -> Tensor<D> {
    let v: Vec<f32> = values.iter().map(|&x| x as f32).collect();
    Tensor::from_data(TensorData::new(v, shape), device)
}

pub fn to_vec<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_to_vec::<f32>().expect("f32 data")
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// A directory `grufinity-<name>-<pid>` in the temp dir holding `corpus.txt` (a short repeated
/// sentence), emptied first.
pub fn sandbox(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("grufinity-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("corpus.txt"), "a stitch in time saves nine. ".repeat(40)).unwrap();
    dir
}

/// A tiny CPU run `r` on `dir`'s corpus (see [`sandbox`]): dim 16, depth 1, chunks of 16, no
/// evaluation or samples; the caller sets the budget and checkpoint cadence.
pub fn tiny_run(dir: &std::path::Path) -> grufinity::train::TrainConfig {
    grufinity::train::TrainConfig {
        data: vec![dir.join("corpus.txt")],
        out_dir: dir.join("runs"),
        cache_dir: Some(dir.join("cache")),
        name: "r".into(),
        device: "cpu".into(),
        model: grufinity::model::ModelConfig { dim: 16, depth: 1, ..Default::default() },
        batch_size: 2,
        chunk_len: 16,
        eval_every: 0,
        eval_tokens: 64,
        sample_tokens: 0,
        ..Default::default()
    }
}
