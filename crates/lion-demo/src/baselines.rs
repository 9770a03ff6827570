//! The demo's trivial baselines: the most frequent training caption for every image, the most
//! frequent training answer for every question, and a box of the mean training size (relative)
//! at the image centre for every referring expression. Their predictions are written in the
//! tasks' result formats, for `lion eval` to score like any model's.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use lion_core::{Error, Result};
use serde_json::{json, Value};

use lion_eval::predict::id_value;

use super::files::write_json;

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

/// Writes `caption_pred.json`, `vqa_pred.json` and `rec_pred.json` for the world's test split
/// into `dir`. The world's files are read with `lion_data`'s COCO, VQA and RefCOCO readers, as
/// for the real datasets.
pub fn write_baseline_predictions(world: &Path, dir: &Path) -> Result<()> {
    use lion_data::{coco, refcoco, vqa};
    let data = |e: lion_data::Error| Error::config("the world's files", e.to_string());
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let caps = coco::read_coco_captions(&world.join("captions_train.json")).map_err(data)?;
    let caption = most_frequent(
        caps.iter()
            .flat_map(|im| im.captions.iter().map(|c| c.trim().to_lowercase())),
    );
    let anns = vqa::read_vqa_annotations(&world.join("annotations_train.json")).map_err(data)?;
    let answer = most_frequent(anns.into_iter().filter_map(|a| a.multiple_choice_answer));
    let test = coco::read_coco_captions(&world.join("captions_test.json")).map_err(data)?;
    let preds: Vec<Value> = test
        .iter()
        .map(|im| json!({"image_id": id_value(&im.image_id), "caption": caption}))
        .collect();
    write_json(&dir.join("caption_pred.json"), &json!(preds))?;
    let qs = vqa::read_vqa_questions(&world.join("questions_test.json")).map_err(data)?;
    let preds: Vec<Value> = qs
        .iter()
        .map(|q| json!({"question_id": id_value(&q.question_id), "answer": answer}))
        .collect();
    write_json(&dir.join("vqa_pred.json"), &json!(preds))?;
    // Mean training box size (relative), over every object of the training images.
    let instances = world.join("instances.json");
    let inst = refcoco::read_instances(&instances).map_err(data)?;
    let sizes: HashMap<i64, (f64, f64, bool)> = inst
        .images
        .iter()
        .map(|im| {
            let train = im.file_name.contains("/train/");
            (im.id, (im.width as f64, im.height as f64, train))
        })
        .collect();
    let (mut fw, mut fh, mut n) = (0.0f64, 0.0f64, 0.0f64);
    for a in &inst.annotations {
        if let Some(&(w, h, true)) = sizes.get(&a.image_id) {
            fw += a.bbox[2] / w;
            fh += a.bbox[3] / h;
            n += 1.0;
        }
    }
    let (fw, fh) = (fw / n.max(1.0), fh / n.max(1.0));
    let refs =
        refcoco::read_refcoco(&world.join("refs.json"), &instances, Some("test")).map_err(data)?;
    let mut preds = vec![];
    for r in refs {
        let (w, h) = (r.width as f64, r.height as f64);
        let b = [
            w * (0.5 - fw / 2.0),
            h * (0.5 - fh / 2.0),
            w * (0.5 + fw / 2.0),
            h * (0.5 + fh / 2.0),
        ];
        for sid in r.sent_ids {
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
