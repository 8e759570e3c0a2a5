//! `infnet bench`: forward latency and throughput.
use crate::error::{Error, Result};

#[derive(clap::Args, Debug)]
pub struct BenchArgs {}

pub fn run(_a: &BenchArgs) -> Result<()> {
    Err(Error::invalid("bench: under construction"))
}
