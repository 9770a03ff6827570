//! Referring expression comprehension: IoU, accuracy at IoU thresholds (Acc@0.5, Acc@0.1, ...)
//! overall and per split, and the IoU distribution. LION's box text
//! (`"Answer: [0.440,0.060,0.650,0.367]"`) is read by `lion_core::bbox`, before the boxes get here.
//!
//! IoU rules (continuous coordinates, `[x1, y1, x2, y2]`, no +1 pixel convention):
//! - a coordinate that is NaN or infinite, in either box: IoU 0;
//! - an inverted box (`x2 < x1` or `y2 < y1`): IoU 0 (the corners are not swapped);
//! - a degenerate box (zero width or height, a line or a point): IoU 0, also against an equal
//!   degenerate box (0/0 is not a match);
//! - boxes that only touch (a shared edge or corner): intersection 0, IoU 0;
//! - a box partly or wholly outside the image: compared as given, no clipping (the parts outside
//!   count in its area, so they can only lower the IoU against a ground truth in the image);
//! - a hit at threshold t is `IoU >= t` (inclusive); thresholds lie in (0, 1].

use std::collections::BTreeMap;

use serde::Serialize;

/// A box in pixels, `[x1, y1, x2, y2]`.
pub type BoxXyxy = [f64; 4];

/// COCO `[x, y, w, h]` -> `[x1, y1, x2, y2]`.
pub fn xywh_to_xyxy(b: [f64; 4]) -> BoxXyxy {
    [b[0], b[1], b[0] + b[2], b[1] + b[3]]
}

/// A box with positive, finite width and height (see the module's IoU rules).
pub fn is_proper(b: &BoxXyxy) -> bool {
    b.iter().all(|v| v.is_finite()) && b[2] > b[0] && b[3] > b[1]
}

/// Intersection over union under the module's rules (0 unless both boxes are proper).
pub fn iou(a: &BoxXyxy, b: &BoxXyxy) -> f64 {
    if !is_proper(a) || !is_proper(b) {
        return 0.0;
    }
    let area = |x: &BoxXyxy| (x[2] - x[0]) * (x[3] - x[1]);
    let iw = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let ih = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = iw * ih;
    let union = area(a) + area(b) - inter;
    if union > 0.0 && union.is_finite() {
        (inter / union).clamp(0.0, 1.0)
    } else {
        0.0
    }
}

/// Checks IoU thresholds: each in (0, 1]; returns them without repeats, in the given order.
pub fn check_thresholds(ts: &[f64]) -> Result<Vec<f64>, String> {
    let mut out: Vec<f64> = Vec::new();
    for &t in ts {
        if !(t > 0.0 && t <= 1.0) {
            return Err(format!("IoU threshold {t} is not in (0, 1]"));
        }
        if !out.contains(&t) {
            out.push(t);
        }
    }
    if out.is_empty() {
        return Err("no IoU threshold".into());
    }
    Ok(out)
}

/// The key of a threshold in the accuracy maps: `0.5` -> "0.5".
pub fn threshold_key(t: f64) -> String {
    format!("{t}")
}

/// Accuracy at thresholds and the IoU distribution, accumulated item by item.
#[derive(Debug, Clone)]
pub struct RecAccumulator {
    thresholds: Vec<f64>,
    /// (id, split, IoU or None when the prediction could not be parsed)
    items: Vec<(String, Option<String>, Option<f64>)>,
}

impl Default for RecAccumulator {
    fn default() -> Self {
        Self::new()
    }
}

/// One split's numbers.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RecSplit {
    pub items: usize,
    /// Accuracy in [0, 1] per threshold ([`threshold_key`]).
    pub accuracy: BTreeMap<String, f64>,
    pub mean_iou: f64,
    pub unparsable: usize,
}

/// IoU histogram bins: [0,0.1), [0.1,0.2), ..., [0.9,1.0]; misses (no box) counted apart.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RecSummary {
    pub items: usize,
    /// Acc@0.5 in [0, 1] (always computed, whatever the thresholds).
    pub acc_at_0_5: f64,
    /// Accuracy in [0, 1] per threshold ([`threshold_key`]), e.g. {"0.1": .., "0.5": ..}.
    pub accuracy: BTreeMap<String, f64>,
    pub thresholds: Vec<f64>,
    pub mean_iou: f64,
    pub unparsable: usize,
    pub iou_histogram: [usize; 10],
    pub iou_quantiles: [f64; 5],
    /// Per split (RefCOCO's val / testA / testB ...) when items carry one.
    pub per_split: BTreeMap<String, RecSplit>,
}

