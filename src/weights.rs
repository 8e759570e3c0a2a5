//! Loading a PyTorch state_dict stored as safetensors.
//!
//! Floating tensors (f32, f16, bf16) are converted to f32. Integer `num_batches_tracked` entries are
//! dropped, a leading `module.` (DataParallel) is stripped, and `resnet.fc.*` (the unused ImageNet
//! classifier) is ignored. Anything else that is unusual is an error naming the file and the tensor.

use crate::error::{Error, Result};
use safetensors::{Dtype, SafeTensors};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl Tensor {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

#[derive(Clone, Debug, Default)]
pub struct StateDict {
    pub path: PathBuf,
    pub tensors: BTreeMap<String, Tensor>,
    /// Stored dtype of every kept tensor, for `infnet info`.
    pub dtypes: BTreeMap<String, String>,
}

/// Decodes little-endian tensor bytes of a floating dtype into f32.
pub fn to_f32(dtype: Dtype, bytes: &[u8]) -> Option<Vec<f32>> {
    Some(match dtype {
        Dtype::F32 => bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
        Dtype::F16 => bytes.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        Dtype::BF16 => bytes.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        _ => return None,
    })
}

fn is_integer(d: Dtype) -> bool {
    matches!(d, Dtype::I64 | Dtype::I32 | Dtype::I16 | Dtype::I8 | Dtype::U8 | Dtype::U16 | Dtype::U32 | Dtype::U64)
}

/// Reads every tensor of a safetensors file as f32 (any dtype other than f32/f16/bf16 is an error).
/// Used for input and fixture files where no state_dict filtering applies.
pub fn read_safetensors(path: &Path) -> Result<BTreeMap<String, Tensor>> {
    let bytes = std::fs::read(path).map_err(|e| Error::file(path, format!("cannot read: {e}")))?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| Error::file(path, format!("not a valid safetensors file: {e}")))?;
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        let data = to_f32(view.dtype(), view.data()).ok_or_else(|| {
            Error::file(path, format!("tensor `{name}` has unsupported dtype {:?} (expected f32, f16 or bf16)", view.dtype()))
        })?;
        out.insert(name.to_string(), Tensor { shape: view.shape().to_vec(), data });
    }
    Ok(out)
}

impl StateDict {
    pub fn load(path: impl AsRef<Path>) -> Result<StateDict> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| Error::file(path, format!("cannot read weights: {e}")))?;
        Self::from_bytes(path, &bytes)
    }

    pub fn from_bytes(path: &Path, bytes: &[u8]) -> Result<StateDict> {
        let st = SafeTensors::deserialize(bytes)
            .map_err(|e| Error::file(path, format!("not a valid safetensors file: {e}")))?;
        let mut sd = StateDict { path: path.to_path_buf(), ..Default::default() };
        let mut bad_dtype = Vec::new();
        for (raw_name, view) in st.tensors() {
            let name = raw_name.strip_prefix("module.").unwrap_or(&raw_name).to_string();
            if name.starts_with("resnet.fc.") {
                continue;
            }
            if name.ends_with("num_batches_tracked") && is_integer(view.dtype()) {
                continue;
            }
            match to_f32(view.dtype(), view.data()) {
                Some(data) => {
                    sd.dtypes.insert(name.clone(), format!("{:?}", view.dtype()).to_lowercase());
                    if sd.tensors.insert(name.clone(), Tensor { shape: view.shape().to_vec(), data }).is_some() {
                        return Err(Error::file(path, format!("tensor `{name}` appears twice (with and without `module.`)")));
                    }
                }
                None => bad_dtype.push(format!("{name} ({:?})", view.dtype())),
            }
        }
        if !bad_dtype.is_empty() {
            bad_dtype.sort();
            return Err(Error::file(
                path,
                format!("unsupported dtype (expected f32, f16 or bf16) for {} tensor(s): {}", bad_dtype.len(), bad_dtype.join(", ")),
            ));
        }
        if sd.tensors.is_empty() {
            return Err(Error::file(path, "contains no weight tensors"));
        }
        Ok(sd)
    }

    /// Count of each stored dtype, for `infnet info`.
    pub fn dtype_summary(&self) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for d in self.dtypes.values() {
            *m.entry(d.clone()).or_insert(0) += 1;
        }
        m
    }
}
