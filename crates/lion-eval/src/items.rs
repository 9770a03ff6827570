//! Evaluating with a model: the split's items (images found under `--images`, tags, questions),
//! then predictions written in the official result format (resumable, sharded).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use lion_core::pipeline::Request;
use serde_json::{json, Value};

use crate::predict::SplitItem;
use crate::score::read_caption_gt;
use crate::{Benchmark, EvalJob};

/// `PRED.json` -> `PRED.json.partial`.
pub fn partial_path(out: &Path) -> PathBuf {
    let mut name = out.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    out.with_file_name(name)
}

/// Finds an item's image under `root`: the first candidate (relative path) that exists, trying
/// the one that matched last time first. None when no candidate exists.
pub(crate) fn locate(root: &Path, cands: &[String], last: &mut usize) -> Option<PathBuf> {
    let order = std::iter::once(*last).chain((0..cands.len()).filter(|&i| i != *last));
    for i in order {
        if let Some(c) = cands.get(i) {
            let p = root.join(c);
            if p.is_file() {
                *last = i;
                return Some(p);
            }
        }
    }
    None
}

/// Candidate files of an image named by the ground truth: as given, then by its base name.
pub(crate) fn name_candidates(file_name: &str) -> Vec<String> {
    let mut v = vec![file_name.to_string()];
    if let Some(base) = Path::new(file_name).file_name() {
        let base = base.to_string_lossy().into_owned();
        if base != file_name {
            v.push(base);
        }
    }
    v
}

/// Candidate files of an image known only by id (VQA, A-OKVQA), `sub` being the split or the
/// COCO subtype (`val2014`): the COCO 2014 and 2017 names and the ShapesWorld layout.
pub(crate) fn id_candidates(id: &str, sub: Option<&str>) -> Vec<String> {
    let mut v = vec![];
    if let Ok(n) = id.parse::<u64>() {
        if let Some(s) = sub {
            v.push(format!("COCO_{s}_{n:012}.jpg"));
            v.push(format!("{s}/COCO_{s}_{n:012}.jpg"));
            v.push(format!("{s}2017/{n:012}.jpg"));
            v.push(format!("images/{s}/{n:06}.png"));
        }
        v.push(format!("{n:012}.jpg"));
        v.push(format!("{n:06}.png"));
    }
    v.push(format!("{id}.jpg"));
    v.push(format!("{id}.png"));
    v
}

/// The items of the split the job describes, each with its image file under `root` (or the
/// first candidate when none exists: that item then fails, named, and the others go on).
pub fn split_items(job: &EvalJob, root: &Path) -> Result<Vec<SplitItem>> {
    let task = job.benchmark.task();
    let req = |task, text: &str| Request {
        task,
        text: text.to_string(),
        tags: vec![],
    };
    // (id, image id, candidate files, request)
    let raw: Vec<(String, String, Vec<String>, Request)> = match job.benchmark {
        Benchmark::Caption => read_caption_gt(&job.gt, job.split.as_deref())?
            .into_iter()
            .map(|im| {
                let c = name_candidates(&im.file_name);
                (im.image_id.clone(), im.image_id, c, req(task, ""))
            })
            .collect(),
        Benchmark::Vqa => {
            let q = job.questions.as_ref().context(
                "--task vqa with a model needs --questions (the questions file: the model reads the question texts)",
            )?;
            let qs = lion_data::vqa::read_vqa_questions(q)?;
            let anns = lion_data::vqa::read_vqa_annotations(&job.gt)?;
            check_same_questions(q, &qs, &job.gt, &anns)?;
            let top = lion_data::json::read_value(q)?;
            let sub = top
                .get("data_subtype")
                .and_then(Value::as_str)
                .map(str::to_string);
            qs.into_iter()
                .map(|x| {
                    let c = id_candidates(&x.image_id, sub.as_deref());
                    (x.question_id, x.image_id, c, req(task, &x.question))
                })
                .collect()
        }
        Benchmark::Aokvqa => lion_data::aokvqa::read_aokvqa(&job.gt)?
            .into_iter()
            .map(|x| {
                let c = id_candidates(&x.image_id, x.split.as_deref());
                (x.question_id, x.image_id, c, req(task, &x.question))
            })
            .collect(),
        Benchmark::Rec => {
            let instances = job
                .instances
                .as_ref()
                .context("--task rec needs --instances (RefCOCO's instances.json)")?;
            let refs = lion_data::refcoco::read_refcoco(&job.gt, instances, job.split.as_deref())?;
            let mut v = vec![];
            for r in refs {
                for (s, id) in r.sentences.iter().zip(&r.sent_ids) {
                    v.push((
                        id.to_string(),
                        r.image_id.to_string(),
                        name_candidates(&r.file_name),
                        req(task, s),
                    ));
                }
            }
            v
        }
    };
    let n = raw.len().min(job.limit.unwrap_or(usize::MAX));
    let mut last = 0;
    let mut found = 0;
    let tags = match &job.tags {
        Some(p) => Some(ImageTags::read(p)?),
        None => None,
    };
    let (mut tagged, mut all) = (HashSet::new(), HashSet::new());
    let mut items = Vec::with_capacity(n);
    for (id, image_id, cands, mut request) in raw.into_iter().take(n) {
        let image = match locate(root, &cands, &mut last) {
            Some(p) => {
                found += 1;
                p
            }
            None => root.join(cands.get(last).or(cands.first()).context("no file name")?),
        };
        if let Some(t) = tags.as_ref().and_then(|t| t.get(&image_id, &image)) {
            request.tags = t.clone();
            tagged.insert(image_id.clone());
        }
        all.insert(image_id);
        items.push(SplitItem { id, image, request });
    }
    if let Some(p) = &job.tags {
        tracing::info!(
            "tags for {} of {} images from {}",
            tagged.len(),
            all.len(),
            p.display()
        );
    }
    if items.is_empty() {
        bail!("{}: no items in this split", job.gt.display());
    }
    if found == 0 {
        bail!(
            "none of the {} images of {} is under {} (the first would be {})",
            items.len(),
            job.gt.display(),
            root.display(),
            items[0].image.display()
        );
    }
    Ok(items)
}

