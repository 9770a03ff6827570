//! ShapesWorld: a synthetic vision-language world, deterministic from a seed, with exact ground
//! truth for captioning, VQA, referring expressions (REC) and tagging.
//!
//! Real LION weights and COCO cannot be had on a fresh machine, so the seed experiment
//! (`lion demo`, docs/DESIGN.md §6) runs here, through the same readers, models and metrics a COCO
//! run would use: every file is written in the official layout of its task.
//!
//! # The world
//! A scene is 1-4 flat, anti-aliased shapes on a textured background, drawn by our own rasteriser
//! ([`raster`]) into an RGB PNG (224x224 by default):
//! - shapes: circle, square, triangle, star, hexagon, diamond, cross (slightly rotated);
//! - colors: red, orange, yellow, green, blue, purple, gray, black (each object jitters its color by
//!   up to ±10 per channel);
//! - sizes: small (radius 7-9% of the side) and large (13-16%);
//! - backgrounds: plain, stripes (4 orientations), checks, dots, noise, in two pale tones;
//! - positions: uniform, centres at least 0.8 x (r1 + r2) apart, so shapes may overlap a little;
//!   a layout is redrawn until every object keeps at least 55% of its pixels visible.
//!
//! Boxes are the tight box of each object's *visible* pixels (a pixel belongs to the topmost object
//! covering at least half of it), as COCO boxes are.
//!
//! # What is said about a scene ([`language`])
//! - 5 captions from 5 of 8 templates: full grouped description ("two small red circles and a large
//!   blue star on a striped background"), counts, the largest object only, a spatial relation,
//!   colors only, background first, synonym-heavy ("a big red disc and a little blue box"),
//!   positions ("... at the top left"). Some mention only part of the scene, so the centroid
//!   caption differs from the outliers.
//! - 5 VQA questions per image of 7 kinds: color ("What color is the star?"), shape ("What shape
//!   is the red object?"), count ("How many circles are there?", zero included), existence ("Is
//!   there a blue square?", half yes), spatial relation ("Is the red circle to the left of the blue
//!   star?", half yes), position ("Where is the small star?" -> "top left") and background pattern.
//!   Ten simulated annotators answer each: mostly the canonical word, sometimes a synonym ("two",
//!   "grey", "violet", "striped", "upper left"), and 0-3 of them a plausible wrong answer
//!   (neighbouring count, other color, neighbouring grid cell, flipped yes/no), never a wrong
//!   majority. `multiple_choice_answer` is the most frequent wording of the majority answer.
//! - Referring expressions: for every object that can be singled out, 1-3 sentences that each
//!   pick out that object alone, by unique attributes ("the red one", "small circle", "the big
//!   blue box") or a superlative with a margin of 8% of the side ("the leftmost star", "circle on
//!   the right", "the upper red square").
//! - Tags (83): the 7 shapes, 8 colors, 2 sizes, the 56 "color shape" pairs, 5 textures, the
//!   object count ("one".."four") and "overlapping" (some object is partly hidden).
//!
//! # Files (all paths relative to the world directory)
//! - `images/{split}/{image_id:06}.png`
//! - `captions_{split}.json`: COCO captions (`images`, `annotations` with `id`, `image_id`, `caption`).
//! - `questions_{split}.json`, `annotations_{split}.json`: VQA v2 (`question_id` = image_id x 1000 + i;
//!   answers with `answer`, `answer_confidence`, `answer_id`; `multiple_choice_answer`,
//!   `answer_type`, `question_type`).
//! - `refs.json` + `instances.json`: RefCOCO layout (refs with `ref_id`, `ann_id`, `image_id`,
//!   `split`, `sentences` [`sent`, `raw`, `tokens`, `sent_id`], `category_id`; COCO instances with
//!   `bbox` [x, y, w, h], categories = shapes). Real RefCOCO ships `refs(unc).p` as a Python pickle;
//!   we write the same records as JSON.
//! - `lion_{caption,vqa,rec}_{split}.json`: LION training JSON records (`image`, `question`,
//!   `answer`, `category`, `tags`), one file per task as LION's sampler expects. Captioning and VQA
//!   are `image_level`, REC is `region_level` with the answer `[x1,y1,x2,y2]` normalised by the
//!   image width/height, 3 decimals.
//! - `tags_{split}.json` (ground-truth tags per image) and `tag_list.txt` (the vocabulary, one tag
//!   per line, as RAM's `ram_tag_list.txt`).
//! - `world.json`: the manifest (seed, generator version, counts, every file with size and
//!   FNV-1a 64 checksum, one digest for the whole world).
//!
//! # Determinism
//! Every image draws from its own PRNG streams seeded by (seed, split, index), so images are the
//! same whatever the thread count, and the first N images of a split do not depend on N. Pixels are
//! blended in integers, PNGs use fixed settings, JSON keys come from struct field order, and
//! nothing records a time. The output is written into a hidden staging directory beside `out`
//! (`.NAME.partial-PID`) and renamed into place at the end, so an interrupted run never leaves a
//! half-written world; a killed process leaves only that hidden folder, safe to delete.
//!
//! ```bash
//! lion world generate --out world --seed 0 --train 2000 --val 200 --test 200
//! ```

