//! `lion eval`: score predictions in the official result formats against a benchmark's ground
//! truth, print a table, and (with `--json`) write overall and per-item scores atomically.
//!
//! - caption: `--pred [{image_id, caption}]`, `--gt` a Karpathy split file (`--split`, default
//!   `test`), an official `captions_*.json`, or a TextCaps file; BLEU-1..4, ROUGE-L, CIDEr-D as
//!   pycocoevalcap computes them, over the predicted images.
//! - vqa: `--pred [{question_id, answer}]`, `--gt` the annotations file (`--questions` optional,
//!   checked against it); the official GT-Vision-Lab VQA accuracy, quirks included, overall, per
//!   answer type and per question type (`--vqa-mode normalized`: the cleaned-up variant).
//! - aokvqa: `--pred` the official `{question_id: {multiple_choice, direct_answer}}`,
//!   `{question_id: answer}` or `[{question_id, answer}]`, `--gt` an A-OKVQA split file; the
//!   official multiple-choice and direct-answer scores (`eval_predictions.py`), a missing
//!   prediction scoring 0.
//! - rec: `--pred [{ref_id | id | sent_id, box}]` (`box` = pixel `[x1,y1,x2,y2]` or the model's
//!   text `"Answer: [0.1,0.2,0.5,0.9]"`), `--gt` a `refs(unc|google|umd).p` with `--instances`;
//!   accuracy at `--iou-thresholds` (default 0.5 and 0.1), overall and per split, mean IoU, the
//!   IoU histogram; unparsable text counts as a miss.
//!
//! With a model (`--model DIR`, or `--preset P --random-weights`), `--images ROOT` and
//! `--pred-out PRED.json` instead of `--pred`, it first runs the model over the split (batched,
//! progress bar, resumable through `PRED.json.partial`, see [`super::predict`]), writes the
//! predictions in the official result format, then scores them as above. Images are found under
//! ROOT by the ground truth's `file_name` (captions, REC; also by its base name) or, for VQA and
//! A-OKVQA, by image id in the COCO (`COCO_val2014_%012d.jpg`, `%012d.jpg`) or ShapesWorld
//! (`images/{split}/%06d.png`) layouts. A ShapesWorld folder works as it is:
//! `--gt w/annotations_val.json --questions w/questions_val.json --images w`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use lion_core::pipeline::Request;
use lion_data::refcoco::PredBox;
use lion_metrics::aokvqa::{AokvqaGt, AokvqaMetric, AokvqaPred};
use lion_metrics::caption::CaptionEval;
use lion_metrics::rec::{is_proper, threshold_key, RecAccumulator};
use lion_metrics::vqa::{GtAnswer, VqaAccumulator, VqaMode};
use serde_json::{json, Value};

use super::model::{GenArgs, ModelArgs};
use super::predict::{predict_split, PredictOptions, SplitItem};

/// `--task`: the benchmark (its ground-truth format and metric). Each asks LION one
/// [`lion_core::Task`] ([`Benchmark::task`]); A-OKVQA is VQA with its own scorer.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Benchmark {
    Caption,
    Vqa,
    Aokvqa,
    Rec,
}

impl Benchmark {
    /// The task LION is asked for the benchmark's items.
    pub fn task(self) -> lion_core::Task {
        match self {
            Benchmark::Caption => lion_core::Task::Caption,
            Benchmark::Vqa | Benchmark::Aokvqa => lion_core::Task::Vqa,
            Benchmark::Rec => lion_core::Task::Rec,
        }
    }
}

/// `--vqa-mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum VqaModeArg {
    /// The official GT-Vision-Lab code, quirks included.
    Official,
    /// Cleaned up: answers and prediction always normalised, leave-one-out by position.
    Normalized,
}

