//! Output files are written atomically: to a temporary file beside the target, then renamed, so a
//! failure never leaves a half-written file under the requested name.

use crate::error::{Error, Result};
use crate::weights::Tensor;
use std::path::Path;

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    if !dir.is_dir() {
        return Err(Error::file(path, format!("cannot write: directory {} does not exist", dir.display())));
    }
    let name = path.file_name().ok_or_else(|| Error::file(path, "not a file name"))?;
    let tmp = dir.join(format!(".{}.tmp{}", name.to_string_lossy(), std::process::id()));
    let res = std::fs::write(&tmp, bytes).and_then(|_| std::fs::rename(&tmp, path));
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::file(path, format!("cannot write: {e}")));
    }
    Ok(())
}

/// Serialises named f32 tensors as safetensors bytes.
pub fn safetensors_bytes(tensors: &[(String, Tensor)]) -> Result<Vec<u8>> {
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(n, t)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, t.shape.clone(), bytemuck::cast_slice(&t.data))
                .map(|v| (n.clone(), v))
                .map_err(|e| Error::invalid(format!("tensor `{n}`: {e}")))
        })
        .collect::<Result<_>>()?;
    safetensors::serialize(views, None).map_err(|e| Error::invalid(format!("cannot serialise safetensors: {e}")))
}

/// Writes named f32 tensors to a safetensors file, atomically.
pub fn write_safetensors(path: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
    write_atomic(path, &safetensors_bytes(tensors)?)
}
