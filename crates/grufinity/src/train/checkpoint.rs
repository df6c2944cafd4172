//! A checkpoint: `checkpoints/step-<N>/` with the weights (`model.safetensors`), the optimiser
//! moments (`optimizer.safetensors`), the carried TBPTT state (`state.safetensors`), the
//! tokenizer (`tokenizer.json`, the file `generate` and `eval` read) and the trainer state
//! (`trainer.json`, written last: its presence marks a complete checkpoint). The directory is
//! built under a temporary name and renamed into place ([`write_dir_atomically`]).

use std::collections::BTreeMap;
use std::path::Path;

use burn::module::Module;
use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use crate::data::{Cursor, Tokenizer};
use crate::error::{Error, Result};
use crate::files::{tensors, write_dir_atomically, HostTensor};
use super::optim::Plateau;
use super::params::{map_params, named_params};
use super::TrainConfig;

pub use crate::run::{TOKENIZER_FILE, TRAINER_FILE};
pub const MODEL_FILE: &str = "model.safetensors";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
pub const STATE_FILE: &str = "state.safetensors";
/// The exponential moving average of the weights (runs with `ema` only); inference prefers it.
pub const EMA_FILE: &str = "ema.safetensors";

/// Trainer state saved in every checkpoint (`trainer.json`): everything besides tensors that
/// an exact resume needs.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainerState {
    pub step: u64,
    pub tokens: u64,
    pub elapsed: f64,
    pub best_val_loss: Option<f64>,
    pub best_step: Option<u64>,
    pub cursor: Cursor,
    pub optimizer_step: u64,
    /// Token count and hash of the corpus, to refuse resuming on other data.
    pub data_tokens: usize,
    pub data_hash: u64,
    pub config: TrainConfig,
    /// Learning-rate multiplier and the validation history behind reduce-on-plateau and
    /// early stopping.
    #[serde(default)]
    pub plateau: Plateau,
    /// Skipped (non-finite) steps in a row, with `on_nan = "skip"`.
    #[serde(default)]
    pub bad_steps: u64,
}

/// Everything written into one checkpoint.
pub struct CheckpointParts<'a> {
    pub model: BTreeMap<String, HostTensor>,
    pub model_meta: BTreeMap<String, String>,
    pub optimizer: BTreeMap<String, HostTensor>,
    pub state: BTreeMap<String, HostTensor>,
    /// The averaged weights, with `ema` on.
    pub ema: Option<BTreeMap<String, HostTensor>>,
    pub tokenizer: &'a Tokenizer,
    pub trainer: &'a TrainerState,
}

/// Writes a complete checkpoint at `dir`, atomically.
pub fn write(dir: &Path, parts: &CheckpointParts<'_>) -> Result<()> {
    let trainer_json = serde_json::to_vec_pretty(parts.trainer).map_err(|e| Error::Data(e.to_string()))?;
    let tokenizer_json = parts.tokenizer.to_file_json()?;
    write_dir_atomically(dir, |tmp| {
        tensors::write(&tmp.join(MODEL_FILE), &parts.model, &parts.model_meta)?;
        tensors::write(&tmp.join(OPTIMIZER_FILE), &parts.optimizer, &BTreeMap::new())?;
        tensors::write(&tmp.join(STATE_FILE), &parts.state, &BTreeMap::new())?;
        if let Some(ema) = &parts.ema {
            tensors::write(&tmp.join(EMA_FILE), ema, &parts.model_meta)?;
        }
        std::fs::write(tmp.join(TOKENIZER_FILE), &tokenizer_json).map_err(|e| Error::io(tmp, e))?;
        // Written last: its presence marks a complete checkpoint.
        std::fs::write(tmp.join(TRAINER_FILE), &trainer_json).map_err(|e| Error::io(tmp, e))
    })
}

/// Reads a checkpoint's `trainer.json`, telling a missing file from an unreadable one.
pub fn read_trainer_state(ckpt: &Path) -> Result<TrainerState> {
    let path = ckpt.join(TRAINER_FILE);
    let text = match std::fs::read(&path) {
        Ok(bytes) => String::from_utf8(bytes).map_err(|_| Error::checkpoint(ckpt, "trainer.json is not UTF-8 text"))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::checkpoint(ckpt, "has no trainer.json (not a complete checkpoint)"))
        }
        Err(e) => return Err(Error::io(&path, e)),
    };
    serde_json::from_str(&text).map_err(|e| Error::checkpoint(ckpt, format!("trainer.json is unreadable: {e}")))
}

/// The tokenizer of a checkpoint, from its `tokenizer.json` (with the separator its run used).
pub fn read_tokenizer(ckpt: &Path, trainer: &TrainerState) -> Result<Tokenizer> {
    let path = ckpt.join(TOKENIZER_FILE);
    if !path.is_file() {
        return Err(Error::checkpoint(ckpt, "has no tokenizer.json (not a complete checkpoint)"));
    }
    let tokenizer = Tokenizer::from_file(&path).map_err(|e| Error::checkpoint(ckpt, format!("tokenizer.json: {e}")))?;
    let tokenizer = tokenizer.with_doc_separator(trainer.config.doc_separator)?;
    let expected = trainer.config.model.vocab_size;
    if tokenizer.vocab_size() != expected {
        return Err(Error::checkpoint(
            ckpt,
            format!("tokenizer.json has {} tokens but the model was trained with {expected}", tokenizer.vocab_size()),
        ));
    }
    Ok(tokenizer)
}

/// The weights inference uses from checkpoint `ckpt`: the moving average when it has one.
pub fn inference_weights(ckpt: &Path) -> std::path::PathBuf {
    let ema = ckpt.join(EMA_FILE);
    if ema.is_file() { ema } else { ckpt.join(MODEL_FILE) }
}

/// Every parameter of `module` by path, as host tensors of their shapes.
pub fn module_tensors<M: Module>(module: &M) -> BTreeMap<String, HostTensor> {
    named_params(module).into_iter().map(|(name, flat)| (name, HostTensor::from_tensor(flat.value, flat.shape))).collect()
}

/// Loads parameters saved by [`write`] from `path` into `module`; every parameter must be
/// present with the same shape, and the file must hold nothing else.
pub fn load_module<M: Module>(module: M, path: &Path, device: &Device) -> Result<M> {
    let (mut named, _) = tensors::read(path)?;
    let expected = named_params(&module);
    for (name, flat) in &expected {
        match named.get(name) {
            None => {
                return Err(Error::checkpoint(path, format!("parameter `{name}` is missing: the checkpoint is of another model architecture")))
            }
            Some(t) if t.shape != flat.shape => {
                return Err(Error::checkpoint(path, format!("parameter `{name}` has shape {:?}, the model expects {:?}", t.shape, flat.shape)))
            }
            Some(t) => {
                t.f32_values(name).map_err(|e| Error::checkpoint(path, e.to_string()))?;
            }
        }
    }
    if let Some(extra) = named.keys().find(|k| !expected.contains_key(*k)) {
        return Err(Error::checkpoint(path, format!("unexpected parameter `{extra}`: the checkpoint is of another model architecture")));
    }
    let mut bad = None;
    let module = map_params(module, &mut |name, current| match named.remove(name).map(|t| t.to_flat(name, device)) {
        Some(Ok(t)) => t,
        Some(Err(e)) => {
            bad.get_or_insert(e);
            current
        }
        None => current,
    });
    match bad {
        Some(e) => Err(Error::checkpoint(path, e.to_string())),
        None => Ok(module),
    }
}
