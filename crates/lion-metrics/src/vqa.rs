//! VQA accuracy exactly as the official evaluation computes it: GT-Vision-Lab/VQA
//! `PythonEvaluationTools/vqaEvaluation/vqaEval.py` with `PythonHelperTools/vqaTools/vqa.py`
//! (commit a013f00), run under Python 3, checked on the goldens of
//! `scripts/fixtures_vqa_official.py`.
//!
//! The official behaviour, quirks included, per question:
//! - every answer and the prediction: `\n` and `\t` -> space, then `strip()`;
//! - only when the ten (stripped) answers are NOT all the same string: [`process_punctuation`]
//!   then [`process_digit_article`] on every answer and on the prediction. When they are all the
//!   same, nothing else is done: the prediction must equal it exactly (`"Yes"` or `"yes."`
//!   against ten `"yes"` scores 0);
//! - accuracy: for each answer record, the other records are those that are not EQUAL to it as
//!   whole records (text after processing, `answer_confidence`, `answer_id` and any other field,
//!   compared with Python's `==`); `min(1, matches / 3)` over those, averaged over the records.
//!   With VQA v2's distinct `answer_id`s this is the leave-one-out over ten; records without ids
//!   that repeat drop out together (ten identical id-less records score 0 whatever the answer);
//! - `process_punctuation`: a punctuation character is deleted when it is next to a space in the
//!   INPUT or when the input has a digit-comma-digit anywhere, else replaced by a space; then
//!   periods not followed by a digit are deleted, at most 32 of them (`re.UNICODE`, 32, is passed
//!   as `count`), and the intended "not preceded by a digit" never applies (`(?!<=\d)` is a
//!   look-ahead);
//! - `process_digit_article`: lower-case, split on whitespace, number words zero..ten and "none"
//!   -> digits, articles a/an/the dropped, contractions restored (keys with capitals such as
//!   `"Im"` can never match after lower-casing; `"somebody'd"` becomes `"somebodyd"`);
//! - numbers: per question `round(100 * acc, 2)`; overall, per answer type and per question type
//!   `round(100 * sum / n, 2)` summed in annotation order.
//!
//! Python 3, not Python 2, is reproduced where they differ: `round` sends exact ties to even,
//! `\d` is any Unicode decimal digit, `lower()` is the full Unicode mapping.
//!
//! [`VqaMode::Normalized`] is an opt-in cleaned-up variant (never the default): answers and
//! prediction are always processed, and the leave-one-out is by position.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::py::{is_decimal, py_eq, py_round, py_split, py_strip};

/// Characters the official code removes (or turns into spaces).
const PUNCT: &[char] = &[
    ';', '/', '[', ']', '"', '{', '}', '(', ')', '=', '+', '\\', '_', '-', '>', '<', '@', '`', ',',
    '?', '!',
];

const MANUAL_MAP: &[(&str, &str)] = &[
    ("none", "0"),
    ("zero", "0"),
    ("one", "1"),
    ("two", "2"),
    ("three", "3"),
    ("four", "4"),
    ("five", "5"),
    ("six", "6"),
    ("seven", "7"),
    ("eight", "8"),
    ("nine", "9"),
    ("ten", "10"),
];

const ARTICLES: &[&str] = &["a", "an", "the"];