#[derive(clap::Args)]
pub struct Args {
    /// Which benchmark metric to compute.
    #[arg(long, value_enum)]
    task: Benchmark,
    /// Predictions in the official result format of the task.
    #[arg(long, required_unless_present_any = ["model", "preset"], conflicts_with = "pred_out")]
    pred: Option<PathBuf>,
    /// Ground truth (see `lion eval --help` for the formats per task).
    #[arg(long)]
    gt: PathBuf,
    /// VQA questions file (optional; checked against the annotations).
    #[arg(long)]
    questions: Option<PathBuf>,
    /// RefCOCO `instances.json` (needed by `--task rec`).
    #[arg(long)]
    instances: Option<PathBuf>,
    /// Split of a Karpathy caption file or of a RefCOCO refs file (captions default: test).
    #[arg(long)]
    split: Option<String>,
    /// VQA scorer: `official` (GT-Vision-Lab vqaEval.py, quirks included) or `normalized` (the
    /// cleaned-up variant: also ten identical answers are normalised; leave-one-out by position).
    #[arg(long, value_enum, default_value = "official")]
    vqa_mode: VqaModeArg,
    /// REC: IoU thresholds of the accuracies reported, each in (0, 1].
    #[arg(long, value_delimiter = ',', default_value = "0.5,0.1")]
    iou_thresholds: Vec<f64>,
    /// Write overall and per-item scores here as JSON (atomically).
    #[arg(long)]
    json: Option<PathBuf>,
    /// With a model: where the predictions go (resumable through PRED.json.partial).
    #[arg(long, requires = "images")]
    pred_out: Option<PathBuf>,
    /// With a model: the image folder the ground truth's file names are relative to.
    #[arg(long)]
    images: Option<PathBuf>,
    /// With a model: items per batch.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// With a model: each image's tags, as `lion tag` writes them (`{"image", "tags": [{"tag",
    /// "score"}]}` lines) or ShapesWorld's `tags_{split}.json` (`[{"image_id", "tags": [...]}]`),
    /// matched by image id, else by file name. Without it, requests carry no tags.
    #[arg(long)]
    tags: Option<PathBuf>,
    /// With a model: only the first N items of the split.
    #[arg(long)]
    limit: Option<usize>,
    /// With a model: compute at most N new predictions, then stop without scoring (the partial
    /// file keeps them; run again to go on).
    #[arg(long)]
    stop_after: Option<usize>,
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    gen: GenArgs,
    /// With a model: run shard i/N of the split (see `lion merge`).
    #[command(flatten)]
    shard: super::shard::ShardArgs,
}

pub fn run(args: Args) -> Result<()> {
    if args.pred.is_some() && (args.model.model.is_some() || args.model.preset.is_some()) {
        bail!(
            "give --pred (score a file) or a model (--model / --preset, with --pred-out), not both"
        );
    }
    let (pred, prediction) = match &args.pred {
        Some(p) => (p.clone(), None),
        None => match predict(&args)? {
            Some((p, v)) => (p, Some(v)),
            None => return Ok(()),
        },
    };
    let mut report = match args.task {
        Benchmark::Caption => caption(&args, &pred)?,
        Benchmark::Vqa => vqa(&args, &pred)?,
        Benchmark::Aokvqa => aokvqa(&args, &pred)?,
        Benchmark::Rec => rec(&args, &pred)?,
    };
    if let Some(v) = prediction {
        report["prediction"] = v;
    }
    if let Some(out) = &args.json {
        let bytes = serde_json::to_vec_pretty(&report)?;
        lion_core::util::write_atomic(out, &bytes)?;
        tracing::info!("scores written to {}", out.display());
    }
    Ok(())
}

fn table(title: &str, rows: &[(String, String)]) {
    let w = rows.iter().map(|r| r.0.len()).max().unwrap_or(0).max(6);
    println!("{title}");
    for (k, v) in rows {
        println!("  {k:<w$}  {v}");
    }
}

/// Detects the caption ground-truth format from the file's top level.
fn read_caption_gt(path: &Path, split: Option<&str>) -> Result<Vec<lion_data::coco::CaptionImage>> {
    let v = lion_data::json::read_value(path)?;
    let images = v.get("images").and_then(Value::as_array);
    if v.get("data").is_some() {
        Ok(lion_data::textcaps::read_textcaps(path)?)
    } else if v.get("annotations").is_some() {
        Ok(lion_data::coco::read_coco_captions(path)?)
    } else if images.is_some_and(|a| a.first().is_some_and(|x| x.get("sentences").is_some())) {
        Ok(lion_data::coco::read_karpathy(
            path,
            Some(split.unwrap_or("test")),
        )?)
    } else {
        bail!(
            "{}: not a caption ground truth (Karpathy split, captions_*.json or TextCaps)",
            path.display()
        )
    }
}

