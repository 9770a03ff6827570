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
//! progress bar, resumable through `PRED.json.partial`, see [`lion_eval::predict`]), writes the
//! predictions in the official result format, then scores them as above. Images are found under
//! ROOT by the ground truth's `file_name` (captions, REC; also by its base name) or, for VQA and
//! A-OKVQA, by image id in the COCO (`COCO_val2014_%012d.jpg`, `%012d.jpg`) or ShapesWorld
//! (`images/{split}/%06d.png`) layouts. A ShapesWorld folder works as it is:
//! `--gt w/annotations_val.json --questions w/questions_val.json --images w`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use lion_core::generate::GenerationConfig;
use lion_eval::{Benchmark, EvalJob, ModelRun, PredictOptions};
use lion_metrics::vqa::VqaMode;
use lion_train::progress::Progress;

use crate::cmd::model::{GenArgs, ModelArgs};

mod shard;

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
    /// Which benchmark metric to compute: caption, vqa, aokvqa or rec.
    #[arg(long, value_parser = Benchmark::parse)]
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

impl Args {
    /// The evaluation the flags describe.
    fn job(&self) -> EvalJob {
        EvalJob {
            questions: self.questions.clone(),
            instances: self.instances.clone(),
            split: self.split.clone(),
            vqa_mode: match self.vqa_mode {
                VqaModeArg::Official => VqaMode::Official,
                VqaModeArg::Normalized => VqaMode::Normalized,
            },
            iou_thresholds: self.iou_thresholds.clone(),
            images: self.images.clone(),
            tags: self.tags.clone(),
            limit: self.limit,
            ..EvalJob::new(self.task, &self.gt)
        }
    }

    fn pred_out(&self) -> Result<&PathBuf> {
        self.pred_out
            .as_ref()
            .context("with a model, give --pred-out PRED.json (where the predictions go)")
    }

    /// Batching, decoding (`gen`, checked before the model loads), `--stop-after` and a progress
    /// bar over `total` items (drawn once the model is loaded).
    fn predict_options(&self, gen: GenerationConfig, total: usize) -> PredictOptions {
        let label = format!("predicting ({:?})", self.task.task());
        PredictOptions {
            max_new: self.stop_after,
            progress: Some(lion_train::progress::callback(
                super::Terminal.bar(&label, total as u64),
            )),
            ..PredictOptions::new(self.batch_size, gen)
        }
    }
}

fn print_stopped(computed: usize, done: usize, total: usize, reused: usize, partial: &Path) {
    println!(
        "stopped after {computed} new predictions: {done} of {total} items done ({reused} \
         reused), kept in {}; run again to go on",
        partial.display()
    );
}

pub fn run(args: Args) -> Result<()> {
    if args.pred.is_some() && (args.model.model.is_some() || args.model.preset.is_some()) {
        bail!(
            "give --pred (score a file) or a model (--model / --preset, with --pred-out), not both"
        );
    }
    let job = args.job();
    let evaluation = match &args.pred {
        Some(p) => lion_eval::score(&job, p)?,
        None => {
            let out = args.pred_out()?;
            if let Some(s) = args.shard.resolve(Some("--pred-out"))? {
                return shard::predict_shard(&args, s);
            }
            let gen = args.gen.checked_config()?;
            let items = job.items()?;
            let pipe = args.model.load()?;
            let opts = args.predict_options(gen, items.len());
            match lion_eval::evaluate_model(&job, &items, &pipe, opts, out)? {
                ModelRun::Stopped {
                    computed,
                    done,
                    total,
                    reused,
                    partial,
                } => {
                    print_stopped(computed, done, total, reused, &partial);
                    return Ok(());
                }
                ModelRun::Scored {
                    evaluation,
                    predictions: p,
                    seconds,
                } => {
                    println!(
                        "predictions: {} items ({} reused, {} computed in {seconds:.1} s, {} \
                         failed) -> {}",
                        p.items.len(),
                        p.reused,
                        p.computed,
                        p.failed,
                        out.display()
                    );
                    evaluation
                }
            }
        }
    };
    print!("{}", evaluation.table);
    if let Some(out) = &args.json {
        evaluation.write(out)?;
        tracing::info!("scores written to {}", out.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
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
            let eval = lion_eval::pred_box(
                &lion_data::refcoco::PredBox::Text(text.into()),
                w as f64,
                h as f64,
            )
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
