//! A-OKVQA scores exactly as allenai/aokvqa `evaluation/eval_predictions.py` (`eval_aokvqa`,
//! commit 83786de, `strict=False` as its `__main__` runs it) computes them; checked on the
//! goldens of `scripts/fixtures_vqa_official.py`.
//!
//! - multiple choice: over every question of the dataset, 1 when the prediction equals
//!   `choices[correct_choice_idx]`, else 0 (a prediction that is not one of the choices scores 0;
//!   the official `remap_predictions.py` GloVe mapping is not applied);
//! - direct answer: over the questions whose `difficult_direct_answer` is false only,
//!   `min(1, #(direct answers == prediction) / 3)`;
//! - both: no normalisation at all (exact string equality, case and spaces count); a question
//!   without a prediction scores 0; predictions for questions not in the dataset are ignored;
//!   the result is `sum / n * 100`, unrounded, summed in dataset order. A metric is reported only
//!   when at least one prediction of its kind exists (as the script prints only those).

use serde::Serialize;

/// One question of the dataset, as far as scoring goes.
#[derive(Debug, Clone, PartialEq)]
pub struct AokvqaGt {
    pub question_id: String,
    pub choices: Vec<String>,
    /// None in the test split (multiple choice cannot be scored).
    pub correct_choice_idx: Option<usize>,
    pub direct_answers: Vec<String>,
    /// None when the field is absent (direct answer cannot be scored).
    pub difficult_direct_answer: Option<bool>,
}

/// The predictions of one question (either may be absent).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AokvqaPred {
    pub multiple_choice: Option<String>,
    pub direct_answer: Option<String>,
}

/// Why the dataset cannot be scored.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum AokvqaError {
    #[error(
        "question {0}: no correct_choice_idx (the test split?): multiple choice cannot be scored"
    )]
    NoCorrectChoice(String),
    #[error("question {0}: correct_choice_idx {1} but {2} choices")]
    BadChoice(String, usize, usize),
    #[error(
        "question {0}: no difficult_direct_answer (the official direct-answer metric keeps the questions where it is false)"
    )]
    NoDifficultFlag(String),
    #[error("question {0}: no direct answers (the test split?)")]
    NoDirectAnswers(String),
    #[error(
        "no question with difficult_direct_answer false: the direct-answer score is undefined"
    )]
    NoEasyQuestions,
    #[error("the dataset is empty")]
    Empty,
}

/// One metric over a dataset.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AokvqaMetric {
    /// The official number: `sum / n * 100`.
    pub accuracy: f64,
    /// Questions scored (n).
    pub questions: usize,
    /// Of those, without a prediction of this kind (scored 0).
    pub missing: usize,
    /// Per question in dataset order: (question id, score in [0, 1]).
    #[serde(skip)]
    pub per_item: Vec<(String, f64)>,
}

/// Both metrics; each None when no prediction of its kind was given.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AokvqaScores {
    pub multiple_choice: Option<AokvqaMetric>,
    pub direct_answer: Option<AokvqaMetric>,
}

/// The direct-answer score of one question: `min(1, #(direct answers == prediction) / 3)`.
pub fn aokvqa_da_score(prediction: &str, direct_answers: &[String]) -> f64 {
    let n = direct_answers
        .iter()
        .filter(|a| a.as_str() == prediction)
        .count();
    f64::min(1.0, n as f64 / 3.0)
}

/// The dataset as the official code indexes it (`{question_id: question}`): first position,
/// last record of a repeated id.
fn dedup(dataset: &[AokvqaGt]) -> Vec<&AokvqaGt> {
    let mut pos: std::collections::HashMap<&str, usize> = Default::default();
    let mut out: Vec<&AokvqaGt> = Vec::new();
    for q in dataset {
        match pos.get(q.question_id.as_str()) {
            Some(&i) => out[i] = q,
            None => {
                pos.insert(&q.question_id, out.len());
                out.push(q);
            }
        }
    }
    out
}