/// The official contractions map (keys that cannot match after lower-casing are kept for
/// fidelity).
const CONTRACTIONS: &[(&str, &str)] = &[
    ("aint", "ain't"),
    ("arent", "aren't"),
    ("cant", "can't"),
    ("couldve", "could've"),
    ("couldnt", "couldn't"),
    ("couldn'tve", "couldn't've"),
    ("couldnt've", "couldn't've"),
    ("didnt", "didn't"),
    ("doesnt", "doesn't"),
    ("dont", "don't"),
    ("hadnt", "hadn't"),
    ("hadnt've", "hadn't've"),
    ("hadn'tve", "hadn't've"),
    ("hasnt", "hasn't"),
    ("havent", "haven't"),
    ("hed", "he'd"),
    ("hed've", "he'd've"),
    ("he'dve", "he'd've"),
    ("hes", "he's"),
    ("howd", "how'd"),
    ("howll", "how'll"),
    ("hows", "how's"),
    ("Id've", "I'd've"),
    ("I'dve", "I'd've"),
    ("Im", "I'm"),
    ("Ive", "I've"),
    ("isnt", "isn't"),
    ("itd", "it'd"),
    ("itd've", "it'd've"),
    ("it'dve", "it'd've"),
    ("itll", "it'll"),
    ("let's", "let's"),
    ("maam", "ma'am"),
    ("mightnt", "mightn't"),
    ("mightnt've", "mightn't've"),
    ("mightn'tve", "mightn't've"),
    ("mightve", "might've"),
    ("mustnt", "mustn't"),
    ("mustve", "must've"),
    ("neednt", "needn't"),
    ("notve", "not've"),
    ("oclock", "o'clock"),
    ("oughtnt", "oughtn't"),
    ("ow's'at", "'ow's'at"),
    ("'ows'at", "'ow's'at"),
    ("'ow'sat", "'ow's'at"),
    ("shant", "shan't"),
    ("shed've", "she'd've"),
    ("she'dve", "she'd've"),
    ("she's", "she's"),
    ("shouldve", "should've"),
    ("shouldnt", "shouldn't"),
    ("shouldnt've", "shouldn't've"),
    ("shouldn'tve", "shouldn't've"),
    ("somebody'd", "somebodyd"),
    ("somebodyd've", "somebody'd've"),
    ("somebody'dve", "somebody'd've"),
    ("somebodyll", "somebody'll"),
    ("somebodys", "somebody's"),
    ("someoned", "someone'd"),
    ("someoned've", "someone'd've"),
    ("someone'dve", "someone'd've"),
    ("someonell", "someone'll"),
    ("someones", "someone's"),
    ("somethingd", "something'd"),
    ("somethingd've", "something'd've"),
    ("something'dve", "something'd've"),
    ("somethingll", "something'll"),
    ("thats", "that's"),
    ("thered", "there'd"),
    ("thered've", "there'd've"),
    ("there'dve", "there'd've"),
    ("therere", "there're"),
    ("theres", "there's"),
    ("theyd", "they'd"),
    ("theyd've", "they'd've"),
    ("they'dve", "they'd've"),
    ("theyll", "they'll"),
    ("theyre", "they're"),
    ("theyve", "they've"),
    ("twas", "'twas"),
    ("wasnt", "wasn't"),
    ("wed've", "we'd've"),
    ("we'dve", "we'd've"),
    ("weve", "we've"),
    ("werent", "weren't"),
    ("whatll", "what'll"),
    ("whatre", "what're"),
    ("whats", "what's"),
    ("whatve", "what've"),
    ("whens", "when's"),
    ("whered", "where'd"),
    ("wheres", "where's"),
    ("whereve", "where've"),
    ("whod", "who'd"),
    ("whod've", "who'd've"),
    ("who'dve", "who'd've"),
    ("wholl", "who'll"),
    ("whos", "who's"),
    ("whove", "who've"),
    ("whyll", "why'll"),
    ("whyre", "why're"),
    ("whys", "why's"),
    ("wont", "won't"),
    ("wouldve", "would've"),
    ("wouldnt", "wouldn't"),
    ("wouldnt've", "wouldn't've"),
    ("wouldn'tve", "wouldn't've"),
    ("yall", "y'all"),
    ("yall'll", "y'all'll"),
    ("y'allll", "y'all'll"),
    ("yall'd've", "y'all'd've"),
    ("y'alld've", "y'all'd've"),
    ("y'all'dve", "y'all'd've"),
    ("youd", "you'd"),
    ("youd've", "you'd've"),
    ("you'dve", "you'd've"),
    ("youll", "you'll"),
    ("youre", "you're"),
    ("youve", "you've"),
];

