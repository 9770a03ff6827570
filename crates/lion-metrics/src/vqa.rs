//! VQA accuracy exactly as the official VQA evaluation computes it (`vqaEval.py`, the version
//! LAVIS ships as `lavis/common/vqa_tools/vqa_eval.py`), and the A-OKVQA direct-answer score.
//!
//! Official behaviour reproduced, quirks included:
//! - the prediction: `\n`/`\t` -> space, strip, [`process_punctuation`], [`process_digit_article`];
//! - the ten ground-truth answers: only [`process_punctuation`], and only when they are not all
//!   identical (no number-word, article or contraction processing on the ground truth);
//! - accuracy: for each ground-truth answer, drop every answer equal to it (same text, confidence
//!   and id: the official code compares whole dicts), count the remaining matches, take
//!   `min(1, matches / 3)`, and average over the ten;
//! - `process_punctuation`'s period removal is `re.sub` with `count=re.UNICODE` (= 32): at most
//!   the first 32 periods that are not followed by a digit are removed.

use std::collections::BTreeMap;

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

/// Python's `str.isspace()` (what `split()` and `strip()` use).
pub(crate) fn py_space(c: char) -> bool {
    c.is_whitespace() || matches!(c, '\u{1C}'..='\u{1F}')
}

/// Python's `str.split()` without arguments.
pub(crate) fn py_split(s: &str) -> impl Iterator<Item = &str> {
    s.split(py_space).filter(|w| !w.is_empty())
}

fn has_digit_comma_digit(s: &str) -> bool {
    let c: Vec<char> = s.chars().collect();
    c.windows(3)
        .any(|w| is_re_digit(w[0]) && w[1] == ',' && is_re_digit(w[2]))
}

/// Python 3 `re`'s `\d` on str patterns: any Unicode decimal digit.
fn is_re_digit(c: char) -> bool {
    c.is_ascii_digit() || is_nd(c)
}

/// Unicode decimal digits outside ASCII (general category Nd), approximated by the common blocks.
pub(crate) fn is_nd(c: char) -> bool {
    let u = c as u32;
    const STARTS: &[u32] = &[
        0x660, 0x6F0, 0x7C0, 0x966, 0x9E6, 0xA66, 0xAE6, 0xB66, 0xBE6, 0xC66, 0xCE6, 0xD66, 0xDE6,
        0xE50, 0xED0, 0xF20, 0x1040, 0x1090, 0x17E0, 0x1810, 0xFF10,
    ];
    STARTS.iter().any(|&s| (s..s + 10).contains(&u))
}