fn caption(args: &Args, pred: &Path) -> Result<Value> {
    let gt = read_caption_gt(&args.gt, args.split.as_deref())?;
    let gt: HashMap<&str, &Vec<String>> = gt
        .iter()
        .map(|im| (im.image_id.as_str(), &im.captions))
        .collect();
    let preds = lion_data::coco::read_caption_results(pred)?;
    let mut seen = HashSet::new();
    let mut ev = CaptionEval::new();
    for (i, p) in preds.iter().enumerate() {
        let refs = gt.get(p.image_id.as_str()).with_context(|| {
            format!(
                "{}: record {i}: image_id {} is not in {}",
                pred.display(),
                p.image_id,
                args.gt.display()
            )
        })?;
        if !seen.insert(p.image_id.as_str()) {
            bail!(
                "{}: record {i}: a second caption for image_id {}",
                pred.display(),
                p.image_id
            );
        }
        if refs.is_empty() {
            bail!(
                "{}: image {} has no reference captions",
                args.gt.display(),
                p.image_id
            );
        }
        ev.add(p.image_id.clone(), &p.caption, refs);
    }
    if ev.is_empty() {
        bail!("{}: no predictions", pred.display());
    }
    let missing = gt.len() - seen.len();
    if missing > 0 {
        tracing::warn!(
            "{missing} ground-truth images have no prediction (scored: the predicted ones)"
        );
    }
    let s = ev.compute();
    let f = |x: f64| format!("{:.2}", 100.0 * x);
    table(
        &format!(
            "caption scores over {} images ({missing} without prediction)",
            s.images
        ),
        &[
            ("CIDEr-D".into(), f(s.cider)),
            ("BLEU-1".into(), f(s.bleu[0])),
            ("BLEU-2".into(), f(s.bleu[1])),
            ("BLEU-3".into(), f(s.bleu[2])),
            ("BLEU-4".into(), f(s.bleu[3])),
            ("ROUGE-L".into(), f(s.rouge_l)),
        ],
    );
    Ok(json!({
        "task": "caption",
        "pred": pred,
        "gt": args.gt,
        "overall": {
            "images": s.images, "missing": missing, "cider": s.cider,
            "bleu_1": s.bleu[0], "bleu_2": s.bleu[1], "bleu_3": s.bleu[2], "bleu_4": s.bleu[3],
            "rouge_l": s.rouge_l,
        },
        "per_item": s.per_item,
    }))
}

fn vqa(args: &Args, pred: &Path) -> Result<Value> {
    let anns = lion_data::vqa::read_vqa_annotations(&args.gt)?;
    if let Some(q) = &args.questions {
        let qs = lion_data::vqa::read_vqa_questions(q)?;
        check_same_questions(q, &qs, &args.gt, &anns)?;
    }
    let mut ids = HashSet::new();
    for (i, a) in anns.iter().enumerate() {
        if !ids.insert(a.question_id.as_str()) {
            bail!(
                "{}: annotations[{i}]: question_id {} appears twice",
                args.gt.display(),
                a.question_id
            );
        }
        if a.answers.is_empty() {
            bail!(
                "{}: annotations[{i}]: question_id {} has \"answers\": [] (no ground-truth \
                 answers to score against; the official evaluation fails on it too)",
                args.gt.display(),
                a.question_id
            );
        }
    }
    let preds = lion_data::vqa::read_vqa_results(pred)?;
    let mut answer_of: HashMap<&str, &str> = HashMap::with_capacity(preds.len());
    for (i, p) in preds.iter().enumerate() {
        if !ids.contains(p.question_id.as_str()) {
            bail!(
                "{}: record {i}: question_id {} is not in {}",
                pred.display(),
                p.question_id,
                args.gt.display()
            );
        }
        if answer_of.insert(&p.question_id, &p.answer).is_some() {
            bail!(
                "{}: record {i}: a second answer for question {}",
                pred.display(),
                p.question_id
            );
        }
    }
    let mode = match args.vqa_mode {
        VqaModeArg::Official => VqaMode::Official,
        VqaModeArg::Normalized => VqaMode::Normalized,
    };
    // the official sums run in annotation order
    let mut acc = VqaAccumulator::with_mode(mode);
    let mut per_item = Vec::with_capacity(preds.len());
    for a in &anns {
        let Some(answer) = answer_of.get(a.question_id.as_str()) else {
            continue;
        };
        let gts: Vec<GtAnswer> = a
            .answers
            .iter()
            .map(|x| GtAnswer {
                answer: x.answer.clone(),
                fields: x.fields.clone(),
            })
            .collect();
        let s = acc
            .add(
                a.question_id.clone(),
                answer,
                &gts,
                a.answer_type.as_deref(),
                a.question_type.as_deref(),
            )
            .with_context(|| format!("{}: question {}", args.gt.display(), a.question_id))?;
        per_item.push(json!({
            "question_id": a.question_id, "answer": answer, "accuracy": s,
            "official": VqaAccumulator::official_item(s),
        }));
    }
    if acc.is_empty() {
        bail!("{}: no predictions", pred.display());
    }
    let missing = anns.len() - acc.len();
    if missing > 0 {
        tracing::warn!(
            "{missing} questions have no prediction (scored: the predicted ones; the official \
             code refuses such a file)"
        );
    }
    let official = acc.official();
    let f = |x: f64| format!("{x:.2}");
    let mut rows = vec![("overall".to_string(), f(official.overall))];
    for (t, v) in &official.per_answer_type {
        rows.push((format!("answer type {t}"), f(*v)));
    }
    for (t, v) in &official.per_question_type {
        rows.push((format!("question type {t}"), f(*v)));
    }
    table(
        &format!(
            "VQA accuracy ({}) over {} questions ({missing} without prediction)",
            match mode {
                VqaMode::Official => "official",
                VqaMode::Normalized => "normalized variant",
            },
            acc.len()
        ),
        &rows,
    );
    Ok(json!({
        "task": "vqa",
        "pred": pred,
        "gt": args.gt,
        "overall": {
            "questions": acc.len(), "missing": missing, "accuracy": acc.overall(),
            "mode": format!("{:?}", args.vqa_mode).to_lowercase(),
            "per_answer_type": acc.per_answer_type(),
            "per_question_type": acc.per_question_type(),
            "official": official,
        },
        "per_item": per_item,
    }))
}

