//! Initial weights from a seed, drawn with the crate's own generator ([`crate::rng`]) on the
//! host and uploaded: the same seed gives the same model on every backend, and concurrent
//! models in one process do not disturb each other's draws.

use burn::module::Param;
use burn::nn::{Embedding, Linear};
use burn::tensor::{Device, Tensor, TensorData};

use crate::rng::Rng;

/// A stream of initial weights for one model.
pub struct Init<'a> {
    rng: Rng,
    device: &'a Device,
}

impl<'a> Init<'a> {
    pub fn new(seed: u64, device: &'a Device) -> Self {
        Self { rng: Rng::new(seed), device }
    }

    fn tensor<const N: usize>(&mut self, shape: [usize; N], mut draw: impl FnMut(&mut Rng) -> f64) -> Param<Tensor<N>> {
        let values: Vec<f32> = (0..shape.iter().product::<usize>()).map(|_| draw(&mut self.rng) as f32).collect();
        Param::from_tensor(Tensor::from_data(TensorData::new(values, shape), self.device))
    }

    /// Uniform in `±1/sqrt(fan_in)` (PyTorch's default for linear layers and convolutions).
    pub fn uniform_fan_in<const N: usize>(&mut self, shape: [usize; N], fan_in: usize) -> Param<Tensor<N>> {
        let bound = 1.0 / (fan_in as f64).sqrt();
        self.tensor(shape, |rng| (2.0 * rng.uniform() - 1.0) * bound)
    }

    /// `N(0, std²)`.
    pub fn normal<const N: usize>(&mut self, shape: [usize; N], std: f64) -> Param<Tensor<N>> {
        self.tensor(shape, |rng| rng.normal() * std)
    }

    /// A `d_in -> d_out` linear layer without bias, [`uniform_fan_in`](Self::uniform_fan_in).
    pub fn linear(&mut self, d_in: usize, d_out: usize) -> Linear {
        Linear { weight: self.uniform_fan_in([d_in, d_out], d_in), bias: None }
    }

    /// A `d_in -> d_out` linear layer with bias, both uniform in `±1/sqrt(d_in)`.
    pub fn linear_with_bias(&mut self, d_in: usize, d_out: usize) -> Linear {
        Linear { weight: self.uniform_fan_in([d_in, d_out], d_in), bias: Some(self.uniform_fan_in([d_out], d_in)) }
    }

    /// A `vocab x dim` embedding, `N(0, std²)`.
    pub fn embedding(&mut self, vocab: usize, dim: usize, std: f64) -> Embedding {
        Embedding { weight: self.normal([vocab, dim], std) }
    }

    /// The device the weights go to.
    pub fn device(&self) -> &'a Device {
        self.device
    }
}