/// The official `processPunctuation`.
pub fn process_punctuation(in_text: &str) -> String {
    let comma_digit = has_digit_comma_digit(in_text);
    let mut out = in_text.to_string();
    for &p in PUNCT {
        let ps = p.to_string();
        let spaced = in_text.contains(&format!("{p} ")) || in_text.contains(&format!(" {p}"));
        if spaced || comma_digit {
            out = out.replace(&ps, "");
        } else {
            out = out.replace(&ps, " ");
        }
    }
    // periodStrip.sub("", out, re.UNICODE): removes '.' not followed by a digit, at most 32 times.
    let chars: Vec<char> = out.chars().collect();
    let mut res = String::with_capacity(out.len());
    let mut removed = 0;
    for (i, &c) in chars.iter().enumerate() {
        let next_digit = chars.get(i + 1).is_some_and(|&n| is_re_digit(n));
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
    let mut words: Vec<&str> = Vec::new();
    for w in py_split(&lower) {
        let w = MANUAL_MAP
            .iter()
            .find(|(k, _)| *k == w)
            .map(|(_, v)| *v)
            .unwrap_or(w);
        if !ARTICLES.contains(&w) {
            words.push(w);
        }
    }
    let words: Vec<&str> = words
        .into_iter()
        .map(|w| {
            CONTRACTIONS
                .iter()
                .find(|(k, _)| *k == w)
                .map(|(_, v)| *v)
                .unwrap_or(w)
        })
        .collect();
    words.join(" ")
}

/// The official normalisation of a predicted answer.
pub fn normalize_prediction(answer: &str) -> String {
    let a = answer.replace(['\n', '\t'], " ");
    let a = a.trim_matches(py_space);
    process_digit_article(&process_punctuation(a))
}

/// One ground-truth answer as in the annotation file (the whole record takes part in the
/// leave-one-out comparison, as in the official code).
#[derive(Debug, Clone, PartialEq)]
pub struct GtAnswer {
    pub answer: String,
    pub confidence: Option<String>,
    pub id: Option<i64>,
}

impl GtAnswer {
    pub fn new(answer: impl Into<String>) -> Self {
        Self {
            answer: answer.into(),
            confidence: None,
            id: None,
        }
    }
}

/// The official VQA accuracy of one prediction against its (usually ten) answers, in [0, 1].
pub fn vqa_accuracy(prediction: &str, gts: &[GtAnswer]) -> f64 {
    if gts.is_empty() {
        return 0.0;
    }
    let res = normalize_prediction(prediction);
    let mut gts: Vec<GtAnswer> = gts.to_vec();
    let first = &gts[0].answer;
    if gts.iter().any(|g| &g.answer != first) {
        for g in gts.iter_mut() {
            g.answer = process_punctuation(&g.answer);
        }
    }
    let mut sum = 0.0;
    for datum in &gts {
        let matching = gts
            .iter()
            .filter(|item| *item != datum && item.answer == res)
            .count();
        sum += f64::min(1.0, matching as f64 / 3.0);
    }
    sum / gts.len() as f64
}

/// The A-OKVQA direct-answer score (`eval_predictions.py` / LAVIS `AOKVQATask`):
/// `min(1, #(direct answers == prediction) / 3)`, exact string comparison, no normalisation.
pub fn aokvqa_da_score(prediction: &str, direct_answers: &[String]) -> f64 {
    let n = direct_answers
        .iter()
        .filter(|a| a.as_str() == prediction)
        .count();
    f64::min(1.0, n as f64 / 3.0)
}

/// A streaming VQA accumulator: add questions one by one; overall, per answer type and
/// per question type (each the mean of per-question accuracies), and every item's score.
#[derive(Debug, Default, Clone)]
pub struct VqaAccumulator {
    items: Vec<(String, f64)>,
    by_answer_type: BTreeMap<String, (f64, usize)>,
    by_question_type: BTreeMap<String, (f64, usize)>,
}

impl VqaAccumulator {
    pub fn new() -> Self {
        Self::default()
    }

    /// Scores one question and records it; returns its accuracy in [0, 1].
    pub fn add(
        &mut self,
        question_id: impl Into<String>,
        prediction: &str,
        gts: &[GtAnswer],
        answer_type: Option<&str>,
        question_type: Option<&str>,
    ) -> f64 {
        let acc = vqa_accuracy(prediction, gts);
        self.add_score(question_id, acc, answer_type, question_type);
        acc
    }

    /// Records an already computed score (A-OKVQA, exact match, ...).
    pub fn add_score(
        &mut self,
        question_id: impl Into<String>,
        acc: f64,
        answer_type: Option<&str>,
        question_type: Option<&str>,
    ) {
        self.items.push((question_id.into(), acc));
        if let Some(t) = answer_type {
            let e = self.by_answer_type.entry(t.to_string()).or_default();
            e.0 += acc;
            e.1 += 1;
        }
        if let Some(t) = question_type {
            let e = self.by_question_type.entry(t.to_string()).or_default();
            e.0 += acc;
            e.1 += 1;
        }
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Mean accuracy in [0, 1] (the official `overall` is this times 100, rounded to 2 places).
    pub fn overall(&self) -> f64 {
        if self.items.is_empty() {
            return 0.0;
        }
        self.items.iter().map(|x| x.1).sum::<f64>() / self.items.len() as f64
    }

    /// (question id, accuracy) in the order added.
    pub fn per_item(&self) -> &[(String, f64)] {
        &self.items
    }

    pub fn per_answer_type(&self) -> BTreeMap<String, f64> {
        self.by_answer_type
            .iter()
            .map(|(k, (s, n))| (k.clone(), s / *n as f64))
            .collect()
    }

    pub fn per_question_type(&self) -> BTreeMap<String, f64> {
        self.by_question_type
            .iter()
            .map(|(k, (s, n))| (k.clone(), s / *n as f64))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gts(a: &[&str]) -> Vec<GtAnswer> {
        a.iter()
            .enumerate()
            .map(|(i, s)| GtAnswer {
                answer: s.to_string(),
                confidence: Some("yes".into()),
                id: Some(i as i64 + 1),
            })
            .collect()
    }

    #[test]
    fn normalisation() {
        assert_eq!(normalize_prediction("Two dogs."), "2 dogs");
        assert_eq!(normalize_prediction("the cat, dog"), "cat dog");
        assert_eq!(normalize_prediction("dont"), "don't");
        assert_eq!(normalize_prediction("3.5"), "3.5");
        assert_eq!(process_punctuation("1,000"), "1000");
    }

    #[test]
    fn leave_one_out() {
        let g = gts(&[
            "yes", "yes", "yes", "no", "no", "no", "no", "no", "no", "no",
        ]);
        // three "yes": leaving out a "yes" leaves 2 (2/3), leaving out a "no" leaves 3 (1)
        let want = (3.0 * (2.0 / 3.0) + 7.0) / 10.0;
        assert!((vqa_accuracy("Yes", &g) - want).abs() < 1e-12);
        assert_eq!(vqa_accuracy("maybe", &g), 0.0);
    }
}