fn metric(items: Vec<(String, Option<f64>)>) -> AokvqaMetric {
    let missing = items.iter().filter(|x| x.1.is_none()).count();
    let per_item: Vec<(String, f64)> = items
        .into_iter()
        .map(|(q, s)| (q, s.unwrap_or(0.0)))
        .collect();
    let sum: f64 = per_item.iter().map(|x| x.1).sum();
    AokvqaMetric {
        accuracy: sum / per_item.len() as f64 * 100.0,
        questions: per_item.len(),
        missing,
        per_item,
    }
}

/// Scores predictions (looked up by question id) against the dataset.
pub fn evaluate(
    dataset: &[AokvqaGt],
    pred: impl Fn(&str) -> Option<AokvqaPred>,
) -> Result<AokvqaScores, AokvqaError> {
    let qs = dedup(dataset);
    if qs.is_empty() {
        return Err(AokvqaError::Empty);
    }
    let preds: Vec<AokvqaPred> = qs
        .iter()
        .map(|q| pred(&q.question_id).unwrap_or_default())
        .collect();
    let any_mc = preds.iter().any(|p| p.multiple_choice.is_some());
    let any_da = preds.iter().any(|p| p.direct_answer.is_some());
    let mut mc = Vec::new();
    let mut da = Vec::new();
    for (q, p) in qs.iter().zip(&preds) {
        let id = || q.question_id.clone();
        if any_mc {
            // the official code reads the correct choice only for a predicted question
            let s = match &p.multiple_choice {
                None => None,
                Some(m) => {
                    let c = q
                        .correct_choice_idx
                        .ok_or_else(|| AokvqaError::NoCorrectChoice(id()))?;
                    let right = q
                        .choices
                        .get(c)
                        .ok_or_else(|| AokvqaError::BadChoice(id(), c, q.choices.len()))?;
                    Some(f64::from(u8::from(m == right)))
                }
            };
            mc.push((id(), s));
        }
        if any_da {
            match q.difficult_direct_answer {
                None => return Err(AokvqaError::NoDifficultFlag(id())),
                Some(true) => {}
                Some(false) => {
                    if q.direct_answers.is_empty() {
                        return Err(AokvqaError::NoDirectAnswers(id()));
                    }
                    let s = p
                        .direct_answer
                        .as_ref()
                        .map(|a| aokvqa_da_score(a, &q.direct_answers));
                    da.push((id(), s));
                }
            }
        }
    }
    if any_da && da.is_empty() {
        return Err(AokvqaError::NoEasyQuestions);
    }
    Ok(AokvqaScores {
        multiple_choice: any_mc.then(|| metric(mc)),
        direct_answer: any_da.then(|| metric(da)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(id: &str, difficult: bool) -> AokvqaGt {
        AokvqaGt {
            question_id: id.into(),
            choices: vec!["dog".into(), "cat".into()],
            correct_choice_idx: Some(1),
            direct_answers: vec!["cat".into(); 10],
            difficult_direct_answer: Some(difficult),
        }
    }

    #[test]
    fn difficult_questions_leave_the_direct_answer_metric_only() {
        let data = [q("a", false), q("b", true), q("c", false)];
        let s = evaluate(&data, |id| {
            (id != "c").then(|| AokvqaPred {
                multiple_choice: Some("cat".into()),
                direct_answer: Some("cat".into()),
            })
        })
        .unwrap();
        let mc = s.multiple_choice.unwrap();
        assert_eq!((mc.questions, mc.missing), (3, 1));
        assert!((mc.accuracy - 200.0 / 3.0).abs() < 1e-12);
        let da = s.direct_answer.unwrap();
        assert_eq!((da.questions, da.missing, da.accuracy), (2, 1, 50.0));
        // no direct-answer predictions: no direct-answer metric
        let s = evaluate(&data, |_| {
            Some(AokvqaPred {
                multiple_choice: Some("Cat".into()),
                direct_answer: None,
            })
        })
        .unwrap();
        assert!(s.direct_answer.is_none());
        assert_eq!(s.multiple_choice.unwrap().accuracy, 0.0);
    }
}
