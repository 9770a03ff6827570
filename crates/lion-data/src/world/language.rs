//! Everything said about a scene: captions, VQA questions with ten simulated annotators,
//! referring expressions, and ground-truth tags. All choices come from the image's own [`Rng`], so
//! the text is as deterministic as the pixels.

use super::rng::Rng;
use super::scene::{position_word, Color, Object, Scene, Shape, Size, Texture, COUNT_WORDS};

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
// Captions

/// Five captions from distinct templates: full descriptions, counts, the most salient object only,
/// spatial relations, colors only, background first, synonyms, positions.
pub fn captions(scene: &Scene, rng: &mut Rng) -> Vec<String> {
    let mut templates: Vec<usize> = (0..8).collect();
    rng.shuffle(&mut templates);
    templates.truncate(5);
    let mut out: Vec<String> = Vec::with_capacity(5);
    for t in templates {
        let mut c = caption_template(scene, rng, t);
        if out.contains(&c) {
            c = caption_template(scene, rng, 0);
        }
        if rng.chance(0.3) {
            let mut chars = c.chars();
            if let Some(first) = chars.next() {
                c = format!("{}{}.", first.to_uppercase(), chars.as_str());
            }
        }
        out.push(c);
    }
    out
}

fn caption_template(scene: &Scene, rng: &mut Rng, template: usize) -> String {
    let objs = &scene.objects;
    let n = objs.len();
    let bg = *rng.pick(scene.background.texture.phrases());
    let mut order: Vec<usize> = (0..n).collect();
    rng.shuffle(&mut order);
    match template {
        // Everything, grouped: "two small red circles and a large blue star on a striped background"
        0 => {
            let parts: Vec<String> = groups(scene)
                .iter()
                .map(|(d, k)| group_phrase(d, *k))
                .collect();
            format!("{} {bg}", join_list(&parts))
        }
        // Counting
        1 => {
            if n == 1 {
                let o = &objs[0];
                format!("a single {} {} {bg}", o.color.name(), o.shape.name())
            } else {
                let noun = *rng.pick(&["shapes", "objects", "figures"]);
                if rng.chance(0.5) {
                    format!("{} {noun} {bg}", COUNT_WORDS[n])
                } else {
                    let parts: Vec<String> = order
                        .iter()
                        .map(|&k| with_article(objs[k].shape.name()))
                        .collect();
                    format!("{} {noun}: {}", COUNT_WORDS[n], join_list(&parts))
                }
            }
        }
        // The most salient (largest visible) object only
        2 => {
            let big = (0..n).max_by_key(|&k| (objs[k].area, n - k)).unwrap_or(0);
            let words = with_article(&object_words(rng, &objs[big], true, 0.6));
            match n {
                1 => format!("{words} {bg}"),
                2 => format!("{words} and another shape"),
                _ => format!("{words} among {} other shapes", COUNT_WORDS[n - 1]),
            }
        }
        // A spatial relation
        3 => {
            for &a in &order {
                for &b in &order {
                    if a == b {
                        continue;
                    }
                    if let Some(rel) = clear_relation(scene, &objs[a], &objs[b]) {
                        return format!(
                            "{} {rel} {}",
                            with_article(&object_words(rng, &objs[a], false, 0.8)),
                            with_article(&object_words(rng, &objs[b], false, 0.8))
                        );
                    }
                }
            }
            let o = &objs[order[0]];
            match scene.grid_cell(o, 0.0) {
                Some((c, r)) if n == 1 => format!(
                    "{} in the {} of the image",
                    with_article(&object_words(rng, o, true, 0.8)),
                    position_word(c, r)
                ),
                _ => format!(
                    "{} close to each other",
                    join_list(
                        &order
                            .iter()
                            .map(|&k| with_article(&object_words(rng, &objs[k], false, 0.8)))
                            .collect::<Vec<_>>()
                    )
                ),
            }
        }
        // Colors only
        4 => {
            let mut colors: Vec<&str> = Vec::new();
            for &k in &order {
                let c = objs[k].color.name();
                if !colors.contains(&c) {
                    colors.push(c);
                }
            }
            let colors: Vec<String> = colors.iter().map(|c| c.to_string()).collect();
            if n == 1 {
                format!("{} shape {bg}", with_article(&colors[0]))
            } else if colors.len() == 1 {
                format!("{} {} shapes {bg}", COUNT_WORDS[n], colors[0])
            } else if rng.chance(0.5) {
                format!("{} shapes {bg}", join_list(&colors))
            } else {
                format!("some colorful shapes: {}", join_list(&colors))
            }
        }
        // Background first
        5 => {
            let parts: Vec<String> = order
                .iter()
                .map(|&k| with_article(&object_words(rng, &objs[k], false, 0.7)))
                .collect();
            format!(
                "a {} background with {}",
                scene.background.texture.adjective(),
                join_list(&parts)
            )
        }
        // Synonym-heavy
        6 => {
            let parts: Vec<String> = order
                .iter()
                .map(|&k| with_article(&object_words(rng, &objs[k], true, 0.2)))
                .collect();
            join_list(&parts)
        }
        // Positions of each object
        _ => {
            let parts: Vec<String> = order
                .iter()
                .map(|&k| {
                    let o = &objs[k];
                    let np = with_article(&object_words(rng, o, false, 0.8));
                    match scene.grid_cell(o, 0.0) {
                        Some((c, r)) => {
                            let w = position_word(c, r);
                            if w == "center" {
                                format!("{np} in the center")
                            } else if w == "left" || w == "right" {
                                format!("{np} on the {w}")
                            } else {
                                format!("{np} at the {w}")
                            }
                        }
                        None => np,
                    }
                })
                .collect();
            join_list(&parts)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// VQA

/// The question families. `question_type` and `answer_type` follow VQA v2's fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum QuestionKind {
    Color,
    Shape,
    Count,
    Exist,
    Relation,
    Where,
    Pattern,
}

impl QuestionKind {
    pub const ALL: [QuestionKind; 7] = [
        QuestionKind::Color,
        QuestionKind::Shape,
        QuestionKind::Count,
        QuestionKind::Exist,
        QuestionKind::Relation,
        QuestionKind::Where,
        QuestionKind::Pattern,
    ];

    /// Short name used in the manifest and LION JSON.
    pub fn name(self) -> &'static str {
        match self {
            QuestionKind::Color => "color",
            QuestionKind::Shape => "shape",
            QuestionKind::Count => "count",
            QuestionKind::Exist => "existence",
            QuestionKind::Relation => "spatial relation",
            QuestionKind::Where => "position",
            QuestionKind::Pattern => "background",
        }
    }

    /// VQA v2 `question_type` (the question's opening words).
    pub fn question_type(self) -> &'static str {
        match self {
            QuestionKind::Color => "what color is the",
            QuestionKind::Shape => "what shape is the",
            QuestionKind::Count => "how many",
            QuestionKind::Exist => "is there a",
            QuestionKind::Relation => "is the",
            QuestionKind::Where => "where is the",
            QuestionKind::Pattern => "what pattern",
        }
    }

    /// VQA v2 `answer_type`.
    pub fn answer_type(self) -> &'static str {
        match self {
            QuestionKind::Count => "number",
            QuestionKind::Exist | QuestionKind::Relation => "yes/no",
            _ => "other",
        }
    }
}