fn aokvqa(args: &Args, pred: &Path) -> Result<Value> {
    let qs = lion_data::aokvqa::read_aokvqa(&args.gt)?;
    let ids: HashSet<&str> = qs.iter().map(|q| q.question_id.as_str()).collect();
    let preds = lion_data::aokvqa::read_aokvqa_predictions(pred)?;
    let mut by_id: HashMap<&str, &lion_data::aokvqa::AokvqaPrediction> = HashMap::new();
    let mut unknown = 0;
    for p in &preds {
        if by_id.insert(&p.question_id, p).is_some() {
            bail!(
                "{}: a second prediction for question {}",
                pred.display(),
                p.question_id
            );
        }
        unknown += usize::from(!ids.contains(p.question_id.as_str()));
    }
    if unknown > 0 {
        tracing::warn!(
            "{unknown} predictions are for questions not in {} (ignored, as the official script does)",
            args.gt.display()
        );
    }
    let data: Vec<AokvqaGt> = qs
        .iter()
        .map(|q| AokvqaGt {
            question_id: q.question_id.clone(),
            choices: q.choices.clone(),
            correct_choice_idx: q.correct_choice_idx,
            direct_answers: q.direct_answers.clone(),
            difficult_direct_answer: q.difficult_direct_answer,
        })
        .collect();
    let scores = lion_metrics::aokvqa::evaluate(&data, |id| {
        by_id.get(id).map(|p| AokvqaPred {
            multiple_choice: p.multiple_choice.clone(),
            direct_answer: p.direct_answer.clone(),
        })
    })
    .with_context(|| format!("{}", args.gt.display()))?;
    let (mc, da) = (&scores.multiple_choice, &scores.direct_answer);
    if mc.is_none() && da.is_none() {
        bail!("{}: no predictions", pred.display());
    }
    let mut rows = vec![];
    for (name, m) in [("multiple choice", mc), ("direct answer", da)] {
        if let Some(m) = m {
            rows.push((
                name.to_string(),
                format!(
                    "{:.2}  ({} questions, {} without prediction)",
                    m.accuracy, m.questions, m.missing
                ),
            ));
        }
    }
    table("A-OKVQA (official eval_predictions.py)", &rows);
    let score_of = |m: &Option<AokvqaMetric>| -> HashMap<String, f64> {
        m.iter().flat_map(|m| m.per_item.iter().cloned()).collect()
    };
    let (mc_of, da_of) = (score_of(mc), score_of(da));
    let per_item: Vec<Value> = qs
        .iter()
        .map(|q| {
            let p = by_id.get(q.question_id.as_str());
            json!({
                "question_id": q.question_id,
                "multiple_choice": p.and_then(|p| p.multiple_choice.as_ref()),
                "direct_answer": p.and_then(|p| p.direct_answer.as_ref()),
                "mc_score": mc_of.get(&q.question_id),
                "da_score": da_of.get(&q.question_id),
            })
        })
        .collect();
    Ok(json!({
        "task": "aokvqa",
        "pred": pred,
        "gt": args.gt,
        "overall": {
            "questions": qs.len(),
            "missing": da.as_ref().map(|m| m.missing),
            "score": da.as_ref().map(|m| m.accuracy / 100.0),
            "direct_answer": da,
            "multiple_choice": mc,
        },
        "per_item": per_item,
    }))
}

