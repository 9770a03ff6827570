//! The demo's intermediate files: every image's scored tags (predicted by the tagger, the
//! world's ground truth for the oracle ablation, or none), the tag encoder's training input, the
//! LION training JSON with those tags, and the evaluation's tags file.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use lion_core::{Error, Result};
use serde_json::{json, Value};

/// Scored tags by image path relative to the world (`images/train/000001.png`).
pub type ImageTags = HashMap<String, Vec<(String, f32)>>;

/// Reads a JSON file, naming it in errors.
pub fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::format(path, format!("bad JSON: {e}")))
}

/// Writes pretty JSON atomically.
pub fn write_json(path: &Path, v: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(v).expect("a JSON value serialises");
    lion_core::util::write_atomic(path, text.as_bytes())
}

fn field<'a>(path: &Path, v: &'a Value, key: &str, what: &str) -> Result<&'a Value> {
    match v.get(key) {
        Some(x) if !x.is_null() => Ok(x),
        _ => Err(Error::format(path, format!("{what} without `{key}`"))),
    }
}

fn list<'a>(path: &Path, v: &'a Value, what: &str) -> Result<&'a Vec<Value>> {
    v.as_array()
        .ok_or_else(|| Error::format(path, format!("{what} is not a list")))
}

/// `"red: 0.97"` strings, as the prompt and the tag encoder read them.
pub fn tag_strings(tags: &[(String, f32)]) -> Vec<String> {
    tags.iter()
        .map(|(t, v)| lion_core::tags::format_one(t, *v))
        .collect()
}

/// The world's ground-truth tags (`tags_{split}.json`), each with score 1.0: the oracle.
pub fn ground_truth_tags(world: &Path) -> Result<ImageTags> {
    let mut out = ImageTags::new();
    for split in ["train", "val", "test"] {
        let path = world.join(format!("tags_{split}.json"));
        let rows = read_json(&path)?;
        for r in list(&path, &rows, "the file")? {
            let file = field(&path, r, "file_name", "a row")?
                .as_str()
                .ok_or_else(|| Error::format(&path, "file_name is not a string"))?;
            let tags = list(&path, field(&path, r, "tags", "a row")?, "tags")?
                .iter()
                .filter_map(|t| Some((t.as_str()?.to_string(), 1.0)))
                .collect();
            out.insert(file.to_string(), tags);
        }
    }
    Ok(out)
}

/// The same images with no tags at all (the no-tags ablation).
pub fn no_tags(like: &ImageTags) -> ImageTags {
    like.keys().map(|k| (k.clone(), vec![])).collect()
}

/// The tag-encoder training input: each training image's captions and scored tags, one JSON
/// line per image. Returns the number of images.
pub fn images_jsonl(world: &Path, tags: &ImageTags, out: &Path) -> Result<usize> {
    let path = world.join("captions_train.json");
    let caps = lion_data::coco::read_coco_captions(&path)
        .map_err(|e| Error::config(path.display(), e.to_string()))?;
    // by numeric image id
    let mut images: BTreeMap<u64, &lion_data::coco::CaptionImage> = BTreeMap::new();
    for im in &caps {
        let id = im.image_id.parse::<u64>().map_err(|_| {
            Error::format(&path, format!("image id {} is not a number", im.image_id))
        })?;
        images.insert(id, im);
    }
    let mut text = String::new();
    for (id, im) in &images {
        let file = &im.file_name;
        let scored: Vec<Value> = tags
            .get(file)
            .ok_or_else(|| Error::format(out, format!("no tags for {file}")))?
            .iter()
            .map(|(t, v)| json!({"tag": t, "score": v}))
            .collect();
        let captions = &im.captions;
        text.push_str(&json!({"image": id, "captions": captions, "tags": scored}).to_string());
        text.push('\n');
    }
    lion_core::util::write_atomic(out, text.as_bytes())?;
    Ok(images.len())
}

/// The world's LION training JSON (`lion_{task}_{split}.json`) with `tags` in place of the
/// ground truth, into `out`.
pub fn lion_data(world: &Path, tags: &ImageTags, out: &Path) -> Result<()> {
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    for task in ["caption", "vqa", "rec"] {
        for split in ["train", "val", "test"] {
            let name = format!("lion_{task}_{split}.json");
            let path = world.join(&name);
            let mut recs = read_json(&path)?;
            let n = list(&path, &recs, "the file")?.len();
            for i in 0..n {
                let r = &mut recs[i];
                let img = r["image"]
                    .as_str()
                    .ok_or_else(|| Error::format(&path, format!("record {i} without image")))?;
                let t = tags
                    .get(img)
                    .ok_or_else(|| Error::format(&path, format!("no tags for {img}")))?;
                r["tags"] = json!(tag_strings(t));
            }
            write_json(&out.join(name), &recs)?;
        }
    }
    Ok(())
}

/// The evaluation's tags file: one JSON line per image (`image`, `tags` [`tag`, `score`]),
/// sorted, so the same tags give the same bytes.
pub fn write_tags_file(tags: &ImageTags, out: &Path) -> Result<()> {
    let mut lines: Vec<String> = tags
        .iter()
        .map(|(img, t)| {
            let scored: Vec<Value> = t
                .iter()
                .map(|(n, v)| json!({"tag": n, "score": v}))
                .collect();
            json!({"image": img, "tags": scored}).to_string()
        })
        .collect();
    lines.sort();
    lion_core::util::write_atomic(out, (lines.join("\n") + "\n").as_bytes())
}

