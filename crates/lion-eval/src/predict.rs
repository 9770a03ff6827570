//! Running a [`LionPipeline`] over a benchmark split: batched, with progress reported, resumable.
//!
//! [`predict_split`] is what `lion eval --model` runs before scoring, and what `lion demo` calls
//! (through [`crate::evaluate_model`]) for its evaluation. Each finished item is appended, as one JSON line in the task's official
//! result format, to a partial file (`PRED.json.partial`), flushed after every batch. A later run
//! with the same partial file reuses the items already there (a torn last line, from a killed
//! run, is dropped) and computes the rest. An item that cannot be predicted (missing or corrupt
//! image, model error) is reported naming the item and its file, and recorded with an `"error"`
//! field; such items are retried by the next run instead of being reused.
//!
//! Result records ([`record`]): caption `{"image_id", "caption"}`, VQA `{"question_id",
//! "answer"}`, REC `{"sent_id", "box", "text"}` with `box` in pixels of the image, or null when
//! the text holds no valid box.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use image::RgbImage;
use lion_core::generate::GenerationConfig;
use lion_core::pipeline::{LionPipeline, Request};
use lion_core::preprocess::load_image;
use lion_core::prompt::Task;
use serde_json::{json, Value};

/// One item of a split: its id in the result file (`image_id` for captions, `question_id` for
/// VQA, `sent_id` for REC, following `request.task`), its image file and the request.
#[derive(Debug, Clone)]
pub struct SplitItem {
    pub id: String,
    pub image: PathBuf,
    pub request: Request,
}

/// What the model said about one item.
#[derive(Debug, Clone, PartialEq)]
pub struct ItemPrediction {
    pub id: String,
    /// The decoded text ("" when the item failed).
    pub text: String,
    /// REC: the box in pixels of the image; None when the text holds no valid box or it failed.
    pub bbox: Option<[f32; 4]>,
    /// Why the item could not be predicted (it then counts as a miss / an empty answer).
    pub error: Option<String>,
}

/// Called after each batch with (items done, items in all).
pub type Progress = std::sync::Arc<dyn Fn(u64, u64) + Send + Sync>;

/// How to run [`predict_split`].
#[derive(Clone)]
pub struct PredictOptions {
    /// Items per model call (one route per batch, as the pipeline requires).
    pub batch_size: usize,
    pub gen: GenerationConfig,
    /// JSON-lines file of finished items: read first (its items are reused), appended per batch.
    /// None: nothing is saved or reused.
    pub partial: Option<PathBuf>,
    /// Compute at most this many new items, then stop (the partial file keeps them).
    pub max_new: Option<usize>,
    /// Told the progress after each batch (the CLI draws a bar with it).
    pub progress: Option<Progress>,
}

impl PredictOptions {
    pub fn new(batch_size: usize, gen: GenerationConfig) -> Self {
        Self {
            batch_size,
            gen,
            partial: None,
            max_new: None,
            progress: None,
        }
    }
}

/// The predictions of a split, in item order.
#[derive(Debug, Clone)]
pub struct SplitPredictions {
    pub task: Task,
    /// One per item; None where the run stopped early (`max_new`) before reaching it.
    pub items: Vec<Option<ItemPrediction>>,
    /// Taken from the partial file.
    pub reused: usize,
    /// Computed by this run (failures included).
    pub computed: usize,
    /// Items that could not be predicted.
    pub failed: usize,
}

impl SplitPredictions {
    /// Every item has a prediction (or a recorded failure).
    pub fn is_complete(&self) -> bool {
        self.items.iter().all(Option::is_some)
    }

    /// The official result records of the predicted items (no `error` field), in item order.
    pub fn records(&self) -> Vec<Value> {
        self.items
            .iter()
            .flatten()
            .map(|p| {
                let mut r = record(self.task, p);
                if let Some(o) = r.as_object_mut() {
                    o.remove("error");
                }
                r
            })
            .collect()
    }

    /// The failed items as `{"id", "error"}`.
    pub fn failures(&self) -> Vec<Value> {
        self.items
            .iter()
            .flatten()
            .filter_map(|p| p.error.as_ref().map(|e| json!({"id": p.id, "error": e})))
            .collect()
    }
}