pub mod formats;
pub mod language;
pub mod raster;
pub mod rng;
pub mod scene;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use formats::*;
use language::{Question, QuestionKind, Referral};
use rng::{mix, Rng};
use scene::{Color, Scene, Shape, Size, Texture};

mod write;

use write::*;

/// Bumped whenever the same seed would give different bytes.
pub const GENERATOR_VERSION: u32 = 1;

/// The captioning instruction (LION playground).
pub const CAPTION_PROMPT: &str = "Please describe the image using a single short sentence.";
/// The REC instruction (LION playground); `{}` is the expression.
pub const REC_PROMPT: &str =
    "In the image <image>, can you locate {} and let me know its coordinates?";
/// The VQA instruction (InstructBLIP's; LION's own is unpublished); `{}` is the question.
pub const VQA_PROMPT: &str = "Question: {} Short answer:";

/// Errors of the world generator; each names what was wrong.
#[derive(Debug, thiserror::Error)]
pub enum WorldError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid world settings: {0}")]
    Config(String),
    #[error("output {path}: {msg}")]
    Output { path: PathBuf, msg: String },
    #[error("PNG encoding of {path}: {msg}")]
    Png { path: String, msg: String },
    #[error("generation stopped: {0}")]
    Stopped(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> WorldError + '_ {
    move |source| WorldError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct WorldConfig {
    pub seed: u64,
    pub train: usize,
    pub val: usize,
    pub test: usize,
    /// Image width and height in pixels.
    pub size: u32,
    /// VQA questions per image.
    pub questions_per_image: usize,
    /// Worker threads (0 = all cores). The output does not depend on it.
    pub threads: usize,
}

impl Default for WorldConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            train: 1000,
            val: 100,
            test: 100,
            size: 224,
            questions_per_image: 5,
            threads: 0,
        }
    }
}

impl WorldConfig {
    fn validate(&self) -> Result<(), WorldError> {
        if !(32..=4096).contains(&self.size) {
            return Err(WorldError::Config(format!(
                "size {} px is outside 32..=4096",
                self.size
            )));
        }
        let Some(total) = self
            .train
            .checked_add(self.val)
            .and_then(|n| n.checked_add(self.test))
        else {
            return Err(WorldError::Config(format!(
                "train {} + val {} + test {} images overflows; at most 10,000,000 in all",
                self.train, self.val, self.test
            )));
        };
        if total == 0 {
            return Err(WorldError::Config(
                "no images requested (train + val + test = 0)".into(),
            ));
        }
        if total > 10_000_000 {
            return Err(WorldError::Config(format!(
                "{total} images is more than the 10,000,000 supported (ids are image_id x 1000)"
            )));
        }
        if !(1..=20).contains(&self.questions_per_image) {
            return Err(WorldError::Config(format!(
                "questions per image {} is outside 1..=20",
                self.questions_per_image
            )));
        }
        Ok(())
    }

