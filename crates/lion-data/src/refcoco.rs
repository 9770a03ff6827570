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
    /// Ground-truth box in pixels, `[x1, y1, x2, y2]`.
    pub bbox: [f64; 4],
}

#[derive(Deserialize)]
struct Img {
    id: i64,
    file_name: String,
    width: u32,
    height: u32,
}

#[derive(Deserialize)]
struct Ann {
    id: i64,
    image_id: i64,
    bbox: [f64; 4],
}

struct RawRef {
    ref_id: i64,
    ann_id: i64,
    image_id: i64,
    split: String,
    category_id: i64,
    sentences: Vec<String>,
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
    for (j, s) in sents.iter().enumerate() {
        let t = s
            .get("sent")
            .or_else(|| s.get("raw"))
            .and_then(Value::as_str)
            .ok_or_else(|| format!("sentences[{j}] has no \"sent\" or \"raw\" string"))?;
        sentences.push(t.to_string());
    }
    Ok(RawRef {
        ref_id: int(v, "ref_id")?,
        ann_id: int(v, "ann_id")?,
        image_id: int(v, "image_id")?,
        split,
        category_id: int(v, "category_id")?,
        sentences,
    })
}

/// Reads the refs pickle and the instances file; keeps the refs of `split` (all when None).
pub fn read_refcoco(
    refs_path: &Path,
    instances_path: &Path,
    split: Option<&str>,
) -> Result<Vec<RefExpr>> {
    let bytes = std::fs::read(refs_path).map_err(|e| Error::io(refs_path, e))?;
    let v = pickle::from_slice(&bytes)
        .map_err(|e| Error::record(refs_path, Position::Byte(e.offset), e.msg))?;
    let list = v.as_list().ok_or_else(|| {
        Error::at_index(
            refs_path,
            "top level",
            format!("expected a list of refs, found {}", v.kind()),
        )
    })?;

    let inst = read_value(instances_path)?;
    let imgs: Vec<Img> = decode_all(
        instances_path,
        "images",
        array(instances_path, &inst, Some("images"))?,
    )?;
    let anns: Vec<Ann> = decode_all(
        instances_path,
        "annotations",
        array(instances_path, &inst, Some("annotations"))?,
    )?;
    let imgs: HashMap<i64, Img> = imgs.into_iter().map(|i| (i.id, i)).collect();
    let anns: HashMap<i64, Ann> = anns.into_iter().map(|a| (a.id, a)).collect();

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
            bbox: [b[0], b[1], b[0] + b[2], b[1] + b[3]],
        });
    }
    Ok(out)
}
