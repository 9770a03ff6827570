//! Tagging a whole world with a trained tagger: every split's kept tags with their scores
//! (`tags_{split}.jsonl`), the test split's micro precision / recall / F1 overall and per tag
//! group, and how well the scores are calibrated ([`Calibration`]: reliability bins and the
//! expected calibration error), since the dynamic soft prompt reads the scores.
//!
//! [`train_tagger_with`] ends with it, and [`tag_world_with`] runs it with a tagger trained
//! elsewhere (the demo's shipped one).

use super::*;

/// Reliability bins of the calibration report.
pub const CALIBRATION_BINS: usize = 10;

/// One reliability bin: the (image, tag) pairs whose score fell in `[lo, hi)` (the last bin
/// includes 1), their mean score, and the fraction of them that are true tags of their image
/// (both `None` for an empty bin).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ReliabilityBin {
    pub lo: f64,
    pub hi: f64,
    pub count: usize,
    pub mean_score: Option<f64>,
    pub positive_rate: Option<f64>,
}

/// Calibration of a tagger's scores on a split.
///
/// - `bins`, `ece`: every (image, tag) pair, the scores as probabilities;
/// - `kept_bins`, `kept_ece`: only the tags the thresholds keep, i.e. the scores the prompt's
///   `"tag: score"` text and the tag encoder see.
///
/// ECE = sum over bins of (pairs in bin / pairs) * |positive rate - mean score| (10 equal-width
/// bins; empty bins count 0).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    pub pairs: usize,
    pub ece: f64,
    pub bins: Vec<ReliabilityBin>,
    pub kept: usize,
    pub kept_ece: f64,
    pub kept_bins: Vec<ReliabilityBin>,
}

fn reliability(
    pairs: impl Iterator<Item = (f32, bool)>,
    nbins: usize,
) -> (usize, f64, Vec<ReliabilityBin>) {
    let mut count = vec![0usize; nbins];
    let mut score = vec![0f64; nbins];
    let mut pos = vec![0usize; nbins];
    for (s, y) in pairs {
        let s = s.clamp(0.0, 1.0) as f64;
        let b = ((s * nbins as f64) as usize).min(nbins - 1);
        count[b] += 1;
        score[b] += s;
        pos[b] += y as usize;
    }
    let total: usize = count.iter().sum();
    let mut ece = 0.0;
    let bins = (0..nbins)
        .map(|b| {
            let n = count[b];
            let (mean_score, positive_rate) = if n == 0 {
                (None, None)
            } else {
                let (s, p) = (score[b] / n as f64, pos[b] as f64 / n as f64);
                ece += n as f64 / total as f64 * (p - s).abs();
                (Some(s), Some(p))
            };
            ReliabilityBin {
                lo: b as f64 / nbins as f64,
                hi: (b + 1) as f64 / nbins as f64,
                count: n,
                mean_score,
                positive_rate,
            }
        })
        .collect();
    (total, ece, bins)
}

/// The calibration of `probs` (n, c) against `targets`, overall and over the tags `thresholds`
/// keep (`p > threshold`, as [`micro_prf`]).
pub fn calibration(probs: &[Vec<f32>], targets: &[Vec<usize>], thresholds: &[f32]) -> Calibration {
    let all = || {
        probs.iter().zip(targets).flat_map(|(p, t)| {
            p.iter()
                .enumerate()
                .map(move |(c, &s)| (c, s, t.contains(&c)))
        })
    };
    let (pairs, ece, bins) = reliability(all().map(|(_, s, y)| (s, y)), CALIBRATION_BINS);
    let (kept, kept_ece, kept_bins) = reliability(
        all()
            .filter(|&(c, s, _)| s > thresholds[c])
            .map(|(_, s, y)| (s, y)),
        CALIBRATION_BINS,
    );
    Calibration {
        pairs,
        ece,
        bins,
        kept,
        kept_ece,
        kept_bins,
    }
}

/// The reliability diagram (mean score against the fraction of true tags per bin, with the
/// diagonal) of every pair and of the kept tags, as a PNG.
pub fn draw_reliability(path: &Path, cal: &Calibration) -> Result<()> {
    use crate::plot::{draw_png, Panel, Series};
    let points = |bins: &[ReliabilityBin]| -> Vec<(f64, f64)> {
        bins.iter()
            .filter_map(|b| Some((b.mean_score?, b.positive_rate?)))
            .collect()
    };
    let diagonal = || Series {
        name: "perfect calibration",
        points: vec![(0.0, 0.0), (1.0, 1.0)],
    };
    let all_title = format!("every (image, tag) pair: ECE {:.3}", cal.ece);
    let kept_title = format!("kept tags: ECE {:.3}", cal.kept_ece);
    draw_png(
        path,
        &[
            Panel {
                title: &all_title,
                x_label: "mean score in bin",
                y_label: "fraction of true tags",
                series: vec![
                    Series {
                        name: "tagger",
                        points: points(&cal.bins),
                    },
                    diagonal(),
                ],
            },
            Panel {
                title: &kept_title,
                x_label: "mean score in bin",
                y_label: "fraction of true tags",
                series: vec![
                    Series {
                        name: "tagger",
                        points: points(&cal.kept_bins),
                    },
                    diagonal(),
                ],
            },
        ],
        (520, 380),
    )
}

/// What tagging a world reports: the test split's scores (`eval_test.json` of
/// [`tag_world_with`]; inside [`TaggerReport`] after training).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorldTagging {
    /// Test micro P/R/F1 over all tags.
    pub test: Prf,
    /// Test micro P/R/F1 per tag group, plus `color+shape` (shapes, colors and their pairs).
    pub test_groups: BTreeMap<String, Prf>,
    /// Calibration of the test split's scores.
    pub calibration: Calibration,
}

