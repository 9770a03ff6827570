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
//! progress bar, resumable through `PRED.json.partial`, see [`crate::cmd::predict`]), writes the
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

use crate::cmd::model::{GenArgs, ModelArgs};
use crate::cmd::predict::{predict_split, PredictOptions, SplitItem};

mod items;
mod score;

pub use items::*;
use score::*;
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
    shard: crate::cmd::shard::ShardArgs,
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
