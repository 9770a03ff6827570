//! Everything said about a scene: captions, VQA questions with ten simulated annotators,
//! referring expressions, and ground-truth tags. All choices come from the image's own [`Rng`], so
//! the text is as deterministic as the pixels.

use super::rng::Rng;
use super::scene::{position_word, Color, Object, Scene, Shape, Size, Texture, COUNT_WORDS};

mod captions;
mod questions;
mod referrals;

pub use captions::*;
pub use questions::*;
pub use referrals::*;
/// Fraction of the image side by which two objects must differ in x (or y) before "left of"
/// (or "above") is said about them, and by which an extreme object must beat the runner-up before
/// "the leftmost ..." picks it out.
pub const RELATION_MARGIN: f64 = 0.08;
/// Distance (fraction of the side) from a 3x3 grid border inside which "where is" is not asked.
pub const GRID_MARGIN: f64 = 0.04;

// ---------------------------------------------------------------------------------------------
// Small text helpers

fn article(word: &str) -> &'static str {
    match word.as_bytes().first() {
        Some(b'a' | b'e' | b'i' | b'o' | b'u') => "an",
        _ => "a",
    }
}

fn with_article(phrase: &str) -> String {
    format!("{} {phrase}", article(phrase))
}

/// "a", "a and b", "a, b and c".
fn join_list(items: &[String]) -> String {
    match items.len() {
        0 => String::new(),
        1 => items[0].clone(),
        n => format!("{} and {}", items[..n - 1].join(", "), items[n - 1]),
    }
}

/// Picks a synonym: the canonical word with probability `p_canonical`, otherwise any other.
fn synonym<'a>(rng: &mut Rng, words: &[&'a str], p_canonical: f64) -> &'a str {
    if words.len() == 1 || rng.chance(p_canonical) {
        words[0]
    } else {
        words[1 + rng.below(words.len() - 1)]
    }
}

fn side(scene: &Scene) -> f64 {
    scene.width.min(scene.height) as f64
}

/// The spatial relation of `a` to `b` that is clear by [`RELATION_MARGIN`], if any:
/// "to the left of", "to the right of", "above", "below".
fn clear_relation(scene: &Scene, a: &Object, b: &Object) -> Option<&'static str> {
    let ((ax, ay), (bx, by)) = (a.center(), b.center());
    let m = RELATION_MARGIN * side(scene);
    let (dx, dy) = (ax - bx, ay - by);
    if dx.abs() >= m && dx.abs() >= dy.abs() {
        Some(if dx < 0.0 {
            "to the left of"
        } else {
            "to the right of"
        })
    } else if dy.abs() >= m {
        Some(if dy < 0.0 { "above" } else { "below" })
    } else {
        None
    }
}

fn opposite(rel: &'static str) -> &'static str {
    match rel {
        "to the left of" => "to the right of",
        "to the right of" => "to the left of",
        "above" => "below",
        _ => "above",
    }
}

// ---------------------------------------------------------------------------------------------
// Descriptions: a (size?, color?, shape?) filter that names objects

/// An attribute filter; `shape: None` means "shape"/"object"/"one".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Desc {
    pub size: Option<Size>,
    pub color: Option<Color>,
    pub shape: Option<Shape>,
}

impl Desc {
    pub fn matches(&self, o: &Object) -> bool {
        self.size.is_none_or(|s| s == o.size)
            && self.color.is_none_or(|c| c == o.color)
            && self.shape.is_none_or(|s| s == o.shape)
    }

    fn count(&self, scene: &Scene) -> usize {
        scene.objects.iter().filter(|o| self.matches(o)).count()
    }

    /// Canonical words, e.g. "small red circle" or "red shape".
    fn text(&self) -> String {
        let mut w: Vec<&str> = Vec::new();
        if let Some(s) = self.size {
            w.push(s.name());
        }
        if let Some(c) = self.color {
            w.push(c.name());
        }
        w.push(self.shape.map_or("shape", |s| s.name()));
        w.join(" ")
    }

