//! An exponential moving average of the weights (`ema` setting): evaluation, samples, the
//! `best` checkpoint and inference use the averaged weights, which are usually better than the
//! last ones at the end of a learning-rate schedule.
//!
//! After optimiser update `t` (1-based), with decay `d`:
//!
//! ```text
//! d_t = min(d, (1 + t) / (10 + t))        (warm-up: early weights are not averaged in for long)
//! ema = d_t ema + (1 - d_t) w
//! ```
//!
//! The average is saved beside the weights (`ema.safetensors`), so a resumed run continues it
//! exactly; `grufinity.load` then prefers it to the raw weights.

use std::collections::BTreeMap;

use burn::module::Module;
use burn::tensor::Tensor;

use super::params::{map_params, named_params};

/// The averaged weights, by parameter path, flat and without autodiff.
#[derive(Clone)]
pub struct Ema {
    pub decay: f64,
    pub weights: BTreeMap<String, Tensor<1>>,
}

impl Ema {
    /// An average starting at `module`'s weights.
    pub fn new<M: Module>(decay: f64, module: &M) -> Self {
        let weights = named_params(module).into_iter().map(|(k, p)| (k, p.value.without_autodiff())).collect();
        Self { decay, weights }
    }

    /// The decay used after update `t` (1-based).
    pub fn decay_at(&self, t: u64) -> f64 {
        self.decay.min((1.0 + t as f64) / (10.0 + t as f64))
    }

    /// Folds `module`'s weights after update `t` into the average.
    pub fn update<M: Module>(&mut self, module: &M, t: u64) {
        let d = self.decay_at(t) as f32;
        for (path, p) in named_params(module) {
            let w = p.value.without_autodiff();
            let next = match self.weights.remove(&path) {
                Some(avg) => avg * d + w * (1.0 - d),
                None => w,
            };
            self.weights.insert(path, next);
        }
    }

    /// `module` with the averaged weights in place of its own.
    pub fn apply<M: Module>(&self, module: M) -> M {
        map_params(module, &mut |path, current| self.weights.get(path).cloned().unwrap_or(current))
    }
}
