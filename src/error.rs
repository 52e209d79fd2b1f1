//! Crate-wide error type: one variant per layer, each carrying the context
//! (file, field, shape) a user needs to fix the input.

use std::path::PathBuf;

/// Any error a FEDHEX library call can return.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A tensor operation failed inside libtorch.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The operating-system error.
        source: std::io::Error,
    },
    /// The run configuration is invalid.
    #[error("configuration: {0}")]
    Config(String),
    /// Input data is unusable (bad shape, non-finite values, empty selection...).
    #[error("data: {0}")]
    Data(String),
    /// A model file is corrupt or does not match its description.
    #[error("model {path}: {msg}")]
    Model {
        /// The model directory or file.
        path: PathBuf,
        /// What is wrong with it.
        msg: String,
    },
    /// Training cannot continue (non-finite loss, ...).
    #[error("training: {0}")]
    Train(String),
    /// A collective operation between ranks failed.
    #[error("communication: {0}")]
    Comm(String),
}

impl Error {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }

    /// A model-file error for `path`.
    pub fn model(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Model { path: path.into(), msg: msg.into() }
    }
}

/// Result alias used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