/// One simulated annotator answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub answer: String,
    /// "yes", "maybe" or "no", as in VQA v2.
    pub confidence: &'static str,
}

/// A VQA question with ten answers.
#[derive(Debug, Clone)]
pub struct Question {
    pub kind: QuestionKind,
    pub question: String,
    pub answers: Vec<Answer>,
    /// The most frequent wording of the correct answer (synonyms pooled, ties: the earliest).
    pub multiple_choice_answer: String,
}

/// How annotators answer: correct variants (weights) and plausible wrong answers.
struct AnswerModel {
    correct: Vec<(String, f64)>,
    wrong: Vec<String>,
}

fn simulate_answers(rng: &mut Rng, m: &AnswerModel) -> (Vec<Answer>, String) {
    // 0-3 wrong answers: never a wrong majority.
    let n_wrong = if m.wrong.is_empty() {
        0
    } else {
        rng.weighted(&[0.55, 0.3, 0.12, 0.03])
    };
    let mut slots: Vec<bool> = (0..10).map(|i| i < n_wrong).collect();
    rng.shuffle(&mut slots);
    let weights: Vec<f64> = m.correct.iter().map(|(_, w)| *w).collect();
    let answers: Vec<(Answer, bool)> = slots
        .iter()
        .map(|&wrong| {
            let a = if wrong {
                Answer {
                    answer: rng.pick(&m.wrong).clone(),
                    confidence: ["maybe", "yes", "no"][rng.weighted(&[0.5, 0.3, 0.2])],
                }
            } else {
                Answer {
                    answer: m.correct[rng.weighted(&weights)].0.clone(),
                    confidence: ["yes", "maybe", "no"][rng.weighted(&[0.85, 0.13, 0.02])],
                }
            };
            (a, !wrong)
        })
        .collect();
    // The majority is the pool of correct answers (synonyms together, at least 7 of 10); the
    // multiple-choice answer is its most frequent wording (ties: the earliest given).
    let mut best = (0usize, String::new());
    for (a, _) in answers.iter().filter(|(_, ok)| *ok) {
        let n = answers.iter().filter(|(b, _)| b.answer == a.answer).count();
        if n > best.0 {
            best = (n, a.answer.clone());
        }
    }
    (answers.into_iter().map(|(a, _)| a).collect(), best.1)
}