/// A REC prediction in pixels: given as pixels, or LION's box text read by `lion_core::bbox`
/// (as `lion ground` and the server read it); `None` is a miss.
fn pred_box(p: &PredBox, width: f64, height: f64) -> Option<[f64; 4]> {
    match p {
        PredBox::Pixels(b) => Some(*b),
        PredBox::Text(t) => lion_core::bbox::parse(t, width, height),
        PredBox::Missing => None,
    }
}

fn rec(args: &Args, pred: &Path) -> Result<Value> {
    let instances = args
        .instances
        .as_ref()
        .context("--task rec needs --instances (RefCOCO's instances.json)")?;
    let refs = lion_data::refcoco::read_refcoco(&args.gt, instances, args.split.as_deref())?;
    let by_ref: HashMap<i64, usize> = refs
        .iter()
        .enumerate()
        .map(|(i, r)| (r.ref_id, i))
        .collect();
    let by_sent: HashMap<i64, usize> = refs
        .iter()
        .enumerate()
        .flat_map(|(i, r)| r.sent_ids.iter().map(move |&s| (s, i)))
        .collect();
    let preds = lion_data::refcoco::read_rec_results(pred)?;
    let mut acc = RecAccumulator::with_thresholds(&args.iou_thresholds)
        .map_err(|e| anyhow::anyhow!("--iou-thresholds: {e}"))?;
    let mut per_item = Vec::new();
    let mut seen = HashSet::new();
    let mut degenerate = 0;
    for (i, p) in preds.iter().enumerate() {
        let (k, key) = match (p.sent_id, p.ref_id) {
            (Some(s), _) => (by_sent.get(&s), format!("sent_id {s}")),
            (None, Some(r)) => (by_ref.get(&r), format!("ref_id {r}")),
            (None, None) => bail!("{}: record {i}: no id", pred.display()),
        };
        let r = &refs[*k.with_context(|| {
            format!(
                "{}: record {i}: {key} is not in {}",
                pred.display(),
                args.gt.display()
            )
        })?];
        if !seen.insert(key.clone()) {
            bail!("{}: record {i}: a second box for {key}", pred.display());
        }
        degenerate += usize::from(!is_proper(&r.bbox));
        let pred = pred_box(&p.pred, r.width as f64, r.height as f64);
        let v = acc.add(key.clone(), Some(&r.split), pred.as_ref(), &r.bbox);
        per_item.push(json!({
            "id": key, "ref_id": r.ref_id, "split": r.split, "pred_box": pred, "gt_box": r.bbox,
            "iou": v, "parsed": pred.is_some(), "hit": v >= 0.5,
        }));
    }
    if acc.is_empty() {
        bail!("{}: no predictions", pred.display());
    }
    if degenerate > 0 {
        tracing::warn!(
            "{degenerate} ground-truth boxes have zero width or height: every prediction for them scores IoU 0"
        );
    }
    let s = acc.summary();
    let pct = |x: f64| format!("{:.2}", 100.0 * x);
    let mut rows: Vec<(String, String)> = acc
        .thresholds()
        .iter()
        .map(|&t| (format!("Acc@{t}"), pct(s.accuracy[&threshold_key(t)])))
        .collect();
    rows.push(("mean IoU".to_string(), format!("{:.4}", s.mean_iou)));
    rows.push(("unparsable".to_string(), s.unparsable.to_string()));
    if s.per_split.len() > 1 {
        for (name, sp) in &s.per_split {
            for &t in acc.thresholds() {
                rows.push((
                    format!("{name} Acc@{t}"),
                    format!(
                        "{}  ({} items)",
                        pct(sp.accuracy[&threshold_key(t)]),
                        sp.items
                    ),
                ));
            }
        }
    }
    let hist: BTreeMap<String, usize> = s
        .iou_histogram
        .iter()
        .enumerate()
        .map(|(b, n)| {
            (
                format!(
                    "[{:.1},{:.1}{}",
                    b as f64 / 10.0,
                    (b + 1) as f64 / 10.0,
                    if b == 9 { "]" } else { ")" }
                ),
                *n,
            )
        })
        .collect();
    for (k, n) in &hist {
        rows.push((format!("IoU {k}"), n.to_string()));
    }
    table(&format!("REC over {} expressions", s.items), &rows);
    Ok(json!({
        "task": "rec",
        "pred": pred,
        "gt": args.gt,
        "overall": s,
        "per_item": per_item,
    }))
}

