//! The demo report's scores: per-item scores read from `lion eval`'s JSON, the main table (each
//! system with its interval, each model minus the best trivial baseline, paired) and the LION
//! loss curves.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use lion_core::{Error, Result};
use serde_json::{json, Value};

use super::compare::{fmt_interval, Items};
use super::files::read_json;
use super::kinds::item_id;
use lion_train::bootstrap::{interval, paired_interval};
use lion_train::plot::{draw_png, Panel, Series};

/// One evaluation's per-item scores by metric: `caption` (CIDEr-D), `vqa` (accuracy), `rec`
/// (hit at IoU 0.5) and `rec01` (hit at IoU 0.1, from the per-item IoUs).
pub type RunScores = BTreeMap<String, Items>;

/// The mean of the items' scores (0 for none).
pub fn mean(items: &Items) -> f64 {
    items.values().sum::<f64>() / items.len().max(1) as f64
}

/// The per-item scores of a `lion eval --json` file of `task`.
pub fn per_item(path: &Path, task: &str) -> Result<RunScores> {
    let v = read_json(path)?;
    let (id_key, score_key) = match task {
        "caption" => ("image_id", "cider"),
        "vqa" => ("question_id", "accuracy"),
        _ => ("id", "hit"),
    };
    let mut items = Items::new();
    let mut loose = Items::new();
    let rows = v["per_item"]
        .as_array()
        .ok_or_else(|| Error::format(path, "no per_item list"))?;
    for it in rows {
        let id = item_id(&it[id_key]);
        let score = match &it[score_key] {
            Value::Bool(b) => f64::from(u8::from(*b)),
            x => x.as_f64().ok_or_else(|| {
                Error::format(path, format!("item {id}: `{score_key}` is not a number"))
            })?,
        };
        if task == "rec" {
            let iou = it["iou"].as_f64().unwrap_or(0.0);
            loose.insert(id.clone(), f64::from(u8::from(iou >= 0.1)));
        }
        items.insert(id, score);
    }
    let mut out = RunScores::from([(task.to_string(), items)]);
    if task == "rec" {
        out.insert("rec01".to_string(), loose);
    }
    Ok(out)
}

const TASKS: [(&str, &str); 3] = [
    ("caption", "CIDEr-D"),
    ("vqa", "VQA acc."),
    ("rec", "Acc@0.5"),
];

/// The report's tables: scores with intervals, and each model minus the best baseline (paired).
pub fn baseline_tables(
    models: &[(String, RunScores)],
    baselines: &[(String, RunScores)],
    resamples: usize,
    seed: u64,
) -> (String, Value, bool) {
    let mut md = String::from("| system | ");
    md.push_str(&TASKS.map(|t| t.1).join(" | "));
    md.push_str(" |\n|---|---|---|---|\n");
    let mut js = json!({});
    for (name, sc) in baselines.iter().chain(models) {
        md.push_str(&format!("| {name} |"));
        for (task, _) in TASKS {
            let v: Vec<f64> = sc[task].values().copied().collect();
            let ci = interval(&v, resamples, 0.95, seed).expect("non-empty");
            md.push_str(&format!(" {} |", fmt_interval(&ci)));
            js[name][task] = json!(ci);
        }
        md.push('\n');
    }
    md.push_str(
        "\nEach model minus the best trivial baseline of the task (paired bootstrap over the same \
         test items, 95%):\n\n| model | ",
    );
    md.push_str(&TASKS.map(|t| t.1).join(" | "));
    md.push_str(" | beats every baseline |\n|---|---|---|---|---|\n");
    let mut all_beat = true;
    for (name, sc) in models {
        md.push_str(&format!("| {name} |"));
        let mut beats = true;
        for (task, _) in TASKS {
            let best = baselines
                .iter()
                .max_by(|a, b| mean(&a.1[task]).total_cmp(&mean(&b.1[task])))
                .expect("baselines");
            let (a, b): (Vec<f64>, Vec<f64>) = sc[task]
                .iter()
                .map(|(id, x)| (*x, best.1[task].get(id).copied().unwrap_or(0.0)))
                .unzip();
            let d = paired_interval(&a, &b, resamples, 0.95, seed).expect("non-empty");
            beats &= d.lo > 0.0;
            md.push_str(&format!(" {} |", fmt_interval(&d)));
            js[format!("{name} - best baseline")][task] = json!(d);
        }
        all_beat &= beats;
        md.push_str(&format!(" {} |\n", if beats { "yes" } else { "no" }));
    }
    (md, js, all_beat)
}

/// The LION training loss of each run (`name`, run folder with `metrics.jsonl`) in one PNG.
pub fn draw_loss_curves(runs: &[(String, PathBuf)], png: &Path) -> Result<()> {
    let mut series = vec![];
    for (name, dir) in runs {
        let text = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap_or_default();
        let pts: Vec<(f64, f64)> = text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["kind"] == "train")
            .filter_map(|v| Some((v["step"].as_f64()?, v["loss"].as_f64()?)))
            .collect();
        // A running mean over 10 steps: each step's loss is of one task's batch.
        let smooth: Vec<(f64, f64)> = pts
            .iter()
            .enumerate()
            .map(|(i, &(x, _))| {
                let w = &pts[i.saturating_sub(9)..=i];
                (x, w.iter().map(|p| p.1).sum::<f64>() / w.len() as f64)
            })
            .collect();
        series.push((name.clone(), smooth));
    }
    let panel = Panel {
        title: "LION training loss (mean of 10 steps)",
        x_label: "step",
        y_label: "loss",
        series: series
            .iter()
            .map(|(n, p)| Series {
                name: n,
                points: p.clone(),
            })
            .collect(),
    };
    draw_png(png, &[panel], (720, 420))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_item_scores_and_the_baseline_table() {
        let tmp = tempfile::tempdir().unwrap();
        let rec = tmp.path().join("rec.json");
        let rows: Vec<Value> = (0..20)
            .map(|i| json!({"id": format!("sent_id {i}"), "iou": f64::from(i) / 20.0, "hit": i >= 10}))
            .collect();
        crate::files::write_json(&rec, &json!({"per_item": rows})).unwrap();
        let sc = per_item(&rec, "rec").unwrap();
        assert_eq!(mean(&sc["rec"]), 0.5);
        assert_eq!(mean(&sc["rec01"]), 0.9, "IoU >= 0.1: items 2..20");
        let bad = tmp.path().join("bad.json");
        crate::files::write_json(
            &bad,
            &json!({"per_item": [{"question_id": 1, "accuracy": "x"}]}),
        )
        .unwrap();
        let e = per_item(&bad, "vqa").unwrap_err().to_string();
        assert!(e.contains("bad.json") && e.contains("accuracy"), "{e}");

        let run = |xs: &[f64]| -> RunScores {
            ["caption", "vqa", "rec"]
                .iter()
                .map(|t| {
                    let items = xs
                        .iter()
                        .enumerate()
                        .map(|(i, &x)| (format!("{i}"), x))
                        .collect();
                    (t.to_string(), items)
                })
                .collect()
        };
        let base = vec![("baseline".to_string(), run(&[0.0; 30]))];
        let good = vec![("good".to_string(), run(&[1.0; 30]))];
        let (md, js, all) = baseline_tables(&good, &base, 200, 1);
        assert!(
            all && md.contains("| good |") && md.contains(" yes |"),
            "{md}"
        );
        assert_eq!(js["good - best baseline"]["vqa"]["lo"], 1.0);
        let (_, _, all) = baseline_tables(&base, &good, 200, 1);
        assert!(!all);
    }
}
