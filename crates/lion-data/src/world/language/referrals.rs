//! Referring expressions: phrases that pick out exactly one object of a scene.

use super::*;

/// A referring expression group: sentences that each pick out object `object` alone.
#[derive(Debug, Clone)]
pub struct Referral {
    pub object: usize,
    pub sentences: Vec<String>,
}

/// Position words for superlatives, as `(axis is x, smallest wins, words)`.
pub(super) const EXTREMES: [(bool, bool, &[&str]); 4] = [
    (true, true, &["left", "leftmost"]),
    (true, false, &["right", "rightmost"]),
    (false, true, &["top", "topmost", "upper"]),
    (false, false, &["bottom", "bottommost", "lower"]),
];

/// True when object `k` beats every other object matching `d` on the axis by the margin.
pub(super) fn is_extreme(scene: &Scene, d: &Desc, k: usize, x_axis: bool, smallest: bool) -> bool {
    let m = RELATION_MARGIN * side(scene);
    let key = |o: &Object| {
        let (x, y) = o.center();
        let v = if x_axis { x } else { y };
        if smallest {
            v
        } else {
            -v
        }
    };
    let me = key(&scene.objects[k]);
    let others: Vec<usize> = (0..scene.objects.len())
        .filter(|&j| j != k && d.matches(&scene.objects[j]))
        .collect();
    !others.is_empty() && others.iter().all(|&j| key(&scene.objects[j]) >= me + m)
}

/// Referring expressions for every object that can be singled out (1-3 sentences each).
pub fn referrals(scene: &Scene, rng: &mut Rng) -> Vec<Referral> {
    let objs = &scene.objects;
    let mut out = Vec::new();
    for (k, o) in objs.iter().enumerate() {
        let mut cands: Vec<String> = Vec::new();
        let shape_word = |rng: &mut Rng| synonym(rng, o.shape.synonyms(), 0.75).to_string();
        // Attribute combinations that are unique.
        for (use_size, use_color, use_shape) in [
            (false, false, true),
            (false, true, false),
            (false, true, true),
            (true, false, true),
            (true, true, true),
        ] {
            let d = Desc {
                size: use_size.then_some(o.size),
                color: use_color.then_some(o.color),
                shape: use_shape.then_some(o.shape),
            };
            if d.count(scene) != 1 {
                continue;
            }
            let mut words: Vec<String> = Vec::new();
            if use_size {
                words.push(synonym(rng, o.size.synonyms(), 0.6).to_string());
            }
            if use_color {
                words.push(o.color.name().to_string());
            }
            if use_shape {
                words.push(shape_word(rng));
            } else {
                words.push(rng.pick(&["shape", "one", "object"]).to_string());
            }
            let phrase = words.join(" ");
            cands.push(if rng.chance(0.6) {
                format!("the {phrase}")
            } else {
                phrase
            });
        }
        // Superlatives among objects of the same shape, the same color+shape, or all objects.
        for d in [
            Desc {
                size: None,
                color: None,
                shape: Some(o.shape),
            },
            Desc {
                size: None,
                color: Some(o.color),
                shape: Some(o.shape),
            },
            Desc {
                size: None,
                color: None,
                shape: None,
            },
        ] {
            for (x_axis, smallest, words) in EXTREMES {
                if !is_extreme(scene, &d, k, x_axis, smallest) {
                    continue;
                }
                let noun = match d.shape {
                    Some(_) => {
                        let s = shape_word(rng);
                        match d.color {
                            Some(c) => format!("{} {s}", c.name()),
                            None => s,
                        }
                    }
                    None => rng.pick(&["shape", "object"]).to_string(),
                };
                let w = *rng.pick(words);
                let sent = match rng.below(3) {
                    0 if w.ends_with("most") || w == "upper" || w == "lower" => {
                        format!("the {w} {noun}")
                    }
                    1 if x_axis => format!("{noun} on the {}", words[0]),
                    1 => format!("{noun} at the {}", words[0]),
                    _ if x_axis => format!("the {noun} on the {}", words[0]),
                    _ => format!("the {noun} at the {}", words[0]),
                };
                cands.push(sent);
            }
        }
        cands.dedup();
        let mut uniq: Vec<String> = Vec::new();
        for c in cands {
            if !uniq.contains(&c) {
                uniq.push(c);
            }
        }
        if uniq.is_empty() {
            continue;
        }
        rng.shuffle(&mut uniq);
        uniq.truncate(1 + rng.below(3));
        out.push(Referral {
            object: k,
            sentences: uniq,
        });
    }
    out
}
