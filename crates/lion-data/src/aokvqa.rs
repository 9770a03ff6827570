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

/// Reads A-OKVQA direct-answer predictions: `[{question_id, answer}]`, the evaluation script's
/// `{question_id: answer}`, or the leaderboard's `{question_id: {"direct_answer": ...}}`.
pub fn read_aokvqa_results(path: &Path) -> Result<Vec<(String, String)>> {
    let v = read_value(path)?;
    if let Some(obj) = v.as_object() {
        return obj
            .iter()
            .map(|(k, x)| {
                x.as_str()
                    .or_else(|| x.get("direct_answer").and_then(serde_json::Value::as_str))
                    .map(|a| (k.clone(), a.to_string()))
                    .ok_or_else(|| {
                        crate::error::Error::at_index(
                            path,
                            k,
                            "expected an answer string or {\"direct_answer\": string}",
                        )
                    })
            })
            .collect();
    }
    let r: Vec<crate::vqa::VqaResult> = decode_all(path, "", array(path, &v, None)?)?;
    Ok(r.into_iter().map(|x| (x.question_id, x.answer)).collect())
}