/// Why a question cannot be scored.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum VqaError {
    /// The official code divides by the number of answers and raises.
    #[error("no ground-truth answers (\"answers\": [])")]
    NoAnswers,
}

/// Which scorer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum VqaMode {
    /// The official code, quirks included (the default).
    #[default]
    Official,
    /// Cleaned up: the prediction and the answers are always normalised (also when the ten
    /// answers are identical), and each answer is left out by position, not by record equality.
    Normalized,
}

fn has_digit_comma_digit(s: &str) -> bool {
    let c: Vec<char> = s.chars().collect();
    c.windows(3)
        .any(|w| is_decimal(w[0]) && w[1] == ',' && is_decimal(w[2]))
}

/// The official `processPunctuation`.
pub fn process_punctuation(in_text: &str) -> String {
    let comma_digit = has_digit_comma_digit(in_text);
    let mut out = in_text.to_string();
    for &p in PUNCT {
        let spaced = in_text.contains(&format!("{p} ")) || in_text.contains(&format!(" {p}"));
        out = out.replace(p, if spaced || comma_digit { "" } else { " " });
    }
    // periodStrip.sub("", out, re.UNICODE): '.' not followed by a digit, at most 32 times
    let chars: Vec<char> = out.chars().collect();
    let mut res = String::with_capacity(out.len());
    let mut removed = 0;
    for (i, &c) in chars.iter().enumerate() {
        let next_digit = chars.get(i + 1).is_some_and(|&n| is_decimal(n));
        if c == '.' && !next_digit && removed < 32 {
            removed += 1;
            continue;
        }
        res.push(c);
    }
    res
}

/// The official `processDigitArticle`: lower-case, split, number words -> digits, drop articles,
/// restore contractions.
pub fn process_digit_article(in_text: &str) -> String {
    let lower = in_text.to_lowercase();
    let lookup = |table: &[(&'static str, &'static str)], w: &str| {
        table.iter().find(|(k, _)| *k == w).map(|(_, v)| *v)
    };
    let words: Vec<&str> = py_split(&lower)
        .map(|w| lookup(MANUAL_MAP, w).unwrap_or(w))
        .filter(|w| !ARTICLES.contains(w))
        .map(|w| lookup(CONTRACTIONS, w).unwrap_or(w))
        .collect();
    words.join(" ")
}

/// `\n`/`\t` -> space, `strip()`: what the official code does to every answer and prediction.
pub fn clean_whitespace(s: &str) -> String {
    py_strip(&s.replace(['\n', '\t'], " ")).to_string()
}

/// The full normalisation (whitespace, punctuation, digits/articles/contractions): what the
/// official code applies to the prediction and the answers when the answers differ.
pub fn normalize_prediction(answer: &str) -> String {
    process_digit_article(&process_punctuation(&clean_whitespace(answer)))
}

/// One ground-truth answer record: its text and every other field of the record (the official
/// leave-one-out compares whole records).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct GtAnswer {
    pub answer: String,
    /// The record's other fields (`answer_confidence`, `answer_id`, ...).
    pub fields: Map<String, Value>,
}

impl GtAnswer {
    /// A record with only an answer (no id: equal texts are equal records).
    pub fn new(answer: impl Into<String>) -> Self {
        Self {
            answer: answer.into(),
            fields: Map::new(),
        }
    }

    /// A VQA v2 style record with an `answer_id`.
    pub fn with_id(answer: impl Into<String>, id: i64) -> Self {
        let mut fields = Map::new();
        fields.insert("answer_id".into(), id.into());
        Self {
            answer: answer.into(),
            fields,
        }
    }

    /// A record from its JSON object (`answer` must be a string).
    pub fn from_json(record: &Map<String, Value>) -> Option<Self> {
        let answer = record.get("answer")?.as_str()?.to_string();
        let mut fields = record.clone();
        fields.remove("answer");
        Some(Self { answer, fields })
    }

