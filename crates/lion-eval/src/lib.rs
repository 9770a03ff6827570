//! Evaluation of a benchmark split, as a library: the split's items ([`items::split_items`]:
//! images found under a root, tags, questions), a model's predictions over them
//! ([`predict::predict_split`]: batched, resumable, failures recorded per item), and the
//! official scores ([`score`]): captions (BLEU-1..4, ROUGE-L, CIDEr-D as pycocoevalcap), VQA (the
//! GT-Vision-Lab accuracy, quirks included), A-OKVQA (multiple choice and direct answer), REC
//! (Acc@IoU per threshold). `lion eval` and `lion demo` both run it; the binary only parses
//! flags and prints.

use std::path::{Path, PathBuf};

use anyhow::Result;
use lion_core::pipeline::LionPipeline;
use lion_metrics::vqa::VqaMode;
use serde_json::{json, Value};

pub mod items;
pub mod predict;
mod score;

pub use predict::{predict_split, PredictOptions, SplitItem, SplitPredictions};
pub use score::pred_box;

/// The benchmark (its ground-truth format and metric). Each asks LION one [`lion_core::Task`]
/// ([`Benchmark::task`]); A-OKVQA is VQA with its own scorer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Benchmark {
    Caption,
    Vqa,
    Aokvqa,
    Rec,
}

impl Benchmark {
    pub const NAMES: &'static [&'static str] = &["caption", "vqa", "aokvqa", "rec"];

    /// The task LION is asked for the benchmark's items.
    pub fn task(self) -> lion_core::Task {
        match self {
            Benchmark::Caption => lion_core::Task::Caption,
            Benchmark::Vqa | Benchmark::Aokvqa => lion_core::Task::Vqa,
            Benchmark::Rec => lion_core::Task::Rec,
        }
    }

    /// `caption`, `vqa`, `aokvqa` or `rec`.
    pub fn parse(s: &str) -> std::result::Result<Self, String> {
        match s {
            "caption" => Ok(Self::Caption),
            "vqa" => Ok(Self::Vqa),
            "aokvqa" => Ok(Self::Aokvqa),
            "rec" => Ok(Self::Rec),
            _ => Err(format!("`{s}`: expected one of {}", Self::NAMES.join(", "))),
        }
    }
}

/// What to evaluate: the benchmark's files and, with a model, where its images and tags are.
#[derive(Debug, Clone)]
pub struct EvalJob {
    pub benchmark: Benchmark,
    /// Ground truth: a Karpathy split file, `captions_*.json` or TextCaps file (caption); the
    /// annotations (vqa); an A-OKVQA split file (aokvqa); `refs(unc|google|umd).p` (rec).
    pub gt: PathBuf,
    /// VQA questions (checked against the annotations; needed to run a model).
    pub questions: Option<PathBuf>,
    /// RefCOCO `instances.json` (rec).
    pub instances: Option<PathBuf>,
    /// Split of a Karpathy caption file (default test) or of a RefCOCO refs file.
    pub split: Option<String>,
    pub vqa_mode: VqaMode,
    /// REC: IoU thresholds of the accuracies reported, each in (0, 1].
    pub iou_thresholds: Vec<f64>,
    /// With a model: the folder the ground truth's file names are relative to.
    pub images: Option<PathBuf>,
    /// With a model: each image's tags (`lion tag` lines or ShapesWorld's `tags_{split}.json`).
    pub tags: Option<PathBuf>,
    /// With a model: only the first N items of the split.
    pub limit: Option<usize>,
}

impl EvalJob {
    /// A job with the official VQA scorer, REC at IoU 0.5 and 0.1, no images or tags.
    pub fn new(benchmark: Benchmark, gt: impl Into<PathBuf>) -> Self {
        Self {
            benchmark,
            gt: gt.into(),
            questions: None,
            instances: None,
            split: None,
            vqa_mode: VqaMode::Official,
            iou_thresholds: vec![0.5, 0.1],
            images: None,
            tags: None,
            limit: None,
        }
    }
}

/// A titled two-column table of scores (what `lion eval` prints).
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    pub title: String,
    pub rows: Vec<(String, String)>,
}

impl Table {
    pub fn new(title: impl Into<String>, rows: Vec<(String, String)>) -> Self {
        Self {
            title: title.into(),
            rows,
        }
    }
}

impl std::fmt::Display for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let w = self
            .rows
            .iter()
            .map(|r| r.0.len())
            .max()
            .unwrap_or(0)
            .max(6);
        writeln!(f, "{}", self.title)?;
        for (k, v) in &self.rows {
            writeln!(f, "  {k:<w$}  {v}")?;
        }
        Ok(())
    }
}

/// Scores of a predictions file: the report (`task`, `pred`, `gt`, `overall`, `per_item`) and
/// its table.
#[derive(Debug, Clone)]
pub struct Evaluation {
    pub report: Value,
    pub table: Table,
}

impl Evaluation {
    /// Writes the report as pretty JSON, atomically.
    pub fn write(&self, out: &Path) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(&self.report)?;
        lion_core::util::write_atomic(out, &bytes)?;
        Ok(())
    }
}

