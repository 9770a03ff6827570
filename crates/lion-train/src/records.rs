//! JSON-lines inputs and outputs of the tag-encoder stages.
//!
//! Images file, one object per line:
//! `{"image": id, "captions": ["...", ...], "tags": [{"tag": "dog", "score": 0.93}, ...]}`.
//! `image` is a string or a number (echoed as given). `tags` may also be a list of `"tag: score"`
//! strings, or one already-formatted string `"tag: score, tag: score"` (used verbatim as the
//! anchor text). A tag string without `": score"` is a bare tag. `tags` may be absent for caption
//! selection; training needs it.
//!
//! Chosen-captions file (written by `lion select-captions`), one object per line:
//! `{"image": id, "caption": "...", "index": i}` where `caption == captions[i]` of that image.
//!
//! Every malformed line is reported with its file and 1-based line number.

use std::collections::HashMap;
use std::io::{BufRead, BufWriter, Write};
use std::path::{Path, PathBuf};

use lion_core::tags::ScoredTag;
use lion_core::{Error, Result};
use serde_json::Value;

/// The tags of an image: a parsed list (each score as written in the file; a bare tag has none),
/// or a string to use verbatim.
#[derive(Debug, Clone, PartialEq)]
pub enum Tags {
    List(Vec<ScoredTag<Option<f64>>>),
    Text(String),
}

impl Tags {
    /// The tag encoder's input text: `"tag: score, tag: score, ..."` (DynLION's format; scores as
    /// Python's `repr(float)` prints them, e.g. `0.9999895095825195`, `1.0`, `1e-05`).
    pub fn to_text(&self) -> String {
        match self {
            Tags::Text(s) => s.clone(),
            Tags::List(tags) => tags
                .iter()
                .map(|t| match t.score {
                    Some(s) => format!("{}: {}", t.tag, python_float_repr(s)),
                    None => t.tag.clone(),
                })
                .collect::<Vec<_>>()
                .join(", "),
        }
    }
}

/// `repr(x)` of a Python float: the shortest round-tripping digits, in positional notation when
/// the decimal exponent is in [-4, 16), else scientific with a two-digit exponent.
pub fn python_float_repr(x: f64) -> String {
    if x.is_nan() {
        return "nan".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf".into() } else { "-inf".into() };
    }
    if x == 0.0 {
        return if x.is_sign_negative() { "-0.0" } else { "0.0" }.into();
    }
    let sci = format!("{x:e}"); // e.g. "9.999895095825195e-1", "1e-5"
    let (mantissa, exp) = sci.split_once('e').expect("{:e} has an exponent");
    let exp: i32 = exp.parse().expect("integer exponent");
    if (-4..16).contains(&exp) {
        let s = format!("{x}");
        if s.contains('.') {
            s
        } else {
            format!("{s}.0")
        }
    } else {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exp.abs())
    }
}

/// One image of the images file.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageRecord {
    /// The `image` field as given (string or number).
    pub image: Value,
    pub captions: Vec<String>,
    pub tags: Option<Tags>,
    /// 1-based line in the file it came from.
    pub line: usize,
}

impl ImageRecord {
    /// A key that identifies the image (`image` as compact JSON).
    pub fn key(&self) -> String {
        self.image.to_string()
    }
}

/// A chosen caption.
#[derive(Debug, Clone, PartialEq)]
pub struct Chosen {
    pub image: Value,
    pub caption: String,
    pub index: usize,
}

fn line_err(path: &Path, line: usize, msg: impl std::fmt::Display) -> Error {
    Error::format(path, format!("line {line}: {msg}"))
}

/// Non-empty lines of a JSONL file as `(line number, parsed object)`.
fn json_lines(path: &Path) -> Result<Vec<(usize, serde_json::Map<String, Value>)>> {
    let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut out = vec![];
    for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
        let n = i + 1;
        let line = line.map_err(|e| line_err(path, n, e))?;
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Value>(&line) {
            Ok(Value::Object(m)) => out.push((n, m)),
            Ok(_) => return Err(line_err(path, n, "expected a JSON object")),
            Err(e) => return Err(line_err(path, n, format!("invalid JSON: {e}"))),
        }
    }
    Ok(out)
}

fn image_id(path: &Path, n: usize, m: &serde_json::Map<String, Value>) -> Result<Value> {
    match m.get("image") {
        Some(v @ (Value::String(_) | Value::Number(_))) => Ok(v.clone()),
        Some(_) => Err(line_err(path, n, "`image` must be a string or a number")),
        None => Err(line_err(path, n, "missing field `image`")),
    }
}

