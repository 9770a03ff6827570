//! Referring expression comprehension: IoU, Acc@0.5, the IoU distribution, and the parser of
//! LION's box text (`"Answer: [0.440,0.060,0.650,0.367]"`, normalised `[x1,y1,x2,y2]`).

use serde::Serialize;

/// A box in pixels, `[x1, y1, x2, y2]`.
pub type BoxXyxy = [f64; 4];

/// COCO `[x, y, w, h]` -> `[x1, y1, x2, y2]`.
pub fn xywh_to_xyxy(b: [f64; 4]) -> BoxXyxy {
    [b[0], b[1], b[0] + b[2], b[1] + b[3]]
}

/// Intersection over union (0 for empty or inverted boxes).
pub fn iou(a: &BoxXyxy, b: &BoxXyxy) -> f64 {
    let area = |x: &BoxXyxy| (x[2] - x[0]).max(0.0) * (x[3] - x[1]).max(0.0);
    let iw = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let ih = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = iw * ih;
    let union = area(a) + area(b) - inter;
    if union <= 0.0 || !union.is_finite() {
        0.0
    } else {
        inter / union
    }
}

/// Parses LION's box text into a pixel box: the last `[a,b,c,d]` in the text (an `Answer:`
/// prefix, spaces and surrounding words are tolerated), four finite numbers, normalised
/// coordinates multiplied by the original image size. Anything else is `None` (a miss).
///
/// Coordinates are expected in [0, 1]; values up to 1.05 are clamped (rounding), larger ones make
/// the box malformed. `x2 < x1` or `y2 < y1` is malformed too.
pub fn parse_box_text(text: &str, width: f64, height: f64) -> Option<BoxXyxy> {
    let nums = last_bracket_numbers(text)?;
    if nums.iter().any(|v| !v.is_finite() || *v < 0.0 || *v > 1.05) {
        return None;
    }
    let c = |v: f64| v.clamp(0.0, 1.0);
    let b = [
        c(nums[0]) * width,
        c(nums[1]) * height,
        c(nums[2]) * width,
        c(nums[3]) * height,
    ];
    (b[2] >= b[0] && b[3] >= b[1]).then_some(b)
}

/// The four numbers of the last bracketed group that holds exactly four numbers.
fn last_bracket_numbers(text: &str) -> Option<[f64; 4]> {
    let mut found = None;
    let mut rest = text;
    while let Some(open) = rest.find('[') {
        let after = &rest[open + 1..];
        let Some(close) = after.find(']') else { break };
        let inner = &after[..close];
        let parts: Vec<&str> = inner.split(',').map(str::trim).collect();
        if parts.len() == 4 {
            let vals: Option<Vec<f64>> = parts
                .iter()
                .map(|p| {
                    let ok = !p.is_empty()
                        && p.chars()
                            .all(|c| c.is_ascii_digit() || c == '.' || c == '-' || c == '+');
                    if ok {
                        p.parse::<f64>().ok()
                    } else {
                        None
                    }
                })
                .collect();
            if let Some(v) = vals {
                found = Some([v[0], v[1], v[2], v[3]]);
            }
        }
        rest = &after[close + 1..];
    }
    found
}

/// Acc@0.5 and the IoU distribution, accumulated item by item.
#[derive(Debug, Default, Clone)]
pub struct RecAccumulator {
    items: Vec<(String, Option<f64>)>,
}

/// IoU histogram bins: [0,0.1), [0.1,0.2), ..., [0.9,1.0]; misses (no box) counted apart.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RecSummary {
    pub items: usize,
    pub acc_at_0_5: f64,
    pub mean_iou: f64,
    pub unparsable: usize,
    pub iou_histogram: [usize; 10],
    pub iou_quantiles: [f64; 5],
}

impl RecAccumulator {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records one item: `pred` None means the prediction could not be parsed (IoU 0, a miss).
    /// Returns the IoU.
    pub fn add(&mut self, id: impl Into<String>, pred: Option<&BoxXyxy>, gt: &BoxXyxy) -> f64 {
        let v = pred.map(|p| iou(p, gt));
        self.items.push((id.into(), v));
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
            .map(|(id, v)| (id.as_str(), *v, v.is_some_and(|x| x >= 0.5)))
    }

    pub fn summary(&self) -> RecSummary {
        let n = self.items.len();
        let ious: Vec<f64> = self.items.iter().map(|x| x.1.unwrap_or(0.0)).collect();
        let hits = ious.iter().filter(|&&v| v >= 0.5).count();
        let mut hist = [0usize; 10];
        for (_, v) in &self.items {
            if let Some(v) = v {
                hist[((v * 10.0).floor() as usize).min(9)] += 1;
            }
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
        RecSummary {
            items: n,
            acc_at_0_5: if n == 0 { 0.0 } else { hits as f64 / n as f64 },
            mean_iou: if n == 0 {
                0.0
            } else {
                ious.iter().sum::<f64>() / n as f64
            },
            unparsable: self.items.iter().filter(|x| x.1.is_none()).count(),
            iou_histogram: hist,
            iou_quantiles: [q(0.0), q(0.25), q(0.5), q(0.75), q(1.0)],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lion_box_text() {
        let b = parse_box_text("Answer: [0.440,0.060,0.650,0.367]", 100.0, 200.0).unwrap();
        assert!((b[0] - 44.0).abs() < 1e-9 && (b[3] - 73.4).abs() < 1e-9);
        assert!(parse_box_text("Answer:[0.533,0.120,0.804,1.0]", 10.0, 10.0).is_some());
        assert!(parse_box_text("[0.1, 0.2, 0.3]", 10.0, 10.0).is_none());
        assert!(parse_box_text("[0.5,0.5,0.2,0.9]", 10.0, 10.0).is_none());
        assert!(parse_box_text("no box", 10.0, 10.0).is_none());
        assert!(parse_box_text("[a,b,c,d]", 10.0, 10.0).is_none());
        let last = parse_box_text("[0,0,0.1,0.1] or [0.2,0.2,0.4,0.4]", 10.0, 10.0).unwrap();
        assert!((last[0] - 2.0).abs() < 1e-9);
    }

    #[test]
    fn iou_values() {
        assert_eq!(iou(&[0.0, 0.0, 2.0, 2.0], &[0.0, 0.0, 2.0, 2.0]), 1.0);
        assert!((iou(&[0.0, 0.0, 2.0, 2.0], &[1.0, 0.0, 3.0, 2.0]) - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(iou(&[0.0, 0.0, 1.0, 1.0], &[2.0, 2.0, 3.0, 3.0]), 0.0);
        let mut acc = RecAccumulator::new();
        acc.add("a", Some(&[0.0, 0.0, 2.0, 2.0]), &[0.0, 0.0, 2.0, 2.0]);
        acc.add("b", None, &[0.0, 0.0, 2.0, 2.0]);
        let s = acc.summary();
        assert_eq!((s.items, s.unparsable), (2, 1));
        assert!((s.acc_at_0_5 - 0.5).abs() < 1e-12);
    }
}