/// Scores the predictions in `pred` (the task's official result format) against the job's
/// ground truth.
pub fn score(job: &EvalJob, pred: &Path) -> Result<Evaluation> {
    let (report, table) = match job.benchmark {
        Benchmark::Caption => score::caption(job, pred)?,
        Benchmark::Vqa => score::vqa(job, pred)?,
        Benchmark::Aokvqa => score::aokvqa(job, pred)?,
        Benchmark::Rec => score::rec(job, pred)?,
    };
    Ok(Evaluation { report, table })
}

/// How a model run over a split ended.
pub enum ModelRun {
    /// `max_new` stopped it before the end; the partial file keeps what was done.
    Stopped {
        computed: usize,
        done: usize,
        total: usize,
        reused: usize,
        partial: PathBuf,
    },
    /// Every item predicted, the predictions written and scored (the report's `prediction`
    /// holds the run's summary).
    Scored {
        evaluation: Evaluation,
        predictions: SplitPredictions,
        seconds: f64,
    },
}

impl EvalJob {
    /// The split's items, each with its image under [`EvalJob::images`] (checked before a
    /// model is loaded: the ground truth, questions and tags are read and matched here).
    pub fn items(&self) -> Result<Vec<SplitItem>> {
        let root = self.images.as_ref().ok_or_else(|| {
            anyhow::anyhow!("with a model, give the folder of the split's images (--images ROOT)")
        })?;
        items::split_items(self, root)
    }
}

/// Runs the pipeline over the job's items ([`EvalJob::items`]; resumable through
/// `PRED.json.partial`), writes the predictions to `pred_out` in the official result format
/// (atomically), and scores them.
pub fn evaluate_model(
    job: &EvalJob,
    items: &[SplitItem],
    pipe: &LionPipeline,
    opts: PredictOptions,
    pred_out: &Path,
) -> Result<ModelRun> {
    pipe.config().check_batch_memory(opts.batch_size.max(1))?;
    let partial = items::partial_path(pred_out);
    let opts = PredictOptions {
        partial: Some(partial.clone()),
        ..opts
    };
    let start = std::time::Instant::now();
    let preds = predict_split(pipe, items, &opts)?;
    let seconds = start.elapsed().as_secs_f64();
    if !preds.is_complete() {
        return Ok(ModelRun::Stopped {
            computed: preds.computed,
            done: preds.items.iter().flatten().count(),
            total: items.len(),
            reused: preds.reused,
            partial,
        });
    }
    let text = lion_data::shard::render(
        lion_data::shard::Format::JsonArray,
        preds.records().iter().map(Value::to_string),
    );
    lion_core::util::write_atomic(pred_out, text.as_bytes())?;
    if partial.exists() {
        std::fs::remove_file(&partial)
            .map_err(|e| anyhow::anyhow!("cannot remove {}: {e}", partial.display()))?;
    }
    let mut evaluation = score(job, pred_out)?;
    evaluation.report["prediction"] = json!({
        "items": items.len(), "reused": preds.reused, "computed": preds.computed,
        "failed": preds.failed, "failures": preds.failures(), "seconds": seconds,
    });
    Ok(ModelRun::Scored {
        evaluation,
        predictions: preds,
        seconds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn benchmarks_parse_by_name_and_ask_their_task() {
        for (name, task) in [
            ("caption", lion_core::Task::Caption),
            ("vqa", lion_core::Task::Vqa),
            ("aokvqa", lion_core::Task::Vqa),
            ("rec", lion_core::Task::Rec),
        ] {
            assert_eq!(Benchmark::parse(name).unwrap().task(), task, "{name}");
        }
        let e = Benchmark::parse("ok-vqa").unwrap_err();
        assert!(e.contains("`ok-vqa`") && e.contains("aokvqa"), "{e}");
    }

    #[test]
    fn tables_align_their_first_column() {
        let t = Table::new(
            "scores",
            vec![("CIDEr-D".into(), "1.00".into()), ("a".into(), "2".into())],
        );
        assert_eq!(t.to_string(), "scores\n  CIDEr-D  1.00\n  a        2\n");
    }

    /// A model run needs the image folder; the job says so before anything is read.
    #[test]
    fn a_job_without_images_names_the_missing_folder() {
        let job = EvalJob::new(Benchmark::Caption, "does-not-matter.json");
        let e = job.items().unwrap_err().to_string();
        assert!(e.contains("--images ROOT"), "{e}");
    }

    /// Scoring a file that is not there names it.
    #[test]
    fn scoring_a_missing_predictions_file_names_it() {
        let dir = std::env::temp_dir().join(format!("lion-eval-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let gt = dir.join("captions.json");
        std::fs::write(
            &gt,
            r#"{"images": [{"id": 1, "file_name": "a.png"}],
                "annotations": [{"image_id": 1, "id": 1, "caption": "a red circle"}]}"#,
        )
        .unwrap();
        let missing = dir.join("nope.json");
        let e = score(&EvalJob::new(Benchmark::Caption, &gt), &missing)
            .unwrap_err()
            .to_string();
        assert!(e.contains("nope.json"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