    fn text_plural(&self) -> String {
        let mut w: Vec<&str> = Vec::new();
        if let Some(s) = self.size {
            w.push(s.name());
        }
        if let Some(c) = self.color {
            w.push(c.name());
        }
        w.push(self.shape.map_or("shapes", |s| s.plural()));
        w.join(" ")
    }

    fn full(o: &Object) -> Desc {
        Desc {
            size: Some(o.size),
            color: Some(o.color),
            shape: Some(o.shape),
        }
    }
}

/// The shortest description that picks out object `k` alone (shape always named), if any.
fn unique_desc(scene: &Scene, k: usize, allow_color: bool) -> Option<Desc> {
    let o = &scene.objects[k];
    let mut options = vec![
        Desc {
            size: None,
            color: None,
            shape: Some(o.shape),
        },
        Desc {
            size: Some(o.size),
            color: None,
            shape: Some(o.shape),
        },
    ];
    if allow_color {
        options.push(Desc {
            size: None,
            color: Some(o.color),
            shape: Some(o.shape),
        });
        options.push(Desc::full(o));
    }
    options.into_iter().find(|d| d.count(scene) == 1)
}

/// A noun phrase for one object with optional synonyms, e.g. "big red disc".
fn object_words(rng: &mut Rng, o: &Object, with_size: bool, p_canonical: f64) -> String {
    let mut w: Vec<&str> = Vec::new();
    if with_size {
        w.push(synonym(rng, o.size.synonyms(), p_canonical));
    }
    w.push(o.color.name());
    w.push(synonym(rng, o.shape.synonyms(), p_canonical));
    w.join(" ")
}

/// Objects grouped by (size, color, shape), in first-appearance order, with counts.
fn groups(scene: &Scene) -> Vec<(Desc, usize)> {
    let mut out: Vec<(Desc, usize)> = Vec::new();
    for o in &scene.objects {
        let d = Desc::full(o);
        match out.iter_mut().find(|(g, _)| *g == d) {
            Some((_, n)) => *n += 1,
            None => out.push((d, 1)),
        }
    }
    out
}

fn group_phrase(d: &Desc, n: usize) -> String {
    if n == 1 {
        with_article(&d.text())
    } else {
        format!("{} {}", COUNT_WORDS[n.min(4)], d.text_plural())
    }
}

// ---------------------------------------------------------------------------------------------
// Tags

/// The tag vocabulary, in file order: shapes, colors, sizes, "color shape" pairs, textures,
/// object counts ("one".."four") and "overlapping".
pub fn tag_vocabulary() -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    v.extend(Shape::ALL.iter().map(|s| s.name().to_string()));
    v.extend(Color::ALL.iter().map(|c| c.name().to_string()));
    v.extend(Size::ALL.iter().map(|s| s.name().to_string()));
    for c in Color::ALL {
        for s in Shape::ALL {
            v.push(format!("{} {}", c.name(), s.name()));
        }
    }
    v.extend(Texture::ALL.iter().map(|t| t.name().to_string()));
    v.extend(COUNT_WORDS[1..].iter().map(|w| w.to_string()));
    v.push("overlapping".to_string());
    v
}

/// Ground-truth tags of a scene, in vocabulary order.
pub fn tags(scene: &Scene, vocab: &[String]) -> Vec<String> {
    let mut present: Vec<String> = Vec::new();
    for o in &scene.objects {
        present.push(o.shape.name().to_string());
        present.push(o.color.name().to_string());
        present.push(o.size.name().to_string());
        present.push(format!("{} {}", o.color.name(), o.shape.name()));
    }
    present.push(scene.background.texture.name().to_string());
    present.push(COUNT_WORDS[scene.objects.len().min(4)].to_string());
    if scene.has_overlap() {
        present.push("overlapping".to_string());
    }
    vocab
        .iter()
        .filter(|t| present.contains(t))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests;
