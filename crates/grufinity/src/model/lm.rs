//! The minGRU language model: embedding, residual blocks, final RMSNorm, linear head.

use burn::module::Module;
use burn::nn::{Embedding, Linear, RmsNorm, RmsNormConfig};
use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Int, Tensor};

use super::block::Block;
use super::dense;
use super::fused_norm::rms_norm;
use super::config::ModelConfig;
use super::init::Init;
use super::state::State;
use crate::error::Result;

/// A minGRU language model.
///
/// Initialisation: linear layers and the conv are uniform in `±1/sqrt(fan_in)` (PyTorch's
/// default), RMSNorm gains are ones, the embedding is `N(0, 1)`, or `N(0, 1/d)` when it doubles
/// as the head so that initial logits have unit scale.
#[derive(Module, Debug)]
pub struct MinGruLm {
    pub embedding: Embedding,
    pub blocks: Vec<Block>,
    pub norm: RmsNorm,
    /// `D -> V`, no bias; absent when tied to the embedding.
    pub head: Option<Linear>,
}

impl MinGruLm {
    /// A model initialised from `seed` (the same weights on every backend). Fails if `config`
    /// is invalid.
    pub fn new(config: &ModelConfig, seed: u64, device: &Device) -> Result<Self> {
        config.validate()?;
        let (v, d) = (config.vocab_size, config.dim);
        let std = if config.tie_embeddings { 1.0 / (d as f64).sqrt() } else { 1.0 };
        let mut init = Init::new(seed, device);
        Ok(Self {
            embedding: init.embedding(v, d, std),
            blocks: (0..config.depth).map(|_| Block::new(config, &mut init)).collect(),
            norm: RmsNormConfig::new(d).init(device),
            head: (!config.tie_embeddings).then(|| init.linear(d, v)),
        })
    }

    /// `tokens`: `[B, T]` with the state carried from the previous chunk →
    /// (`logits`: `[B, T, V]`, the state after the last token).
    pub fn forward(&self, tokens: Tensor<2, Int>, state: State) -> (Tensor<3>, State) {
        self.forward_observed(tokens, state, None)
    }

    /// [`forward`](Self::forward), also collecting each block's update gate `z`
    /// (`[B, T, E]`, one per block, in order) into `gates` when given.
    pub fn forward_observed(
        &self,
        tokens: Tensor<2, Int>,
        state: State,
        mut gates: Option<&mut Vec<Tensor<3>>>,
    ) -> (Tensor<3>, State) {
        let mut x = self.embedding.forward(tokens);
        let mut layers = Vec::with_capacity(self.blocks.len());
        for (block, layer_state) in self.blocks.iter().zip(state.layers) {
            let (y, s) = block.forward_observed(x, layer_state, gates.as_deref_mut());
            x = y;
            layers.push(s);
        }
        (self.logits(rms_norm(&self.norm, x)), State { layers })
    }

    fn logits(&self, x: Tensor<3>) -> Tensor<3> {
        match &self.head {
            Some(head) => dense::linear(head, x),
            None => dense::rows_times(x, self.embedding.weight.val().transpose()),
        }
    }

    /// Mean next-token cross-entropy (nats) of `tokens` → `targets`, both `[B, T]`, and the
    /// state after the chunk.
    pub fn loss(&self, tokens: Tensor<2, Int>, targets: Tensor<2, Int>, state: State) -> (Tensor<1>, State) {
        let (logits, state) = self.forward(tokens, state);
        (cross_entropy(logits, targets), state)
    }
}

/// Mean cross-entropy of `logits`: `[B, T, V]` against `targets`: `[B, T]` → `[1]`.
pub fn cross_entropy(logits: Tensor<3>, targets: Tensor<2, Int>) -> Tensor<1> {
    let log_probs = log_softmax(logits, 2);
    let picked = log_probs.gather(2, targets.unsqueeze_dim::<3>(2));
    picked.mean().neg()
}

