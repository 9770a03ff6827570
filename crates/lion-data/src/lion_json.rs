//! LION's training/instruction data (`datasets/jsonl_vqa.py`): a JSON array (or JSON lines) of
//! `{image | image_path | image_id, question, answer, category, tags}`.
//! `answer` may be a list (the first element is used); `tags` a list (joined with ", ") or a string;
//! `category` in {ref, region, region_level, grounding} means region level, anything else image
//! level: the sample's [`Route`].

use std::path::Path;

use lion_core::adapter::Route;
use serde::Deserialize;
use serde_json::Value;

use crate::error::{Error, Position, Result};

#[derive(Debug, Clone, PartialEq)]
pub struct LionSample {
    pub image: String,
    pub question: String,
    pub answer: String,
    pub category: String,
    /// The router branch the sample trains (its task level), from `category`.
    pub route: Route,
    /// The tags as the prompt uses them ("a, b, c"), empty when absent.
    pub tags: String,
}

#[derive(Deserialize)]
struct Raw {
    #[serde(default)]
    image: Option<String>,
    #[serde(default)]
    image_path: Option<String>,
    #[serde(default)]
    image_id: Option<Value>,
    question: String,
    answer: Value,
    #[serde(default)]
    category: Option<String>,
    #[serde(default)]
    tags: Option<Value>,
}

fn convert(r: Raw) -> std::result::Result<LionSample, String> {
    let image = match (r.image, r.image_path, r.image_id) {
        (Some(i), _, _) | (None, Some(i), _) => i,
        (None, None, Some(Value::String(s))) => s,
        (None, None, Some(Value::Number(n))) => n.to_string(),
        _ => return Err("no \"image\", \"image_path\" or \"image_id\"".into()),
    };
    let answer = match r.answer {
        Value::String(s) => s,
        Value::Array(a) => match a.first() {
            Some(Value::String(s)) => s.clone(),
            _ => return Err("\"answer\" list must start with a string".into()),
        },
        _ => return Err("\"answer\" must be a string or a list of strings".into()),
    };
    let tags = match r.tags {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s,
        Some(Value::Array(a)) => {
            let t: Option<Vec<&str>> = a.iter().map(Value::as_str).collect();
            t.ok_or("\"tags\" must hold strings")?.join(", ")
        }
        Some(_) => return Err("\"tags\" must be a string or a list of strings".into()),
    };
    let category = r.category.unwrap_or_default();
    let route = match category.as_str() {
        "ref" | "region" | "region_level" | "grounding" => Route::RegionLevel,
        _ => Route::ImageLevel,
    };
    Ok(LionSample {
        image,
        question: r.question,
        answer,
        category,
        route,
        tags,
    })
}

/// Reads LION training data (JSON array or JSON lines).
pub fn read_lion(path: &Path) -> Result<Vec<LionSample>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let is_array = text.trim_start().starts_with('[');
    let raws: Vec<(Position, Value)> = if is_array {
        let v = crate::json::read_value(path)?;
        crate::json::array(path, &v, None)?
            .iter()
            .enumerate()
            .map(|(i, x)| (Position::Index(i.to_string()), x.clone()))
            .collect()
    } else {
        let mut out = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let v: Value = serde_json::from_str(line)
                .map_err(|e| Error::record(path, Position::Line(i + 1), e.to_string()))?;
            out.push((Position::Line(i + 1), v));
        }
        out
    };
    raws.into_iter()
        .map(|(pos, v)| {
            let raw = Raw::deserialize(&v)
                .map_err(|e| Error::record(path, pos.clone(), e.to_string()))?;
            convert(raw).map_err(|m| Error::record(path, pos, m))
        })
        .collect()
}