    /// Python's `==` between the two records as dicts.
    fn same_record(&self, other: &Self) -> bool {
        self.answer == other.answer
            && self.fields.len() == other.fields.len()
            && self
                .fields
                .iter()
                .all(|(k, v)| other.fields.get(k).is_some_and(|w| py_eq(v, w)))
    }
}

/// The official VQA accuracy of one prediction against its (usually ten) answers, in [0, 1].
pub fn vqa_accuracy(prediction: &str, gts: &[GtAnswer]) -> Result<f64, VqaError> {
    vqa_accuracy_with(VqaMode::Official, prediction, gts)
}

/// VQA accuracy under `mode`.
pub fn vqa_accuracy_with(
    mode: VqaMode,
    prediction: &str,
    gts: &[GtAnswer],
) -> Result<f64, VqaError> {
    if gts.is_empty() {
        return Err(VqaError::NoAnswers);
    }
    let mut gts: Vec<GtAnswer> = gts
        .iter()
        .map(|g| GtAnswer {
            answer: clean_whitespace(&g.answer),
            fields: g.fields.clone(),
        })
        .collect();
    let mut res = clean_whitespace(prediction);
    let differ = gts.iter().any(|g| g.answer != gts[0].answer);
    if differ || mode == VqaMode::Normalized {
        for g in gts.iter_mut() {
            g.answer = process_digit_article(&process_punctuation(&g.answer));
        }
        res = process_digit_article(&process_punctuation(&res));
    }
    // Python: sum() of floats and ints 1 left to right, then / len
    let mut sum = 0.0;
    for (i, datum) in gts.iter().enumerate() {
        let matching = gts
            .iter()
            .enumerate()
            .filter(|(j, item)| match mode {
                VqaMode::Official => !item.same_record(datum),
                VqaMode::Normalized => *j != i,
            })
            .filter(|(_, item)| item.answer == res)
            .count();
        sum += f64::min(1.0, matching as f64 / 3.0);
    }
    Ok(sum / gts.len() as f64)
}

/// The official output: `vqaEval.accuracy` (percentages rounded to 2 places).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VqaOfficial {
    pub overall: f64,
    #[serde(rename = "perQuestionType")]
    pub per_question_type: BTreeMap<String, f64>,
    #[serde(rename = "perAnswerType")]
    pub per_answer_type: BTreeMap<String, f64>,
}

/// A VQA accumulator: add questions in annotation order (the official sums run in that order);
/// overall, per answer type and per question type (each the mean of per-question accuracies),
/// every item's score, and the official rounded numbers.
#[derive(Debug, Default, Clone)]
pub struct VqaAccumulator {
    mode: VqaMode,
    items: Vec<(String, f64)>,
    by_answer_type: BTreeMap<String, (f64, usize)>,
    by_question_type: BTreeMap<String, (f64, usize)>,
}

impl VqaAccumulator {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_mode(mode: VqaMode) -> Self {
        Self {
            mode,
            ..Self::default()
        }
    }

    pub fn mode(&self) -> VqaMode {
        self.mode
    }

    /// Scores one question and records it; returns its accuracy in [0, 1].
    pub fn add(
        &mut self,
        question_id: impl Into<String>,
        prediction: &str,
        gts: &[GtAnswer],
        answer_type: Option<&str>,
        question_type: Option<&str>,
    ) -> Result<f64, VqaError> {
        let acc = vqa_accuracy_with(self.mode, prediction, gts)?;
        self.add_score(question_id, acc, answer_type, question_type);
        Ok(acc)
    }