/// `PRED.json` -> `PRED.json.partial`.
pub fn partial_path(out: &Path) -> PathBuf {
    let mut name = out.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    out.with_file_name(name)
}

/// Finds an item's image under `root`: the first candidate (relative path) that exists, trying
/// the one that matched last time first. None when no candidate exists.
fn locate(root: &Path, cands: &[String], last: &mut usize) -> Option<PathBuf> {
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
fn name_candidates(file_name: &str) -> Vec<String> {
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
fn id_candidates(id: &str, sub: Option<&str>) -> Vec<String> {
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
fn split_items(args: &Args, root: &Path) -> Result<Vec<SplitItem>> {
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
struct ImageTags {
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
fn check_same_questions(
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
fn predict(args: &Args) -> Result<Option<(PathBuf, Value)>> {
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
    let (items, target) = super::shard::select(&all, |it| it.id.as_str(), shard, out);
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
            super::shard::shard_text(s, &ids, &records, &format!("eval {:?}", args.task))
        }
    };
    super::shard::write_output(lion_data::shard::Output {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// `lion ground` (the pipeline's answer box), `POST /v1/ground` and the chat route
    /// (`GroundResponse::from_text`) and `lion eval --task rec` (`pred_box`) read the same texts
    /// the same way: the one rule of `lion_core::bbox`.
    #[test]
    fn cli_server_and_evaluator_read_box_text_alike() {
        let (w, h) = (640u32, 480u32);
        let cases: [(&str, Option<[f32; 4]>); 16] = [
            (
                "Answer: [0.440,0.060,0.650,0.367]",
                Some([281.6, 28.8, 416.0, 176.16]),
            ),
            ("[0,0,1,1]", Some([0.0, 0.0, 640.0, 480.0])),
            ("[0.1,0.2,1.04,0.4]", Some([64.0, 96.0, 640.0, 192.0])),
            ("[0.5,0.5,0.5,0.9]", Some([320.0, 240.0, 320.0, 432.0])),
            (
                "[0.1,0.2,0.3,0.4] or [0.5,0.5,0.6,0.6]",
                Some([320.0, 240.0, 384.0, 288.0]),
            ),
            ("[0.1,0.2,0.3,0.4] [x]", Some([64.0, 96.0, 192.0, 192.0])),
            ("[0.1,0.2,1.5,0.4]", None),
            ("[0.1,0.2,1.051,0.4]", None),
            ("[0.1,0.2,0.3,0.4] then [2,2,3,3]", None),
            ("[0.5,0.5,0.2,0.9]", None),
            ("[-0.1,0.2,0.3,0.4]", None),
            ("[nan,0.2,0.3,0.4]", None),
            ("[0.1,0.2,inf,0.4]", None),
            ("[1e-1,0.2,0.3,0.4]", None),
            ("[0.1,0.2,0.3]", None),
            ("the dog on the left [0.1,0.2", None),
        ];
        for (text, want) in cases {
            let cli = lion_core::pipeline::answer_box(text, w, h);
            let server = lion_server::GroundResponse::from_text(text.into(), w, h).bbox;
            let eval = pred_box(&PredBox::Text(text.into()), w as f64, h as f64)
                .map(|b| b.map(|v| v as f32));
            assert_eq!(cli, server, "{text}: lion ground vs the server");
            assert_eq!(cli, eval, "{text}: lion ground vs lion eval");
            match (cli, want) {
                (Some(b), Some(want)) => {
                    for (a, w) in b.iter().zip(want) {
                        assert!((a - w).abs() < 1e-3, "{text}: {b:?}, want {want:?}");
                    }
                }
                (got, want) => assert_eq!(got, want, "{text}"),
            }
        }
    }
}
