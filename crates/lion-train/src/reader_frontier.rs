//! A reference for the tag encoder's validation cosines: the pairs (cos(anchor, positive),
//! cos(anchor, negative)) reached on the same validation split, with the same fixed negatives,
//! when the anchor is what the image's *other* captions say (their mean embedding, the
//! leave-one-out centroid) less `lambda` times the mean positive of the training split.
//!
//! The positive is one particular caption (the one nearest its image's caption centroid),
//! embedded by the frozen sentence transformer. The other captions describe the same content in
//! other words, so the reader's points show what knowing the content is worth on this data, and
//! how much cos(anchor, positive) a lower cos(anchor, negative) costs: for unit anchors,
//! `c_i - lambda * mu` maximises cos(a, c_i) - t * cos(a, mu) per image, so the points trace the
//! reader's trade-off curve. It is a reference, not a bound: a trained encoder can lie above it,
//! since it can learn the chosen captions' typical wording, which the mean of the other captions
//! blurs (with the ShapesWorld's ground-truth tags the demo's recipe does, by about 0.03).
//!
//! Written as `reader_frontier.json` in the tag encoder's folder by
//! [`crate::triplet_trainer::fine_tune`].

use serde::{Deserialize, Serialize};

/// One point of the frontier: the reader's mean validation cosines at one `lambda`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FrontierPoint {
    pub lambda: f64,
    pub cos_ap: f64,
    pub cos_an: f64,
}

/// The reader's trade-off curve on a validation split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReaderFrontier {
    /// What the points are (for a reader of the file).
    pub what: String,
    /// Validation images scored (those with at least two captions).
    pub images: usize,
    /// Validation images left out: a single caption has no leave-one-out centroid.
    pub skipped: usize,
    /// Points for `lambda` = 0, 0.05, ..., 1 (cos_an falls as lambda grows).
    pub points: Vec<FrontierPoint>,
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum()
}

fn cos(a: &[f64], b: &[f32]) -> f64 {
    let ab: f64 = a.iter().zip(b).map(|(x, y)| x * *y as f64).sum();
    let na = a.iter().map(|x| x * x).sum::<f64>().sqrt();
    let nb = dot(b, b).sqrt();
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        ab / (na * nb)
    }
}

impl ReaderFrontier {
    /// - `captions[k]`: the embeddings of validation image `val[k]`'s captions, and `chosen[k]`
    ///   the index of its positive among them;
    /// - `positive(i)`: item `i`'s positive embedding (any item: training ones form the mean);
    /// - `train`: the training items; `val_neg[k]`: the fixed negative item of `val[k]`.
    ///
    /// None when no validation image has two captions or there is no training item.
    pub fn compute<'a>(
        captions: &[Vec<Vec<f32>>],
        chosen: &[usize],
        positive: impl Fn(usize) -> &'a [f32],
        train: &[usize],
        val_neg: &[usize],
    ) -> Option<Self> {
        let d = positive(*train.first()?).len();
        let mut mu = vec![0f64; d];
        for &i in train {
            for (m, x) in mu.iter_mut().zip(positive(i)) {
                *m += *x as f64 / train.len() as f64;
            }
        }
        // (leave-one-out centroid, positive, negative) per scored image
        let mut items = Vec::new();
        for (k, caps) in captions.iter().enumerate() {
            if caps.len() < 2 {
                continue;
            }
            let mut c = vec![0f64; d];
            for (j, e) in caps.iter().enumerate() {
                if j != chosen[k] {
                    for (s, x) in c.iter_mut().zip(e) {
                        *s += *x as f64 / (caps.len() - 1) as f64;
                    }
                }
            }
            items.push((c, &caps[chosen[k]], positive(val_neg[k])));
        }
        if items.is_empty() {
            return None;
        }
        let points = (0..=20)
            .map(|s| {
                let lambda = s as f64 / 20.0;
                let (mut ap, mut an) = (0.0, 0.0);
                for (c, p, n) in &items {
                    let a: Vec<f64> = c.iter().zip(&mu).map(|(c, m)| c - lambda * m).collect();
                    ap += cos(&a, p);
                    an += cos(&a, n);
                }
                FrontierPoint {
                    lambda,
                    cos_ap: ap / items.len() as f64,
                    cos_an: an / items.len() as f64,
                }
            })
            .collect();
        Some(Self {
            what: "a reader of each validation image's content (a reference, not a bound): anchor = the mean \
                   embedding of the image's other captions - lambda * the mean positive of the \
                   training split; mean cosines over the validation split with its fixed negatives"
                .into(),
            images: items.len(),
            skipped: captions.len() - items.len(),
            points,
        })
    }

    /// The reader's cos(anchor, positive) at a given cos(anchor, negative), interpolated
    /// linearly between the two points around it; None outside the frontier's range.
    pub fn cos_ap_at(&self, cos_an: f64) -> Option<f64> {
        self.points.windows(2).find_map(|w| {
            let (hi, lo) = (w[0], w[1]);
            let (top, bottom) = (hi.cos_an.max(lo.cos_an), hi.cos_an.min(lo.cos_an));
            if !(bottom..=top).contains(&cos_an) {
                return None;
            }
            if hi.cos_an == lo.cos_an {
                return Some(hi.cos_ap.max(lo.cos_ap));
            }
            let t = (cos_an - hi.cos_an) / (lo.cos_an - hi.cos_an);
            Some(hi.cos_ap + t * (lo.cos_ap - hi.cos_ap))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(v: &[f32]) -> Vec<f32> {
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter().map(|x| x / n).collect()
    }

    /// Two images whose captions agree: the reader's anchor at lambda 0 is the other caption,
    /// identical to the positive (cos 1), and the negative is the other image's positive.
    #[test]
    fn identical_captions_give_cos_one_and_the_positives_cosine() {
        let p0 = unit(&[1.0, 0.0, 0.0]);
        let p1 = unit(&[0.6, 0.8, 0.0]);
        let captions = vec![vec![p0.clone(), p0.clone()], vec![p1.clone(), p1.clone()]];
        let positives = [p0.clone(), p1.clone()];
        let f = ReaderFrontier::compute(
            &captions,
            &[0, 1],
            |i| positives[i].as_slice(),
            &[0, 1],
            &[1, 0],
        )
        .unwrap();
        assert_eq!((f.images, f.skipped, f.points.len()), (2, 0, 21));
        let first = f.points[0];
        assert!((first.cos_ap - 1.0).abs() < 1e-6, "{first:?}");
        assert!((first.cos_an - 0.6).abs() < 1e-6, "{first:?}");
        // subtracting the mean lowers both, the negative faster
        let last = f.points[20];
        assert!(last.cos_an < first.cos_an - 0.5, "{last:?}");
        assert!(last.cos_ap > last.cos_an, "{last:?}");
        let mid = f
            .cos_ap_at((first.cos_an + f.points[1].cos_an) / 2.0)
            .unwrap();
        assert!(mid < first.cos_ap && mid > f.points[1].cos_ap);
        assert_eq!(f.cos_ap_at(2.0), None);
    }

    #[test]
    fn single_caption_images_are_skipped() {
        let p = unit(&[1.0, 1.0]);
        let captions = vec![vec![p.clone()], vec![p.clone(), p.clone()]];
        let f =
            ReaderFrontier::compute(&captions, &[0, 0], |_| p.as_slice(), &[0], &[1, 0]).unwrap();
        assert_eq!((f.images, f.skipped), (1, 1));
        assert!(
            ReaderFrontier::compute(&captions[..1], &[0], |_| p.as_slice(), &[0], &[0]).is_none()
        );
    }
}