/// Tags every split's images (`images[k]` are `splits[k]`'s) into `files.tags_jsonl`, scores the
/// test split, and draws its reliability diagram (`reliability.png`). `known` holds
/// probabilities already computed for a split (by name).
#[allow(clippy::too_many_arguments)]
pub(super) fn tag_splits(
    model: &Ram,
    vocab: &TagVocab,
    world: &Path,
    splits: &[WorldSplit],
    images: &[Vec<Tensor>],
    files: &TaggerFiles,
    eval_batch: usize,
    known: Option<(&str, &[Vec<f32>])>,
) -> Result<WorldTagging> {
    let num_tags = vocab.tags.len();
    let groups = tag_groups(world, &vocab.tags);
    let mut out = WorldTagging {
        test: Prf::default(),
        test_groups: BTreeMap::new(),
        calibration: calibration(&[], &[], &vocab.thresholds),
    };
    for (split, imgs) in splits.iter().zip(images) {
        let probs = match known {
            Some((name, p)) if name == split.name => p.to_vec(),
            _ => predict(model, imgs, None, num_tags, eval_batch)?.0,
        };
        let mut text = String::new();
        for ((id, file), p) in split.ids.iter().zip(&split.file_names).zip(&probs) {
            let kept = select_tags(p, vocab, TagSelection::ClassThreshold, TagOrder::Index)?;
            let kept: Vec<_> = kept.iter().map(|t| serde_json::json!(t.scored)).collect();
            text.push_str(
                &serde_json::json!({"image": id, "file_name": file, "tags": kept}).to_string(),
            );
            text.push('\n');
        }
        write_atomic(files.tags_jsonl(&split.name), text.as_bytes())?;
        if split.name != "test" {
            continue;
        }
        let th = &vocab.thresholds;
        out.test = micro_prf(&probs, &split.targets, th, |_| true);
        for (g, members) in &groups {
            let prf = micro_prf(&probs, &split.targets, th, |c| members.contains(&c));
            out.test_groups.insert(g.clone(), prf);
        }
        if !groups.is_empty() {
            let cs: Vec<usize> = ["shape", "color", "color_shape"]
                .iter()
                .filter_map(|g| groups.get(*g))
                .flatten()
                .copied()
                .collect();
            let prf = micro_prf(&probs, &split.targets, th, |c| cs.contains(&c));
            out.test_groups.insert("color+shape".into(), prf);
        }
        out.calibration = calibration(&probs, &split.targets, th);
        draw_reliability(&files.reliability(), &out.calibration)?;
    }
    Ok(out)
}

/// Reads a world's vocabulary and splits, checking them against a tagger's tag list.
pub(super) fn read_world_for(
    world: &Path,
    tags: Option<&[String]>,
) -> Result<(Vec<String>, Vec<WorldSplit>)> {
    if !world.is_dir() {
        return Err(Error::format(
            world,
            "not a folder; give a ShapesWorld folder (lion world generate --out DIR)",
        ));
    }
    let world_tags = read_world_tags(world)?;
    if let Some(tags) = tags {
        if tags != world_tags.as_slice() {
            input_err!(
                "{}: the world's tag list ({} tags) differs from the tagger's ({} tags); a \
                 tagger tags the vocabulary it was trained on",
                world.join("tag_list.txt").display(),
                world_tags.len(),
                tags.len()
            );
        }
    }
    let index: HashMap<String, usize> = world_tags
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i))
        .collect();
    let splits = ["train", "val", "test"]
        .iter()
        .map(|s| read_world_split(world, s, &index))
        .collect::<Result<_>>()?;
    Ok((world_tags, splits))
}

/// Tags every image of `world` with the trained tagger folder `tagger` (as `lion train-tagger`
/// writes it) and writes into `out`: `tags_{split}.jsonl`, `eval_test.json` (a
/// [`WorldTagging`]) and `reliability.png`. The world's tag list must be the tagger's.
pub fn tag_world_with(
    tagger: &Path,
    world: &Path,
    out: &Path,
    mut on_event: impl FnMut(&TaggerEvent),
) -> Result<WorldTagging> {
    let dev = Device::Cpu;
    let tf = TaggerFiles::new(tagger);
    let cfg_path = tf.config();
    let cfg: RamConfig = lion_core::util::read_json(&cfg_path)?;
    cfg.validate()
        .map_err(|m| Error::config(cfg_path.display(), m))?;
    let vocab = TagVocab::from_files(&tf.tag_list(), &tf.thresholds())?;
    let (_, splits) = read_world_for(world, Some(&vocab.tags))?;
    let (model, _) = Ram::load(&cfg, tf.weights(), &dev)?;
    let files = TaggerFiles::new(out);
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    on_event(&TaggerEvent::Loading {
        images: splits.iter().map(WorldSplit::len).sum(),
    });
    let images: Vec<Vec<Tensor>> = splits
        .iter()
        .map(|s| load_split_images(world, s, cfg.img_size(), &dev))
        .collect::<Result<_>>()?;
    on_event(&TaggerEvent::Tagging {
        images: splits.iter().map(WorldSplit::len).sum(),
    });
    let eval_batch = TaggerTrainOptions::default().eval_batch_size;
    let report = tag_splits(
        &model, &vocab, world, &splits, &images, &files, eval_batch, None,
    )?;
    write_atomic(
        files.eval(),
        &serde_json::to_vec_pretty(&report).expect("report serialises"),
    )?;
    Ok(report)
}