fn variants(words: &[&str], first: f64) -> Vec<(String, f64)> {
    let rest = (1.0 - first) / (words.len().max(2) - 1) as f64;
    words
        .iter()
        .enumerate()
        .map(|(i, w)| (w.to_string(), if i == 0 { first } else { rest }))
        .collect()
}

fn yes_no(truth: bool) -> AnswerModel {
    let (t, f) = if truth { ("yes", "no") } else { ("no", "yes") };
    AnswerModel {
        correct: vec![(t.to_string(), 1.0)],
        wrong: vec![f.to_string()],
    }
}

fn count_model(n: usize) -> AnswerModel {
    let correct = if n == 0 {
        vec![
            ("0".to_string(), 0.7),
            ("none".to_string(), 0.15),
            ("zero".to_string(), 0.15),
        ]
    } else {
        vec![
            (n.to_string(), 0.8),
            (COUNT_WORDS[n.min(4)].to_string(), 0.2),
        ]
    };
    let mut wrong = vec![(n + 1).to_string()];
    if n > 0 {
        wrong.push((n - 1).to_string());
    }
    AnswerModel { correct, wrong }
}

/// Where-answers: synonyms of the grid word, and its grid neighbours as plausible mistakes.
fn where_model(col: usize, row: usize) -> AnswerModel {
    let word = position_word(col, row);
    let syn: Vec<String> = match word {
        "center" => vec!["center".into(), "middle".into(), "centre".into()],
        "top" | "bottom" => vec![word.into(), format!("at the {word}")],
        "left" | "right" => vec![
            word.into(),
            format!("on the {word}"),
            format!("{word} side"),
        ],
        corner => vec![
            corner.into(),
            corner.replace("top", "upper").replace("bottom", "lower"),
            format!("{corner} corner"),
        ],
    };
    let mut correct: Vec<(String, f64)> = Vec::new();
    for (i, s) in syn.into_iter().enumerate() {
        correct.push((s, if i == 0 { 0.75 } else { 0.125 }));
    }
    let mut wrong = Vec::new();
    for (dc, dr) in [(-1i32, 0i32), (1, 0), (0, -1), (0, 1)] {
        let (c, r) = (col as i32 + dc, row as i32 + dr);
        if (0..3).contains(&c) && (0..3).contains(&r) {
            wrong.push(position_word(c as usize, r as usize).to_string());
        }
    }
    AnswerModel { correct, wrong }
}

