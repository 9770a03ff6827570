//! VQA questions of a scene with ten simulated annotators' answers each.

use super::*;

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
pub(super) struct AnswerModel {
    correct: Vec<(String, f64)>,
    wrong: Vec<String>,
}

pub(super) fn simulate_answers(rng: &mut Rng, m: &AnswerModel) -> (Vec<Answer>, String) {
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

pub(super) fn variants(words: &[&str], first: f64) -> Vec<(String, f64)> {
    let rest = (1.0 - first) / (words.len().max(2) - 1) as f64;
    words
        .iter()
        .enumerate()
        .map(|(i, w)| (w.to_string(), if i == 0 { first } else { rest }))
        .collect()
}

pub(super) fn yes_no(truth: bool) -> AnswerModel {
    let (t, f) = if truth { ("yes", "no") } else { ("no", "yes") };
    AnswerModel {
        correct: vec![(t.to_string(), 1.0)],
        wrong: vec![f.to_string()],
    }
}

pub(super) fn count_model(n: usize) -> AnswerModel {
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
pub(super) fn where_model(col: usize, row: usize) -> AnswerModel {
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
pub(super) fn ask(
    scene: &Scene,
    rng: &mut Rng,
    kind: QuestionKind,
) -> Option<(String, AnswerModel)> {
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
