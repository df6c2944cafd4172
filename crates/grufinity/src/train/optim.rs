//! AdamW with decoupled weight decay, global-norm gradient clipping and learning-rate schedules.
//!
//! The optimiser keeps its moments by parameter path, so its state is saved and restored with a
//! checkpoint by name and a mismatch is reported by name.

use std::collections::BTreeMap;

use burn::module::Module;
use burn::tensor::{Gradients, Tensor};
use serde::{Deserialize, Serialize};

use super::fused_optim::{adamw_step, sum_squares, AdamWStep};
use super::params::{map_params, named_grads, named_params};
use crate::model::fused;
use crate::error::{Error, Result};

/// Hyper-parameters of AdamW.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

/// Gradients of one or more backward passes, by parameter path, flat (`[N]`).
pub type GradMap = BTreeMap<String, Tensor<1>>;

/// Adds the gradients of `grads` for every parameter of `module` into `acc`, scaled by `scale`.
pub fn accumulate_grads<M: Module>(module: &M, grads: &Gradients, scale: f32, acc: &mut GradMap) {
    for (path, g) in named_grads(module, grads) {
        let g = if scale == 1.0 { g.value } else { g.value * scale };
        let sum = match acc.remove(&path) {
            Some(prev) => prev + g,
            None => g,
        };
        acc.insert(path, sum);
    }
}

/// Global L2 norm of all gradients.
pub fn global_norm(grads: &GradMap) -> f32 {
    let mut total: Option<Tensor<1>> = None;
    for g in grads.values() {
        let sq = sum_squares(g.clone());
        total = Some(match total {
            Some(t) => t + sq,
            None => sq,
        });
    }
    total.map(|t| t.sqrt().into_scalar::<f32>()).unwrap_or(0.0)
}

/// Scales all gradients so that their global norm is at most `max_norm` (no-op when it is
/// already smaller or `max_norm <= 0`). Returns the norm before clipping.
pub fn clip_global_norm(grads: &mut GradMap, max_norm: f64) -> f32 {
    let norm = global_norm(grads);
    if max_norm > 0.0 && norm.is_finite() && norm as f64 > max_norm {
        let scale = (max_norm / (norm as f64 + 1e-6)) as f32;
        for g in grads.values_mut() {
            *g = g.clone() * scale;
        }
    }
    norm
}

/// Whether every parameter of `module` is finite, with one read-back for all of them (the
/// sum of squares of all weights; only a NaN, an infinity or weights beyond 1e19 make it
/// non-finite).
pub fn params_finite<M: Module>(module: &M) -> bool {
    let mut total: Option<Tensor<1>> = None;
    for (_, p) in named_params(module) {
        let m = sum_squares(p.value.without_autodiff());
        total = Some(match total {
            Some(t) => t + m,
            None => m,
        });
    }
    total.map_or(true, |t| t.into_scalar::<f32>().is_finite())
}

/// Whether weight decay applies to the parameter at `path`: matrices of linear layers only,
/// never embeddings, norm gains, biases or conv taps.
pub fn decays(path: &str) -> bool {
    path.ends_with(".weight") && !path.contains("embedding") && !path.contains("conv") && !path.contains("norm")
}

/// AdamW state: first and second moments by path, and the number of steps taken.
pub struct AdamW {
    pub config: AdamWConfig,
    pub step: u64,
    pub moments: BTreeMap<String, (Tensor<1>, Tensor<1>)>,
    /// Use the one-pass CPU update ([`super::fused_optim`]) where the parameters live on the
    /// CPU (the default); false always takes the tensor-op form, which serves other devices.
    pub fused: bool,
}

impl AdamW {
    pub fn new(config: AdamWConfig) -> Self {
        Self { config, step: 0, moments: BTreeMap::new(), fused: true }
    }

    /// One update of every parameter that has a gradient in `grads`, at learning rate `lr`:
    ///
    /// ```text
    /// m = b1 m + (1 - b1) g          v = b2 v + (1 - b2) g^2
    /// p = p - lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps) - lr wd p   (wd only if decays)
    /// ```
    pub fn update<M: Module>(&mut self, module: M, grads: &GradMap, lr: f64) -> M {
        self.step += 1;
        let c = self.config.clone();
        let t = self.step as i32;
        let bias1 = 1.0 - c.beta1.powi(t);
        let bias2 = 1.0 - c.beta2.powi(t);
        let moments = &mut self.moments;
        let fused = self.fused;
        map_params(module, &mut |path, p| {
            let Some(g) = grads.get(path) else { return p };
            let g = g.clone();
            if fused && fused::supported(&p.device()) {
                let (m, v) = moments.remove(path).unwrap_or_else(|| (g.zeros_like(), g.zeros_like()));
                let decay = if decays(path) { lr * c.weight_decay } else { 0.0 };
                let step = AdamWStep {
                    beta1: c.beta1 as f32,
                    beta2: c.beta2 as f32,
                    eps: c.eps as f32,
                    decay: decay as f32,
                    lr: lr as f32,
                    bias1: bias1 as f32,
                    bias2: bias2 as f32,
                };
                let (p, m, v) = adamw_step(p, g, m, v, step);
                moments.insert(path.to_string(), (m, v));
                return p;
            }
            let (m, v) = match moments.remove(path) {
                Some((m, v)) => (m * c.beta1 + g.clone() * (1.0 - c.beta1), v * c.beta2 + g.square() * (1.0 - c.beta2)),
                None => (g.clone() * (1.0 - c.beta1), g.square() * (1.0 - c.beta2)),
            };
            let denom = (v.clone() / bias2).sqrt() + c.eps;
            let step = (m.clone() / bias1) / denom * lr;
            moments.insert(path.to_string(), (m, v));
            let p = if c.weight_decay > 0.0 && decays(path) { p.clone() - p * (lr * c.weight_decay) } else { p };
            p - step
        })
    }

