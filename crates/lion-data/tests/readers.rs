//! Every reader on small files in its official format (tests/fixtures/data, written by
//! scripts/fixtures_metrics.py), and on malformed variants: the error names file and position.

use std::path::PathBuf;

use lion_core::adapter::Route;
use lion_data::aokvqa::read_aokvqa;
use lion_data::coco::{read_caption_results, read_coco_captions, read_karpathy};
use lion_data::lion_json::read_lion;
use lion_data::refcoco::read_refcoco;
use lion_data::textcaps::read_textcaps;
use lion_data::vqa::{read_vqa_annotations, read_vqa_questions, read_vqa_results};

fn f(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/data")
        .join(name)
}

/// The error text names the file and contains `want`.
fn assert_err<T: std::fmt::Debug>(r: lion_data::Result<T>, file: &str, want: &str) {
    let e = r.expect_err("malformed input must be an error").to_string();
    assert!(e.contains(file), "error should name {file}: {e}");
    assert!(e.contains(want), "error should say {want:?}: {e}");
}

#[test]
fn karpathy_split() {
    let all = read_karpathy(&f("dataset_coco.json"), None).unwrap();
    assert_eq!(all.len(), 3);
    let test = read_karpathy(&f("dataset_coco.json"), Some("test")).unwrap();
    assert_eq!(test.len(), 1);
    assert_eq!(test[0].image_id, "391895");
    assert_eq!(test[0].file_name, "val2014/COCO_val2014_000000391895.jpg");
    assert_eq!(
        test[0].captions,
        ["A man riding a bike.", "A person on a bicycle."]
    );
    assert_err(
        read_karpathy(&f("dataset_coco_bad.json"), None),
        "dataset_coco_bad.json",
        "images[1]",
    );
    assert_err(
        read_karpathy(&f("dataset_coco_bad.json"), None),
        "dataset_coco_bad.json",
        "sentences",
    );
}

#[test]
fn coco_official_captions() {
    let ims = read_coco_captions(&f("captions_val2014.json")).unwrap();
    assert_eq!(ims.len(), 2);
    assert_eq!(
        ims[0].captions,
        ["A man riding a bike.", "A person on a bicycle."]
    );
    assert_eq!((ims[1].width, ims[1].height), (Some(640), Some(480)));
    assert_err(
        read_coco_captions(&f("captions_bad.json")),
        "captions_bad.json",
        "annotations[2]",
    );
    assert_err(
        read_coco_captions(&f("captions_broken.json")),
        "captions_broken.json",
        "line 3",
    );
    assert_err(
        read_coco_captions(&f("no_such_file.json")),
        "no_such_file.json",
        "",
    );
    let res = read_caption_results(&f("caption_results.json")).unwrap();
    assert_eq!(res[1].image_id, "522418");
}

#[test]
fn vqa_questions_and_annotations() {
    let q = read_vqa_questions(&f("vqa_questions.json")).unwrap();
    assert_eq!(q.len(), 2);
    assert_eq!(q[1].question, "How many wheels?");
    let a = read_vqa_annotations(&f("vqa_annotations.json")).unwrap();
    assert_eq!(a[1].answers.len(), 10);
    assert_eq!(a[1].answers[9].answer, "two");
    assert_eq!(a[0].answer_type.as_deref(), Some("yes/no"));
    assert_err(
        read_vqa_annotations(&f("vqa_annotations_bad.json")),
        "vqa_annotations_bad.json",
        "annotations[1]",
    );
    // a questions file is not an annotations file
    assert_err(
        read_vqa_annotations(&f("vqa_questions.json")),
        "vqa_questions.json",
        "annotations",
    );
    let r = read_vqa_results(&f("vqa_results.json")).unwrap();
    assert_eq!(r[0].question_id, "3918950");
}

#[test]
fn aokvqa() {
    let q = read_aokvqa(&f("aokvqa_v1p0_val.json")).unwrap();
    assert_eq!(q[0].question_id, "22jbM6gDxdaMaunuzgrsBB");
    assert_eq!(q[0].direct_answers.len(), 10);
    assert_eq!(q[0].correct_choice_idx, Some(3));
    assert_err(
        read_aokvqa(&f("aokvqa_bad.json")),
        "aokvqa_bad.json",
        "record 1",
    );
}

#[test]
fn textcaps() {
    let ims = read_textcaps(&f("TextCaps_0.1_val.json")).unwrap();
    assert_eq!(ims.len(), 2);
    assert_eq!(ims[0].image_id, "0a0bc91825468c45");
    assert_eq!(ims[0].captions, ["A bus that says 42.", "Bus number 42."]);
    assert_eq!(ims[0].width, Some(1024));
    assert_err(
        read_textcaps(&f("textcaps_bad.json")),
        "textcaps_bad.json",
        "data[2]",
    );
}