fn parse_tags(path: &Path, n: usize, v: &Value) -> Result<Tags> {
    match v {
        Value::String(s) => Ok(Tags::Text(s.clone())),
        Value::Array(items) => {
            let mut tags = Vec::with_capacity(items.len());
            for (j, item) in items.iter().enumerate() {
                let tag = match item {
                    Value::String(s) => ScoredTag::parse_optional(s).map_err(|_| {
                        line_err(
                            path,
                            n,
                            format!("tag `{s}`: expected `tag: score` with a numeric score"),
                        )
                    })?,
                    Value::Object(o) => {
                        let tag = o.get("tag").and_then(Value::as_str).ok_or_else(|| {
                            line_err(path, n, format!("tags[{j}]: missing string field `tag`"))
                        })?;
                        let score = match o.get("score") {
                            None | Some(Value::Null) => None,
                            Some(s) => Some(s.as_f64().ok_or_else(|| {
                                line_err(path, n, format!("tags[{j}]: `score` must be a number"))
                            })?),
                        };
                        ScoredTag {
                            tag: tag.to_string(),
                            score,
                        }
                    }
                    _ => {
                        return Err(line_err(
                            path,
                            n,
                            format!("tags[{j}]: expected {{\"tag\", \"score\"}} or \"tag: score\""),
                        ))
                    }
                };
                if tag.tag.is_empty() {
                    return Err(line_err(path, n, format!("tags[{j}]: empty tag name")));
                }
                if tag.score.is_some_and(|s| !s.is_finite()) {
                    return Err(line_err(path, n, format!("tags[{j}]: score is not finite")));
                }
                tags.push(tag);
            }
            Ok(Tags::List(tags))
        }
        _ => Err(line_err(
            path,
            n,
            "`tags` must be a list or a \"tag: score, ...\" string",
        )),
    }
}

/// Reads an images file. Image ids must be unique and every image needs at least one caption.
pub fn read_images(path: impl AsRef<Path>) -> Result<Vec<ImageRecord>> {
    let path = path.as_ref();
    let mut out = vec![];
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (n, m) in json_lines(path)? {
        let image = image_id(path, n, &m)?;
        let captions = match m.get("captions") {
            Some(Value::Array(a)) => a
                .iter()
                .enumerate()
                .map(|(j, c)| {
                    c.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| line_err(path, n, format!("captions[{j}] is not a string")))
                })
                .collect::<Result<Vec<_>>>()?,
            Some(_) => return Err(line_err(path, n, "`captions` must be a list of strings")),
            None => return Err(line_err(path, n, "missing field `captions`")),
        };
        if captions.is_empty() {
            return Err(line_err(path, n, "`captions` is empty"));
        }
        let tags = match m.get("tags") {
            None | Some(Value::Null) => None,
            Some(v) => Some(parse_tags(path, n, v)?),
        };
        let rec = ImageRecord {
            image,
            captions,
            tags,
            line: n,
        };
        if let Some(first) = seen.insert(rec.key(), n) {
            return Err(line_err(
                path,
                n,
                format!("image {} repeats line {first}", rec.key()),
            ));
        }
        out.push(rec);
    }
    if out.is_empty() {
        return Err(Error::format(
            path,
            "no images (the file has no JSON lines)",
        ));
    }
    Ok(out)
}

/// Reads a chosen-captions file and matches it to `images`: every image must have exactly one
/// entry, and `caption` must be `captions[index]` of that image.
pub fn read_chosen(path: impl AsRef<Path>, images: &[ImageRecord]) -> Result<Vec<Chosen>> {
    let path = path.as_ref();
    let index: HashMap<String, usize> = images
        .iter()
        .enumerate()
        .map(|(i, r)| (r.key(), i))
        .collect();
    let mut chosen: Vec<Option<(usize, Chosen)>> = vec![None; images.len()];
    for (n, m) in json_lines(path)? {
        let image = image_id(path, n, &m)?;
        let caption = m
            .get("caption")
            .and_then(Value::as_str)
            .ok_or_else(|| line_err(path, n, "missing string field `caption`"))?;
        let idx = m
            .get("index")
            .and_then(Value::as_u64)
            .ok_or_else(|| line_err(path, n, "missing non-negative integer field `index`"))?
            as usize;
        let Some(&i) = index.get(&image.to_string()) else {
            return Err(line_err(
                path,
                n,
                format!("image {image} is not in the images file"),
            ));
        };
        let rec = &images[i];
        if rec.captions.get(idx).map(String::as_str) != Some(caption) {
            return Err(line_err(
                path,
                n,
                format!(
                    "caption does not match captions[{idx}] of image {image} (line {} of the images file)",
                    rec.line
                ),
            ));
        }
        if let Some((first, _)) = &chosen[i] {
            return Err(line_err(
                path,
                n,
                format!("image {image} repeats line {first}"),
            ));
        }
        chosen[i] = Some((
            n,
            Chosen {
                image,
                caption: caption.to_string(),
                index: idx,
            },
        ));
    }
    chosen
        .into_iter()
        .zip(images)
        .map(|(c, r)| {
            c.map(|(_, c)| c).ok_or_else(|| {
                Error::format(path, format!("no chosen caption for image {} ", r.key()))
            })
        })
        .collect()
}

