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

struct Job {
    split: &'static str,
    split_code: u64,
    index: usize,
    image_id: u64,
}

/// Images and their PNG checksums, in job order.
fn render_all(
    cfg: &WorldConfig,
    dir: &Path,
    vocab: &[String],
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Vec<(WorldImage, u64, u64)>, WorldError> {
    let mut jobs = Vec::new();
    let mut next_id = 1u64;
    for (code, (split, n)) in cfg.splits().into_iter().enumerate() {
        for index in 0..n {
            jobs.push(Job {
                split,
                split_code: code as u64,
                index,
                image_id: next_id,
            });
            next_id += 1;
        }
    }
    let threads = match cfg.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
    .min(jobs.len())
    .max(1);
    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let worker = || -> Result<Vec<(usize, WorldImage, u64, u64)>, WorldError> {
        let mut mine = Vec::new();
        loop {
            if failed.load(Ordering::Relaxed) {
                break;
            }
            let j = next.fetch_add(1, Ordering::Relaxed);
            let Some(job) = jobs.get(j) else { break };
            let g = make_image(
                cfg.seed,
                job.split_code,
                job.index,
                cfg.size,
                cfg.questions_per_image,
                vocab,
            );
            let file_name = format!("images/{}/{:06}.png", job.split, job.image_id);
            let png =
                raster::encode_png(g.scene.width, g.scene.height, &g.pixels).map_err(|e| {
                    WorldError::Png {
                        path: file_name.clone(),
                        msg: e.to_string(),
                    }
                })?;
            let path = dir.join(&file_name);
            std::fs::write(&path, &png).map_err(io_err(&path))?;
            mine.push((
                j,
                WorldImage {
                    split: job.split,
                    image_id: job.image_id,
                    file_name,
                    scene: g.scene,
                    captions: g.captions,
                    questions: g.questions,
                    referrals: g.referrals,
                    tags: g.tags,
                },
                fnv1a64(&png),
                png.len() as u64,
            ));
            progress(done.fetch_add(1, Ordering::Relaxed) as u64 + 1);
        }
        Ok(mine)
    };
    let results: Vec<Result<Vec<_>, WorldError>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let r = worker();
                    if r.is_err() {
                        failed.store(true, Ordering::Relaxed);
                    }
                    r
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    failed.store(true, Ordering::Relaxed);
                    Err(WorldError::Stopped("a generator thread panicked".into()))
                })
            })
            .collect()
    });
    let mut all = Vec::with_capacity(jobs.len());
    for r in results {
        all.extend(r?);
    }
    all.sort_by_key(|(j, ..)| *j);
    Ok(all.into_iter().map(|(_, w, h, b)| (w, h, b)).collect())
}

fn info(cfg: &WorldConfig, what: &str) -> Info {
    Info {
        description: format!("ShapesWorld {what}"),
        version: format!("{GENERATOR_VERSION}"),
        seed: cfg.seed,
    }
}

/// Serialises compactly, then writes and records the file (all in the staging directory).
fn write_json<T: serde::Serialize>(
    dir: &Path,
    rel: &str,
    format: &str,
    value: &T,
    files: &mut Vec<FileEntry>,
) -> Result<(), WorldError> {
    let bytes = serde_json::to_vec(value).map_err(|e| WorldError::Output {
        path: dir.join(rel),
        msg: e.to_string(),
    })?;
    write_file(dir, rel, format, &bytes, files)
}

fn write_file(
    dir: &Path,
    rel: &str,
    format: &str,
    bytes: &[u8],
    files: &mut Vec<FileEntry>,
) -> Result<(), WorldError> {
    let path = dir.join(rel);
    std::fs::write(&path, bytes).map_err(io_err(&path))?;
    files.push(FileEntry {
        path: rel.to_string(),
        format: format.to_string(),
        bytes: bytes.len() as u64,
        fnv1a64: format!("{:016x}", fnv1a64(bytes)),
    });
    Ok(())
}

