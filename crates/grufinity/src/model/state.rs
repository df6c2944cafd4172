//! The recurrent state carried between chunks (TBPTT) and between generated tokens, and its
//! one serialised form (named host tensors), used by checkpoints and saved generations alike.

use std::collections::BTreeMap;

use burn::tensor::{Bool, Device, Tensor, TensorData};

use super::config::ModelConfig;
use super::scan::LOG_ZERO;
use crate::error::{Error, Result};
use crate::files::HostTensor;

/// State of one block.
#[derive(Clone, Debug)]
pub struct LayerState {
    /// `log h` of the minGRU: `[B, 1, E]`.
    pub log_h: Tensor<3>,
    /// The conv's last `K - 1` inputs: `[B, K-1, D]`, present when the conv is on.
    pub conv: Option<Tensor<3>>,
}

/// State of every block of a model, for a batch of `B` independent rows.
#[derive(Clone, Debug)]
pub struct State {
    pub layers: Vec<LayerState>,
}

impl State {
    /// The initial state (`h = 0`, empty conv history) for `batch` rows.
    pub fn zeros(config: &ModelConfig, batch: usize, device: &Device) -> Self {
        let layers = (0..config.depth)
            .map(|_| LayerState {
                log_h: Tensor::full([batch, 1, config.inner()], LOG_ZERO, device),
                conv: (config.conv_kernel > 0)
                    .then(|| Tensor::zeros([batch, config.conv_kernel - 1, config.dim], device)),
            })
            .collect();
        Self { layers }
    }

    /// Number of rows.
    pub fn batch(&self) -> usize {
        self.layers[0].log_h.dims()[0]
    }

    /// The same values cut from the autodiff graph (TBPTT truncation).
    pub fn detach(self) -> Self {
        self.map(|t| t.detach())
    }

    /// The same values without autodiff at all (for evaluation and generation).
    pub fn without_autodiff(self) -> Self {
        self.map(|t| t.without_autodiff())
    }

    /// Moves the state to `device`.
    pub fn to_device(self, device: &Device) -> Self {
        self.map(|t| t.to_device(device))
    }

    fn map(self, f: impl Fn(Tensor<3>) -> Tensor<3>) -> Self {
        Self {
            layers: self
                .layers
                .into_iter()
                .map(|l| LayerState {
                    log_h: f(l.log_h),
                    conv: l.conv.map(&f),
                })
                .collect(),
        }
    }

    /// Resets the rows where `reset[i]` is true to the initial state, keeping the others.
    pub fn reset_rows(self, reset: &[bool]) -> Self {
        if !reset.iter().any(|&r| r) {
            return self;
        }
        let device = self.layers[0].log_h.device();
        let mask = Tensor::<1, Bool>::from_data(burn::tensor::TensorData::new(reset.to_vec(), [reset.len()]), &device)
            .reshape([reset.len(), 1, 1]);
        self.map_with_mask(mask)
    }

    fn map_with_mask(self, mask: Tensor<3, Bool>) -> Self {
        Self {
            layers: self
                .layers
                .into_iter()
                .map(|l| {
                    let dims = l.log_h.dims();
                    let log_h = l
                        .log_h
                        .mask_fill(mask.clone().expand(dims), LOG_ZERO);
                    let conv = l.conv.map(|c| {
                        let dims = c.dims();
                        c.mask_fill(mask.clone().expand(dims), 0.0)
                    });
                    LayerState { log_h, conv }
                })
                .collect(),
        }
    }

