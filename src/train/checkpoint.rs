//! Checkpoints as PyTorch state_dicts in safetensors: parameters and BN running statistics in f32 under
//! the public keys, `num_batches_tracked` as 0-dim i64 (what `load_state_dict(strict=True)` expects),
//! and any tensors the network does not use (e.g. `resnet.fc.*` of the public model) passed through
//! unchanged, so the file loads into the same PyTorch module the initial weights came from.

use super::net::TrainNet;
use crate::error::{Error, Result};
use crate::weights::{StateDict, Tensor};
use safetensors::{Dtype, SafeTensors};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// A tensor kept byte for byte.
#[derive(Clone, Debug)]
pub struct RawTensor {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub bytes: Vec<u8>,
}

pub struct Loaded {
    pub state: StateDict,
    pub num_batches_tracked: BTreeMap<String, i64>,
    pub passthrough: BTreeMap<String, RawTensor>,
}

fn int_value(dtype: Dtype, b: &[u8]) -> Option<i64> {
    match dtype {
        Dtype::I64 if b.len() >= 8 => Some(i64::from_le_bytes(b[..8].try_into().ok()?)),
        Dtype::I32 if b.len() >= 4 => Some(i32::from_le_bytes(b[..4].try_into().ok()?) as i64),
        _ => None,
    }
}

/// Reads weights for training: the float state_dict (as inference reads it) plus the counters and
/// the pass-through tensors that inference drops.
pub fn load(path: &Path) -> Result<Loaded> {
    let bytes = std::fs::read(path).map_err(|e| Error::file(path, format!("cannot read weights: {e}")))?;
    let state = StateDict::from_bytes(path, &bytes)?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| Error::file(path, format!("not a valid safetensors file: {e}")))?;
    let mut num_batches_tracked = BTreeMap::new();
    let mut passthrough = BTreeMap::new();
    for (raw, view) in st.tensors() {
        let name = raw.strip_prefix("module.").unwrap_or(&raw).to_string();
        if name.ends_with("num_batches_tracked") {
            if let Some(v) = int_value(view.dtype(), view.data()) {
                num_batches_tracked.insert(name, v);
                continue;
            }
        }
        if name.starts_with("resnet.fc.") {
            passthrough.insert(name, RawTensor { dtype: view.dtype(), shape: view.shape().to_vec(), bytes: view.data().to_vec() });
        }
    }
    Ok(Loaded { state, num_batches_tracked, passthrough })
}

/// Serialises mixed-dtype tensors.
pub fn serialize(tensors: &[(String, RawTensor)], metadata: Option<HashMap<String, String>>) -> Result<Vec<u8>> {
    let views = tensors
        .iter()
        .map(|(n, t)| {
            safetensors::tensor::TensorView::new(t.dtype, t.shape.clone(), &t.bytes)
                .map(|v| (n.clone(), v))
                .map_err(|e| Error::invalid(format!("tensor `{n}`: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    safetensors::serialize(views, metadata).map_err(|e| Error::invalid(format!("cannot serialise safetensors: {e}")))
}

pub fn f32_raw(t: &Tensor) -> RawTensor {
    RawTensor { dtype: Dtype::F32, shape: t.shape.clone(), bytes: bytemuck::cast_slice(&t.data).to_vec() }
}

/// The network's state_dict with public keys (+ pass-through tensors), as safetensors bytes.
pub fn state_dict_bytes(net: &TrainNet, passthrough: &BTreeMap<String, RawTensor>, metadata: Option<HashMap<String, String>>) -> Result<Vec<u8>> {
    let mut out: Vec<(String, RawTensor)> = net.float_state().iter().map(|(n, t)| (n.clone(), f32_raw(t))).collect();
    for b in &net.bns {
        let bytes = b.num_batches_tracked.to_le_bytes().to_vec();
        out.push((format!("{}.num_batches_tracked", b.prefix), RawTensor { dtype: Dtype::I64, shape: vec![], bytes }));
    }
    out.extend(passthrough.iter().map(|(n, t)| (n.clone(), t.clone())));
    serialize(&out, metadata)
}

/// Writes the checkpoint atomically.
pub fn save(path: &Path, net: &TrainNet, passthrough: &BTreeMap<String, RawTensor>, metadata: Option<HashMap<String, String>>) -> Result<()> {
    crate::io::write_atomic(path, &state_dict_bytes(net, passthrough, metadata)?)
}

/// A metadata entry of a safetensors file, if present.
pub fn metadata_value(path: &Path, key: &str) -> Result<Option<String>> {
    let bytes = std::fs::read(path).map_err(|e| Error::file(path, format!("cannot read: {e}")))?;
    let (_, meta) = SafeTensors::read_metadata(&bytes).map_err(|e| Error::file(path, format!("not a valid safetensors file: {e}")))?;
    Ok(meta.metadata().as_ref().and_then(|m| m.get(key).cloned()))
}
