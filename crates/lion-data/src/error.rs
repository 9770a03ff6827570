//! Reader errors: every one names the file and, for a bad record, its position.

use std::fmt;
use std::path::{Path, PathBuf};

/// Where a bad record sits in its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Position {
    /// 0-based index in a JSON array (or a key path such as `annotations[3]`).
    Index(String),
    /// 1-based line of a JSON-lines file.
    Line(usize),
    /// Byte offset in a binary (pickle) file.
    Byte(usize),
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Position::Index(i) => write!(f, "record {i}"),
            Position::Line(l) => write!(f, "line {l}"),
            Position::Byte(b) => write!(f, "byte {b}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is not valid JSON at all.
    #[error("{}: invalid JSON at line {line}, column {column}: {msg}", path.display())]
    Json {
        path: PathBuf,
        line: usize,
        column: usize,
        msg: String,
    },
    /// A record (or the file's top level) does not have the expected shape.
    #[error("{}: {position}: {msg}", path.display())]
    Record {
        path: PathBuf,
        position: Position,
        msg: String,
    },
}

impl Error {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        Error::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    pub fn record(path: &Path, position: Position, msg: impl Into<String>) -> Self {
        Error::Record {
            path: path.to_path_buf(),
            position,
            msg: msg.into(),
        }
    }

    pub fn at_index(path: &Path, index: impl fmt::Display, msg: impl Into<String>) -> Self {
        Self::record(path, Position::Index(index.to_string()), msg)
    }
}

pub type Result<T> = std::result::Result<T, Error>;
