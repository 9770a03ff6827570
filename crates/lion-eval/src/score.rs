//! Scoring a predictions file against a benchmark's ground truth: captions (BLEU, ROUGE-L,
//! CIDEr-D), VQA (the official accuracy), A-OKVQA (multiple choice and direct answer), REC
//! (Acc@IoU per threshold).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use anyhow::{bail, Context, Result};
use lion_data::refcoco::PredBox;
use lion_metrics::aokvqa::{AokvqaGt, AokvqaMetric, AokvqaPred};
use lion_metrics::caption::CaptionEval;
use lion_metrics::rec::{is_proper, threshold_key, RecAccumulator};
use lion_metrics::vqa::{GtAnswer, VqaAccumulator, VqaMode};
use serde_json::{json, Value};

use crate::items::check_same_questions;
use crate::{EvalJob, Table};

/// Detects the caption ground-truth format from the file's top level.
pub(crate) fn read_caption_gt(
    path: &Path,
    split: Option<&str>,
) -> Result<Vec<lion_data::coco::CaptionImage>> {
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

pub(crate) fn caption(job: &EvalJob, pred: &Path) -> Result<(Value, Table)> {
    let gt = read_caption_gt(&job.gt, job.split.as_deref())?;
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
                job.gt.display()
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
                job.gt.display(),
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
    let table = Table::new(
        format!(
            "caption scores over {} images ({missing} without prediction)",
            s.images
        ),
        vec![
            ("CIDEr-D".into(), f(s.cider)),
            ("BLEU-1".into(), f(s.bleu[0])),
            ("BLEU-2".into(), f(s.bleu[1])),
            ("BLEU-3".into(), f(s.bleu[2])),
            ("BLEU-4".into(), f(s.bleu[3])),
            ("ROUGE-L".into(), f(s.rouge_l)),
        ],
    );
    Ok((
        json!({
            "task": "caption",
            "pred": pred,
            "gt": job.gt,
            "overall": {
                "images": s.images, "missing": missing, "cider": s.cider,
                "bleu_1": s.bleu[0], "bleu_2": s.bleu[1], "bleu_3": s.bleu[2], "bleu_4": s.bleu[3],
                "rouge_l": s.rouge_l,
            },
            "per_item": s.per_item,
        }),
        table,
    ))
}

pub(crate) fn vqa(job: &EvalJob, pred: &Path) -> Result<(Value, Table)> {
    let anns = lion_data::vqa::read_vqa_annotations(&job.gt)?;
    if let Some(q) = &job.questions {
        let qs = lion_data::vqa::read_vqa_questions(q)?;
        check_same_questions(q, &qs, &job.gt, &anns)?;
    }
    let mut ids = HashSet::new();
    for (i, a) in anns.iter().enumerate() {
        if !ids.insert(a.question_id.as_str()) {
            bail!(
                "{}: annotations[{i}]: question_id {} appears twice",
                job.gt.display(),
                a.question_id
            );
        }
        if a.answers.is_empty() {
            bail!(
                "{}: annotations[{i}]: question_id {} has \"answers\": [] (no ground-truth \
                 answers to score against; the official evaluation fails on it too)",
                job.gt.display(),
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
                job.gt.display()
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
    let mode = job.vqa_mode;
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
            .with_context(|| format!("{}: question {}", job.gt.display(), a.question_id))?;
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
    let table = Table::new(
        format!(
            "VQA accuracy ({}) over {} questions ({missing} without prediction)",
            match mode {
                VqaMode::Official => "official",
                VqaMode::Normalized => "normalized variant",
            },
            acc.len()
        ),
        rows,
    );
    Ok((
        json!({
            "task": "vqa",
            "pred": pred,
            "gt": job.gt,
            "overall": {
                "questions": acc.len(), "missing": missing, "accuracy": acc.overall(),
                "mode": format!("{:?}", job.vqa_mode).to_lowercase(),
                "per_answer_type": acc.per_answer_type(),
                "per_question_type": acc.per_question_type(),
                "official": official,
            },
            "per_item": per_item,
        }),
        table,
    ))
}

pub(crate) fn aokvqa(job: &EvalJob, pred: &Path) -> Result<(Value, Table)> {
    let qs = lion_data::aokvqa::read_aokvqa(&job.gt)?;
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
            job.gt.display()
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
    .with_context(|| format!("{}", job.gt.display()))?;
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
    let table = Table::new("A-OKVQA (official eval_predictions.py)", rows);
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
    Ok((
        json!({
            "task": "aokvqa",
            "pred": pred,
            "gt": job.gt,
            "overall": {
                "questions": qs.len(),
                "missing": da.as_ref().map(|m| m.missing),
                "score": da.as_ref().map(|m| m.accuracy / 100.0),
                "direct_answer": da,
                "multiple_choice": mc,
            },
            "per_item": per_item,
        }),
        table,
    ))
}

/// A REC prediction in pixels: given as pixels, or LION's box text read by `lion_core::bbox`
/// (as `lion ground` and the server read it); `None` is a miss.
pub fn pred_box(p: &PredBox, width: f64, height: f64) -> Option<[f64; 4]> {
    match p {
        PredBox::Pixels(b) => Some(*b),
        PredBox::Text(t) => lion_core::bbox::parse(t, width, height),
        PredBox::Missing => None,
    }
}

pub(crate) fn rec(job: &EvalJob, pred: &Path) -> Result<(Value, Table)> {
    let instances = job
        .instances
        .as_ref()
        .context("--task rec needs --instances (RefCOCO's instances.json)")?;
    let refs = lion_data::refcoco::read_refcoco(&job.gt, instances, job.split.as_deref())?;
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
    let mut acc = RecAccumulator::with_thresholds(&job.iou_thresholds)
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
                job.gt.display()
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
    let table = Table::new(format!("REC over {} expressions", s.items), rows);
    Ok((
        json!({
            "task": "rec",
            "pred": pred,
            "gt": job.gt,
            "overall": s,
            "per_item": per_item,
        }),
        table,
    ))
}
