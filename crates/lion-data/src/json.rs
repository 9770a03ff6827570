//! JSON helpers shared by the readers: whole-file parsing with located errors, record-by-record
//! decoding that names the bad record, and JSON-lines.

use std::path::Path;

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::{Error, Position, Result};

/// Reads and parses a whole JSON file.
pub fn read_value(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::Json {
        path: path.to_path_buf(),
        line: e.line(),
        column: e.column(),
        msg: e.to_string(),
    })
}

/// The array under `key` of a top-level object (or the top level itself when `key` is None).
pub fn array<'a>(path: &Path, v: &'a Value, key: Option<&str>) -> Result<&'a Vec<Value>> {
    let (what, x) = match key {
        Some(k) => {
            let obj = v.as_object().ok_or_else(|| {
                Error::at_index(
                    path,
                    "top level",
                    format!("expected an object with \"{k}\""),
                )
            })?;
            let x = obj
                .get(k)
                .ok_or_else(|| Error::at_index(path, "top level", format!("missing \"{k}\"")))?;
            (k.to_string(), x)
        }
        None => ("top level".to_string(), v),
    };
    x.as_array()
        .ok_or_else(|| Error::at_index(path, what, "expected a JSON array"))
}

/// Decodes every element of `items` as `T`, naming `prefix[i]` on failure.
pub fn decode_all<T: DeserializeOwned>(
    path: &Path,
    prefix: &str,
    items: &[Value],
) -> Result<Vec<T>> {
    items
        .iter()
        .enumerate()
        .map(|(i, v)| {
            T::deserialize(v).map_err(|e| {
                let at = if prefix.is_empty() {
                    i.to_string()
                } else {
                    format!("{prefix}[{i}]")
                };
                Error::at_index(path, at, e.to_string())
            })
        })
        .collect()
}

/// A JSON array file or a JSON-lines file (one object per line; blank lines skipped), decoded
/// record by record. Errors name the index or the line.
pub fn read_records<T: DeserializeOwned>(path: &Path) -> Result<Vec<T>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    if text.trim_start().starts_with('[') {
        let v: Value = serde_json::from_str(&text).map_err(|e| Error::Json {
            path: path.to_path_buf(),
            line: e.line(),
            column: e.column(),
            msg: e.to_string(),
        })?;
        let items = array(path, &v, None)?;
        return decode_all(path, "", items);
    }
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let t = serde_json::from_str::<T>(line)
            .map_err(|e| Error::record(path, Position::Line(i + 1), e.to_string()))?;
        out.push(t);
    }
    Ok(out)
}

/// An id that is a JSON number or string (COCO uses numbers, TextCaps and A-OKVQA strings),
/// kept as its string form.
pub mod id {
    use serde::{Deserialize, Deserializer};

    pub fn de<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Id {
            I(i64),
            U(u64),
            S(String),
        }
        Ok(
            match Id::deserialize(d)
                .map_err(|_| serde::de::Error::custom("expected an id (a number or a string)"))?
            {
                Id::I(i) => i.to_string(),
                Id::U(u) => u.to_string(),
                Id::S(s) => s,
            },
        )
    }
}
