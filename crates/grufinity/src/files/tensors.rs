//! Named tensors in safetensors files: checkpoints (weights, optimiser moments, carried states)
//! and saved generation states.
//!
//! Files are written here, byte for byte deterministic: tensors in name order, metadata keys
//! sorted (the `safetensors` crate serialises its metadata from a `HashMap`, whose order changes
//! from process to process, so the same weights saved twice gave different bytes). They are
//! read back with the `safetensors` crate, which validates the format.

use std::collections::BTreeMap;

use burn::tensor::{Device, Tensor};
use safetensors::tensor::{Dtype, SafeTensors};
use serde_json::{json, Map, Value};

use crate::error::{Error, Result};

/// The values of a tensor on the host.
#[derive(Clone, Debug, PartialEq)]
pub enum Values {
    F32(Vec<f32>),
    U32(Vec<u32>),
}

/// A tensor read from or written to a file: its shape and values.
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Values,
}

impl HostTensor {
    /// An f32 tensor.
    pub fn f32(shape: Vec<usize>, values: Vec<f32>) -> Self {
        Self { shape, data: Values::F32(values) }
    }

    /// A device tensor's values, with `shape` as its logical shape.
    pub fn from_tensor<const D: usize>(t: Tensor<D>, shape: Vec<usize>) -> Self {
        let values = t.into_data().convert::<f32>().try_into_vec::<f32>().unwrap_or_default();
        Self::f32(shape, values)
    }

    fn elements(&self) -> usize {
        match &self.data {
            Values::F32(v) => v.len(),
            Values::U32(v) => v.len(),
        }
    }

    /// The f32 values, or an error naming the tensor when it holds another type.
    pub fn f32_values(&self, name: &str) -> Result<&[f32]> {
        match &self.data {
            Values::F32(v) => Ok(v),
            Values::U32(_) => Err(Error::Data(format!("tensor `{name}` holds integers, expected f32"))),
        }
    }

    /// The values as a flat device tensor `[N]` (f32 only).
    pub fn to_flat(&self, name: &str, device: &Device) -> Result<Tensor<1>> {
        let values = self.f32_values(name)?.to_vec();
        let n = values.len();
        Ok(Tensor::from_data(burn::tensor::TensorData::new(values, [n]), device))
    }
}

/// Serialises `tensors` (in name order) with string `metadata` (sorted by key).
pub fn to_bytes(tensors: &BTreeMap<String, HostTensor>, metadata: &BTreeMap<String, String>) -> Result<Vec<u8>> {
    let mut header = Map::new();
    if !metadata.is_empty() {
        header.insert("__metadata__".into(), json!(metadata));
    }
    let mut offset = 0usize;
    for (name, t) in tensors {
        let n = t.elements();
        if n != t.shape.iter().product::<usize>() {
            return Err(Error::Data(format!("tensor `{name}`: {n} values do not fill the shape {:?}", t.shape)));
        }
        let dtype = match t.data {
            Values::F32(_) => "F32",
            Values::U32(_) => "U32",
        };
        header.insert(name.clone(), json!({"dtype": dtype, "shape": t.shape, "data_offsets": [offset, offset + 4 * n]}));
        offset += 4 * n;
    }
    // `Map` keeps keys sorted (serde_json without `preserve_order`) and is written compactly.
    let mut text = serde_json::to_string(&Value::Object(header)).map_err(|e| Error::Data(e.to_string()))?;
    while text.len() % 8 != 0 {
        text.push(' ');
    }
    let mut out = Vec::with_capacity(8 + text.len() + offset);
    out.extend_from_slice(&(text.len() as u64).to_le_bytes());
    out.extend_from_slice(text.as_bytes());
    for t in tensors.values() {
        match &t.data {
            Values::F32(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
            Values::U32(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        }
    }
    Ok(out)
}

/// Reads tensors (f32 or u32) and metadata from safetensors bytes. Errors say what is wrong,
/// without a file name (callers add it).
pub fn from_bytes(bytes: &[u8]) -> Result<(BTreeMap<String, HostTensor>, BTreeMap<String, String>)> {
    let bad = |e: safetensors::SafeTensorError| Error::Data(format!("not a valid safetensors file ({e}); it may be truncated"));
    let (_, meta) = SafeTensors::read_metadata(bytes).map_err(bad)?;
    let st = SafeTensors::deserialize(bytes).map_err(bad)?;
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        let words = view.data().chunks_exact(4).map(|c| [c[0], c[1], c[2], c[3]]);
        let data = match view.dtype() {
            Dtype::F32 => Values::F32(words.map(f32::from_le_bytes).collect()),
            Dtype::U32 => Values::U32(words.map(u32::from_le_bytes).collect()),
            other => return Err(Error::Data(format!("tensor `{name}` is {other:?}, expected F32"))),
        };
        out.insert(name, HostTensor { shape: view.shape().to_vec(), data });
    }
    let metadata = meta.metadata().clone().unwrap_or_default().into_iter().collect();
    Ok((out, metadata))
}

/// [`to_bytes`] written to `path` (not atomically: checkpoints are written inside a temporary
/// directory).
pub fn write(path: &std::path::Path, tensors: &BTreeMap<String, HostTensor>, metadata: &BTreeMap<String, String>) -> Result<()> {
    let bytes = to_bytes(tensors, metadata)?;
    std::fs::write(path, bytes).map_err(|e| Error::io(path, e))
}

/// [`from_bytes`] of the file at `path`; a missing file or bad contents are checkpoint errors
/// naming the file.
pub fn read(path: &std::path::Path) -> Result<(BTreeMap<String, HostTensor>, BTreeMap<String, String>)> {
    let bytes = std::fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::checkpoint(path, "file is missing"),
        _ => Error::io(path, e),
    })?;
    from_bytes(&bytes).map_err(|e| Error::checkpoint(path, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_are_deterministic_and_read_back() {
        let mut tensors = BTreeMap::new();
        tensors.insert("b.weight".to_string(), HostTensor::f32(vec![2, 3], vec![1.0, -2.0, 3.5, 0.0, 1e-30, 7.0]));
        tensors.insert("a".to_string(), HostTensor { shape: vec![3], data: Values::U32(vec![1, 2, u32::MAX]) });
        let meta: BTreeMap<String, String> =
            (0..20).map(|i| (format!("key{i}"), format!("value {i}"))).collect();
        let first = to_bytes(&tensors, &meta).unwrap();
        let second = to_bytes(&tensors.clone(), &meta.clone()).unwrap();
        assert_eq!(first, second);
        let (back, back_meta) = from_bytes(&first).unwrap();
        assert_eq!(back, tensors);
        assert_eq!(back_meta, meta);
        let header_len = u64::from_le_bytes(first[..8].try_into().unwrap()) as usize;
        assert_eq!(header_len % 8, 0);
        // Truncated files are refused with a message, not a panic.
        assert!(from_bytes(&first[..first.len() - 3]).unwrap_err().to_string().contains("truncated"));
        assert!(from_bytes(b"garbage").is_err());
    }
}
