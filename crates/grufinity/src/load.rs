//! Loading a trained model from a run directory or a checkpoint directory.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use burn::tensor::Device;

use crate::data::Tokenizer;
use crate::error::Result;
use crate::model::host::{round_to_bf16, HostModel, WeightDtype};
use crate::model::{fused, MinGruLm};
use crate::train::checkpoint::{load_module, resolve_checkpoint};
use crate::train::trainer::{read_trainer_state, TrainerState};

/// A model ready for inference, with everything its checkpoint says about it.
pub struct Loaded {
    pub checkpoint: PathBuf,
    pub model: MinGruLm,
    pub trainer: TrainerState,
    pub tokenizer: Tokenizer,
    pub device: Device,
    /// The matrices' element type (their values in `model` are already rounded to it).
    pub dtype: WeightDtype,
    host: OnceLock<Option<HostModel>>,
}

impl Loaded {
    /// Host copies of the weights for decoding steps on the CPU ([`HostModel`]), made on first
    /// use (evaluation never needs them); `None` on other devices.
    pub fn host(&self) -> Option<&HostModel> {
        self.host.get_or_init(|| fused::supported(&self.device).then(|| HostModel::new(&self.model, self.dtype))).as_ref()
    }
}

/// Loads `path` (a run: its best checkpoint, else its last; or a checkpoint directory) onto
/// `device`, without autodiff, with its weight matrices as `dtype` values.
pub fn load(path: &Path, device: &Device, dtype: WeightDtype) -> Result<Loaded> {
    crate::alloc::keep_freed_memory();
    let checkpoint = resolve_checkpoint(path, "best")?;
    let trainer = read_trainer_state(&checkpoint)?;
    let model = MinGruLm::new(&trainer.config.model, 0, device)?;
    let mut model = load_module(model, &checkpoint.join("model.safetensors"), device)?;
    if dtype == WeightDtype::Bf16 {
        model = round_to_bf16(model);
    }
    let tokenizer = trainer.tokenizer.clone();
    Ok(Loaded { checkpoint, model, tokenizer, trainer, device: device.clone(), dtype, host: OnceLock::new() })
}
