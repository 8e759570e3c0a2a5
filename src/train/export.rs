//! f16 copies of checkpoints: every float tensor (parameters and BatchNorm statistics) rounded to
//! IEEE half precision under its public key, `num_batches_tracked` kept as i64. Inference and
//! `--init` read f16 state_dicts directly, so the copy is a drop-in, half-size weights file.

use super::checkpoint::{self, RawTensor};
use crate::error::{Error, Result};
use safetensors::Dtype;
use std::path::Path;

/// Reads the checkpoint at `src` and writes its f16 copy to `dst` atomically.
pub fn write_f16(src: &Path, dst: &Path) -> Result<()> {
    let loaded = checkpoint::load(src)?;
    let mut out: Vec<(String, RawTensor)> = Vec::new();
    for (name, t) in &loaded.state.tensors {
        if let Some(v) = t.data.iter().find(|v| !v.is_finite() || v.abs() > 65504.0) {
            return Err(Error::file(src, format!("tensor `{name}` holds {v}, which f16 cannot represent")));
        }
        let bytes: Vec<u8> = t.data.iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect();
        out.push((name.clone(), RawTensor { dtype: Dtype::F16, shape: t.shape.clone(), bytes }));
    }
    for (name, n) in &loaded.num_batches_tracked {
        out.push((name.clone(), RawTensor { dtype: Dtype::I64, shape: vec![], bytes: n.to_le_bytes().to_vec() }));
    }
    let meta = [("format".to_string(), "pt".to_string())].into_iter().collect();
    if let Some(dir) = dst.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::file(dst, format!("cannot create directory {}: {e}", dir.display())))?;
    }
    crate::io::write_atomic(dst, &checkpoint::serialize(&out, Some(meta))?)
}
