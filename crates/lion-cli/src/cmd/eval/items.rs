//! Evaluating with a model: the split's items (images found under `--images`, tags, questions),
//! then predictions written in the official result format (resumable, sharded).

use super::*;

/// `PRED.json` -> `PRED.json.partial`.
pub fn partial_path(out: &Path) -> PathBuf {
    let mut name = out.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    out.with_file_name(name)
}

/// Finds an item's image under `root`: the first candidate (relative path) that exists, trying
/// the one that matched last time first. None when no candidate exists.
pub(super) fn locate(root: &Path, cands: &[String], last: &mut usize) -> Option<PathBuf> {
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
pub(super) fn name_candidates(file_name: &str) -> Vec<String> {
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
pub(super) fn id_candidates(id: &str, sub: Option<&str>) -> Vec<String> {
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

/// The items of the split the flags describe, each with its image file under `root` (or the
/// first candidate when none exists: that item then fails, named, and the others go on).
pub(super) fn split_items(args: &Args, root: &Path) -> Result<Vec<SplitItem>> {
    let task = args.task.task();
    let req = |task, text: &str| Request {
        task,
        text: text.to_string(),
        tags: vec![],
    };
    // (id, image id, candidate files, request)
    let raw: Vec<(String, String, Vec<String>, Request)> = match args.task {
        Benchmark::Caption => read_caption_gt(&args.gt, args.split.as_deref())?
            .into_iter()
            .map(|im| {
                let c = name_candidates(&im.file_name);
                (im.image_id.clone(), im.image_id, c, req(task, ""))
            })
            .collect(),
        Benchmark::Vqa => {
            let q = args.questions.as_ref().context(
                "--task vqa with a model needs --questions (the questions file: the model reads the question texts)",
            )?;
            let qs = lion_data::vqa::read_vqa_questions(q)?;
            let anns = lion_data::vqa::read_vqa_annotations(&args.gt)?;
            check_same_questions(q, &qs, &args.gt, &anns)?;
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
        Benchmark::Aokvqa => lion_data::aokvqa::read_aokvqa(&args.gt)?
            .into_iter()
            .map(|x| {
                let c = id_candidates(&x.image_id, x.split.as_deref());
                (x.question_id, x.image_id, c, req(task, &x.question))
            })
            .collect(),
        Benchmark::Rec => {
            let instances = args
                .instances
                .as_ref()
                .context("--task rec needs --instances (RefCOCO's instances.json)")?;
            let refs =
                lion_data::refcoco::read_refcoco(&args.gt, instances, args.split.as_deref())?;
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
    let n = raw.len().min(args.limit.unwrap_or(usize::MAX));
    let mut last = 0;
    let mut found = 0;
    let tags = match &args.tags {
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
    if let Some(p) = &args.tags {
        tracing::info!(
            "tags for {} of {} images from {}",
            tagged.len(),
            all.len(),
            p.display()
        );
    }
    if items.is_empty() {
        bail!("{}: no items in this split", args.gt.display());
    }
    if found == 0 {
        bail!(
            "none of the {} images of {} is under {} (the first would be {})",
            items.len(),
            args.gt.display(),
            root.display(),
            items[0].image.display()
        );
    }
    Ok(items)
}

/// Tags per image, by image id and by file name.
pub(super) struct ImageTags {
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
pub(super) fn check_same_questions(
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

/// Runs the model over the split, writes `--pred-out` and returns its path with a summary of
/// the run; None when `--stop-after` stopped it before the end.
pub(super) fn predict(args: &Args) -> Result<Option<(PathBuf, Value)>> {
    let out = args
        .pred_out
        .as_ref()
        .context("with a model, give --pred-out PRED.json (where the predictions go)")?;
    let root = args
        .images
        .as_ref()
        .context("with a model, give --images ROOT (the folder of the split's images)")?;
    let shard = args.shard.resolve(Some("--pred-out"))?;
    let all = split_items(args, root)?;
    let (items, target) = crate::cmd::shard::select(&all, |it| it.id.as_str(), shard, out);
    let gen = args.gen.checked_config()?;
    let pipe = args.model.load()?;
    pipe.config().check_memory(args.batch_size.max(1), false)?;
    let partial = partial_path(&target);
    let opts = PredictOptions {
        partial: Some(partial.clone()),
        max_new: args.stop_after,
        ..PredictOptions::new(args.batch_size, gen)
    };
    let start = std::time::Instant::now();
    let preds = predict_split(&pipe, &items, &opts)?;
    let secs = start.elapsed().as_secs_f64();
    let done = preds.items.iter().flatten().count();
    if !preds.is_complete() {
        println!(
            "stopped after {} new predictions: {done} of {} items done ({} reused), kept in {}; \
             run again to go on",
            preds.computed,
            items.len(),
            preds.reused,
            partial.display()
        );
        return Ok(None);
    }
    let records = preds.records();
    let text = match shard {
        None => lion_data::shard::render(
            lion_data::shard::Format::JsonArray,
            records.iter().map(Value::to_string),
        ),
        Some(s) => {
            let ids: Vec<&str> = all.iter().map(|it| it.id.as_str()).collect();
            crate::cmd::shard::shard_text(s, &ids, &records, &format!("eval {:?}", args.task))
        }
    };
    crate::cmd::shard::write_output(lion_data::shard::Output {
        path: target.clone(),
        text,
        partial,
    })?;
    if let Some(s) = shard {
        println!(
            "shard {}/{}: {} of {} items ({} reused, {} computed, {} failed) -> {}; \
             join the shards with `lion merge --out {} FILES...`",
            s.index,
            s.count,
            items.len(),
            all.len(),
            preds.reused,
            preds.computed,
            preds.failed,
            target.display(),
            out.display()
        );
        return Ok(None);
    }
    println!(
        "predictions: {} items ({} reused, {} computed in {secs:.1} s, {} failed) -> {}",
        items.len(),
        preds.reused,
        preds.computed,
        preds.failed,
        out.display()
    );
    Ok(Some((
        out.clone(),
        json!({
            "items": items.len(), "reused": preds.reused, "computed": preds.computed,
            "failed": preds.failed, "failures": preds.failures(), "seconds": secs,
        }),
    )))
}