impl RecAccumulator {
    /// Thresholds 0.5 and 0.1.
    pub fn new() -> Self {
        Self::with_thresholds(&[0.5, 0.1]).expect("valid thresholds")
    }

    pub fn with_thresholds(ts: &[f64]) -> Result<Self, String> {
        Ok(Self {
            thresholds: check_thresholds(ts)?,
            items: Vec::new(),
        })
    }

    pub fn thresholds(&self) -> &[f64] {
        &self.thresholds
    }

    /// Records one item: `pred` None means the prediction could not be parsed (IoU 0, a miss).
    /// Returns the IoU.
    pub fn add(
        &mut self,
        id: impl Into<String>,
        split: Option<&str>,
        pred: Option<&BoxXyxy>,
        gt: &BoxXyxy,
    ) -> f64 {
        let v = pred.map(|p| iou(p, gt));
        self.items.push((id.into(), split.map(str::to_string), v));
        v.unwrap_or(0.0)
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// (id, IoU or None when unparsable, hit at IoU >= 0.5).
    pub fn per_item(&self) -> impl Iterator<Item = (&str, Option<f64>, bool)> {
        self.items
            .iter()
            .map(|(id, _, v)| (id.as_str(), *v, v.is_some_and(|x| x >= 0.5)))
    }

    fn accuracy(&self, ious: &[f64]) -> BTreeMap<String, f64> {
        self.thresholds
            .iter()
            .map(|&t| (threshold_key(t), hit_rate(ious, t)))
            .collect()
    }

    pub fn summary(&self) -> RecSummary {
        let n = self.items.len();
        let ious: Vec<f64> = self.items.iter().map(|x| x.2.unwrap_or(0.0)).collect();
        let mut hist = [0usize; 10];
        for v in self.items.iter().filter_map(|x| x.2) {
            hist[((v * 10.0).floor() as usize).min(9)] += 1;
        }
        let mut sorted = ious.clone();
        sorted.sort_by(f64::total_cmp);
        let q = |p: f64| {
            if sorted.is_empty() {
                0.0
            } else {
                // linear interpolation between closest ranks (numpy's default)
                let pos = p * (sorted.len() - 1) as f64;
                let lo = pos.floor() as usize;
                let hi = pos.ceil() as usize;
                sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
            }
        };
        let mut splits: BTreeMap<&str, (Vec<f64>, usize)> = BTreeMap::new();
        for (_, s, v) in &self.items {
            if let Some(s) = s {
                let e = splits.entry(s.as_str()).or_default();
                e.0.push(v.unwrap_or(0.0));
                e.1 += usize::from(v.is_none());
            }
        }
        let per_split = splits
            .into_iter()
            .map(|(s, (v, bad))| {
                let r = RecSplit {
                    items: v.len(),
                    accuracy: self.accuracy(&v),
                    mean_iou: mean(&v),
                    unparsable: bad,
                };
                (s.to_string(), r)
            })
            .collect();
        RecSummary {
            items: n,
            acc_at_0_5: hit_rate(&ious, 0.5),
            accuracy: self.accuracy(&ious),
            thresholds: self.thresholds.clone(),
            mean_iou: mean(&ious),
            unparsable: self.items.iter().filter(|x| x.2.is_none()).count(),
            iou_histogram: hist,
            iou_quantiles: [q(0.0), q(0.25), q(0.5), q(0.75), q(1.0)],
            per_split,
        }
    }
}

fn hit_rate(ious: &[f64], t: f64) -> f64 {
    if ious.is_empty() {
        return 0.0;
    }
    ious.iter().filter(|&&v| v >= t).count() as f64 / ious.len() as f64
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iou_values() {
        assert_eq!(iou(&[0.0, 0.0, 2.0, 2.0], &[0.0, 0.0, 2.0, 2.0]), 1.0);
        assert!((iou(&[0.0, 0.0, 2.0, 2.0], &[1.0, 0.0, 3.0, 2.0]) - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(iou(&[0.0, 0.0, 1.0, 1.0], &[2.0, 2.0, 3.0, 3.0]), 0.0);
        let mut acc = RecAccumulator::new();
        acc.add(
            "a",
            Some("val"),
            Some(&[0.0, 0.0, 2.0, 2.0]),
            &[0.0, 0.0, 2.0, 2.0],
        );
        acc.add("b", Some("testA"), None, &[0.0, 0.0, 2.0, 2.0]);
        // IoU 0.2: a hit at 0.1 only
        acc.add(
            "c",
            Some("testA"),
            Some(&[0.0, 0.0, 1.0, 1.0]),
            &[0.0, 0.0, 1.0, 5.0],
        );
        let s = acc.summary();
        assert_eq!((s.items, s.unparsable), (3, 1));
        assert!((s.acc_at_0_5 - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(s.accuracy["0.5"], s.acc_at_0_5);
        assert!((s.accuracy["0.1"] - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(s.per_split["val"].accuracy["0.5"], 1.0);
        assert_eq!(s.per_split["testA"].accuracy["0.1"], 0.5);
        assert_eq!(s.per_split["testA"].unparsable, 1);
        assert!(RecAccumulator::with_thresholds(&[0.0]).is_err());
        assert!(RecAccumulator::with_thresholds(&[f64::NAN]).is_err());
        assert!(RecAccumulator::with_thresholds(&[1.5]).is_err());
    }

    /// The corner cases of the module's IoU rules, one by one.
    #[test]
    fn iou_corner_cases() {
        let unit = [0.0, 0.0, 1.0, 1.0];
        // degenerate: a line, a point, and equal degenerate boxes
        assert_eq!(iou(&[0.0, 0.0, 0.0, 1.0], &unit), 0.0);
        assert_eq!(iou(&[0.5, 0.5, 0.5, 0.5], &[0.5, 0.5, 0.5, 0.5]), 0.0);
        assert_eq!(iou(&[0.0, 0.0, 1.0, 0.0], &[0.0, 0.0, 1.0, 0.0]), 0.0);
        // touching: shared edge, shared corner
        assert_eq!(iou(&unit, &[1.0, 0.0, 2.0, 1.0]), 0.0);
        assert_eq!(iou(&unit, &[1.0, 1.0, 2.0, 2.0]), 0.0);
        // outside the image (negative, beyond): no clipping
        assert!((iou(&[-1.0, 0.0, 1.0, 1.0], &unit) - 0.5).abs() < 1e-12);
        assert_eq!(iou(&[-5.0, -5.0, -4.0, -4.0], &unit), 0.0);
        assert!((iou(&[0.0, 0.0, 1e6, 1.0], &unit) - 1e-6).abs() < 1e-12);
        // inverted: x2 < x1 or y2 < y1 is not swapped
        assert_eq!(iou(&[1.0, 0.0, 0.0, 1.0], &unit), 0.0);
        assert_eq!(iou(&[0.0, 1.0, 1.0, 0.0], &unit), 0.0);
        assert_eq!(iou(&unit, &[1.0, 1.0, 0.0, 0.0]), 0.0);
        // NaN and infinities, in either box
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            for k in 0..4 {
                let mut b = unit;
                b[k] = bad;
                assert_eq!(iou(&b, &unit), 0.0, "{b:?}");
                assert_eq!(iou(&unit, &b), 0.0, "{b:?}");
            }
        }
        // symmetric, 1 for equal proper boxes, inclusive threshold
        let a = [0.0, 0.0, 2.0, 1.0];
        let b = [1.0, 0.0, 3.0, 1.0];
        assert_eq!(iou(&a, &b), iou(&b, &a));
        assert_eq!(iou(&a, &a), 1.0);
        let mut acc = RecAccumulator::with_thresholds(&[1.0 / 3.0]).unwrap();
        acc.add("x", None, Some(&a), &b);
        assert_eq!(acc.summary().accuracy[&threshold_key(1.0 / 3.0)], 1.0);
    }
}
