//! The library error type. Every variant names what was wrong: the file, the key, the field.

use std::path::PathBuf;

use crate::weights::LoadReport;

/// Main error type of `lion-core`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A file exists but is not in the format we expected (corrupt, truncated, wrong kind).
    #[error("{path}: {msg}")]
    Format { path: PathBuf, msg: String },

    /// A checkpoint's keys do not fit the model: missing, unexpected or mis-shaped tensors.
    #[error("{source_name}: checkpoint does not fit the model: {report}")]
    Keys {
        source_name: String,
        report: Box<LoadReport>,
    },

    /// A configuration file or value is invalid.
    #[error("config {origin}: {msg}")]
    Config { origin: String, msg: String },

    /// Tokenizer loading or encoding failed.
    #[error("tokenizer {origin}: {msg}")]
    Tokenizer { origin: String, msg: String },

    /// Input given to a model or function is invalid (shape, length, value).
    #[error("invalid input: {0}")]
    Input(String),

    /// A model given as a folder or Hub id is in none of the places searched.
    #[error("model `{spec}` not found; looked in: {}; {hint}", searched.join(", "))]
    ModelNotFound {
        spec: String,
        searched: Vec<String>,
        hint: String,
    },

    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub fn format(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Format {
            path: path.into(),
            msg: msg.into(),
        }
    }

    pub fn config(origin: impl std::fmt::Display, msg: impl Into<String>) -> Self {
        Error::Config {
            origin: origin.to_string(),
            msg: msg.into(),
        }
    }
}

/// Shorthand for returning an [`Error::Input`].
#[macro_export]
macro_rules! input_err {
    ($($arg:tt)*) => {
        return Err($crate::Error::Input(format!($($arg)*)))
    };
}
