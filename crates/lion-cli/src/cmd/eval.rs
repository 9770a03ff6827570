//! `lion eval`: score predictions in the official result formats against a benchmark's ground
//! truth, print a table, and (with `--json`) write overall and per-item scores atomically.
//!
//! - caption: `--pred [{image_id, caption}]`, `--gt` a Karpathy split file (`--split`, default
//!   `test`), an official `captions_*.json`, or a TextCaps file; BLEU-1..4, ROUGE-L, CIDEr-D as
//!   pycocoevalcap computes them, over the predicted images.
//! - vqa: `--pred [{question_id, answer}]`, `--gt` the annotations file (`--questions` optional,
//!   checked against it); the official VQA accuracy, per answer type too.
//! - aokvqa: `--pred [{question_id, answer}]`, `{question_id: answer}` or
//!   `{question_id: {direct_answer}}`, `--gt` an A-OKVQA split file; the direct-answer score over
//!   all questions of the file, a missing prediction scoring 0 (as `eval_predictions.py` does).
//! - rec: `--pred [{ref_id | id | sent_id, box}]` (`box` = pixel `[x1,y1,x2,y2]` or the model's
//!   text `"Answer: [0.1,0.2,0.5,0.9]"`), `--gt` a `refs(unc|google|umd).p` with `--instances`;
//!   Acc@0.5, mean IoU, the IoU histogram; unparsable text counts as a miss.
//!
//! Running the model first (`--model`) needs the assembled LION model, which does not exist yet.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use lion_data::refcoco::PredBox;
use lion_metrics::caption::CaptionEval;
use lion_metrics::rec::{parse_box_text, RecAccumulator};
use lion_metrics::vqa::{aokvqa_da_score, GtAnswer, VqaAccumulator};
use serde_json::{json, Value};

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Task {
    Caption,
    Vqa,
    Aokvqa,
    Rec,
}

#[derive(clap::Args)]
pub struct Args {
    /// Which benchmark metric to compute.
    #[arg(long, value_enum)]
    task: Task,
    /// Predictions in the official result format of the task.
    #[arg(long)]
    pred: PathBuf,
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
    /// Write overall and per-item scores here as JSON (atomically).
    #[arg(long)]
    json: Option<PathBuf>,
}

