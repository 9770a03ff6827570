//! Tags with scores, the one type and the one text form: `"dog: 0.92, grass: 0.81"`.
//!
//! RAM tags an image with scores; LION's prompt and Dynamic LION's tag encoder read them as text
//! (`tag: score`, 2 decimals, `", "`-joined). [`ScoredTag`] is that pair (serde: `{"tag", "score"}`,
//! the server's and the JSON files' object form); `Display` writes one, [`format_list`] a list.
//! The score is an `f32` (a tagger's probability) unless said otherwise: the tag encoder's images
//! file keeps the score as written (`ScoredTag<Option<f64>>`, no score for a bare tag).
//! Reading, from the loosest to the strictest input:
//! - [`ScoredTag::parse_or_bare`]: a training sample's tag, `"red: 0.93"` or a bare `"red"`
//!   (ground truth, score 1);
//! - [`ScoredTag::parse_optional`]: `"red: 0.93"` or a bare `"red"` (no score); a colon must be
//!   followed by a score;
//! - [`parse_list`]: the command line's `tag:score,tag:score`;
//! - [`from_json`]: a JSON list whose items are `"tag:score"`, `{"tag", "score"}` (score 1 when
//!   absent) or `[tag, score]`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A tag and its score (by default a tagger's `f32` probability).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScoredTag<S = f32> {
    pub tag: String,
    pub score: S,
}

impl ScoredTag {
    pub fn new(tag: impl Into<String>, score: f32) -> Self {
        Self {
            tag: tag.into(),
            score,
        }
    }

    /// `"red: 0.93"` (a tagger's confidence) or a bare `"red"` (ground truth, score 1). A colon
    /// that is not followed by a number is part of the name.
    pub fn parse_or_bare(t: &str) -> Self {
        if let Some((name, score)) = t.rsplit_once(": ") {
            if let Ok(v) = score.trim().parse::<f32>() {
                return Self::new(name, v);
            }
        }
        Self::new(t, 1.0)
    }

    /// `"tag:score"` (spaces around either part trimmed); the score is required.
    pub fn parse(t: &str) -> Result<Self, String> {
        Self::parse_as(t)
    }

    pub fn into_pair(self) -> (String, f32) {
        (self.tag, self.score)
    }
}

impl<S: FromStr> ScoredTag<S> {
    /// `"tag:score"` (spaces around either part trimmed), the score read as an `S`; the score is
    /// required.
    pub fn parse_as(t: &str) -> Result<Self, String> {
        let (name, score) = t
            .rsplit_once(':')
            .ok_or(format!("tag `{t}` is not tag:score"))?;
        let score = score
            .trim()
            .parse()
            .map_err(|_| format!("tag `{t}`: bad score"))?;
        Ok(Self {
            tag: name.trim().to_string(),
            score,
        })
    }
}

impl<S: FromStr> ScoredTag<Option<S>> {
    /// `"tag: score"` as [`ScoredTag::parse_as`], or a bare `"tag"` (no colon; trimmed), which
    /// has no score.
    pub fn parse_optional(t: &str) -> Result<Self, String> {
        if !t.contains(':') {
            return Ok(Self {
                tag: t.trim().to_string(),
                score: None,
            });
        }
        let ScoredTag { tag, score } = ScoredTag::<S>::parse_as(t)?;
        Ok(Self {
            tag,
            score: Some(score),
        })
    }
}

impl fmt::Display for ScoredTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {:.2}", self.tag, self.score)
    }
}

/// One tag's text, `"dog: 0.92"` (what [`ScoredTag`]'s `Display` writes).
pub fn format_one(tag: &str, score: f32) -> String {
    ScoredTag::new(tag, score).to_string()
}

