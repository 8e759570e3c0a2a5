//! Typed errors. Every error a user can cause names the file (or argument) and the problem in one line.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A problem with a named file: unreadable, corrupt, wrong contents.
    #[error("{}: {msg}", path.display())]
    File { path: PathBuf, msg: String },
    /// A problem with an argument or an input that is not a file (a tensor shape, an option).
    #[error("{0}")]
    Invalid(String),
    /// The requested device cannot be used (no driver, no GPU, kernels not built).
    #[error("{0}")]
    Device(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn file(path: impl AsRef<Path>, msg: impl Into<String>) -> Error {
        Error::File { path: path.as_ref().to_path_buf(), msg: msg.into() }
    }
    pub fn invalid(msg: impl Into<String>) -> Error {
        Error::Invalid(msg.into())
    }
}