fn generate_into(
    cfg: &WorldConfig,
    dir: &Path,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Manifest, WorldError> {
    for (split, _) in cfg.splits() {
        let d = dir.join("images").join(split);
        std::fs::create_dir_all(&d).map_err(io_err(&d))?;
    }
    let vocab = language::tag_vocabulary();
    let rendered = render_all(cfg, dir, &vocab, progress)?;
    let (w, h) = (cfg.size, cfg.size);

    let mut files: Vec<FileEntry> = Vec::new();
    let mut splits: Vec<SplitSummary> = Vec::new();
    let mut all_images: Vec<CocoImage> = Vec::new();
    let mut instances: Vec<CocoInstance> = Vec::new();
    let mut refs: Vec<RefRecord> = Vec::new();
    let (mut ref_id, mut sent_id) = (0u64, 0u64);

    for (split, n) in cfg.splits() {
        let imgs: Vec<&WorldImage> = rendered
            .iter()
            .map(|(wi, ..)| wi)
            .filter(|wi| wi.split == split)
            .collect();
        debug_assert_eq!(imgs.len(), n);
        let coco_images: Vec<CocoImage> = imgs
            .iter()
            .map(|wi| CocoImage {
                id: wi.image_id,
                file_name: wi.file_name.clone(),
                width: w,
                height: h,
            })
            .collect();
        all_images.extend(coco_images.iter().cloned());
        let mut captions = Vec::new();
        let mut questions = Vec::new();
        let mut annotations = Vec::new();
        let mut lion_cap = Vec::new();
        let mut lion_vqa = Vec::new();
        let mut lion_rec = Vec::new();
        let mut tag_rows = Vec::new();
        let mut kinds: std::collections::BTreeMap<String, usize> = QuestionKind::ALL
            .iter()
            .map(|k| (k.name().to_string(), 0))
            .collect();
        let (mut n_objects, mut n_refs, mut n_sents) = (0, 0, 0);
        for wi in &imgs {
            for (i, c) in wi.captions.iter().enumerate() {
                captions.push(CocoCaption {
                    id: wi.image_id * 10 + i as u64,
                    image_id: wi.image_id,
                    caption: c.clone(),
                });
                lion_cap.push(LionRecord {
                    image: wi.file_name.clone(),
                    question: CAPTION_PROMPT.to_string(),
                    answer: c.clone(),
                    category: "image_level".into(),
                    tags: wi.tags.clone(),
                });
            }
            for (i, q) in wi.questions.iter().enumerate() {
                let qid = wi.image_id * 1000 + i as u64;
                *kinds.entry(q.kind.name().to_string()).or_default() += 1;
                questions.push(VqaQuestion {
                    image_id: wi.image_id,
                    question: q.question.clone(),
                    question_id: qid,
                });
                annotations.push(VqaAnnotation {
                    question_type: q.kind.question_type().into(),
                    multiple_choice_answer: q.multiple_choice_answer.clone(),
                    answers: q
                        .answers
                        .iter()
                        .enumerate()
                        .map(|(k, a)| VqaAnswer {
                            answer: a.answer.clone(),
                            answer_confidence: a.confidence.into(),
                            answer_id: k as u32 + 1,
                        })
                        .collect(),
                    image_id: wi.image_id,
                    answer_type: q.kind.answer_type().into(),
                    question_id: qid,
                });
                lion_vqa.push(LionRecord {
                    image: wi.file_name.clone(),
                    question: VQA_PROMPT.replace("{}", &q.question),
                    answer: q.multiple_choice_answer.clone(),
                    category: "image_level".into(),
                    tags: wi.tags.clone(),
                });
            }
            for (k, o) in wi.scene.objects.iter().enumerate() {
                let b = o.bbox;
                instances.push(CocoInstance {
                    id: wi.image_id * 10 + k as u64,
                    image_id: wi.image_id,
                    category_id: o.shape.category_id(),
                    bbox: [
                        b[0] as f64,
                        b[1] as f64,
                        (b[2] - b[0]) as f64,
                        (b[3] - b[1]) as f64,
                    ],
                    area: o.area as f64,
                    iscrowd: 0,
                    shape: o.shape.name().into(),
                    color: o.color.name().into(),
                    size: o.size.name().into(),
                });
            }
            n_objects += wi.scene.objects.len();
            for r in &wi.referrals {
                let o = &wi.scene.objects[r.object];
                let mut sentences = Vec::new();
                let mut sent_ids = Vec::new();
                for s in &r.sentences {
                    sentences.push(RefSentence {
                        tokens: s.split_whitespace().map(str::to_string).collect(),
                        raw: s.clone(),
                        sent_id,
                        sent: s.clone(),
                    });
                    sent_ids.push(sent_id);
                    lion_rec.push(LionRecord {
                        image: wi.file_name.clone(),
                        question: REC_PROMPT.replace("{}", s),
                        answer: box_text(o.bbox, w, h),
                        category: "region_level".into(),
                        tags: wi.tags.clone(),
                    });
                    sent_id += 1;
                    n_sents += 1;
                }
                refs.push(RefRecord {
                    sent_ids,
                    file_name: wi.file_name.clone(),
                    ann_id: wi.image_id * 10 + r.object as u64,
                    ref_id,
                    image_id: wi.image_id,
                    split: split.into(),
                    sentences,
                    category_id: o.shape.category_id(),
                });
                ref_id += 1;
                n_refs += 1;
            }
            tag_rows.push(ImageTags {
                image_id: wi.image_id,
                file_name: wi.file_name.clone(),
                tags: wi.tags.clone(),
            });
        }
        splits.push(SplitSummary {
            name: split.into(),
            images: imgs.len(),
            first_image_id: imgs.first().map_or(0, |wi| wi.image_id),
            objects: n_objects,
            captions: captions.len(),
            questions: questions.len(),
            question_kinds: kinds,
            refs: n_refs,
            ref_sentences: n_sents,
        });
        write_json(
            dir,
            &format!("captions_{split}.json"),
            "COCO captions",
            &CocoCaptions {
                info: info(cfg, &format!("captions, {split}")),
                licenses: vec![],
                images: coco_images.clone(),
                annotations: captions,
            },
            &mut files,
        )?;
        let license = serde_json::json!({"name": "generated, no restrictions", "url": ""});
        write_json(
            dir,
            &format!("questions_{split}.json"),
            "VQA v2 questions",
            &VqaQuestions {
                info: info(cfg, &format!("VQA questions, {split}")),
                task_type: "Open-Ended".into(),
                data_type: "shapesworld".into(),
                data_subtype: split.into(),
                license: license.clone(),
                questions,
            },
            &mut files,
        )?;
        write_json(
            dir,
            &format!("annotations_{split}.json"),
            "VQA v2 annotations",
            &VqaAnnotations {
                info: info(cfg, &format!("VQA annotations, {split}")),
                data_type: "shapesworld".into(),
                data_subtype: split.into(),
                license,
                annotations,
            },
            &mut files,
        )?;
        for (task, records) in [("caption", lion_cap), ("vqa", lion_vqa), ("rec", lion_rec)] {
            write_json(
                dir,
                &format!("lion_{task}_{split}.json"),
                "LION training JSON",
                &records,
                &mut files,
            )?;
        }
        write_json(
            dir,
            &format!("tags_{split}.json"),
            "ground-truth tags per image",
            &tag_rows,
            &mut files,
        )?;
    }
    write_json(
        dir,
        "instances.json",
        "COCO instances (RefCOCO instances.json)",
        &CocoInstances {
            info: info(cfg, "instances"),
            images: all_images,
            annotations: instances,
            categories: Shape::ALL
                .iter()
                .map(|s| CocoCategory {
                    id: s.category_id(),
                    name: s.name().into(),
                    supercategory: "shape".into(),
                })
                .collect(),
        },
        &mut files,
    )?;
    write_json(
        dir,
        "refs.json",
        "RefCOCO refs as JSON (refs(unc).p is a pickle upstream)",
        &refs,
        &mut files,
    )?;
    let mut tag_text = vocab.join("\n");
    tag_text.push('\n');
    write_file(
        dir,
        "tag_list.txt",
        "tag vocabulary, one per line",
        tag_text.as_bytes(),
        &mut files,
    )?;

    let mut img_digest = Vec::with_capacity(rendered.len() * 8);
    let mut img_bytes = 0;
    for (_, h, b) in &rendered {
        img_digest.extend_from_slice(&h.to_le_bytes());
        img_bytes += b;
    }
    let images = ImagesEntry {
        pattern: "images/{split}/{image_id:06}.png".into(),
        count: rendered.len(),
        bytes: img_bytes,
        fnv1a64: format!("{:016x}", fnv1a64(&img_digest)),
    };
    let mut all_digest: Vec<u8> = files.iter().flat_map(|f| f.fnv1a64.bytes()).collect();
    all_digest.extend(images.fnv1a64.bytes());
    let manifest = Manifest {
        name: "ShapesWorld".into(),
        generator: "lion-data world (lion world generate)".into(),
        generator_version: GENERATOR_VERSION,
        seed: cfg.seed,
        width: w,
        height: h,
        questions_per_image: cfg.questions_per_image,
        note: "Paths are relative to this directory. Same seed, settings and generator version \
               give the same bytes. refs.json holds RefCOCO's refs(unc).p records as JSON."
            .into(),
        splits,
        vocabulary: Vocabulary {
            shapes: Shape::ALL.iter().map(|s| s.name().into()).collect(),
            colors: Color::ALL.iter().map(|c| c.name().into()).collect(),
            sizes: Size::ALL.iter().map(|s| s.name().into()).collect(),
            textures: Texture::ALL.iter().map(|t| t.name().into()).collect(),
            tags: vocab.len(),
        },
        files,
        images,
        digest: format!("{:016x}", fnv1a64(&all_digest)),
    };
    let mut bytes = serde_json::to_vec_pretty(&manifest).map_err(|e| WorldError::Output {
        path: dir.join("world.json"),
        msg: e.to_string(),
    })?;
    bytes.push(b'\n');
    let path = dir.join("world.json");
    std::fs::write(&path, &bytes).map_err(io_err(&path))?;
    Ok(manifest)
}