#[test]
fn refcoco_pickles() {
    for refs in ["refs(unc).p", "refs_py2.p"] {
        let r = read_refcoco(&f(refs), &f("instances.json"), None).unwrap();
        assert_eq!(r.len(), 2, "{refs}");
        assert_eq!(r[0].sentences, ["woman in front", "lady left"]);
        assert_eq!(r[0].split, "testA");
        assert_eq!((r[0].width, r[0].height), (640, 427));
        assert_eq!(r[0].file_name, "COCO_train2014_000000581857.jpg");
        let b = r[0].bbox;
        assert!((b[2] - (103.93 + 134.22)).abs() < 1e-9 && (b[3] - (299.99 + 127.01)).abs() < 1e-9);
        assert_eq!(
            r[1].sentences,
            ["the dog \u{e9}"],
            "{refs}: UTF-8 text in a Python 2 str"
        );
        let val = read_refcoco(&f(refs), &f("instances.json"), Some("val")).unwrap();
        assert_eq!(val.len(), 1);
        assert_eq!(val[0].ref_id, 1);
    }
    assert_err(
        read_refcoco(&f("refs_bad.p"), &f("instances.json"), None),
        "refs_bad.p",
        "record 1",
    );
    assert_err(
        read_refcoco(&f("refs_bad.p"), &f("instances.json"), None),
        "refs_bad.p",
        "ann_id",
    );
    assert_err(
        read_refcoco(&f("refs_truncated.p"), &f("instances.json"), None),
        "refs_truncated.p",
        "byte",
    );
    // a JSON file is not a pickle
    assert_err(
        read_refcoco(&f("instances.json"), &f("instances.json"), None),
        "instances.json",
        "byte 0",
    );
}

#[test]
fn lion_training_json() {
    for name in ["lion_train.json", "lion_train.jsonl"] {
        let s = read_lion(&f(name)).unwrap();
        assert_eq!(s.len(), 3, "{name}");
        assert_eq!(s[0].tags, "dog, grass");
        assert_eq!(s[0].route, Route::ImageLevel);
        assert_eq!(s[1].answer, "[0.1,0.2,0.5,0.9]");
        assert_eq!(s[1].route, Route::RegionLevel);
        assert_eq!(s[1].tags, "cat, sofa");
        assert_eq!(s[2].image, "vg/3.jpg");
        assert_eq!(s[2].tags, "");
    }
    assert_err(read_lion(&f("lion_bad.jsonl")), "lion_bad.jsonl", "line 3");
    assert_err(read_lion(&f("lion_bad.json")), "lion_bad.json", "record 1");
    assert_err(read_lion(&f("lion_bad.json")), "lion_bad.json", "question");
}

#[test]
fn refcoco_refs_as_json_read_as_the_pickle() {
    let from_pickle = read_refcoco(&f("refs(unc).p"), &f("instances.json"), None).unwrap();
    let records: Vec<serde_json::Value> = from_pickle
        .iter()
        .map(|r| {
            let sents: Vec<serde_json::Value> = r
                .sentences
                .iter()
                .zip(&r.sent_ids)
                .map(|(s, id)| serde_json::json!({"sent": s, "raw": s, "sent_id": id}))
                .collect();
            serde_json::json!({"ref_id": r.ref_id, "ann_id": r.ann_id, "image_id": r.image_id,
                "split": r.split, "category_id": r.category_id, "sentences": sents,
                "sent_ids": r.sent_ids})
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("refs.json");
    std::fs::write(&path, serde_json::to_vec(&records).unwrap()).unwrap();
    assert_eq!(
        read_refcoco(&path, &f("instances.json"), None).unwrap(),
        from_pickle
    );
    let mut bad = records.clone();
    bad[1]["ann_id"] = serde_json::json!("x");
    std::fs::write(&path, serde_json::to_vec(&bad).unwrap()).unwrap();
    assert_err(
        read_refcoco(&path, &f("instances.json"), None),
        "refs.json",
        "ann_id",
    );
}

#[test]
fn rec_results_with_a_null_box_are_misses() {
    use lion_data::refcoco::{read_rec_results, PredBox};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pred.json");
    std::fs::write(
        &path,
        r#"[{"sent_id": 3, "box": null}, {"ref_id": 4, "box": [1, 2, 3, 4]}]"#,
    )
    .unwrap();
    let r = read_rec_results(&path).unwrap();
    assert_eq!(r[0].pred, PredBox::Missing);
    assert_eq!(r[1].pred, PredBox::Pixels([1.0, 2.0, 3.0, 4.0]));
}