/// Tries to ask one question of the given kind; `None` when the scene does not allow it.
fn ask(scene: &Scene, rng: &mut Rng, kind: QuestionKind) -> Option<(String, AnswerModel)> {
    let objs = &scene.objects;
    let n = objs.len();
    match kind {
        QuestionKind::Color => {
            let k = rng.below(n);
            let d = unique_desc(scene, k, false)?;
            let q = format!("What color is the {}?", d.text());
            let c = objs[k].color;
            let wrong: Vec<String> = Color::ALL
                .iter()
                .filter(|&&x| x != c)
                .map(|x| x.name().to_string())
                .collect();
            Some((
                q,
                AnswerModel {
                    correct: variants(c.synonyms(), 0.75),
                    wrong,
                },
            ))
        }
        QuestionKind::Shape => {
            let k = rng.below(n);
            let o = &objs[k];
            let d = Desc {
                size: None,
                color: Some(o.color),
                shape: None,
            };
            if d.count(scene) != 1 {
                return None;
            }
            let noun = *rng.pick(&["shape", "object", "figure"]);
            let q = format!("What shape is the {} {noun}?", o.color.name());
            let wrong: Vec<String> = Shape::ALL
                .iter()
                .filter(|&&x| x != o.shape)
                .map(|x| x.name().to_string())
                .collect();
            Some((
                q,
                AnswerModel {
                    correct: variants(o.shape.synonyms(), 0.85),
                    wrong,
                },
            ))
        }
        QuestionKind::Count => {
            let present = rng.chance(0.75);
            let d = match rng.below(4) {
                0 => Desc {
                    size: None,
                    color: None,
                    shape: None,
                },
                1 => Desc {
                    size: None,
                    color: Some(if present {
                        rng.pick(objs).color
                    } else {
                        *rng.pick(&Color::ALL)
                    }),
                    shape: None,
                },
                2 => Desc {
                    size: None,
                    color: None,
                    shape: Some(if present {
                        rng.pick(objs).shape
                    } else {
                        *rng.pick(&Shape::ALL)
                    }),
                },
                _ => Desc {
                    size: Some(*rng.pick(&Size::ALL)),
                    color: None,
                    shape: None,
                },
            };
            let noun = d.text_plural();
            let q = if d.shape.is_none() && d.color.is_none() && d.size.is_none() {
                format!("How many {} are there?", rng.pick(&["shapes", "objects"]))
            } else if d.shape.is_none() && rng.chance(0.3) {
                format!("How many {noun} are in the image?")
            } else {
                format!("How many {noun} are there?")
            };
            Some((q, count_model(d.count(scene))))
        }
        QuestionKind::Exist => {
            let d = if rng.chance(0.5) {
                let o = rng.pick(objs);
                Desc {
                    size: rng.chance(0.3).then_some(o.size),
                    color: rng.chance(0.8).then_some(o.color),
                    shape: Some(o.shape),
                }
            } else {
                let mut found = None;
                for _ in 0..20 {
                    let d = Desc {
                        size: rng.chance(0.3).then(|| *rng.pick(&Size::ALL)),
                        color: Some(*rng.pick(&Color::ALL)),
                        shape: Some(*rng.pick(&Shape::ALL)),
                    };
                    if d.count(scene) == 0 {
                        found = Some(d);
                        break;
                    }
                }
                found?
            };
            let q = format!("Is there {} in the image?", with_article(&d.text()));
            let q = if rng.chance(0.5) {
                q.replace(" in the image?", "?")
            } else {
                q
            };
            Some((q, yes_no(d.count(scene) > 0)))
        }
        QuestionKind::Relation => {
            if n < 2 {
                return None;
            }
            let a = rng.below(n);
            let b = (a + 1 + rng.below(n - 1)) % n;
            let rel = clear_relation(scene, &objs[a], &objs[b])?;
            let (da, db) = (unique_desc(scene, a, true)?, unique_desc(scene, b, true)?);
            let truth = rng.chance(0.5);
            let said = if truth { rel } else { opposite(rel) };
            let q = format!("Is the {} {said} the {}?", da.text(), db.text());
            Some((q, yes_no(truth)))
        }
        QuestionKind::Where => {
            let k = rng.below(n);
            let (c, r) = scene.grid_cell(&objs[k], GRID_MARGIN)?;
            let d = unique_desc(scene, k, true)?;
            Some((format!("Where is the {}?", d.text()), where_model(c, r)))
        }
        QuestionKind::Pattern => {
            let t = scene.background.texture;
            let q = *rng.pick(&[
                "What pattern is on the background?",
                "What pattern does the background have?",
            ]);
            let wrong: Vec<String> = Texture::ALL
                .iter()
                .filter(|&&x| x != t)
                .map(|x| x.name().to_string())
                .collect();
            let correct: Vec<(String, f64)> = t
                .answer_synonyms()
                .iter()
                .zip([0.6, 0.3, 0.1])
                .map(|(w, p)| (w.to_string(), p))
                .collect();
            Some((q.to_string(), AnswerModel { correct, wrong }))
        }
    }
}

