//! `lion demo` as a library ([`run`] with a [`DemoConfig`]): the seed experiment, end to end, on
//! the embedded ShapesWorld.
//!
//! Every stage runs through the same libraries the commands a user would run on COCO call (the
//! command named beside each stage):
//! 1. generate the world (`lion world generate`);
//! 2. tag every image with scores with the tiny RAM-architecture tagger, pretrained on a world of
//!    its own (shipped as `assets/shapes-tagger`, or trained first with `--train-tagger` /
//!    `--from-scratch`: `lion train-tagger`), scoring its precision / recall and calibration on
//!    the test split;
//! 3. choose each training image's centroid-nearest caption with all-MiniLM-L6-v2 and
//!    triplet-fine-tune the tag encoder on the predicted "tag: score" strings
//!    (`lion train-tag-encoder`);
//! 4. train LION parameter-efficiently with the static, dynamic and gated soft prompts (and,
//!    with `--ablations`, no tags / ground-truth tags) from the same frozen backbone, the same
//!    data and the same data order (`lion train`), `--seeds` times each; the backbone (ViT,
//!    Q-Former, aggregator, T5 at the `shapes` size) is the shipped `assets/shapes-backbone`, or
//!    is pretrained first with `--from-scratch`;
//! 5. evaluate the models and trivial baselines on the test split (`lion eval --model`,
//!    `lion eval`): CIDEr-D, VQA accuracy, Acc@0.5 (and Acc@0.1) with bootstrap 95% intervals;
//! 6. write `report.md` with the table, the comparison over seeds (paired differences, by
//!    question / expression kind, generated conclusions), the tagger's precision / recall and
//!    the curves (PNG).
//!
//! A rerun into the same folder reuses a stage only when its `stage.json` records the same
//! inputs ([`crate::stage`]); otherwise the stage is redone and the log says why.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::compare::{comparison_report, Boot, Metric, System};
use crate::files::{ground_truth_tags, images_jsonl, lion_data, no_tags, write_tags_file};
use crate::kinds::{rec_kinds, vqa_kinds};
use crate::report::{baseline_tables, draw_loss_curves, RunScores};
use crate::systems::{comparison_pairs, system_specs, Ablation, TagSource};
use lion_data::world::WorldConfig;
use lion_train::progress::Progress;

/// The demo's settings (`lion demo`'s flags, documented there).
#[derive(Debug, Clone)]
pub struct DemoConfig {
    /// Where the world and every artefact go. A rerun into the same folder reuses a stage only
    /// when its `stage.json` records the same inputs (seed, sizes, settings, input checksums).
    pub out: PathBuf,
    /// Sentence transformer (caption selection) and initial tag encoder.
    pub sentence_model: PathBuf,
    pub seed: u64,
    /// PEFT runs per prompt kind, with seeds SEED, SEED+1, ... (the world, tagger and tag
    /// encoder are shared); the comparison's intervals cover seeds and test items.
    pub seeds: usize,
    /// Ablations trained and evaluated beside the prompt kinds, comma-separated: `none` (no
    /// tags, no soft prompt), `oracle` (dynamic prompt, ground-truth tags at score 1.0).
    pub ablations: Vec<Ablation>,
    /// Training images of the world.
    pub train: usize,
    /// Test images (the validation split has half as many). 300 rather than fewer: the REC gains
    /// over the centre box are a few points, and with 120 images (580 expressions) the 95%
    /// interval of a paired difference was about +-1.7 points.
    pub test: usize,
    /// The pretrained tagger folder (`lion train-tagger`'s output), RAM's stand-in.
    pub tagger: PathBuf,
    /// Train the tagger first, on a world of its own seed (SEED + 2000), and use that; written
    /// to OUT/tagger-pretrained (copy it to assets/shapes-tagger to ship it). Implied by
    /// `from_scratch`.
    pub train_tagger: bool,
    /// Training images of the tagger's world with `train_tagger`.
    pub tagger_images: usize,
    /// Tagger epochs with `train_tagger`.
    pub tagger_epochs: usize,
    /// Tag-encoder epochs (30 steps of 16 anchors each, about 2 minutes on 2 cores); the most
    /// with `tagenc_patience`.
    pub epochs: usize,
    /// Tag-encoder AdamW learning rate (constant).
    pub tagenc_lr: f64,
    /// Tag-encoder validation every N optimizer steps (metrics.jsonl lines, curve points).
    pub tagenc_eval_every: usize,
    /// Stop the tag encoder once its validation loss has not improved for N validations in a
    /// row, keeping the best weights (0: train all --epochs). E.g. `--epochs 20
    /// --tagenc-patience 4` trains until the validation curves flatten.
    pub tagenc_patience: usize,
    /// LION optimizer steps per prompt kind.
    pub steps: u64,
    pub batch_size: usize,
    /// The pretrained backbone folder (lion.json + backbone.safetensors).
    pub backbone: PathBuf,
    /// Pretrain the backbone and the tagger first (each on a world of its own seed) and use
    /// them; written to OUT/backbone and OUT/tagger-pretrained (copy them to
    /// assets/shapes-backbone and assets/shapes-tagger to ship them).
    pub from_scratch: bool,
    /// Backbone pretraining steps (batch 32) with --from-scratch.
    pub pretrain_steps: u64,
    /// Images of the pretraining world with --from-scratch.
    pub pretrain_images: usize,
    /// With --from-scratch: the steps of every pretraining leg after the first (the curriculum
    /// that made the shipped backbone localise) multiplied by this; 1 is the shipped recipe.
    pub pretrain_scale: f64,
    /// Beams at evaluation (1 = greedy; 5 as upstream LION's `generate`).
    pub num_beams: usize,
    /// Bootstrap resamples of the report's intervals.
    pub resamples: usize,
}

