//! Loading a trained model from a run directory or a checkpoint directory.

use std::path::{Path, PathBuf};

use burn::tensor::Device;

use crate::data::Tokenizer;
use crate::error::Result;
use crate::model::MinGruLm;
use crate::train::checkpoint::{load_module, resolve_checkpoint};
use crate::train::trainer::{read_trainer_state, TrainerState};

/// A model ready for inference, with everything its checkpoint says about it.
pub struct Loaded {
    pub checkpoint: PathBuf,
    pub model: MinGruLm,
    pub trainer: TrainerState,
    pub tokenizer: Tokenizer,
    pub device: Device,
}

/// Loads `path` (a run: its best checkpoint, else its last; or a checkpoint directory) onto
/// `device`, without autodiff.
pub fn load(path: &Path, device: &Device) -> Result<Loaded> {
    crate::alloc::keep_freed_memory();
    let checkpoint = resolve_checkpoint(path, "best")?;
    let trainer = read_trainer_state(&checkpoint)?;
    let model = MinGruLm::new(&trainer.config.model, 0, device)?;
    let model = load_module(model, &checkpoint.join("model.safetensors"), device)?;
    Ok(Loaded { checkpoint, model, tokenizer: trainer.tokenizer.clone(), trainer, device: device.clone() })
}