    /// (split name, image count) in id order.
    pub fn splits(&self) -> [(&'static str, usize); 3] {
        [
            ("train", self.train),
            ("val", self.val),
            ("test", self.test),
        ]
    }
}

/// Everything about one generated image.
#[derive(Debug, Clone)]
pub struct WorldImage {
    pub split: &'static str,
    pub image_id: u64,
    /// Relative to the world directory.
    pub file_name: String,
    pub scene: Scene,
    pub captions: Vec<String>,
    pub questions: Vec<Question>,
    pub referrals: Vec<Referral>,
    pub tags: Vec<String>,
}

/// One image's scene, pixels (RGB8, row-major) and text, before ids and files are assigned.
#[derive(Debug, Clone)]
pub struct Generated {
    pub scene: Scene,
    pub pixels: Vec<u8>,
    pub captions: Vec<String>,
    pub questions: Vec<Question>,
    pub referrals: Vec<Referral>,
    pub tags: Vec<String>,
}

/// Builds one image. `split_code` and `index` seed its PRNG streams (one each for the scene,
/// captions, questions and referring expressions, so changing one part leaves the others alone).
pub fn make_image(
    seed: u64,
    split_code: u64,
    index: usize,
    size: u32,
    questions_per_image: usize,
    vocab: &[String],
) -> Generated {
    let stream = |k: u64| {
        Rng::new(mix(&[
            GENERATOR_VERSION as u64,
            seed,
            split_code,
            index as u64,
            k,
        ]))
    };
    let (scene, covs) = scene::sample_scene(&mut stream(0), size, size);
    let pixels = raster::render(&scene, &covs);
    let captions = language::captions(&scene, &mut stream(1));
    let questions = language::questions(&scene, &mut stream(2), questions_per_image);
    let referrals = language::referrals(&scene, &mut stream(3));
    let tags = language::tags(&scene, vocab);
    Generated {
        scene,
        pixels,
        captions,
        questions,
        referrals,
        tags,
    }
}

/// The REC answer text: `[x1,y1,x2,y2]` normalised by width/height, 3 decimals.
pub fn box_text(bbox: [u32; 4], width: u32, height: u32) -> String {
    let (w, h) = (width as f64, height as f64);
    format!(
        "[{:.3},{:.3},{:.3},{:.3}]",
        bbox[0] as f64 / w,
        bbox[1] as f64 / h,
        bbox[2] as f64 / w,
        bbox[3] as f64 / h
    )
}

/// Generates a world into `out` (see the module docs). `out` must not exist, or be an empty
/// directory, or (with `force`) hold an earlier world (`world.json`), which is replaced.
/// `progress` is called with the number of images finished so far.
pub fn generate(
    cfg: &WorldConfig,
    out: &Path,
    force: bool,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Manifest, WorldError> {
    cfg.validate()?;
    check_output(out, force)?;
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| WorldError::Output {
            path: out.to_path_buf(),
            msg: "has no directory name".into(),
        })?;
    std::fs::create_dir_all(&parent).map_err(io_err(&parent))?;
    remove_stale_staging(&parent, &name);
    let staging = parent.join(format!(".{name}.partial-{}", std::process::id()));
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(io_err(&staging))?;
    }
    let result = generate_into(cfg, &staging, progress).and_then(|manifest| {
        if out.exists() {
            std::fs::remove_dir_all(out).map_err(io_err(out))?;
        }
        std::fs::rename(&staging, out).map_err(io_err(out))?;
        Ok(manifest)
    });
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    result
}

/// Removes `.NAME.partial-PID` folders of earlier runs that died (killed, out of memory) before
/// they could clean up: those whose process is gone (Linux: no `/proc/PID`).
pub fn remove_stale_staging(parent: &Path, name: &str) {
    let prefix = format!(".{name}.partial-");
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    let can_tell = Path::new("/proc/self").exists();
    for e in entries.filter_map(|e| e.ok()) {
        let file_name = e.file_name();
        let Some(pid) = file_name
            .to_str()
            .and_then(|n| n.strip_prefix(&prefix))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let alive =
            pid == std::process::id() || !can_tell || Path::new(&format!("/proc/{pid}")).exists();
        if !alive {
            // Best effort: a folder that cannot be removed only costs disk space.
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

fn check_output(out: &Path, force: bool) -> Result<(), WorldError> {
    if !out.exists() {
        return Ok(());
    }
    if !out.is_dir() {
        return Err(WorldError::Output {
            path: out.to_path_buf(),
            msg: "exists and is not a directory".into(),
        });
    }
    let empty = std::fs::read_dir(out)
        .map_err(io_err(out))?
        .next()
        .is_none();
    if empty {
        return Ok(());
    }
    if !out.join("world.json").is_file() {
        return Err(WorldError::Output {
            path: out.to_path_buf(),
            msg: "exists, is not empty and holds no world.json; refusing to replace it".into(),
        });
    }
    if !force {
        return Err(WorldError::Output {
            path: out.to_path_buf(),
            msg: "already holds a world; pass --force to replace it".into(),
        });
    }
    Ok(())
}