/// The settings and where progress goes, as every stage sees them.
pub(crate) struct Args<'a> {
    cfg: &'a DemoConfig,
    pub progress: &'a dyn Progress,
}

impl std::ops::Deref for Args<'_> {
    type Target = DemoConfig;
    fn deref(&self) -> &DemoConfig {
        self.cfg
    }
}

/// A ShapesWorld into `dir` (replacing an earlier one), its progress shown.
fn generate_world(dir: &Path, cfg: WorldConfig, progress: &dyn Progress) -> Result<()> {
    let total = (cfg.train + cfg.val + cfg.test) as u64;
    let pb = progress.bar("generating ShapesWorld", total);
    let manifest = lion_data::world::generate(&cfg, dir, true, &|n| pb.set_position(n))
        .with_context(|| format!("generating a world into {}", dir.display()))?;
    pb.finish();
    tracing::info!(
        seed = manifest.seed,
        images = manifest.images.count,
        digest = %manifest.digest,
        "ShapesWorld in {}",
        dir.display()
    );
    Ok(())
}

fn read(path: &Path) -> Result<Value> {
    Ok(crate::files::read_json(path)?)
}

fn write_json(path: &Path, v: &Value) -> Result<()> {
    Ok(crate::files::write_json(path, v)?)
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

pub mod baselines;
pub mod compare;
pub mod files;
pub mod kinds;
mod model;
pub mod report;
pub mod stage;
mod stages;
pub use stages::tagger_recipe;
pub mod systems;

use model::{peft_run, pretrain, PeftInputs};
use stages::{eval_baselines, eval_model, tag_world, train_encoder};

/// Systems' per-metric scores, by name.
type Table = Vec<(String, RunScores)>;

/// Runs the demo (see the crate docs) into `cfg.out`, its progress shown through `progress`.
pub fn run(cfg: &DemoConfig, progress: &dyn Progress) -> Result<()> {
    let args = Args { cfg, progress };
    let start = std::time::Instant::now();
    if args.seeds == 0 {
        bail!("--seeds must be at least 1");
    }
    if !(args.pretrain_scale.is_finite() && args.pretrain_scale > 0.0) {
        bail!(
            "--pretrain-scale must be a positive number, got {}",
            args.pretrain_scale
        );
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    // Absolute, because the configs written below resolve relative paths from their own folder.
    let out = &std::path::absolute(&args.out)?;
    let world = out.join("world");
    let test = args.test.max(4);

    tracing::info!("stage 1/6: ShapesWorld ({} training images)", args.train);
    generate_world(
        &world,
        WorldConfig {
            seed: args.seed,
            train: args.train,
            val: (test / 2).max(4),
            test,
            size: 96,
            ..WorldConfig::default()
        },
        args.progress,
    )?;

    tracing::info!("stage 2/6: the RAM tagger tags every image with scores");
    let (tags, tagger) = tag_world(&args, &world, out)?;

    tracing::info!("stage 3/6: centroid captions + triplet fine-tuning of the tag encoder");
    let images = out.join("images.jsonl");
    let n = images_jsonl(&world, &tags, &images)?;
    let encoder = out.join("tag-encoder");
    train_encoder(&args, &images, &encoder)?;
    let specs = system_specs(&args.ablations);
    let mut sources: Vec<TagSource> = specs.iter().map(|x| x.tags).collect();
    sources.dedup();
    for src in sources {
        let t = match src {
            TagSource::Predicted => tags.clone(),
            TagSource::Oracle => ground_truth_tags(&world)?,
            TagSource::Empty => no_tags(&tags),
        };
        let (data, file) = src.files();
        lion_data(&world, &t, &out.join(data))?;
        write_tags_file(&t, &out.join(file))?;
    }

    let backbone = if args.from_scratch {
        tracing::info!("stage 4/6: pretraining the backbone (--from-scratch)");
        pretrain(&args, out)?
    } else {
        std::path::absolute(&args.backbone)?
    };
    if !backbone.join("lion.json").exists() {
        bail!(
            "no backbone at {} (run from the repository root, give --backbone, or make one \
             with --from-scratch)",
            backbone.display()
        );
    }
    tracing::info!(
        "stage 4/6: LION PEFT training from {}, {} systems x {} seed(s), {} steps each",
        backbone.display(),
        specs.len(),
        args.seeds,
        args.steps
    );
    let io = PeftInputs {
        out,
        world: &world,
        backbone: &backbone,
        encoder: &encoder,
    };
    let seeds: Vec<u64> = (0..args.seeds as u64).map(|k| args.seed + k).collect();
    let mut runs = vec![];
    for spec in &specs {
        for &seed in &seeds {
            let (model, run_dir) = peft_run(&args, &io, spec, seed)?;
            runs.push((spec, seed, model, run_dir));
        }
    }

    tracing::info!("stage 5/6: evaluation on the test split ({test} images)");
    let mut models: Table = vec![];
    let mut systems: Vec<System> = specs
        .iter()
        .map(|x| System {
            name: x.name.to_string(),
            runs: vec![],
        })
        .collect();
    for (spec, seed, model, _) in &runs {
        let dir = out
            .join("eval")
            .join(spec.name)
            .join(format!("seed-{seed}"));
        let tags_file = out.join(spec.tags.files().1);
        let stage = format!("evaluation of {} seed {seed}", spec.name);
        let sc = eval_model(&args, &stage, &world, &tags_file, model, &dir)?;
        if *seed == args.seed && spec.tags == TagSource::Predicted {
            models.push((spec.title.to_string(), sc.clone()));
        }
        let k = specs
            .iter()
            .position(|x| x.name == spec.name)
            .expect("listed");
        systems[k].runs.push(sc);
    }
    let baselines: Table = vec![(
        "trivial baselines (most frequent caption / answer, centre box)".to_string(),
        eval_baselines(&world, &out.join("eval").join("baselines"))?,
    )];

    tracing::info!("stage 6/6: report");
    let (table, table_json, all_beat) =
        baseline_tables(&models, &baselines, args.resamples, args.seed);
    let vqa_kind = vqa_kinds(&read(&world.join("annotations_test.json"))?);
    let rec_kind = rec_kinds(&read(&world.join("refs.json"))?, Some("test"));
    let metrics = [
        Metric {
            key: "caption",
            title: "CIDEr-D",
            kinds: None,
        },
        Metric {
            key: "vqa",
            title: "VQA acc.",
            kinds: Some(&vqa_kind),
        },
        Metric {
            key: "rec",
            title: "Acc@0.5",
            kinds: Some(&rec_kind),
        },
        Metric {
            key: "rec01",
            title: "Acc@0.1",
            kinds: Some(&rec_kind),
        },
    ];
    let boot = Boot {
        resamples: args.resamples,
        level: 0.95,
        seed: args.seed,
    };
    let (comparison, comparison_json) =
        comparison_report(&systems, &comparison_pairs(&args.ablations), &metrics, boot);
    let curves = out.join("lion-loss.png");
    draw_loss_curves(
        &runs
            .iter()
            .filter(|r| r.1 == args.seed)
            .map(|(x, _, _, r)| (x.name.to_string(), r.clone()))
            .collect::<Vec<_>>(),
        &curves,
    )?;
    let report = render_report(
        &args,
        &world,
        n,
        &tagger,
        &encoder,
        &table,
        &comparison,
        all_beat,
        start,
    )?;
    let report_path = out.join("report.md");
    lion_core::util::write_atomic(&report_path, report.as_bytes())?;
    write_json(
        &out.join("report.json"),
        &json!({"scores": table_json, "tagger": tagger, "all_models_beat_baselines": all_beat,
                "seed": args.seed, "seeds": seeds, "comparison": comparison_json}),
    )?;
    let mut stdout = std::io::stdout();
    writeln!(stdout, "{table}")?;
    writeln!(
        stdout,
        "report: {} ({:.0} s)",
        report_path.display(),
        start.elapsed().as_secs_f64()
    )?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn render_report(
    args: &Args<'_>,
    world: &Path,
    n: usize,
    tagger: &Value,
    encoder: &Path,
    table: &str,
    comparison: &str,
    all_beat: bool,
    start: std::time::Instant,
) -> Result<String> {
    let mut r =
        String::from("# LION-rs demo: static vs dynamic vs gated soft prompts on ShapesWorld\n\n");
    r.push_str(&format!(
        "World `{}` (seed {}, {} training images, {} test images). Test-split scores in percent \
         with bootstrap 95% intervals ({} resamples over the test items); CIDEr-D ×100.\n\n",
        world.display(),
        args.seed,
        args.train,
        args.test.max(4),
        args.resamples
    ));
    r.push_str(table);
    r.push_str(&format!(
        "\nEvery model beats every trivial baseline on every task, outside the 95% interval: **{}**.\n",
        if all_beat { "yes" } else { "no" }
    ));
    r.push_str(&format!(
        "\n## RAM tagger\n\nThe RAM-architecture tagger ({}), trained on a world of its own \
         ({} training images, {} epochs), thresholds tuned on that world's validation split; \
         micro precision / recall / F1 on this world's test split against the ground-truth \
         tags:\n\n| tags | precision | recall | F1 |\n|---|---|---|---|\n",
        tagger["tagger"].as_str().unwrap_or("-"),
        tagger["train_images"],
        tagger["epochs"],
    ));
    let row = |name: &str, v: &Value| {
        let f = |k: &str| v[k].as_f64().map_or("-".into(), |x| format!("{x:.3}"));
        format!(
            "| {name} | {} | {} | {} |\n",
            f("precision"),
            f("recall"),
            f("f1")
        )
    };
    r.push_str(&row("all", &tagger["test"]));
    if let Some(groups) = tagger["test_by_group"].as_object() {
        for (g, v) in groups {
            r.push_str(&row(g, v));
        }
    }
    let cal = &tagger["calibration"];
    r.push_str(&format!(
        "\nCalibration of the scores on the test split (10 equal-width bins): expected \
         calibration error {} over every (image, tag) pair, {} over the {} kept tags (the scores \
         the prompt and the tag encoder read).\n\n![reliability](tagger/reliability.png)\n",
        cal["ece"]
            .as_f64()
            .map_or("-".into(), |x| format!("{x:.3}")),
        cal["kept_ece"]
            .as_f64()
            .map_or("-".into(), |x| format!("{x:.3}")),
        cal["kept"],
    ));
    r.push_str(&format!(
        "\n## Tag encoder (triplet fine-tuning of all-MiniLM-L6-v2, {n} images)\n\n\
         ![triplet curves]({}/curves.png)\n\n| epoch | step | train loss | val loss | val cos(anchor, positive) | val cos(anchor, negative) |\n|---|---|---|---|---|---|\n",
        encoder.file_name().map(|f| f.to_string_lossy().to_string()).unwrap_or_default()
    ));
    let metrics = std::fs::read_to_string(encoder.join("metrics.jsonl")).unwrap_or_default();
    for line in metrics.lines() {
        let v: Value = serde_json::from_str(line).unwrap_or(Value::Null);
        let f = |k: &str| {
            v.get(k)
                .and_then(Value::as_f64)
                .map_or("-".into(), |x| format!("{x:.4}"))
        };
        r.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            v.get("epoch").map_or("-".into(), |e| e.to_string()),
            v.get("step").map_or("-".into(), |e| e.to_string()),
            f("train_loss"),
            f("val_loss"),
            f("val_cos_ap"),
            f("val_cos_an")
        ));
    }
    r.push_str(&reader_frontier_paragraph(encoder, metrics.lines().last()));
    r.push_str(&format!(
        "\n## LION training\n\n{} optimizer steps per prompt kind, batch {}, the same data order \
         (seed {}), ViT and T5 frozen; the Q-Former, aggregator, adapters, router and prompt \
         parameters train (the dynamic projection at 5× the lr).\n\n![LION loss](lion-loss.png)\n\n\
         Per-run curves: `lion/<system>/seed-<seed>/run/loss.png`, metrics \
         `lion/<system>/seed-<seed>/run/metrics.jsonl`; predictions and per-item scores: \
         `eval/<system>/seed-<seed>/`.\n",
        args.steps, args.batch_size, args.seed
    ));
    r.push_str(&format!(
        "\n## Prompt kinds compared ({} seed(s): {})\n\nThe main table above is seed {}'s runs. \
         Here every system's PEFT runs over seeds {}..{} (same world, tagger and tag encoder; \
         the seed sets the initialisation and the data order). Scores in percent (CIDEr-D ×100).\n\n",
        args.seeds,
        if args.ablations.is_empty() {
            "static, dynamic, gated".to_string()
        } else {
            let names: Vec<&str> = system_specs(&args.ablations)
                .iter()
                .map(|x| x.name)
                .collect();
            format!("static, dynamic, gated and {}", names[3..].join(", "))
        },
        args.seed,
        args.seed,
        args.seed + args.seeds as u64 - 1
    ));
    r.push_str(comparison);
    r.push_str(&format!(
        "\nBackbone: `{}`{}. Wall time: {:.0} s.\n",
        if args.from_scratch {
            "backbone (pretrained in this run)".to_string()
        } else {
            args.backbone.display().to_string()
        },
        if args.from_scratch {
            ""
        } else {
            " (shipped; see its README.md)"
        },
        start.elapsed().as_secs_f64()
    ));
    Ok(r)
}

/// The report's paragraph on the tag encoder's [`ReaderFrontier`]
/// (`reader_frontier.json`): where the encoder's last validation pair stands against an anchor
/// that knows the images' content from their other captions, on the same split. Empty without
/// the file.
///
/// [`ReaderFrontier`]: lion_train::reader_frontier::ReaderFrontier
fn reader_frontier_paragraph(encoder: &Path, last_metrics: Option<&str>) -> String {
    use lion_train::reader_frontier::ReaderFrontier;
    let path = encoder.join(lion_train::triplet_trainer::READER_FRONTIER);
    let Some(frontier) = std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice::<ReaderFrontier>(&b).ok())
    else {
        return String::new();
    };
    let last: Value = last_metrics
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or(Value::Null);
    let (ap, an) = (last["val_cos_ap"].as_f64(), last["val_cos_an"].as_f64());
    let f2 = |x: Option<f64>| x.map_or("-".into(), |x| format!("{x:.2}"));
    let mut out = format!(
        "\nA reference for these cosines (`{}`): an anchor that knows each validation image's \
         content from its other captions (their mean embedding, less λ times the mean positive) \
         reaches cos(anchor, positive) {} at cos(anchor, negative) 0.20, and cos(anchor, \
         negative) {} at λ = 0 (cos(anchor, positive) {}), over {} images. (Not a bound: an \
         encoder can learn the chosen captions' wording and lie above it.)",
        lion_train::triplet_trainer::READER_FRONTIER,
        f2(frontier.cos_ap_at(0.2)),
        f2(frontier.points.first().map(|p| p.cos_an)),
        f2(frontier.points.first().map(|p| p.cos_ap)),
        frontier.images,
    );
    if let (Some(ap), Some(an)) = (ap, an) {
        out.push_str(&format!(
            " The encoder's last validation pair is {ap:.2} / {an:.2}; the reference reaches {} \
             at the same cos(anchor, negative).",
            f2(frontier.cos_ap_at(an))
        ));
    }
    out.push('\n');
    out
}