/// The id field of a task's result format.
pub fn id_field(task: Task) -> &'static str {
    match task {
        Task::Caption => "image_id",
        Task::Vqa => "question_id",
        Task::Rec => "sent_id",
    }
}

fn text_field(task: Task) -> &'static str {
    match task {
        Task::Caption => "caption",
        Task::Vqa => "answer",
        Task::Rec => "text",
    }
}

/// An id as the official files write it: a number when it is one, else a string.
pub fn id_value(id: &str) -> Value {
    match id.parse::<i64>() {
        Ok(n) if n.to_string() == id => json!(n),
        _ => json!(id),
    }
}

/// One item's result record in the task's official format (plus `"error"` when it failed).
pub fn record(task: Task, p: &ItemPrediction) -> Value {
    let mut r = json!({ id_field(task): id_value(&p.id), text_field(task): p.text });
    if task == Task::Rec {
        r["box"] = json!(p.bbox);
    }
    if let Some(e) = &p.error {
        r["error"] = json!(e);
    }
    r
}

fn id_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Parses one partial-file line back into a prediction.
fn parse_line(task: Task, line: &str) -> std::result::Result<ItemPrediction, String> {
    let v: Value = serde_json::from_str(line).map_err(|e| format!("bad JSON: {e}"))?;
    let key = id_field(task);
    let id = v
        .get(key)
        .and_then(id_string)
        .ok_or(format!("no `{key}` (written for another task?)"))?;
    let text = v
        .get(text_field(task))
        .and_then(Value::as_str)
        .ok_or(format!("no `{}`", text_field(task)))?
        .to_string();
    let bbox = match v.get("box") {
        None | Some(Value::Null) => None,
        Some(b) => Some(
            serde_json::from_value::<[f32; 4]>(b.clone())
                .map_err(|_| "`box` is not 4 numbers or null".to_string())?,
        ),
    };
    let error = v.get("error").and_then(Value::as_str).map(str::to_string);
    Ok(ItemPrediction {
        id,
        text,
        bbox,
        error,
    })
}

/// Reads a partial file: its complete lines, dropping a torn last one (the file is then
/// rewritten without it, so appending goes on from a clean line end). A bad line elsewhere is an
/// error naming it.
fn read_partial(task: Task, path: &Path) -> Result<Vec<ItemPrediction>> {
    // Bytes, not text: a kill can tear the last line inside a multi-byte character.
    let bytes = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let lines: Vec<&[u8]> = bytes.split_inclusive(|&b| b == b'\n').collect();
    let mut out = Vec::with_capacity(lines.len());
    let mut torn = false;
    for (i, raw) in lines.iter().enumerate() {
        if raw.trim_ascii().is_empty() {
            continue;
        }
        let last = i + 1 == lines.len();
        let parsed = std::str::from_utf8(raw)
            .map_err(|e| format!("not valid UTF-8 ({e})"))
            .and_then(|t| parse_line(task, t.trim_end()));
        match parsed {
            Ok(p) if raw.ends_with(b"\n") => out.push(p),
            // complete JSON without its newline: keep it, but rewrite the file
            Ok(p) => {
                out.push(p);
                torn = true;
            }
            Err(e) if last => {
                tracing::warn!(
                    "{}: dropping the torn last line {} ({e})",
                    path.display(),
                    i + 1
                );
                torn = true;
            }
            Err(e) => bail!(
                "{}: line {}: {e}; delete the file to start over",
                path.display(),
                i + 1
            ),
        }
    }
    if torn {
        let mut clean = String::new();
        for p in &out {
            clean.push_str(&record(task, p).to_string());
            clean.push('\n');
        }
        lion_core::util::write_atomic(path, clean.as_bytes())?;
    }
    Ok(out)
}