/// Up to `count` questions, kinds in a shuffled order (each kind at most once per round), no
/// question repeated. Counting, existence and pattern questions are always possible, so an image
/// always gets at least three.
pub fn questions(scene: &Scene, rng: &mut Rng, count: usize) -> Vec<Question> {
    let mut out: Vec<Question> = Vec::new();
    for _round in 0..4 {
        let mut kinds = QuestionKind::ALL.to_vec();
        rng.shuffle(&mut kinds);
        for kind in kinds {
            if out.len() >= count {
                return out;
            }
            for _try in 0..4 {
                if let Some((q, model)) = ask(scene, rng, kind) {
                    if out.iter().any(|x| x.question == q) {
                        continue;
                    }
                    let (answers, mc) = simulate_answers(rng, &model);
                    out.push(Question {
                        kind,
                        question: q,
                        answers,
                        multiple_choice_answer: mc,
                    });
                    break;
                }
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Referring expressions

/// A referring expression group: sentences that each pick out object `object` alone.
#[derive(Debug, Clone)]
pub struct Referral {
    pub object: usize,
    pub sentences: Vec<String>,
}

/// Position words for superlatives, as `(axis is x, smallest wins, words)`.
const EXTREMES: [(bool, bool, &[&str]); 4] = [
    (true, true, &["left", "leftmost"]),
    (true, false, &["right", "rightmost"]),
    (false, true, &["top", "topmost", "upper"]),
    (false, false, &["bottom", "bottommost", "lower"]),
];

/// True when object `k` beats every other object matching `d` on the axis by the margin.
fn is_extreme(scene: &Scene, d: &Desc, k: usize, x_axis: bool, smallest: bool) -> bool {
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
mod tests {
    use super::*;

    #[test]
    fn text_helpers() {
        assert_eq!(with_article("orange star"), "an orange star");
        assert_eq!(with_article("red box"), "a red box");
        assert_eq!(
            join_list(&["a".into(), "b".into(), "c".into()]),
            "a, b and c"
        );
    }

    #[test]
    fn vocabulary_is_unique() {
        let v = tag_vocabulary();
        let mut s = v.clone();
        s.sort();
        s.dedup();
        assert_eq!(s.len(), v.len());
    }

    #[test]
    fn simulated_answers_keep_a_correct_majority() {
        let mut rng = Rng::new(3);
        for _ in 0..200 {
            let (answers, mc) = simulate_answers(&mut rng, &count_model(2));
            assert_eq!(answers.len(), 10);
            let ok = answers
                .iter()
                .filter(|a| a.answer == "2" || a.answer == "two")
                .count();
            assert!(ok >= 7, "{answers:?}");
            assert!(mc == "2" || mc == "two");
        }
    }
}
