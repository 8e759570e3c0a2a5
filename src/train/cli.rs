//! The `train-step` and `train` commands.

use super::checkpoint;
use super::net::{Batch, TrainNet};
use crate::error::{Error, Result};
use crate::weights::{read_safetensors, Tensor};
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
pub struct TrainStepArgs {
    /// Weights (safetensors state_dict with the public key names).
    #[arg(long)]
    pub weights: PathBuf,
    /// Batch: `images` N×3×H×W, `masks` and `edges` N×1×H×W (f32/f16/bf16), H and W multiples of 32.
    #[arg(long)]
    pub batch: PathBuf,
    /// Output: `loss` (scalar) and the gradient of every parameter under its public key.
    #[arg(long)]
    pub dump_grads: PathBuf,
}

fn check_writable(path: &Path) -> Result<()> {
    match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) if !dir.is_dir() => Err(Error::file(path, format!("cannot write: directory {} does not exist", dir.display()))),
        _ => Ok(()),
    }
}

/// Reads `images`, `masks`, `edges` from a safetensors file.
pub fn read_batch(path: &Path) -> Result<(Tensor, Tensor, Tensor)> {
    let mut t = read_safetensors(path)?;
    let mut take = |name: &str| {
        t.remove(name).ok_or_else(|| Error::file(path, format!("no tensor named `{name}` (a batch holds `images`, `masks`, `edges`)")))
    };
    let (images, masks, edges) = (take("images")?, take("masks")?, take("edges")?);
    let batch = Batch { images: &images, masks: &masks, edges: &edges };
    TrainNet::check_batch(&batch).map_err(|e| Error::file(path, e.to_string()))?;
    Ok((images, masks, edges))
}

/// One forward/backward in training mode; writes the loss and every parameter's gradient.
pub fn train_step(a: &TrainStepArgs) -> Result<()> {
    check_writable(&a.dump_grads)?;
    let loaded = checkpoint::load(&a.weights)?;
    let mut net = TrainNet::from_state_dict(&loaded.state, &loaded.num_batches_tracked)?;
    let (images, masks, edges) = read_batch(&a.batch)?;
    let parts = net
        .forward_backward(&Batch { images: &images, masks: &masks, edges: &edges })
        .map_err(|e| Error::file(&a.batch, e.to_string()))?;
    let mut out = vec![("loss".to_string(), Tensor { shape: vec![], data: vec![parts.total() as f32] })];
    out.extend(net.gradients());
    crate::io::write_safetensors(&a.dump_grads, &out)?;
    eprintln!(
        "loss {:.6} (edge {:.6}, map5 {:.6}, map4 {:.6}, map3 {:.6}, map2 {:.6})",
        parts.total(),
        parts.edge,
        parts.maps[0],
        parts.maps[1],
        parts.maps[2],
        parts.maps[3]
    );
    Ok(())
}