/// Tags per image, by image id and by file name.
pub(crate) struct ImageTags {
    by_id: HashMap<String, Vec<(String, f32)>>,
    by_name: HashMap<String, Vec<(String, f32)>>,
}

impl ImageTags {
    /// A JSON array or JSON lines of `{"image_id" | "image" | "file_name", "tags"}`; a tag is
    /// `"name"` (score 1), `"name: score"`, `{"tag", "score"}` or `[name, score]`. Records
    /// with an `"error"` (an image `lion tag` could not read) are skipped.
    fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let records: Vec<(String, Value)> = if text.trim_start().starts_with('[') {
            let v: Value = serde_json::from_str(&text)
                .with_context(|| format!("{}: bad JSON", path.display()))?;
            v.as_array()
                .into_iter()
                .flatten()
                .enumerate()
                .map(|(i, r)| (format!("record {i}"), r.clone()))
                .collect()
        } else {
            let mut v = vec![];
            for (i, l) in text.lines().enumerate() {
                if l.trim().is_empty() {
                    continue;
                }
                let r: Value = serde_json::from_str(l)
                    .with_context(|| format!("{}: line {}: bad JSON", path.display(), i + 1))?;
                v.push((format!("line {}", i + 1), r));
            }
            v
        };
        let mut out = Self {
            by_id: HashMap::new(),
            by_name: HashMap::new(),
        };
        for (at, r) in records {
            if r.get("error").is_some() {
                continue;
            }
            let bad = |m: &str| anyhow::anyhow!("{}: {at}: {m}", path.display());
            let list = r
                .get("tags")
                .and_then(Value::as_array)
                .ok_or_else(|| bad("no \"tags\" list"))?;
            let mut tags = Vec::with_capacity(list.len());
            for t in list {
                match t.as_str() {
                    Some(name) if !name.contains(':') => tags.push((name.trim().to_string(), 1.0)),
                    _ => tags.extend(
                        lion_core::tags::from_json(Some(&json!([t]))).map_err(|e| bad(&e))?,
                    ),
                }
            }
            let id = match r.get("image_id") {
                Some(Value::Number(n)) => Some(n.to_string()),
                Some(Value::String(s)) => Some(s.clone()),
                _ => None,
            };
            let name = ["file_name", "image"]
                .iter()
                .find_map(|k| r.get(*k).and_then(Value::as_str))
                .and_then(|p| Path::new(p).file_name())
                .map(|n| n.to_string_lossy().into_owned());
            if id.is_none() && name.is_none() {
                return Err(bad("no \"image_id\", \"file_name\" or \"image\""));
            }
            if let Some(id) = id {
                out.by_id.insert(id, tags.clone());
            }
            if let Some(name) = name {
                out.by_name.insert(name, tags);
            }
        }
        Ok(out)
    }

    fn get(&self, image_id: &str, image: &Path) -> Option<&Vec<(String, f32)>> {
        self.by_id.get(image_id).or_else(|| {
            image
                .file_name()
                .and_then(|n| self.by_name.get(n.to_string_lossy().as_ref()))
        })
    }
}

/// The questions file and the annotations must hold the same questions.
pub(crate) fn check_same_questions(
    q: &Path,
    qs: &[lion_data::vqa::VqaQuestion],
    gt: &Path,
    anns: &[lion_data::vqa::VqaAnnotation],
) -> Result<()> {
    let a: HashSet<&str> = anns.iter().map(|a| a.question_id.as_str()).collect();
    let b: HashSet<&str> = qs.iter().map(|q| q.question_id.as_str()).collect();
    if a != b {
        bail!(
            "{} and {} do not hold the same questions ({} vs {})",
            q.display(),
            gt.display(),
            b.len(),
            a.len()
        );
    }
    Ok(())
}
