//! A-OKVQA (`aokvqa_v1p0_{train,val,test}.json`: a JSON array of questions).

use std::path::Path;

use serde::Deserialize;

use crate::error::Result;
use crate::json::{array, decode_all, id, read_value};

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct AokvqaQuestion {
    #[serde(deserialize_with = "id::de")]
    pub question_id: String,
    #[serde(deserialize_with = "id::de")]
    pub image_id: String,
    pub question: String,
    #[serde(default)]
    pub split: Option<String>,
    #[serde(default)]
    pub choices: Vec<String>,
    /// Absent in the test split.
    #[serde(default)]
    pub correct_choice_idx: Option<usize>,
    /// Ten answers; absent in the test split.
    #[serde(default)]
    pub direct_answers: Vec<String>,
    #[serde(default)]
    pub difficult_direct_answer: Option<bool>,
    #[serde(default)]
    pub rationales: Vec<String>,
}

/// Reads an A-OKVQA split file.
pub fn read_aokvqa(path: &Path) -> Result<Vec<AokvqaQuestion>> {
    let v = read_value(path)?;
    let qs: Vec<AokvqaQuestion> = decode_all(path, "", array(path, &v, None)?)?;
    for (i, q) in qs.iter().enumerate() {
        if let Some(c) = q.correct_choice_idx {
            if c >= q.choices.len() {
                return Err(crate::error::Error::at_index(
                    path,
                    i,
                    format!("correct_choice_idx {c} but {} choices", q.choices.len()),
                ));
            }
        }
    }
    Ok(qs)
}

/// A-OKVQA predictions of one question (either may be absent).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AokvqaPrediction {
    pub question_id: String,
    pub multiple_choice: Option<String>,
    pub direct_answer: Option<String>,
}

/// Reads A-OKVQA predictions: the official `{question_id: {"multiple_choice": ..,
/// "direct_answer": ..}}` (either key may be left out), the evaluation function's
/// `{question_id: answer}` (direct answer), or `[{question_id, answer}]` (direct answer).
pub fn read_aokvqa_predictions(path: &Path) -> Result<Vec<AokvqaPrediction>> {
    let v = read_value(path)?;
    if let Some(obj) = v.as_object() {
        let mut out = Vec::with_capacity(obj.len());
        for (k, x) in obj {
            let bad = |m: &str| crate::error::Error::at_index(path, k, m.to_string());
            let mut p = AokvqaPrediction {
                question_id: k.clone(),
                ..Default::default()
            };
            if let Some(a) = x.as_str() {
                p.direct_answer = Some(a.to_string());
            } else if let Some(o) = x.as_object() {
                for (key, slot) in [
                    ("multiple_choice", &mut p.multiple_choice),
                    ("direct_answer", &mut p.direct_answer),
                ] {
                    if let Some(a) = o.get(key) {
                        *slot = Some(
                            a.as_str()
                                .ok_or_else(|| bad(&format!("\"{key}\" should be a string")))?
                                .to_string(),
                        );
                    }
                }
            } else {
                return Err(bad(
                    "expected an answer string or {\"multiple_choice\": string, \"direct_answer\": string}",
                ));
            }
            out.push(p);
        }
        return Ok(out);
    }
    let r: Vec<crate::vqa::VqaResult> = decode_all(path, "", array(path, &v, None)?)?;
    Ok(r.into_iter()
        .map(|x| AokvqaPrediction {
            question_id: x.question_id,
            multiple_choice: None,
            direct_answer: Some(x.answer),
        })
        .collect())
}