pub fn run(args: Args) -> Result<()> {
    let report = match args.task {
        Task::Caption => caption(&args)?,
        Task::Vqa => vqa(&args)?,
        Task::Aokvqa => aokvqa(&args)?,
        Task::Rec => rec(&args)?,
    };
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

fn caption(args: &Args) -> Result<Value> {
    let gt = read_caption_gt(&args.gt, args.split.as_deref())?;
    let gt: HashMap<&str, &Vec<String>> = gt
        .iter()
        .map(|im| (im.image_id.as_str(), &im.captions))
        .collect();
    let preds = lion_data::coco::read_caption_results(&args.pred)?;
    let mut seen = HashSet::new();
    let mut ev = CaptionEval::new();
    for (i, p) in preds.iter().enumerate() {
        let refs = gt.get(p.image_id.as_str()).with_context(|| {
            format!(
                "{}: record {i}: image_id {} is not in {}",
                args.pred.display(),
                p.image_id,
                args.gt.display()
            )
        })?;
        if !seen.insert(p.image_id.as_str()) {
            bail!(
                "{}: record {i}: a second caption for image_id {}",
                args.pred.display(),
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
        bail!("{}: no predictions", args.pred.display());
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
        "pred": args.pred,
        "gt": args.gt,
        "overall": {
            "images": s.images, "missing": missing, "cider": s.cider,
            "bleu_1": s.bleu[0], "bleu_2": s.bleu[1], "bleu_3": s.bleu[2], "bleu_4": s.bleu[3],
            "rouge_l": s.rouge_l,
        },
        "per_item": s.per_item,
    }))
}

fn vqa(args: &Args) -> Result<Value> {
    let anns = lion_data::vqa::read_vqa_annotations(&args.gt)?;
    if let Some(q) = &args.questions {
        let qs = lion_data::vqa::read_vqa_questions(q)?;
        let a: HashSet<&str> = anns.iter().map(|a| a.question_id.as_str()).collect();
        let b: HashSet<&str> = qs.iter().map(|q| q.question_id.as_str()).collect();
        if a != b {
            bail!(
                "{} and {} do not hold the same questions ({} vs {})",
                q.display(),
                args.gt.display(),
                b.len(),
                a.len()
            );
        }
    }
    let by_id: HashMap<&str, &lion_data::vqa::VqaAnnotation> =
        anns.iter().map(|a| (a.question_id.as_str(), a)).collect();
    let preds = lion_data::vqa::read_vqa_results(&args.pred)?;
    let mut acc = VqaAccumulator::new();
    let mut answers = Vec::with_capacity(preds.len());
    let mut seen = HashSet::new();
    for (i, p) in preds.iter().enumerate() {
        let a = by_id.get(p.question_id.as_str()).with_context(|| {
            format!(
                "{}: record {i}: question_id {} is not in {}",
                args.pred.display(),
                p.question_id,
                args.gt.display()
            )
        })?;
        if !seen.insert(p.question_id.as_str()) {
            bail!(
                "{}: record {i}: a second answer for question {}",
                args.pred.display(),
                p.question_id
            );
        }
        let gts: Vec<GtAnswer> = a
            .answers
            .iter()
            .map(|x| GtAnswer {
                answer: x.answer.clone(),
                confidence: x.answer_confidence.clone(),
                id: x.answer_id,
            })
            .collect();
        acc.add(
            p.question_id.clone(),
            &p.answer,
            &gts,
            a.answer_type.as_deref(),
            a.question_type.as_deref(),
        );
        answers.push(p.answer.clone());
    }
    if acc.is_empty() {
        bail!("{}: no predictions", args.pred.display());
    }
    let missing = by_id.len() - seen.len();
    if missing > 0 {
        tracing::warn!("{missing} questions have no prediction (scored: the predicted ones)");
    }
    let mut rows = vec![(
        "overall".to_string(),
        format!("{:.2}", 100.0 * acc.overall()),
    )];
    for (t, v) in acc.per_answer_type() {
        rows.push((t, format!("{:.2}", 100.0 * v)));
    }
    table(
        &format!(
            "VQA accuracy over {} questions ({missing} without prediction)",
            acc.len()
        ),
        &rows,
    );
    let per_item: Vec<Value> = acc
        .per_item()
        .iter()
        .zip(&answers)
        .map(|((q, s), a)| json!({"question_id": q, "answer": a, "accuracy": s}))
        .collect();
    Ok(json!({
        "task": "vqa",
        "pred": args.pred,
        "gt": args.gt,
        "overall": {
            "questions": acc.len(), "missing": missing, "accuracy": acc.overall(),
            "per_answer_type": acc.per_answer_type(),
            "per_question_type": acc.per_question_type(),
        },
        "per_item": per_item,
    }))
}

fn aokvqa(args: &Args) -> Result<Value> {
    let qs = lion_data::aokvqa::read_aokvqa(&args.gt)?;
    let by_id: HashMap<&str, &lion_data::aokvqa::AokvqaQuestion> =
        qs.iter().map(|q| (q.question_id.as_str(), q)).collect();
    let preds = lion_data::aokvqa::read_aokvqa_results(&args.pred)?;
    let mut acc = VqaAccumulator::new();
    let mut per_item = Vec::new();
    let mut seen = HashSet::new();
    for (qid, answer) in &preds {
        let q = by_id.get(qid.as_str()).with_context(|| {
            format!(
                "{}: question_id {qid} is not in {}",
                args.pred.display(),
                args.gt.display()
            )
        })?;
        if q.direct_answers.is_empty() {
            bail!(
                "{}: question {qid} has no direct answers (the test split?)",
                args.gt.display()
            );
        }
        if !seen.insert(qid.as_str()) {
            bail!(
                "{}: a second answer for question {qid}",
                args.pred.display()
            );
        }
        let s = aokvqa_da_score(answer, &q.direct_answers);
        acc.add_score(qid.clone(), s, None, None);
        per_item.push(json!({"question_id": qid, "answer": answer, "score": s}));
    }
    if acc.is_empty() {
        bail!("{}: no predictions", args.pred.display());
    }
    // the official script averages over every question of the split: a missing one scores 0
    let mut missing = 0;
    for q in &qs {
        if !seen.contains(q.question_id.as_str()) {
            missing += 1;
            acc.add_score(q.question_id.clone(), 0.0, None, None);
            per_item.push(json!({"question_id": q.question_id, "answer": null, "score": 0.0}));
        }
    }
    if missing > 0 {
        tracing::warn!(
            "{missing} questions have no prediction: scored 0, as the official script does"
        );
    }
    table(
        &format!(
            "A-OKVQA direct answer over {} questions ({missing} without prediction, scored 0)",
            acc.len()
        ),
        &[("score".into(), format!("{:.2}", 100.0 * acc.overall()))],
    );
    Ok(json!({
        "task": "aokvqa",
        "pred": args.pred,
        "gt": args.gt,
        "overall": {"questions": acc.len(), "missing": missing, "score": acc.overall()},
        "per_item": per_item,
    }))
}

fn rec(args: &Args) -> Result<Value> {
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
    let preds = lion_data::refcoco::read_rec_results(&args.pred)?;
    let mut acc = RecAccumulator::new();
    let mut per_item = Vec::new();
    let mut seen = HashSet::new();
    for (i, p) in preds.iter().enumerate() {
        let (k, key) = match (p.sent_id, p.ref_id) {
            (Some(s), _) => (by_sent.get(&s), format!("sent_id {s}")),
            (None, Some(r)) => (by_ref.get(&r), format!("ref_id {r}")),
            (None, None) => bail!("{}: record {i}: no id", args.pred.display()),
        };
        let r = &refs[*k.with_context(|| {
            format!(
                "{}: record {i}: {key} is not in {}",
                args.pred.display(),
                args.gt.display()
            )
        })?];
        if !seen.insert(key.clone()) {
            bail!(
                "{}: record {i}: a second box for {key}",
                args.pred.display()
            );
        }
        let (w, h) = (r.width as f64, r.height as f64);
        let pred = match &p.pred {
            PredBox::Pixels(b) => Some(*b),
            PredBox::Text(t) => parse_box_text(t, w, h),
        };
        let v = acc.add(key.clone(), pred.as_ref(), &r.bbox);
        per_item.push(json!({
            "id": key, "ref_id": r.ref_id, "pred_box": pred, "gt_box": r.bbox,
            "iou": v, "parsed": pred.is_some(), "hit": v >= 0.5,
        }));
    }
    if acc.is_empty() {
        bail!("{}: no predictions", args.pred.display());
    }
    let s = acc.summary();
    let mut rows = vec![
        (
            "Acc@0.5".to_string(),
            format!("{:.2}", 100.0 * s.acc_at_0_5),
        ),
        ("mean IoU".to_string(), format!("{:.4}", s.mean_iou)),
        ("unparsable".to_string(), s.unparsable.to_string()),
    ];
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
        "pred": args.pred,
        "gt": args.gt,
        "overall": s,
        "per_item": per_item,
    }))
}