/// Dynamic LION's tag-encoder input: `"tag: 0.92, tag: 0.81"` (scores with 2 decimals).
pub fn format_list<S: AsRef<str>>(tags: &[(S, f32)]) -> String {
    tags.iter()
        .map(|(t, s)| format_one(t.as_ref(), *s))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The command line's `tag:score,tag:score` (empty items skipped).
pub fn parse_list(s: &str) -> Result<Vec<(String, f32)>, String> {
    s.split(',')
        .filter(|t| !t.trim().is_empty())
        .map(|t| ScoredTag::parse(t).map(ScoredTag::into_pair))
        .collect()
}

/// A JSON `tags` list: items `"tag:score"`, `{"tag", "score"}` (score 1 when absent) or
/// `[tag, score]`; no list is no tags.
pub fn from_json(v: Option<&Value>) -> Result<Vec<(String, f32)>, String> {
    let Some(v) = v else { return Ok(vec![]) };
    let arr = v.as_array().ok_or("`tags` must be a list")?;
    arr.iter()
        .map(|t| match t {
            Value::String(s) => parse_list(s).and_then(|mut v| v.pop().ok_or("empty tag".into())),
            Value::Object(o) => {
                let tag = o
                    .get("tag")
                    .and_then(Value::as_str)
                    .ok_or("tag object without `tag`")?;
                let score = o.get("score").and_then(Value::as_f64).unwrap_or(1.0) as f32;
                Ok((tag.to_string(), score))
            }
            Value::Array(a) if a.len() == 2 => Ok((
                a[0].as_str().ok_or("tag pair needs a name")?.to_string(),
                a[1].as_f64().ok_or("tag pair needs a score")? as f32,
            )),
            _ => Err("each tag is \"tag:score\", {\"tag\",\"score\"} or [tag, score]".into()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_and_parse_are_a_pair() {
        let t = ScoredTag::new("dog", 0.923);
        assert_eq!(t.to_string(), "dog: 0.92");
        assert_eq!(
            ScoredTag::parse("dog: 0.92"),
            Ok(ScoredTag::new("dog", 0.92))
        );
        assert_eq!(
            ScoredTag::parse_or_bare("dog: 0.92"),
            ScoredTag::new("dog", 0.92)
        );
        assert_eq!(
            format_list(&[("dog", 0.923f32), ("grass", 0.8)]),
            "dog: 0.92, grass: 0.80"
        );
        let list = parse_list(&format_list(&[("dog", 0.923f32), ("grass", 0.8)])).unwrap();
        assert_eq!(list, vec![("dog".into(), 0.92), ("grass".into(), 0.8)]);
    }

    #[test]
    fn the_readers_rules() {
        assert_eq!(
            ScoredTag::parse_or_bare("red circle"),
            ScoredTag::new("red circle", 1.0)
        );
        // A colon that is not followed by a number is part of the name.
        assert_eq!(
            ScoredTag::parse_or_bare("a: b"),
            ScoredTag::new("a: b", 1.0)
        );
        assert!(ScoredTag::parse("red").is_err());
        assert!(ScoredTag::parse("red:x").is_err());
        assert_eq!(parse_list("a:0.5, ,b: 1").unwrap().len(), 2);
        let v: Value = serde_json::json!(["a:0.5", {"tag": "b"}, ["c", 0.25]]);
        assert_eq!(
            from_json(Some(&v)).unwrap(),
            vec![("a".into(), 0.5), ("b".into(), 1.0), ("c".into(), 0.25)]
        );
        assert!(from_json(Some(&serde_json::json!([1]))).is_err());
        assert!(from_json(Some(&serde_json::json!("a:1"))).is_err());
        assert_eq!(from_json(None).unwrap(), vec![]);
        let o: ScoredTag = serde_json::from_str(r#"{"tag":"dog","score":0.5}"#).unwrap();
        assert_eq!(o, ScoredTag::new("dog", 0.5));
        assert!(serde_json::from_str::<ScoredTag>(r#"{"tag":"dog","score":0.5,"x":1}"#).is_err());
        // the score as written, or none for a bare tag
        let t = ScoredTag::<Option<f64>>::parse_optional(" t-shirt : 0.93 ").unwrap();
        assert_eq!((t.tag.as_str(), t.score), ("t-shirt", Some(0.93f64)));
        let t = ScoredTag::<Option<f64>>::parse_optional(" sky ").unwrap();
        assert_eq!((t.tag.as_str(), t.score), ("sky", None));
        assert!(ScoredTag::<Option<f64>>::parse_optional("dog: high").is_err());
    }
}
