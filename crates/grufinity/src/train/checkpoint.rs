//! Checkpoint files: named tensors in safetensors, written atomically.
//!
//! A checkpoint is a directory, `checkpoints/step-<N>/`, built under a temporary name and
//! renamed into place once complete, so a crash or a full disk mid-write never leaves a
//! directory that looks valid. `last` and `best` are symbolic links, replaced atomically.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use super::params::{map_params, named_params};
use crate::error::{Error, Result};

/// A tensor read from a file: shape and f32 values.
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
}

impl HostTensor {
    /// Flat device tensor `[N]`.
    pub fn to_flat(&self, device: &Device) -> Tensor<1> {
        Tensor::from_data(TensorData::new(self.values.clone(), [self.values.len()]), device)
    }
}

/// Writes named tensors (flat values with their logical shapes) as f32 safetensors, with
/// optional string metadata.
pub fn save_tensors(
    path: &Path,
    tensors: Vec<(String, Vec<usize>, Tensor<1>)>,
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    let host: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .into_iter()
        .map(|(name, shape, t)| {
            let values = t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap_or_default();
            let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            (name, shape, bytes)
        })
        .collect();
    let views = host
        .iter()
        .map(|(name, shape, bytes)| {
            let view = TensorView::new(Dtype::F32, shape.clone(), bytes)
                .map_err(|e| Error::checkpoint(path, format!("cannot encode `{name}`: {e}")))?;
            Ok((name.clone(), view))
        })
        .collect::<Result<Vec<_>>>()?;
    safetensors::serialize_to_file(views, metadata, path)
        .map_err(|e| Error::checkpoint(path, format!("cannot write: {e}")))
}

/// Reads every tensor of a safetensors file (f32 only) and its metadata.
pub fn load_tensors(path: &Path) -> Result<(BTreeMap<String, HostTensor>, HashMap<String, String>)> {
    let bytes = std::fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::checkpoint(path, "file is missing"),
        _ => Error::io(path, e),
    })?;
    let bad = |e: safetensors::SafeTensorError| Error::checkpoint(path, format!("not a valid safetensors file ({e}); it may be truncated"));
    let (_, meta) = SafeTensors::read_metadata(&bytes).map_err(bad)?;
    let st = SafeTensors::deserialize(&bytes).map_err(bad)?;
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        if view.dtype() != Dtype::F32 {
            return Err(Error::checkpoint(path, format!("tensor `{name}` is {:?}, expected F32", view.dtype())));
        }
        let values = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        out.insert(name, HostTensor { shape: view.shape().to_vec(), values });
    }
    Ok((out, meta.metadata().clone().unwrap_or_default()))
}

/// Saves every parameter of `module` by path.
pub fn save_module<M: Module>(module: &M, path: &Path, metadata: Option<HashMap<String, String>>) -> Result<()> {
    let tensors = named_params(module)
        .into_iter()
        .map(|(name, flat)| (name, flat.shape, flat.value))
        .collect();
    save_tensors(path, tensors, metadata)
}

/// Loads parameters saved by [`save_module`] into `module`; every parameter must be present
/// with the same shape, and the file must hold nothing else.
pub fn load_module<M: Module>(module: M, path: &Path, device: &Device) -> Result<M> {
    let (mut tensors, _) = load_tensors(path)?;
    let expected = named_params(&module);
    for (name, flat) in &expected {
        match tensors.get(name) {
            None => return Err(Error::checkpoint(path, format!("parameter `{name}` is missing: the checkpoint is of another model architecture"))),
            Some(t) if t.shape != flat.shape => {
                return Err(Error::checkpoint(
                    path,
                    format!("parameter `{name}` has shape {:?}, the model expects {:?}", t.shape, flat.shape),
                ))
            }
            Some(_) => {}
        }
    }
    if let Some(extra) = tensors.keys().find(|k| !expected.contains_key(*k)) {
        return Err(Error::checkpoint(path, format!("unexpected parameter `{extra}`: the checkpoint is of another model architecture")));
    }
    Ok(map_params(module, &mut |name, current| match tensors.remove(name) {
        Some(t) => t.to_flat(device),
        None => current,
    }))
}

/// Builds a directory at `dir` atomically: `fill` writes into a temporary sibling, which is
/// then renamed to `dir` (replacing an older `dir` only after the new one is complete).
pub fn write_dir_atomically(dir: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let parent = dir.parent().ok_or_else(|| Error::checkpoint(dir, "has no parent directory"))?;
    std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or("checkpoint");
    let tmp = parent.join(format!(".tmp-{name}-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    std::fs::create_dir(&tmp).map_err(|e| Error::io(&tmp, e))?;
    if let Err(e) = fill(&tmp) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    let old = parent.join(format!(".old-{name}-{}", std::process::id()));
    let replaced = dir.exists();
    if replaced {
        std::fs::rename(dir, &old).map_err(|e| Error::io(dir, e))?;
    }
    std::fs::rename(&tmp, dir).map_err(|e| Error::io(dir, e))?;
    if replaced {
        let _ = std::fs::remove_dir_all(&old);
    }
    Ok(())
}

/// Points the link `name` (e.g. `last`, `best`) inside `dir` at `target` (a sibling directory
/// name), atomically.
pub fn point_link(dir: &Path, name: &str, target: &str) -> Result<()> {
    let link = dir.join(name);
    let tmp = dir.join(format!(".tmp-link-{name}-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    #[cfg(unix)]
    std::os::unix::fs::symlink(target, &tmp).map_err(|e| Error::io(&tmp, e))?;
    #[cfg(not(unix))]
    std::fs::write(&tmp, target).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, &link).map_err(|e| Error::io(&link, e))
}

/// Writes `contents` to `path` atomically (temporary file, then rename).
pub fn write_file_atomically(path: &Path, contents: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    std::fs::write(&tmp, contents).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// Resolves a user-given run directory or checkpoint directory to a checkpoint directory:
/// a run gives its `best` checkpoint if any, else its `last`.
pub fn resolve_checkpoint(path: &Path, prefer: &str) -> Result<PathBuf> {
    if !path.exists() {
        return Err(Error::NotFound(path.to_path_buf()));
    }
    if path.join("trainer.json").is_file() {
        return Ok(path.to_path_buf());
    }
    let ckpts = path.join("checkpoints");
    let other = if prefer == "best" { "last" } else { "best" };
    for name in [prefer, other] {
        let c = ckpts.join(name);
        if c.join("trainer.json").is_file() {
            return Ok(c.canonicalize().unwrap_or(c));
        }
    }
    Err(Error::checkpoint(path, "is neither a run directory with checkpoints nor a checkpoint directory"))
}
