//! RefCOCO / RefCOCO+ / RefCOCOg (Licheng Yu's `refer` layout): `refs(unc|google|umd).p` (a
//! Python-2 pickle of a list of dicts `{ref_id, ann_id, image_id, split, category_id, file_name,
//! sentences: [{sent, raw, tokens, sent_id}]}`) plus `instances.json` (COCO `images` and
//! `annotations` with `bbox` [x, y, w, h]).

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, Position, Result};
use crate::json::{array, decode_all, read_value};
use crate::pickle::{self, Value};

/// One referred object with its expressions, ground-truth box and image size.
#[derive(Debug, Clone, PartialEq)]
pub struct RefExpr {
    pub ref_id: i64,
    pub ann_id: i64,
    pub image_id: i64,
    pub split: String,
    pub category_id: i64,
    /// The COCO image file (`COCO_train2014_000000581857.jpg`) from instances.json.
    pub file_name: String,
    pub width: u32,
    pub height: u32,
    /// The expressions (`sent`, falling back to `raw`).
    pub sentences: Vec<String>,
    /// Their `sent_id`s (same order; the standard evaluation scores each sentence).
    pub sent_ids: Vec<i64>,
    /// Ground-truth box in pixels, `[x1, y1, x2, y2]`.
    pub bbox: [f64; 4],
}

/// An image of COCO's `instances.json`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct InstanceImage {
    pub id: i64,
    pub file_name: String,
    pub width: u32,
    pub height: u32,
}

/// An object annotation of `instances.json`: its box as COCO stores it, `[x, y, w, h]` pixels.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct InstanceBox {
    pub id: i64,
    pub image_id: i64,
    pub bbox: [f64; 4],
}

/// COCO's `instances.json` (the images and the object boxes; other fields are not read).
#[derive(Debug, Clone, PartialEq)]
pub struct Instances {
    pub images: Vec<InstanceImage>,
    pub annotations: Vec<InstanceBox>,
}

/// Reads `instances.json`; each record is checked and a bad one named by its list and index.
pub fn read_instances(path: &Path) -> Result<Instances> {
    let inst = read_value(path)?;
    Ok(Instances {
        images: decode_all(path, "images", array(path, &inst, Some("images"))?)?,
        annotations: decode_all(
            path,
            "annotations",
            array(path, &inst, Some("annotations"))?,
        )?,
    })
}

struct RawRef {
    ref_id: i64,
    ann_id: i64,
    image_id: i64,
    split: String,
    category_id: i64,
    sentences: Vec<String>,
    sent_ids: Vec<i64>,
}

fn field<'a>(v: &'a Value, k: &str) -> std::result::Result<&'a Value, String> {
    v.get(k).ok_or_else(|| format!("missing \"{k}\""))
}

fn int(v: &Value, k: &str) -> std::result::Result<i64, String> {
    field(v, k)?.as_i64().ok_or_else(|| {
        format!(
            "\"{k}\" should be an int, found {}",
            field(v, k).map(Value::kind).unwrap_or("?")
        )
    })
}

fn raw_ref(v: &Value) -> std::result::Result<RawRef, String> {
    if !matches!(v, Value::Dict(_)) {
        return Err(format!("expected a dict, found {}", v.kind()));
    }
    let split = field(v, "split")?
        .as_str()
        .ok_or("\"split\" should be a string")?
        .to_string();
    let sents = field(v, "sentences")?
        .as_list()
        .ok_or("\"sentences\" should be a list")?;
    let mut sentences = Vec::with_capacity(sents.len());
    let mut sent_ids = Vec::with_capacity(sents.len());
    for (j, s) in sents.iter().enumerate() {
        let t = s
            .get("sent")
            .or_else(|| s.get("raw"))
            .and_then(Value::as_str)
            .ok_or_else(|| format!("sentences[{j}] has no \"sent\" or \"raw\" string"))?;
        sentences.push(t.to_string());
        sent_ids.push(
            s.get("sent_id")
                .and_then(Value::as_i64)
                .ok_or_else(|| format!("sentences[{j}] has no int \"sent_id\""))?,
        );
    }
    Ok(RawRef {
        ref_id: int(v, "ref_id")?,
        ann_id: int(v, "ann_id")?,
        image_id: int(v, "image_id")?,
        split,
        category_id: int(v, "category_id")?,
        sentences,
        sent_ids,
    })
}