/// A JSONL file written through a temporary file beside it and renamed into place by
/// [`JsonlWriter::finish`]; dropped without `finish`, the temporary file is removed and the
/// destination is untouched.
pub struct JsonlWriter {
    path: PathBuf,
    tmp: PathBuf,
    out: Option<BufWriter<std::fs::File>>,
}

impl JsonlWriter {
    pub fn create(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let tmp = lion_core::util::temp_path(&path);
        let f = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        Ok(Self {
            path,
            tmp,
            out: Some(BufWriter::new(f)),
        })
    }

    pub fn write(&mut self, v: &Value) -> Result<()> {
        let out = self.out.as_mut().expect("not finished");
        writeln!(out, "{v}").map_err(|e| Error::io(&self.tmp, e))
    }

    /// Flushes, syncs and renames the file into place.
    pub fn finish(mut self) -> Result<()> {
        let out = self.out.take().expect("not finished");
        let f = out
            .into_inner()
            .map_err(|e| Error::io(&self.tmp, e.into_error()))?;
        f.sync_all().map_err(|e| Error::io(&self.tmp, e))?;
        std::fs::rename(&self.tmp, &self.path).map_err(|e| Error::io(&self.path, e))
    }
}

impl Drop for JsonlWriter {
    fn drop(&mut self) {
        if self.out.is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Appends one line to a JSONL file atomically (the file is rewritten whole through a temporary
/// file), so a reader never sees half a line.
pub fn append_jsonl_atomic(path: impl AsRef<Path>, v: &Value) -> Result<()> {
    let path = path.as_ref();
    let mut bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => vec![],
        Err(e) => return Err(Error::io(path, e)),
    };
    if !bytes.is_empty() && !bytes.ends_with(b"\n") {
        bytes.push(b'\n');
    }
    bytes.extend_from_slice(v.to_string().as_bytes());
    bytes.push(b'\n');
    lion_core::util::write_atomic(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float_repr_matches_python() {
        // values and their Python 3 repr
        let cases = [
            (0.9999895095825195, "0.9999895095825195"),
            (1.0, "1.0"),
            (0.5, "0.5"),
            (1e-5, "1e-05"),
            (0.0001, "0.0001"),
            (123.25, "123.25"),
            (1e16, "1e+16"),
            (1.5e16, "1.5e+16"),
            (0.1 + 0.2, "0.30000000000000004"),
            (-2.5, "-2.5"),
            (0.0, "0.0"),
        ];
        for (x, want) in cases {
            assert_eq!(python_float_repr(x), want, "{x}");
        }
    }

    #[test]
    fn tag_text_formats() {
        let t = Tags::List(vec![
            ScoredTag {
                tag: "dog".into(),
                score: Some(0.93),
            },
            ScoredTag {
                tag: "grass".into(),
                score: Some(1.0),
            },
            ScoredTag {
                tag: "park".into(),
                score: None,
            },
        ]);
        assert_eq!(t.to_text(), "dog: 0.93, grass: 1.0, park");
    }

    fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn reads_all_tag_forms() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            &dir,
            "a.jsonl",
            concat!(
                r#"{"image": "a.jpg", "captions": ["x", "y"], "tags": [{"tag": "dog", "score": 0.5}]}"#,
                "\n\n",
                r#"{"image": 7, "captions": ["z"], "tags": ["t-shirt: 0.75", "sky"]}"#,
                "\n",
                r#"{"image": "c", "captions": ["w"], "tags": "cat: 0.9, mat: 0.8"}"#,
                "\n",
                r#"{"image": "d", "captions": ["v"]}"#,
                "\n"
            ),
        );
        let r = read_images(&p).unwrap();
        assert_eq!(r.len(), 4);
        assert_eq!(r[0].tags.as_ref().unwrap().to_text(), "dog: 0.5");
        assert_eq!(r[1].key(), "7");
        assert_eq!(r[1].line, 3);
        assert_eq!(r[1].tags.as_ref().unwrap().to_text(), "t-shirt: 0.75, sky");
        assert_eq!(r[2].tags.as_ref().unwrap().to_text(), "cat: 0.9, mat: 0.8");
        assert!(r[3].tags.is_none());
    }

    #[test]
    fn malformed_lines_name_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let good = r#"{"image": "a", "captions": ["x"]}"#;
        let cases = [
            ("bad-json.jsonl", "{\"image\": \"a\", "),
            ("not-object.jsonl", "[1, 2]"),
            ("no-image.jsonl", r#"{"captions": ["x"]}"#),
            ("image-type.jsonl", r#"{"image": [1], "captions": ["x"]}"#),
            ("no-captions.jsonl", r#"{"image": "b"}"#),
            ("empty-captions.jsonl", r#"{"image": "b", "captions": []}"#),
            (
                "caption-type.jsonl",
                r#"{"image": "b", "captions": ["x", 3]}"#,
            ),
            (
                "score-type.jsonl",
                r#"{"image": "b", "captions": ["x"], "tags": [{"tag": "d", "score": "hi"}]}"#,
            ),
            (
                "score-text.jsonl",
                r#"{"image": "b", "captions": ["x"], "tags": ["dog: high"]}"#,
            ),
            (
                "tag-missing.jsonl",
                r#"{"image": "b", "captions": ["x"], "tags": [{"score": 0.5}]}"#,
            ),
            ("duplicate.jsonl", r#"{"image": "a", "captions": ["y"]}"#),
        ];
        for (name, line) in cases {
            let p = write(&dir, name, &format!("{good}\n{line}\n"));
            let msg = read_images(&p).unwrap_err().to_string();
            assert!(msg.contains(name), "{name}: {msg}");
            assert!(msg.contains("line 2"), "{name}: {msg}");
        }
        let p = write(&dir, "empty.jsonl", "\n\n");
        assert!(read_images(&p)
            .unwrap_err()
            .to_string()
            .contains("no images"));
    }

    #[test]
    fn chosen_must_match_images() {
        let dir = tempfile::tempdir().unwrap();
        let imgs = write(
            &dir,
            "i.jsonl",
            "{\"image\": \"a\", \"captions\": [\"x\", \"y\"]}\n{\"image\": 2, \"captions\": [\"z\"]}\n",
        );
        let images = read_images(&imgs).unwrap();
        let ok = write(
            &dir,
            "ok.jsonl",
            "{\"image\": 2, \"caption\": \"z\", \"index\": 0}\n{\"image\": \"a\", \"caption\": \"y\", \"index\": 1}\n",
        );
        let c = read_chosen(&ok, &images).unwrap();
        assert_eq!(c[0].caption, "y");
        assert_eq!(c[1].index, 0);
        let cases = [
            (
                "mismatch.jsonl",
                "{\"image\": \"a\", \"caption\": \"x\", \"index\": 1}\n",
                "line 1",
            ),
            (
                "unknown.jsonl",
                "{\"image\": \"q\", \"caption\": \"x\", \"index\": 0}\n",
                "line 1",
            ),
            (
                "missing.jsonl",
                "{\"image\": \"a\", \"caption\": \"x\", \"index\": 0}\n",
                "no chosen caption for image 2",
            ),
            (
                "noindex.jsonl",
                "{\"image\": \"a\", \"caption\": \"x\"}\n",
                "line 1",
            ),
        ];
        for (name, text, want) in cases {
            let p = write(&dir, name, text);
            let msg = read_chosen(&p, &images).unwrap_err().to_string();
            assert!(msg.contains(name) && msg.contains(want), "{name}: {msg}");
        }
    }

    #[test]
    fn jsonl_writer_is_atomic() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("out.jsonl");
        std::fs::write(&p, "old\n").unwrap();
        {
            let mut w = JsonlWriter::create(&p).unwrap();
            w.write(&serde_json::json!({"a": 1})).unwrap();
            // dropped without finish: old content stays, no temp file left
        }
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "old\n");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        let mut w = JsonlWriter::create(&p).unwrap();
        w.write(&serde_json::json!({"a": 1})).unwrap();
        w.finish().unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "{\"a\":1}\n");
        append_jsonl_atomic(&p, &serde_json::json!({"b": 2})).unwrap();
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            "{\"a\":1}\n{\"b\":2}\n"
        );
    }
}
