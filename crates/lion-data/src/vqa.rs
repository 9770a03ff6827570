//! VQA v2 and OK-VQA: the official questions file (`{"questions": [...]}`) and annotations file
//! (`{"annotations": [...]}`), and VQA results (`[{question_id, answer}]`).

use std::path::Path;

use serde::Deserialize;

use crate::error::Result;
use crate::json::{array, decode_all, id, read_records, read_value};

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct VqaQuestion {
    #[serde(deserialize_with = "id::de")]
    pub question_id: String,
    #[serde(deserialize_with = "id::de")]
    pub image_id: String,
    pub question: String,
}

/// One answer record: its text and every other field as it is (`answer_confidence`,
/// `answer_id`, ...: the official VQA evaluation compares whole records).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct VqaAnswer {
    pub answer: String,
    #[serde(flatten)]
    pub fields: serde_json::Map<String, serde_json::Value>,
}

impl VqaAnswer {
    pub fn answer_confidence(&self) -> Option<&str> {
        self.fields
            .get("answer_confidence")
            .and_then(serde_json::Value::as_str)
    }

    pub fn answer_id(&self) -> Option<i64> {
        self.fields
            .get("answer_id")
            .and_then(serde_json::Value::as_i64)
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct VqaAnnotation {
    #[serde(deserialize_with = "id::de")]
    pub question_id: String,
    #[serde(deserialize_with = "id::de")]
    pub image_id: String,
    pub answers: Vec<VqaAnswer>,
    #[serde(default)]
    pub answer_type: Option<String>,
    #[serde(default)]
    pub question_type: Option<String>,
    #[serde(default)]
    pub multiple_choice_answer: Option<String>,
}

/// Reads `OpenEnded_mscoco_*_questions.json` / OK-VQA's questions file.
pub fn read_vqa_questions(path: &Path) -> Result<Vec<VqaQuestion>> {
    let v = read_value(path)?;
    decode_all(path, "questions", array(path, &v, Some("questions"))?)
}

/// Reads `mscoco_*_annotations.json` / OK-VQA's annotations file.
pub fn read_vqa_annotations(path: &Path) -> Result<Vec<VqaAnnotation>> {
    let v = read_value(path)?;
    decode_all(path, "annotations", array(path, &v, Some("annotations"))?)
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct VqaResult {
    #[serde(deserialize_with = "id::de")]
    pub question_id: String,
    pub answer: String,
}

/// Reads VQA results `[{question_id, answer}]` (a JSON array or JSON lines).
pub fn read_vqa_results(path: &Path) -> Result<Vec<VqaResult>> {
    read_records(path)
}