    /// The moments as named tensors (`m.<path>`, `v.<path>`) for a checkpoint.
    pub fn state_tensors(&self) -> Vec<(String, Tensor<1>)> {
        let mut out = Vec::with_capacity(2 * self.moments.len());
        for (path, (m, v)) in &self.moments {
            out.push((format!("m.{path}"), m.clone()));
            out.push((format!("v.{path}"), v.clone()));
        }
        out
    }

    /// Restores moments saved by [`AdamW::state_tensors`]; every tensor must name a known
    /// parameter of the right size.
    pub fn load_state(&mut self, step: u64, mut tensors: BTreeMap<String, Tensor<1>>, sizes: &BTreeMap<String, usize>) -> Result<()> {
        self.step = step;
        self.moments.clear();
        for (path, &n) in sizes {
            match (tensors.remove(&format!("m.{path}")), tensors.remove(&format!("v.{path}"))) {
                (Some(m), Some(v)) => {
                    if m.dims()[0] != n || v.dims()[0] != n {
                        return Err(Error::Data(format!("optimizer state for `{path}` has the wrong size")));
                    }
                    self.moments.insert(path.clone(), (m, v));
                }
                (None, None) => {}
                _ => return Err(Error::Data(format!("optimizer state for `{path}` is incomplete"))),
            }
        }
        if let Some(extra) = tensors.keys().next() {
            return Err(Error::Data(format!("optimizer state has `{extra}`, which is not a parameter of this model")));
        }
        Ok(())
    }
}

crate::choice_enum! {
    /// Learning-rate schedule: linear warmup, then constant, linear or cosine decay to
    /// `min_lr_ratio * lr` at `total` steps, or `plateau`: constant, multiplied down by
    /// [`Plateau`] when the validation loss stops improving.
    pub enum Schedule {
        Constant = "constant",
        Linear = "linear",
        Cosine = "cosine",
        Plateau = "plateau",
    }
}

impl Schedule {
    /// Learning rate for the update made at `step` (0-based). Warmup is linear over the first
    /// `warmup` steps; after it, `progress` (fraction of the budget used, by steps or by time,
    /// `None` when there is no budget to measure against) drives the decay to
    /// `min_lr_ratio * base`.
    pub fn lr_at(self, step: u64, base: f64, warmup: u64, progress: Option<f64>, min_lr_ratio: f64) -> f64 {
        if warmup > 0 && step < warmup {
            return base * (step + 1) as f64 / warmup as f64;
        }
        let Some(progress) = progress else { return base };
        let progress = progress.clamp(0.0, 1.0);
        let min = base * min_lr_ratio;
        let decay = match self {
            Schedule::Constant | Schedule::Plateau => return base,
            Schedule::Linear => 1.0 - progress,
            Schedule::Cosine => 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
        };
        min + (base - min) * decay
    }
}

/// The learning-rate multiplier the trainer applies on top of the schedule, with the
/// validation history that drives it: reduce-on-plateau and early stopping both read it.
/// Saved in every checkpoint (`trainer.json`), so a resumed run reduces exactly when an
/// uninterrupted one would.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Plateau {
    /// Current multiplier of the learning rate (1 until a reduction or a skipped step).
    pub scale: f64,
    /// Best validation loss among the evaluations observed.
    pub best: Option<f64>,
    /// Evaluations since the last reduction or improvement (the plateau counter).
    pub bad_evals: u64,
    /// Evaluations since the last improvement (the early-stopping counter).
    pub evals_since_best: u64,
}

impl Default for Plateau {
    fn default() -> Self {
        Self { scale: 1.0, best: None, bad_evals: 0, evals_since_best: 0 }
    }
}

impl Plateau {
    /// Records one evaluation. Improvement (a loss below the best so far) resets both
    /// counters; otherwise both count up, and when `reduce` is set and `patience` evaluations
    /// in a row did not improve, the multiplier is multiplied by `factor` (never below
    /// `floor`, never raised) and the plateau counter restarts. A non-finite loss never
    /// improves. Returns whether the multiplier was reduced.
    pub fn observe(&mut self, val_loss: f64, reduce: bool, patience: u64, factor: f64, floor: f64) -> bool {
        if val_loss.is_finite() && self.best.map_or(true, |b| val_loss < b) {
            self.best = Some(val_loss);
            self.bad_evals = 0;
            self.evals_since_best = 0;
            return false;
        }
        self.bad_evals += 1;
        self.evals_since_best += 1;
        if reduce && self.bad_evals >= patience.max(1) {
            self.bad_evals = 0;
            let next = (self.scale * factor).max(floor).min(self.scale);
            let reduced = next < self.scale;
            self.scale = next;
            return reduced;
        }
        false
    }
}
