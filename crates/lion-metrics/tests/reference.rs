//! lion-metrics against the reference scorers (goldens from scripts/fixtures_metrics.py):
//! pycocoevalcap with its Java PTBTokenizer; and (scripts/fixtures_vqa_official.py) the official
//! GT-Vision-Lab VQA evaluation and the official A-OKVQA evaluation.

use std::path::PathBuf;

use lion_metrics::aokvqa::{self, AokvqaGt, AokvqaPred};
use lion_metrics::caption::CaptionEval;
use lion_metrics::ptb::{ptb_tokenize_lines, tokenize_captions, PUNCTUATIONS};
use lion_metrics::rec::iou;
use lion_metrics::vqa::{vqa_accuracy_with, GtAnswer, VqaAccumulator, VqaMode};
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

/// The answer records of a golden question (`compact_answers()` in the generator).
fn answer_records(c: &Value) -> Vec<Value> {
    let texts: Vec<Value> = match &c[0] {
        Value::String(t) => vec![Value::String(t.clone()); 10],
        v => v.as_array().unwrap().clone(),
    };
    texts
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let mut r = serde_json::Map::new();
            r.insert("answer".into(), t.clone());
            if let Some(conf) = c[1].as_str() {
                let full = match conf.as_bytes()[i] {
                    b'y' => "yes",
                    b'm' => "maybe",
                    _ => "no",
                };
                r.insert("answer_confidence".into(), full.into());
            }
            match c.get(2) {
                None => {
                    r.insert("answer_id".into(), (i as i64 + 1).into());
                }
                Some(Value::Array(ids)) => {
                    r.insert("answer_id".into(), ids[i].clone());
                }
                Some(_) => {}
            }
            Value::Object(r)
        })
        .collect()
}

/// The official GT-Vision-Lab vqaEval.py on 3,000+ adversarial questions (several runs):
/// overall, per answer type, per question type and every question's `evalQA`, equal to 1e-9
/// (in fact bit for bit).
#[test]
fn vqa_accuracy_equals_official() {
    let doc = fixture("vqa_official.json");
    let mut n = 0;
    let mut differ = 0;
    // questions where the official quirks change the score (the corpus must exercise them)
    let mut quirky = 0;
    for run in doc["runs"].as_array().unwrap() {
        let mut acc = VqaAccumulator::new();
        for q in run["questions"].as_array().unwrap() {
            n += 1;
            let gts: Vec<GtAnswer> = answer_records(&q[5])
                .iter()
                .map(|r| GtAnswer::from_json(r.as_object().unwrap()).unwrap())
                .collect();
            let ours = acc
                .add(
                    q[0].to_string(),
                    &s(&q[3]),
                    &gts,
                    q[1].as_str(),
                    q[2].as_str(),
                )
                .unwrap();
            let theirs = q[4].as_f64().unwrap();
            let mine = VqaAccumulator::official_item(ours);
            if (mine - theirs).abs() > 1e-9 {
                differ += 1;
                eprintln!(
                    "question {}: prediction {:?} answers {}: ours {mine} official {theirs}",
                    q[0], q[3], q[5]
                );
            }
            // the cleaned-up variant agrees whenever the official code normalises and the
            // records are distinct
            let distinct =
                gts.iter().all(|g| g.fields.contains_key("answer_id")) && q[5].get(2).is_none();
            let texts: std::collections::HashSet<String> = gts
                .iter()
                .map(|g| lion_metrics::vqa::clean_whitespace(&g.answer))
                .collect();
            let cleaned = vqa_accuracy_with(VqaMode::Normalized, &s(&q[3]), &gts).unwrap();
            if distinct && texts.len() > 1 {
                assert_eq!(cleaned, ours);
            }
            quirky += usize::from(cleaned != ours);
        }
        let want = &run["accuracy"];
        let got = acc.official();
        let close = |a: f64, b: &Value| (a - b.as_f64().unwrap()).abs() <= 1e-9;
        assert!(close(got.overall, &want["overall"]), "{got:?} vs {want}");
        for (key, ours) in [
            ("perAnswerType", &got.per_answer_type),
            ("perQuestionType", &got.per_question_type),
        ] {
            let theirs = want[key].as_object().unwrap();
            assert_eq!(ours.len(), theirs.len(), "{key}");
            for (t, v) in theirs {
                assert!(
                    close(ours[t], v),
                    "{key} {t}: ours {} official {v}",
                    ours[t]
                );
            }
        }
        println!(
            "run of {}: official overall {} per answer type {:?}",
            acc.len(),
            got.overall,
            got.per_answer_type
        );
    }
    assert_eq!(differ, 0, "{differ} of {n} questions differ");
    assert!(n >= 3000);
    println!("{n} questions equal to the official code; the quirks change {quirky} of them");
    assert!(quirky >= 100, "{quirky}");
}

/// allenai/aokvqa eval_aokvqa (multiple choice and direct answer) on 500+ questions: per run
/// and per question.
#[test]
fn aokvqa_equals_official() {
    let doc = fixture("aokvqa_official.json");
    let mut n = 0;
    for run in doc["runs"].as_array().unwrap() {
        let data: Vec<AokvqaGt> = run["dataset"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| AokvqaGt {
                question_id: s(&d[0]),
                choices: d[1].as_array().unwrap().iter().map(s).collect(),
                correct_choice_idx: d[2].as_u64().map(|x| x as usize),
                direct_answers: d[3].as_array().unwrap().iter().map(s).collect(),
                difficult_direct_answer: d[4].as_bool(),
            })
            .collect();
        n += data.len();
        let preds = run["predictions"].as_object().unwrap();
        let pred_of = |id: &str| {
            preds.get(id).map(|p| AokvqaPred {
                multiple_choice: p.get("multiple_choice").map(s),
                direct_answer: p.get("direct_answer").map(s),
            })
        };
        let got = aokvqa::evaluate(&data, pred_of).unwrap();
        let mc = got.multiple_choice.unwrap();
        let da = got.direct_answer.unwrap();
        assert!((mc.accuracy - run["mc"].as_f64().unwrap()).abs() <= 1e-9);
        assert!((da.accuracy - run["da"].as_f64().unwrap()).abs() <= 1e-9);
        let per = run["per_question"].as_array().unwrap();
        let mut das = da.per_item.iter();
        for ((d, m), want) in data.iter().zip(&mc.per_item).zip(per) {
            assert_eq!(d.question_id, m.0);
            assert!((100.0 * m.1 - want[0].as_f64().unwrap()).abs() <= 1e-9);
            if let Some(w) = want[1].as_f64() {
                let a = das.next().unwrap();
                assert_eq!(a.0, d.question_id);
                assert!((100.0 * a.1 - w).abs() <= 1e-9, "{}", d.question_id);
            }
        }
        assert!(das.next().is_none());
    }
    assert!(n >= 500);
}

#[test]
fn iou_equals_python() {
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
