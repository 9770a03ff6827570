//! lion-metrics against the reference scorers (goldens from scripts/fixtures_metrics.py):
//! pycocoevalcap with its Java PTBTokenizer, and the official VQA evaluation.

use std::path::PathBuf;

use lion_metrics::caption::CaptionEval;
use lion_metrics::ptb::{ptb_tokenize_lines, tokenize_captions, PUNCTUATIONS};
use lion_metrics::rec::iou;
use lion_metrics::vqa::{aokvqa_da_score, vqa_accuracy, GtAnswer, VqaAccumulator};
use serde_json::Value;

fn fixture(name: &str) -> Value {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/metrics")
        .join(name);
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap()
}

/// Drops a "." token right after a token that ends in "." (the Java lexer adds one after an
/// abbreviation that it takes to end a sentence, by a look-ahead we only approximate). pycocoevalcap
/// removes every "." token, so this never changes what is scored; everything else is compared.
fn drop_sentence_end_periods(line: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for t in line.split(' ') {
        if t == "." && out.last().is_some_and(|p| p.len() > 1 && p.ends_with('.')) {
            continue;
        }
        out.push(t);
    }
    out.join(" ")
}

fn s(v: &Value) -> String {
    v.as_str().unwrap().to_string()
}

/// Every caption's tokenisation equals the Java tokenizer's (raw tokens and after punctuation
/// removal).
#[test]
fn ptb_tokenisation_equals_java_on_captions() {
    let doc = fixture("captions.json");
    let images = doc["images"].as_array().unwrap();
    // pycocoevalcap runs the tokenizer twice: all references, then all predictions
    let mut refs = Vec::new();
    let mut preds = Vec::new();
    for im in images {
        for (k, r) in im["references"].as_array().unwrap().iter().enumerate() {
            refs.push((
                s(r),
                s(&im["references_java"][k]),
                s(&im["references_tokenized"][k]),
            ));
        }
        preds.push((
            s(&im["prediction"]),
            s(&im["prediction_java"]),
            s(&im["prediction_tokenized"]),
        ));
    }
    let mut n = 0;
    let mut bad = Vec::new();
    for run in [refs, preds] {
        let lines: Vec<&str> = run.iter().map(|x| x.0.as_str()).collect();
        let raw = ptb_tokenize_lines(&lines);
        let filtered = tokenize_captions(&lines);
        for (i, (line, java, java_f)) in run.iter().enumerate() {
            n += 1;
            let ours = raw[i].join(" ");
            if drop_sentence_end_periods(&ours) != drop_sentence_end_periods(java)
                || &filtered[i] != java_f
            {
                bad.push(format!("{line:?}\n  java: {java:?}\n  ours: {ours:?}"));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "{} of {n} captions differ:\n{}",
        bad.len(),
        bad.join("\n")
    );
    assert!(n >= 1200);
    println!("PTB tokenisation: {n} of {n} captions equal to the Java tokenizer");
}

/// Hard lines (abbreviations, URLs, smileys, currency, quotes...): the raw Java output.
#[test]
fn ptb_tokenisation_equals_java_on_stress_lines() {
    let doc = fixture("ptb_stress.json");
    let lines: Vec<String> = doc["lines"].as_array().unwrap().iter().map(s).collect();
    let java: Vec<String> = doc["java"].as_array().unwrap().iter().map(s).collect();
    let ours = ptb_tokenize_lines(&lines);
    let mut bad = Vec::new();
    let mut bad_filtered = 0;
    for (i, l) in lines.iter().enumerate() {
        let o = ours[i].join(" ");
        if drop_sentence_end_periods(&o) != drop_sentence_end_periods(&java[i]) {
            let keep = |t: &&str| !PUNCTUATIONS.contains(t);
            let jf: Vec<&str> = java[i].split(' ').filter(keep).collect();
            let of: Vec<&str> = ours[i].iter().map(String::as_str).filter(keep).collect();
            bad_filtered += usize::from(jf != of);
            bad.push(format!("{l:?}\n  java: {:?}\n  ours: {o:?}", java[i]));
        }
    }
    assert!(
        bad.is_empty(),
        "{} of {} lines differ ({bad_filtered} after punctuation removal):\n{}",
        bad.len(),
        lines.len(),
        bad.join("\n")
    );
}

/// Adversarial random lines: measured agreement with the Java tokenizer. The known misses are
/// digits glued to a URL (`10www.x.com`), which the jar splits by a rule we did not find.
#[test]
fn ptb_tokenisation_on_random_lines() {
    let doc = fixture("ptb_random.json");
    let lines: Vec<String> = doc["lines"].as_array().unwrap().iter().map(s).collect();
    let java: Vec<String> = doc["java"].as_array().unwrap().iter().map(s).collect();
    let ours = ptb_tokenize_lines(&lines);
    let keep = |t: &&str| !PUNCTUATIONS.contains(t);
    let mut bad = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        let jf: Vec<&str> = java[i]
            .split(' ')
            .filter(|t| !t.is_empty())
            .filter(keep)
            .collect();
        let of: Vec<&str> = ours[i].iter().map(String::as_str).filter(keep).collect();
        if jf != of {
            bad.push(format!(
                "{l:?}\n  java: {:?}\n  ours: {:?}",
                java[i],
                ours[i].join(" ")
            ));
        }
    }
    println!(
        "random lines: {} of {} equal to Java after punctuation removal",
        lines.len() - bad.len(),
        lines.len()
    );
    assert!(
        bad.len() <= 2,
        "{} lines differ:\n{}",
        bad.len(),
        bad.join("\n")
    );
}

#[test]
fn caption_scores_equal_pycocoevalcap() {
    let doc = fixture("captions.json");
    let images = doc["images"].as_array().unwrap();
    assert!(images.len() >= 200);
    let mut ev = CaptionEval::new();
    for im in images {
        let refs: Vec<String> = im["references"].as_array().unwrap().iter().map(s).collect();
        assert_eq!(refs.len(), 5);
        ev.add(im["image_id"].to_string(), &s(&im["prediction"]), &refs);
    }
    let got = ev.compute();
    let f = |v: &Value| v.as_f64().unwrap();
    let mut worst = 0.0f64;
    let mut check = |what: String, ours: f64, theirs: f64| {
        let d = (ours - theirs).abs();
        worst = worst.max(d);
        assert!(d <= 1e-6, "{what}: ours {ours} pycocoevalcap {theirs}");
    };
    for k in 0..4 {
        check(format!("BLEU-{}", k + 1), got.bleu[k], f(&doc["bleu"][k]));
    }
    check("ROUGE-L".into(), got.rouge_l, f(&doc["rouge_l"]));
    check("CIDEr-D".into(), got.cider, f(&doc["cider"]));
    for (im, ours) in images.iter().zip(&got.per_item) {
        let id = &ours.image_id;
        for k in 0..4 {
            check(
                format!("image {id} BLEU-{}", k + 1),
                ours.bleu[k],
                f(&im["bleu"][k]),
            );
        }
        check(
            format!("image {id} ROUGE-L"),
            ours.rouge_l,
            f(&im["rouge_l"]),
        );
        check(format!("image {id} CIDEr-D"), ours.cider, f(&im["cider"]));
    }
    println!(
        "CIDEr-D {:.6} BLEU-4 {:.6} ROUGE-L {:.6}; worst |diff| vs pycocoevalcap {worst:.3e}",
        got.cider, got.bleu[3], got.rouge_l
    );
}

#[test]
fn vqa_accuracy_equals_official() {
    let doc = fixture("vqa.json");
    let qs = doc["questions"].as_array().unwrap();
    assert!(qs.len() >= 500);
    let mut acc = VqaAccumulator::new();
    let mut worst = 0.0f64;
    for q in qs {
        let gts: Vec<GtAnswer> = q["answers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| GtAnswer {
                answer: s(&a["answer"]),
                confidence: a["answer_confidence"].as_str().map(str::to_string),
                id: a["answer_id"].as_i64(),
            })
            .collect();
        assert_eq!(gts.len(), 10);
        let ours = acc.add(
            q["question_id"].to_string(),
            &s(&q["prediction"]),
            &gts,
            q["answer_type"].as_str(),
            q["question_type"].as_str(),
        );
        let theirs = q["accuracy"].as_f64().unwrap();
        worst = worst.max((ours - theirs).abs());
        assert!(
            (ours - theirs).abs() <= 1e-9,
            "question {}: prediction {:?}: ours {ours} official {theirs}",
            q["question_id"],
            q["prediction"]
        );
        assert_eq!(ours, vqa_accuracy(&s(&q["prediction"]), &gts));
    }
    let overall = doc["overall"].as_f64().unwrap();
    assert!((acc.overall() - overall).abs() <= 1e-9);
    println!(
        "VQA accuracy {:.6}% on {} questions; worst |diff| {worst:.3e}",
        100.0 * acc.overall(),
        qs.len()
    );
}

#[test]
fn aokvqa_and_iou_equal_python() {
    let doc = fixture("aokvqa.json");
    for c in doc["cases"].as_array().unwrap() {
        let da: Vec<String> = c["direct_answers"]
            .as_array()
            .unwrap()
            .iter()
            .map(s)
            .collect();
        let ours = aokvqa_da_score(&s(&c["prediction"]), &da);
        assert!((ours - c["score"].as_f64().unwrap()).abs() < 1e-12);
    }
    let doc = fixture("rec.json");
    for c in doc["cases"].as_array().unwrap() {
        let b = |v: &Value| -> [f64; 4] {
            let a = v.as_array().unwrap();
            [0, 1, 2, 3].map(|i| a[i].as_f64().unwrap())
        };
        let ours = iou(&b(&c["pred"]), &b(&c["gt"]));
        assert!((ours - c["iou"].as_f64().unwrap()).abs() < 1e-12, "{c}");
    }
}
