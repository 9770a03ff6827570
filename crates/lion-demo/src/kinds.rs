//! Kinds of test items for the demo's breakdown: VQA questions by question family (from the VQA
//! annotations' `question_type`, named as ShapesWorld names its families), referring expressions
//! by what they use to pick out the object (left/right words, top/bottom words, attributes only).

use std::collections::BTreeMap;

use lion_core::flip_text::has_horizontal_words;
use lion_data::world::language::QuestionKind;
use serde_json::Value;

/// An item id as the evaluation's per-item records write it (strings as they are, numbers as
/// their JSON text).
pub fn item_id(v: &Value) -> String {
    match v {
        Value::String(x) => x.clone(),
        other => other.to_string(),
    }
}

/// What a referring expression uses: "left/right" (a horizontal word: leftmost, on the right,
/// ...), "top/bottom" (a vertical one) or "attributes".
pub fn expression_kind(sentence: &str) -> &'static str {
    const VERTICAL: [&str; 8] = [
        "top",
        "topmost",
        "upper",
        "uppermost",
        "bottom",
        "bottommost",
        "lower",
        "lowest",
    ];
    if has_horizontal_words(sentence) {
        "left/right"
    } else if sentence
        .split(|c: char| !c.is_alphanumeric())
        .any(|w| VERTICAL.contains(&w.to_lowercase().as_str()))
    {
        "top/bottom"
    } else {
        "attributes"
    }
}

/// Question id -> question family, from VQA v2 annotations (`annotations` with `question_id` and
/// `question_type`). ShapesWorld's question types get their family's name ("color", "count",
/// "spatial relation", ...); other question types are kept as they are.
pub fn vqa_kinds(annotations: &Value) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for a in annotations["annotations"].as_array().into_iter().flatten() {
        let qt = a["question_type"].as_str().unwrap_or("unknown");
        let kind = QuestionKind::ALL
            .iter()
            .find(|k| k.question_type() == qt)
            .map_or(qt, |k| k.name());
        out.insert(item_id(&a["question_id"]), kind.to_string());
    }
    out
}

/// `"sent_id N"` (the REC evaluation's item id) -> expression kind, from RefCOCO refs (a list of
/// refs with `sentences` [`sent`, `sent_id`]) of `split` (all splits when None).
pub fn rec_kinds(refs: &Value, split: Option<&str>) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for r in refs.as_array().into_iter().flatten() {
        if split.is_some_and(|s| r["split"].as_str() != Some(s)) {
            continue;
        }
        for s in r["sentences"].as_array().into_iter().flatten() {
            let text = s["sent"].as_str().or(s["raw"].as_str()).unwrap_or("");
            out.insert(
                format!("sent_id {}", item_id(&s["sent_id"])),
                expression_kind(text).to_string(),
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn kinds_of_expressions_and_questions() {
        assert_eq!(expression_kind("the leftmost star"), "left/right");
        assert_eq!(expression_kind("guy on Right"), "left/right");
        assert_eq!(expression_kind("the upper red square"), "top/bottom");
        assert_eq!(expression_kind("circle at the bottom"), "top/bottom");
        assert_eq!(expression_kind("the big blue box"), "attributes");
        assert_eq!(expression_kind("bright stopper"), "attributes");
        let anns = json!({"annotations": [
            {"question_id": 1000, "question_type": "how many"},
            {"question_id": 1001, "question_type": "is the"},
            {"question_id": "x", "question_type": "what is the man"}]});
        let k = vqa_kinds(&anns);
        assert_eq!(k["1000"], "count");
        assert_eq!(k["1001"], "spatial relation");
        assert_eq!(k["x"], "what is the man");
        let refs = json!([
            {"split": "test", "sentences": [{"sent": "the leftmost star", "sent_id": 7}, {"sent": "red one", "sent_id": 8}]},
            {"split": "train", "sentences": [{"sent": "top circle", "sent_id": 9}]}]);
        let r = rec_kinds(&refs, Some("test"));
        assert_eq!(r.len(), 2);
        assert_eq!(r["sent_id 7"], "left/right");
        assert_eq!(r["sent_id 8"], "attributes");
        assert_eq!(rec_kinds(&refs, None)["sent_id 9"], "top/bottom");
    }
}