/// The REC samples of a ShapesWorld split (`lion_rec_{split}.json`) whose image holds exactly
/// `objects` objects (counted in the world's `instances.json`), written to `out` as the same
/// JSON list: the REC-only legs of the backbone's pretraining. Returns how many were kept; none
/// is an error naming the world, split and count.
pub fn rec_subset(world: &Path, split: &str, objects: usize, out: &Path) -> Result<usize> {
    let ipath = world.join("instances.json");
    let inst = read_json(&ipath)?;
    let rows = |key: &str| list(&ipath, field(&ipath, &inst, key, "the file")?, key);
    let id = |v: &Value, key: &str, what: &str| -> Result<u64> {
        field(&ipath, v, key, what)?
            .as_u64()
            .ok_or_else(|| Error::format(&ipath, format!("{what}'s {key} is not a number")))
    };
    let mut count: HashMap<u64, usize> = HashMap::new();
    for a in rows("annotations")? {
        *count
            .entry(id(a, "image_id", "an annotation")?)
            .or_default() += 1;
    }
    let mut files = std::collections::HashSet::new();
    for im in rows("images")? {
        let file = field(&ipath, im, "file_name", "an image")?
            .as_str()
            .ok_or_else(|| Error::format(&ipath, "an image's file_name is not a string"))?;
        if count.get(&id(im, "id", "an image")?).copied().unwrap_or(0) == objects {
            files.insert(file.to_string());
        }
    }
    let spath = world.join(format!("lion_rec_{split}.json"));
    let samples = read_json(&spath)?;
    let mut kept = vec![];
    for (i, r) in list(&spath, &samples, "the file")?.iter().enumerate() {
        let img = r["image"]
            .as_str()
            .ok_or_else(|| Error::format(&spath, format!("record {i} without image")))?;
        if files.contains(img) {
            kept.push(r.clone());
        }
    }
    if kept.is_empty() {
        return Err(Error::format(
            &spath,
            format!("no REC sample on an image with {objects} object(s) (a larger world has some)"),
        ));
    }
    let n = kept.len();
    write_json(out, &Value::Array(kept))?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rec_subset_keeps_the_images_with_that_many_objects() {
        let tmp = tempfile::tempdir().unwrap();
        let w = tmp.path();
        let inst = json!({
            "images": [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "b.png"}],
            "annotations": [{"image_id": 1}, {"image_id": 2}, {"image_id": 2}],
        });
        write_json(&w.join("instances.json"), &inst).unwrap();
        let samples = json!([{"image": "a.png", "n": 0}, {"image": "b.png", "n": 1},
                             {"image": "b.png", "n": 2}]);
        write_json(&w.join("lion_rec_train.json"), &samples).unwrap();
        let out = w.join("two.json");
        assert_eq!(rec_subset(w, "train", 2, &out).unwrap(), 2);
        assert_eq!(read_json(&out).unwrap(), json!([samples[1], samples[2]]));
        assert_eq!(rec_subset(w, "train", 1, &out).unwrap(), 1);
        let e = rec_subset(w, "train", 3, &out).unwrap_err().to_string();
        assert!(
            e.contains("lion_rec_train.json") && e.contains("3 object"),
            "{e}"
        );
        write_json(&w.join("instances.json"), &json!({"images": []})).unwrap();
        let e = rec_subset(w, "train", 1, &out).unwrap_err().to_string();
        assert!(
            e.contains("instances.json") && e.contains("annotations"),
            "{e}"
        );
    }

    #[test]
    fn tags_files_and_errors() {
        let tmp = tempfile::tempdir().unwrap();
        let world = tmp.path();
        for split in ["train", "val", "test"] {
            let rows = json!([{"image_id": 1, "file_name": format!("images/{split}/1.png"), "tags": ["red", "star"]}]);
            write_json(&world.join(format!("tags_{split}.json")), &rows).unwrap();
        }
        let gt = ground_truth_tags(world).unwrap();
        assert_eq!(
            gt["images/test/1.png"],
            vec![("red".to_string(), 1.0), ("star".to_string(), 1.0)]
        );
        assert_eq!(
            tag_strings(&gt["images/val/1.png"]),
            ["red: 1.00", "star: 1.00"]
        );
        let none = no_tags(&gt);
        assert_eq!(none.len(), 3);
        assert!(none.values().all(Vec::is_empty));
        let (a, b) = (world.join("a.jsonl"), world.join("b.jsonl"));
        write_tags_file(&gt, &a).unwrap();
        write_tags_file(&gt.clone().into_iter().collect(), &b).unwrap();
        assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
        write_json(&world.join("tags_val.json"), &json!([{"image_id": 1}])).unwrap();
        let e = ground_truth_tags(world).unwrap_err().to_string();
        assert!(
            e.contains("tags_val.json") && e.contains("file_name"),
            "{e}"
        );
    }
}