/// The same records written as JSON (ShapesWorld's `refs.json`) as pickle values.
fn from_json(v: serde_json::Value) -> Value {
    use serde_json::Value as J;
    match v {
        J::Null => Value::None,
        J::Bool(b) => Value::Bool(b),
        J::Number(n) => match n.as_i64() {
            Some(i) => Value::Int(i),
            None => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        J::String(s) => Value::Str(s),
        J::Array(a) => Value::List(a.into_iter().map(from_json).collect()),
        J::Object(o) => Value::Dict(
            o.into_iter()
                .map(|(k, v)| (Value::Str(k), from_json(v)))
                .collect(),
        ),
    }
}

/// Reads the refs pickle (or the same list of records as JSON, e.g. ShapesWorld's `refs.json`)
/// and the instances file; keeps the refs of `split` (all when None).
pub fn read_refcoco(
    refs_path: &Path,
    instances_path: &Path,
    split: Option<&str>,
) -> Result<Vec<RefExpr>> {
    let bytes = std::fs::read(refs_path).map_err(|e| Error::io(refs_path, e))?;
    let is_json = bytes
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|&b| b == b'[');
    let v = if is_json {
        from_json(read_value(refs_path)?)
    } else {
        pickle::from_slice(&bytes)
            .map_err(|e| Error::record(refs_path, Position::Byte(e.offset), e.msg))?
    };
    let list = v.as_list().ok_or_else(|| {
        Error::at_index(
            refs_path,
            "top level",
            format!("expected a list of refs, found {}", v.kind()),
        )
    })?;

    let inst = read_instances(instances_path)?;
    let imgs: HashMap<i64, InstanceImage> = inst.images.into_iter().map(|i| (i.id, i)).collect();
    let anns: HashMap<i64, InstanceBox> = inst.annotations.into_iter().map(|a| (a.id, a)).collect();

    let mut out = Vec::new();
    for (i, item) in list.iter().enumerate() {
        let r = raw_ref(item).map_err(|m| Error::at_index(refs_path, i, m))?;
        if split.is_some_and(|s| s != r.split) {
            continue;
        }
        let ann = anns.get(&r.ann_id).ok_or_else(|| {
            Error::at_index(
                refs_path,
                i,
                format!("ann_id {} is not in {}", r.ann_id, instances_path.display()),
            )
        })?;
        if ann.image_id != r.image_id {
            return Err(Error::at_index(
                refs_path,
                i,
                format!(
                    "ann_id {} belongs to image {}, the ref says {}",
                    r.ann_id, ann.image_id, r.image_id
                ),
            ));
        }
        let img = imgs.get(&r.image_id).ok_or_else(|| {
            Error::at_index(
                refs_path,
                i,
                format!(
                    "image_id {} is not in {}",
                    r.image_id,
                    instances_path.display()
                ),
            )
        })?;
        let b = ann.bbox;
        out.push(RefExpr {
            ref_id: r.ref_id,
            ann_id: r.ann_id,
            image_id: r.image_id,
            split: r.split,
            category_id: r.category_id,
            file_name: img.file_name.clone(),
            width: img.width,
            height: img.height,
            sentences: r.sentences,
            sent_ids: r.sent_ids,
            bbox: [b[0], b[1], b[0] + b[2], b[1] + b[3]],
        });
    }
    Ok(out)
}

/// A predicted box: pixels `[x1, y1, x2, y2]`, the model's text (normalised coordinates), or
/// none (`"box": null`: the model gave no parsable box; scored as a miss).
#[derive(Debug, Clone, PartialEq)]
pub enum PredBox {
    Pixels([f64; 4]),
    Text(String),
    Missing,
}

/// One REC prediction: keyed by `sent_id` (`id` or `sent_id`) or by `ref_id`.
#[derive(Debug, Clone, PartialEq)]
pub struct RecResult {
    pub ref_id: Option<i64>,
    pub sent_id: Option<i64>,
    pub pred: PredBox,
}

/// Reads REC results `[{ref_id | id | sent_id, box}]`, `box` being 4 numbers, a string or null.
pub fn read_rec_results(path: &Path) -> Result<Vec<RecResult>> {
    let v = read_value(path)?;
    let items = array(path, &v, None)?;
    items
        .iter()
        .enumerate()
        .map(|(i, it)| {
            let err = |m: &str| Error::at_index(path, i, m.to_string());
            let o = it.as_object().ok_or_else(|| err("expected an object"))?;
            let get_id = |k: &str| -> Result<Option<i64>> {
                match o.get(k) {
                    None | Some(serde_json::Value::Null) => Ok(None),
                    Some(x) => x
                        .as_i64()
                        .or_else(|| x.as_str().and_then(|s| s.parse().ok()))
                        .map(Some)
                        .ok_or_else(|| err(&format!("\"{k}\" should be an integer id"))),
                }
            };
            let ref_id = get_id("ref_id")?;
            let sent_id = match get_id("sent_id")? {
                Some(s) => Some(s),
                None => get_id("id")?,
            };
            if ref_id.is_none() && sent_id.is_none() {
                return Err(err("no \"ref_id\", \"id\" or \"sent_id\""));
            }
            let pred = match o.get("box").or_else(|| o.get("answer")) {
                Some(serde_json::Value::String(s)) => PredBox::Text(s.clone()),
                Some(serde_json::Value::Null) => PredBox::Missing,
                Some(serde_json::Value::Array(a)) if a.len() == 4 => {
                    let n: Option<Vec<f64>> = a.iter().map(serde_json::Value::as_f64).collect();
                    let n = n.ok_or_else(|| err("\"box\" should hold 4 numbers"))?;
                    PredBox::Pixels([n[0], n[1], n[2], n[3]])
                }
                Some(_) => return Err(err("\"box\" should be [x1,y1,x2,y2] or the model's text")),
                None => return Err(err("no \"box\"")),
            };
            Ok(RecResult {
                ref_id,
                sent_id,
                pred,
            })
        })
        .collect()
}
