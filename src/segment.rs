//! `infnet segment`: image slices in, probability maps (and masks, overlays) out.
use crate::error::{Error, Result};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct SegmentArgs {
    /// Weights (.safetensors).
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Input images.
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(_a: &SegmentArgs) -> Result<()> {
    Err(Error::invalid("segment: under construction"))
}
