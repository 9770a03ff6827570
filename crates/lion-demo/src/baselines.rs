//! The demo's trivial baselines: the most frequent training caption for every image, the most
//! frequent training answer for every question, and a box of the mean training size (relative)
//! at the image centre for every referring expression. Their predictions are written in the
//! tasks' result formats, for `lion eval` to score like any model's.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use lion_core::{Error, Result};
use serde_json::{json, Value};

use super::files::{read_json, write_json};

/// The most frequent string; ties go to the alphabetically first, so the baseline is
/// deterministic.
fn most_frequent(xs: impl IntoIterator<Item = String>) -> String {
    let mut c: BTreeMap<String, usize> = BTreeMap::new();
    for x in xs {
        *c.entry(x).or_default() += 1;
    }
    c.into_iter()
        .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0)))
        .map(|(k, _)| k)
        .unwrap_or_default()
}

fn array<'a>(path: &Path, v: &'a Value, key: &str) -> Result<&'a Vec<Value>> {
    v[key]
        .as_array()
        .ok_or_else(|| Error::format(path, format!("no `{key}` list")))
}

/// Writes `caption_pred.json`, `vqa_pred.json` and `rec_pred.json` for the world's test split
/// into `dir`.
pub fn write_baseline_predictions(world: &Path, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let path = world.join("captions_train.json");
    let caps = read_json(&path)?;
    let caption = most_frequent(
        array(&path, &caps, "annotations")?
            .iter()
            .filter_map(|a| a["caption"].as_str().map(|c| c.trim().to_lowercase())),
    );
    let path = world.join("annotations_train.json");
    let anns = read_json(&path)?;
    let answer = most_frequent(
        array(&path, &anns, "annotations")?
            .iter()
            .filter_map(|a| a["multiple_choice_answer"].as_str().map(String::from)),
    );
    let path = world.join("captions_test.json");
    let preds: Vec<Value> = array(&path, &read_json(&path)?, "images")?
        .iter()
        .map(|im| json!({"image_id": im["id"], "caption": caption}))
        .collect();
    write_json(&dir.join("caption_pred.json"), &json!(preds))?;
    let path = world.join("questions_test.json");
    let preds: Vec<Value> = array(&path, &read_json(&path)?, "questions")?
        .iter()
        .map(|q| json!({"question_id": q["question_id"], "answer": answer}))
        .collect();
    write_json(&dir.join("vqa_pred.json"), &json!(preds))?;
    // Mean training box size (relative), from the instances of training images.
    let path = world.join("instances.json");
    let inst = read_json(&path)?;
    let mut sizes: HashMap<u64, (f64, f64, bool)> = HashMap::new();
    for im in array(&path, &inst, "images")? {
        let train = im["file_name"]
            .as_str()
            .is_some_and(|f| f.contains("/train/"));
        let id = im["id"]
            .as_u64()
            .ok_or_else(|| Error::format(&path, "an image without id"))?;
        let (w, h) = (im["width"].as_f64(), im["height"].as_f64());
        sizes.insert(id, (w.unwrap_or(96.0), h.unwrap_or(96.0), train));
    }
    let (mut fw, mut fh, mut n) = (0.0f64, 0.0f64, 0.0f64);
    for a in array(&path, &inst, "annotations")? {
        let id = a["image_id"].as_u64().unwrap_or(0);
        if let (Some(&(w, h, true)), Some(b)) = (sizes.get(&id), a["bbox"].as_array()) {
            fw += b.get(2).and_then(Value::as_f64).unwrap_or(0.0) / w;
            fh += b.get(3).and_then(Value::as_f64).unwrap_or(0.0) / h;
            n += 1.0;
        }
    }
    let (fw, fh) = (fw / n.max(1.0), fh / n.max(1.0));
    let path = world.join("refs.json");
    let refs = read_json(&path)?;
    let mut preds = vec![];
    for r in refs
        .as_array()
        .ok_or_else(|| Error::format(&path, "not a list of refs"))?
    {
        if r["split"].as_str() != Some("test") {
            continue;
        }
        let (w, h, _) = sizes
            .get(&r["image_id"].as_u64().unwrap_or(0))
            .copied()
            .unwrap_or((96.0, 96.0, false));
        let b = [
            w * (0.5 - fw / 2.0),
            h * (0.5 - fh / 2.0),
            w * (0.5 + fw / 2.0),
            h * (0.5 + fh / 2.0),
        ];
        for sid in array(&path, r, "sent_ids")? {
            preds.push(json!({"sent_id": sid, "box": b}));
        }
    }
    write_json(&dir.join("rec_pred.json"), &json!(preds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn most_frequent_breaks_ties_alphabetically() {
        let v = |xs: &[&str]| xs.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(most_frequent(v(&["b", "a", "b", "a", "c"])), "a");
        assert_eq!(most_frequent(v(&["z", "y", "z"])), "z");
        assert_eq!(most_frequent(v(&[])), "");
    }
}