    /// Records an already computed score.
    pub fn add_score(
        &mut self,
        question_id: impl Into<String>,
        acc: f64,
        answer_type: Option<&str>,
        question_type: Option<&str>,
    ) {
        self.items.push((question_id.into(), acc));
        for (map, t) in [
            (&mut self.by_answer_type, answer_type),
            (&mut self.by_question_type, question_type),
        ] {
            if let Some(t) = t {
                let e = map.entry(t.to_string()).or_default();
                e.0 += acc;
                e.1 += 1;
            }
        }
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Mean accuracy in [0, 1], unrounded.
    pub fn overall(&self) -> f64 {
        if self.items.is_empty() {
            return 0.0;
        }
        self.items.iter().map(|x| x.1).sum::<f64>() / self.items.len() as f64
    }

    /// (question id, accuracy in [0, 1]) in the order added.
    pub fn per_item(&self) -> &[(String, f64)] {
        &self.items
    }

    /// The official per-question number (`evalQA`): `round(100 * acc, 2)`.
    pub fn official_item(acc: f64) -> f64 {
        py_round(100.0 * acc, 2)
    }

    pub fn per_answer_type(&self) -> BTreeMap<String, f64> {
        mean_by(&self.by_answer_type)
    }

    pub fn per_question_type(&self) -> BTreeMap<String, f64> {
        mean_by(&self.by_question_type)
    }

    /// The official `accuracy` dict: `round(100 * sum / n, 2)` overall and per type.
    pub fn official(&self) -> VqaOfficial {
        let pct = |s: f64, n: usize| py_round(100.0 * s / n as f64, 2);
        let by = |m: &BTreeMap<String, (f64, usize)>| {
            m.iter()
                .map(|(k, (s, n))| (k.clone(), pct(*s, *n)))
                .collect()
        };
        let sum: f64 = self.items.iter().map(|x| x.1).sum();
        VqaOfficial {
            overall: if self.items.is_empty() {
                0.0
            } else {
                pct(sum, self.items.len())
            },
            per_question_type: by(&self.by_question_type),
            per_answer_type: by(&self.by_answer_type),
        }
    }
}

fn mean_by(m: &BTreeMap<String, (f64, usize)>) -> BTreeMap<String, f64> {
    m.iter()
        .map(|(k, (s, n))| (k.clone(), s / *n as f64))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gts(a: &[&str]) -> Vec<GtAnswer> {
        a.iter()
            .enumerate()
            .map(|(i, s)| GtAnswer::with_id(*s, i as i64 + 1))
            .collect()
    }

    #[test]
    fn normalisation() {
        assert_eq!(normalize_prediction("Two dogs."), "2 dogs");
        assert_eq!(normalize_prediction("the cat, dog"), "cat dog");
        assert_eq!(normalize_prediction("dont"), "don't");
        assert_eq!(normalize_prediction("3.5"), "3.5");
        assert_eq!(process_punctuation("1,000"), "1000");
        // at most 32 periods go
        assert_eq!(process_punctuation(&".".repeat(40)), "........");
    }

    #[test]
    fn leave_one_out() {
        let g = gts(&[
            "yes", "yes", "yes", "no", "no", "no", "no", "no", "no", "no",
        ]);
        // three "yes": leaving out a "yes" leaves 2 (2/3), leaving out a "no" leaves 3 (1)
        let want = (3.0 * (2.0 / 3.0) + 7.0) / 10.0;
        assert!((vqa_accuracy("Yes", &g).unwrap() - want).abs() < 1e-12);
        assert_eq!(vqa_accuracy("maybe", &g), Ok(0.0));
    }

    #[test]
    fn identical_answers_are_not_normalised() {
        let g = gts(&["yes"; 10]);
        assert_eq!(vqa_accuracy("yes", &g), Ok(1.0));
        assert_eq!(vqa_accuracy(" yes\n", &g), Ok(1.0));
        assert_eq!(vqa_accuracy("Yes", &g), Ok(0.0));
        assert_eq!(vqa_accuracy("yes.", &g), Ok(0.0));
        assert_eq!(vqa_accuracy_with(VqaMode::Normalized, "Yes.", &g), Ok(1.0));
        // id-less identical records all drop out together
        let bare = vec![GtAnswer::new("yes"); 10];
        assert_eq!(vqa_accuracy("yes", &bare), Ok(0.0));
        assert_eq!(
            vqa_accuracy_with(VqaMode::Normalized, "yes", &bare),
            Ok(1.0)
        );
        assert_eq!(vqa_accuracy("yes", &[]), Err(VqaError::NoAnswers));
    }
}