    /// Concatenates the rows of `states`, in order, into one state: `[B_i, ..]` each →
    /// `[sum B_i, ..]`. Used to decode prompts of different lengths together: each prompt is
    /// prefilled on its own one-row state, then the rows share one forward per step. Fails if
    /// `states` is empty or the states are of different model shapes.
    pub fn stack(states: Vec<State>) -> Result<Self> {
        let mismatch = || Error::config("state", "cannot stack states of different model shapes");
        let Some(first) = states.first() else {
            return Err(Error::config("state", "need at least one state to stack"));
        };
        let depth = first.layers.len();
        let shape = |l: &LayerState| (l.log_h.dims()[1..].to_vec(), l.conv.as_ref().map(|c| c.dims()[1..].to_vec()));
        let shapes: Vec<_> = first.layers.iter().map(shape).collect();
        for s in &states {
            if s.layers.len() != depth || s.layers.iter().map(shape).ne(shapes.iter().cloned()) {
                return Err(mismatch());
            }
        }
        if states.len() == 1 {
            return Ok(states.into_iter().next().unwrap_or(State { layers: vec![] }));
        }
        let mut log_h: Vec<Vec<Tensor<3>>> = vec![Vec::with_capacity(states.len()); depth];
        let mut conv: Vec<Vec<Tensor<3>>> = vec![Vec::with_capacity(states.len()); depth];
        for s in states {
            for (i, l) in s.layers.into_iter().enumerate() {
                log_h[i].push(l.log_h);
                conv[i].extend(l.conv);
            }
        }
        let layers = log_h
            .into_iter()
            .zip(conv)
            .map(|(h, c)| LayerState {
                log_h: Tensor::cat(h, 0),
                conv: (!c.is_empty()).then(|| Tensor::cat(c, 0)),
            })
            .collect();
        Ok(Self { layers })
    }

    /// Selects rows `rows` (in that order) of every tensor: `[B, ..] -> [rows.len(), ..]`.
    pub fn select_rows(self, rows: &[usize]) -> Self {
        let device = self.layers[0].log_h.device();
        let idx = Tensor::<1, burn::tensor::Int>::from_data(
            burn::tensor::TensorData::new(rows.iter().map(|&r| r as i64).collect::<Vec<_>>(), [rows.len()]),
            &device,
        );
        self.map(|t| t.select(0, idx.clone()))
    }

    /// The state as named host tensors: `layers.{i}.log_h` (`[B, 1, E]`) and, with the conv,
    /// `layers.{i}.conv` (`[B, K-1, D]`).
    pub fn to_host(&self) -> BTreeMap<String, HostTensor> {
        let mut out = BTreeMap::new();
        for (i, l) in self.layers.iter().enumerate() {
            out.insert(format!("layers.{i}.log_h"), HostTensor::from_tensor(l.log_h.clone(), l.log_h.dims().to_vec()));
            if let Some(c) = &l.conv {
                out.insert(format!("layers.{i}.conv"), HostTensor::from_tensor(c.clone(), c.dims().to_vec()));
            }
        }
        out
    }

    /// Takes the tensors of [`to_host`](Self::to_host) out of `named` onto `device`, checking
    /// every shape against `config` and `batch` rows (`None`: as many as the first tensor has).
    /// Errors say which tensor is missing or of the wrong shape.
    pub fn from_host(
        named: &mut BTreeMap<String, HostTensor>,
        config: &ModelConfig,
        batch: Option<usize>,
        device: &Device,
    ) -> Result<Self> {
        let mut rows = batch;
        let mut take = |name: String, tail: [usize; 2]| -> Result<Tensor<3>> {
            let t = named.remove(&name).ok_or_else(|| Error::Data(format!("carried state `{name}` is missing")))?;
            let b = *rows.get_or_insert(t.shape.first().copied().unwrap_or(0));
            let expected = vec![b, tail[0], tail[1]];
            if t.shape != expected || b == 0 {
                return Err(Error::Data(format!("carried state `{name}` has shape {:?}, expected {expected:?}", t.shape)));
            }
            let values = t.f32_values(&name)?.to_vec();
            Ok(Tensor::<3>::from_data(TensorData::new(values, [expected[0], expected[1], expected[2]]), device))
        };
        let mut layers = Vec::with_capacity(config.depth);
        for i in 0..config.depth {
            let log_h = take(format!("layers.{i}.log_h"), [1, config.inner()])?;
            let conv = match config.conv_kernel {
                0 => None,
                k => Some(take(format!("layers.{i}.conv"), [k - 1, config.dim])?),
            };
            layers.push(LayerState { log_h, conv });
        }
        Ok(Self { layers })
    }
}