/// Runs the pipeline over `items` in batches of `opts.batch_size`, reusing and extending the
/// partial file (see the module docs). Every item must have the same task. Per-item failures
/// are recorded, never fatal; an unusable partial file or a write error is.
pub fn predict_split(
    pipe: &LionPipeline,
    items: &[SplitItem],
    opts: &PredictOptions,
) -> Result<SplitPredictions> {
    let Some(first) = items.first() else {
        bail!("no items to predict");
    };
    let task = first.request.task;
    if items.iter().any(|i| i.request.task != task) {
        bail!("predict_split: items of different tasks");
    }
    let mut out: Vec<Option<ItemPrediction>> = vec![None; items.len()];
    let index: HashMap<&str, usize> = items
        .iter()
        .enumerate()
        .map(|(i, it)| (it.id.as_str(), i))
        .collect();
    let (mut reused, mut stale, mut retry) = (0, 0, 0);
    if let Some(path) = &opts.partial {
        // later lines win (a failed item retried and then predicted has two)
        let mut latest: HashMap<usize, ItemPrediction> = HashMap::new();
        for p in read_partial(task, path)? {
            match index.get(p.id.as_str()) {
                None => stale += 1,
                Some(&k) => {
                    latest.insert(k, p);
                }
            }
        }
        for (k, p) in latest {
            if p.error.is_some() {
                retry += 1;
            } else {
                reused += 1;
                out[k] = Some(p);
            }
        }
        if reused + stale + retry > 0 {
            tracing::info!(
                "resuming from {}: {reused} of {} items reused, {retry} failed ones retried, \
                 {stale} lines of other items ignored",
                path.display(),
                items.len()
            );
        }
    }
    let mut pending: Vec<usize> = (0..items.len()).filter(|&k| out[k].is_none()).collect();
    if let Some(n) = opts.max_new {
        pending.truncate(n);
    }
    let mut file = match &opts.partial {
        Some(p) if !pending.is_empty() => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .with_context(|| format!("cannot open {} for appending", p.display()))?,
        ),
        _ => None,
    };
    let total = items.len() as u64;
    let mut done = reused as u64;
    let report = |done: u64| {
        if let Some(p) = &opts.progress {
            p(done, total)
        }
    };
    report(done);
    let (mut computed, mut failed) = (0, 0);
    for chunk in pending.chunks(opts.batch_size.max(1)) {
        let mut results: Vec<(usize, ItemPrediction)> = Vec::with_capacity(chunk.len());
        let mut imgs: Vec<RgbImage> = Vec::new();
        let mut reqs: Vec<Request> = Vec::new();
        let mut ok: Vec<usize> = Vec::new();
        for &k in chunk {
            let it = &items[k];
            match load_image(&it.image) {
                Ok(img) => {
                    imgs.push(img);
                    reqs.push(it.request.clone());
                    ok.push(k);
                }
                Err(e) => results.push((k, failure(it, e.to_string()))),
            }
        }
        if !reqs.is_empty() {
            let answers = pipe.answer_each(&imgs, &reqs, &opts.gen);
            for (&k, a) in ok.iter().zip(answers) {
                let it = &items[k];
                results.push((
                    k,
                    match a {
                        Ok(a) => ItemPrediction {
                            id: it.id.clone(),
                            text: a.text,
                            bbox: a.bbox,
                            error: None,
                        },
                        Err(e) => failure(it, e.to_string()),
                    },
                ));
            }
        }
        results.sort_by_key(|r| r.0);
        let mut lines = String::new();
        for (k, p) in results {
            if p.error.is_some() {
                failed += 1;
            }
            lines.push_str(&record(task, &p).to_string());
            lines.push('\n');
            out[k] = Some(p);
            computed += 1;
        }
        if let (Some(f), Some(path)) = (file.as_mut(), &opts.partial) {
            f.write_all(lines.as_bytes())
                .and_then(|_| f.flush())
                .and_then(|_| f.sync_data())
                .with_context(|| format!("cannot append to {}", path.display()))?;
        }
        done += chunk.len() as u64;
        report(done);
    }
    if failed > 0 {
        tracing::warn!("{failed} of {computed} items could not be predicted (counted as misses)");
    }
    Ok(SplitPredictions {
        task,
        items: out,
        reused,
        computed,
        failed,
    })
}

fn failure(it: &SplitItem, error: String) -> ItemPrediction {
    tracing::warn!("item {} (image {}): {error}", it.id, it.image.display());
    ItemPrediction {
        id: it.id.clone(),
        text: String::new(),
        bbox: None,
        error: Some(error),
    }
}
