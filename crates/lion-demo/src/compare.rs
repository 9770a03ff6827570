//! The demo's comparison of prompt kinds: each system's mean over its seeded runs with an
//! interval over runs and items, paired differences between systems, the same by question /
//! expression kind, and conclusions written from the intervals.
//!
//! A system has one or more runs (seeds); a run's score on a metric is a mean over test items.
//! Intervals come from [`nested_paired_interval`]: runs and items are resampled, and a difference
//! pairs run `s` of one system with run `s` of the other (the same seed: the same data order) and
//! each item with itself.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use lion_train::bootstrap::{nested_paired_interval, Interval};

/// Per-item scores of one run on one metric, by item id.
pub type Items = BTreeMap<String, f64>;

/// A system's runs: `runs[s][metric]`.
#[derive(Debug, Clone)]
pub struct System {
    pub name: String,
    pub runs: Vec<BTreeMap<String, Items>>,
}

/// Bootstrap settings.
#[derive(Debug, Clone, Copy)]
pub struct Boot {
    pub resamples: usize,
    pub level: f64,
    pub seed: u64,
}

/// Item ids of `metric` that every run of every system scored, filtered by `keep`, in order.
fn common_ids(systems: &[&System], metric: &str, keep: &dyn Fn(&str) -> bool) -> Vec<String> {
    let mut ids: Option<Vec<String>> = None;
    for s in systems {
        for r in &s.runs {
            let here: Vec<String> = r
                .get(metric)
                .map(|m| m.keys().filter(|k| keep(k)).cloned().collect())
                .unwrap_or_default();
            ids = Some(match ids {
                None => here,
                Some(v) => v.into_iter().filter(|k| here.contains(k)).collect(),
            });
        }
    }
    ids.unwrap_or_default()
}

fn matrix(s: &System, metric: &str, ids: &[String], runs: usize) -> Vec<Vec<f64>> {
    s.runs[..runs]
        .iter()
        .map(|r| ids.iter().map(|i| r[metric][i]).collect())
        .collect()
}

/// The mean of `a` (minus `b`, paired) on `metric` over the items `keep` lets through, with its
/// interval and item count; None when no items are left.
pub fn difference(
    a: &System,
    b: Option<&System>,
    metric: &str,
    keep: &dyn Fn(&str) -> bool,
    boot: Boot,
) -> Option<(Interval, usize)> {
    let systems: Vec<&System> = std::iter::once(a).chain(b).collect();
    let ids = common_ids(&systems, metric, keep);
    let runs = systems.iter().map(|s| s.runs.len()).min()?;
    let ma = matrix(a, metric, &ids, runs);
    let mb = b.map_or(vec![], |b| matrix(b, metric, &ids, runs));
    nested_paired_interval(&ma, &mb, boot.resamples, boot.level, boot.seed).map(|i| (i, ids.len()))
}

/// "12.3 [10.1, 14.6]" (×100).
pub fn fmt_interval(i: &Interval) -> String {
    format!(
        "{:.1} [{:.1}, {:.1}]",
        100.0 * i.mean,
        100.0 * i.lo,
        100.0 * i.hi
    )
}

/// "+1.2 [-0.4, +2.9]" (×100), for differences.
pub fn fmt_signed(i: &Interval) -> String {
    format!(
        "{:+.1} [{:+.1}, {:+.1}]",
        100.0 * i.mean,
        100.0 * i.lo,
        100.0 * i.hi
    )
}

/// One sentence about a difference `a - b` with its interval at `level`: resolved when the
/// interval excludes 0 (and then which system is better), not resolved otherwise.
pub fn conclusion(a: &str, b: &str, on: &str, d: &Interval, level: f64) -> String {
    let pct = (100.0 * level).round();
    let verdict = if d.lo > 0.0 {
        format!("resolved: {a} is better than {b} (the {pct}% interval is above 0)")
    } else if d.hi < 0.0 {
        format!("resolved: {a} is worse than {b} (the {pct}% interval is below 0)")
    } else {
        format!("not resolved (the {pct}% interval contains 0)")
    };
    format!("{a} - {b} on {on}: {}, {verdict}", fmt_signed(d))
}

/// A metric of the report: key in the runs, column title, optional item kinds (id -> kind).
pub struct Metric<'a> {
    pub key: &'a str,
    pub title: &'a str,
    pub kinds: Option<&'a BTreeMap<String, String>>,
}

/// The comparison's markdown sections (means, paired differences, per kind, conclusions) and
/// the same numbers as JSON.
pub fn comparison_report(
    systems: &[System],
    pairs: &[(&str, &str)],
    metrics: &[Metric],
    boot: Boot,
) -> (String, Value) {
    let by_name: BTreeMap<&str, &System> = systems.iter().map(|s| (s.name.as_str(), s)).collect();
    let pairs: Vec<(&System, &System)> = pairs
        .iter()
        .filter_map(|(a, b)| Some((*by_name.get(a)?, *by_name.get(b)?)))
        .collect();
    let all = |_: &str| true;
    let runs = systems.iter().map(|s| s.runs.len()).min().unwrap_or(0);
    let pct = (100.0 * boot.level).round();
    let mut md = format!(
        "### Means over {runs} seed(s)\n\n{pct}% intervals over seeds and test items (nested \
         bootstrap, {} resamples).\n\n| system | {} |\n|---|{}\n",
        boot.resamples,
        metrics
            .iter()
            .map(|m| m.title)
            .collect::<Vec<_>>()
            .join(" | "),
        "---|".repeat(metrics.len())
    );
    let mut js = json!({"seeds": runs, "means": {}, "differences": {}, "by_kind": {}});
    for s in systems {
        md.push_str(&format!("| {} |", s.name));
        for m in metrics {
            let cell = difference(s, None, m.key, &all, boot);
            md.push_str(&format!(
                " {} |",
                cell.map_or("-".into(), |c| fmt_interval(&c.0))
            ));
            js["means"][&s.name][m.key] = json!(cell.map(|c| c.0));
        }
        md.push('\n');
    }
    md.push_str(&format!(
        "\n### Paired differences\n\nRun s of one system against run s of the other (same seed, \
         same data order), item against item; points, {pct}% intervals.\n\n| difference | {} |\n|---|{}\n",
        metrics.iter().map(|m| m.title).collect::<Vec<_>>().join(" | "),
        "---|".repeat(metrics.len())
    ));
    let mut conclusions = vec![];
    for (a, b) in &pairs {
        let label = format!("{} - {}", a.name, b.name);
        md.push_str(&format!("| {label} |"));
        for m in metrics {
            let d = difference(a, Some(b), m.key, &all, boot);
            md.push_str(&format!(
                " {} |",
                d.map_or("-".into(), |c| fmt_signed(&c.0))
            ));
            js["differences"][&label][m.key] = json!(d.map(|c| c.0));
            if let Some((d, _)) = d {
                conclusions.push(conclusion(&a.name, &b.name, m.title, &d, boot.level));
            }
        }
        md.push('\n');
    }
    let mut by_kind_resolved = vec![];
    for m in metrics {
        let Some(kinds) = m.kinds else { continue };
        let mut names: Vec<&String> = kinds.values().collect();
        names.sort();
        names.dedup();
        md.push_str(&format!(
            "\n### {} by kind\n\n| kind | items | {} | {} |\n|---|---|{}{}\n",
            m.title,
            systems
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>()
                .join(" | "),
            pairs
                .iter()
                .map(|(a, b)| format!("{} - {}", a.name, b.name))
                .collect::<Vec<_>>()
                .join(" | "),
            "---|".repeat(systems.len()),
            "---|".repeat(pairs.len()),
        ));
        for kind in names {
            let keep = |id: &str| kinds.get(id) == Some(kind);
            let n = systems
                .first()
                .and_then(|s| difference(s, None, m.key, &keep, boot))
                .map_or(0, |c| c.1);
            md.push_str(&format!("| {kind} | {n} |"));
            for s in systems {
                let c = difference(s, None, m.key, &keep, boot);
                md.push_str(&format!(
                    " {} |",
                    c.map_or("-".into(), |c| fmt_interval(&c.0))
                ));
                js["by_kind"][m.key][kind][&s.name] = json!(c.map(|c| c.0));
            }
            for (a, b) in &pairs {
                let label = format!("{} - {}", a.name, b.name);
                let d = difference(a, Some(b), m.key, &keep, boot);
                md.push_str(&format!(
                    " {} |",
                    d.map_or("-".into(), |c| fmt_signed(&c.0))
                ));
                js["by_kind"][m.key][kind][&label] = json!(d.map(|c| c.0));
                if let Some((d, _)) = d.filter(|(d, _)| d.lo > 0.0 || d.hi < 0.0) {
                    let on = format!("{} ({kind})", m.title);
                    by_kind_resolved.push(conclusion(&a.name, &b.name, &on, &d, boot.level));
                }
            }
            md.push('\n');
        }
    }
    md.push_str("\n### Conclusions\n\nWritten from the intervals above.\n\n");
    for c in &conclusions {
        md.push_str(&format!("- {c}\n"));
    }
    if !by_kind_resolved.is_empty() {
        md.push_str(
            "\nResolved by question / expression kind (every other kind: not resolved):\n\n",
        );
        for c in &by_kind_resolved {
            md.push_str(&format!("- {c}\n"));
        }
    } else if metrics.iter().any(|m| m.kinds.is_some()) {
        md.push_str("\nNo difference by question / expression kind is resolved.\n");
    }
    js["conclusions"] = json!(conclusions);
    js["conclusions_by_kind"] = json!(by_kind_resolved);
    (md, js)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iv(mean: f64, lo: f64, hi: f64) -> Interval {
        Interval { mean, lo, hi }
    }

    #[test]
    fn a_conclusion_follows_its_interval() {
        let up = conclusion(
            "dynamic",
            "static",
            "VQA acc.",
            &iv(0.023, 0.004, 0.041),
            0.95,
        );
        assert_eq!(
            up,
            "dynamic - static on VQA acc.: +2.3 [+0.4, +4.1], resolved: dynamic is better than \
             static (the 95% interval is above 0)"
        );
        let down = conclusion(
            "gated",
            "static",
            "Acc@0.5",
            &iv(-0.02, -0.03, -0.001),
            0.95,
        );
        assert!(
            down.contains("resolved: gated is worse than static"),
            "{down}"
        );
        let open = conclusion("gated", "dynamic", "CIDEr-D", &iv(0.01, -0.002, 0.03), 0.9);
        assert!(
            open.ends_with("not resolved (the 90% interval contains 0)"),
            "{open}"
        );
        assert!(open.contains("+1.0 [-0.2, +3.0]"), "{open}");
    }

    fn system(name: &str, runs: &[Vec<f64>]) -> System {
        System {
            name: name.into(),
            runs: runs
                .iter()
                .map(|r| {
                    let items = r
                        .iter()
                        .enumerate()
                        .map(|(i, &x)| (format!("q{i:03}"), x))
                        .collect();
                    BTreeMap::from([("vqa".to_string(), items)])
                })
                .collect(),
        }
    }

    #[test]
    fn the_report_resolves_a_real_gap_and_not_noise() {
        let boot = Boot {
            resamples: 400,
            level: 0.95,
            seed: 1,
        };
        // Static answers 40% of the items; dynamic the same items plus 30% more on "count"
        // questions; gated is static with a different item pattern of the same mean.
        let base: Vec<f64> = (0..200).map(|i| f64::from(i % 5 < 2)).collect();
        let better: Vec<f64> = base
            .iter()
            .enumerate()
            .map(|(i, &x)| if i % 2 == 0 && i % 10 >= 4 { 1.0 } else { x })
            .collect();
        let shuffled: Vec<f64> = (0..200).map(|i| f64::from((i * 7 + 3) % 5 < 2)).collect();
        let systems = vec![
            system("static", &[base.clone(), base.clone()]),
            system("dynamic", &[better.clone(), better]),
            system("gated", &[shuffled.clone(), shuffled]),
        ];
        let kinds: BTreeMap<String, String> = (0..200)
            .map(|i| {
                let k = if i % 2 == 0 { "count" } else { "color" };
                (format!("q{i:03}"), k.to_string())
            })
            .collect();
        let metrics = [Metric {
            key: "vqa",
            title: "VQA acc.",
            kinds: Some(&kinds),
        }];
        let (md, js) = comparison_report(
            &systems,
            &[("dynamic", "static"), ("gated", "static")],
            &metrics,
            boot,
        );
        for section in [
            "### Means over 2 seed(s)",
            "### Paired differences",
            "### VQA acc. by kind",
            "### Conclusions",
        ] {
            assert!(md.contains(section), "{section} missing:\n{md}");
        }
        assert!(md.contains("- dynamic - static on VQA acc.: +"), "{md}");
        assert!(
            md.contains("resolved: dynamic is better than static"),
            "{md}"
        );
        assert!(md.contains("gated - static on VQA acc.: +0.0"), "{md}");
        assert!(
            md.contains("- gated - static on VQA acc.: +0.0 [") && md.contains("not resolved"),
            "{md}"
        );
        // By kind: the gain is on count questions only.
        assert!(md.contains("dynamic - static on VQA acc. (count)"), "{md}");
        assert!(!md.contains("dynamic - static on VQA acc. (color)"), "{md}");
        let d = &js["differences"]["dynamic - static"]["vqa"];
        assert!(d["lo"].as_f64().unwrap() > 0.0, "{d}");
        assert_eq!(js["seeds"], 2);
        assert_eq!(
            js["by_kind"]["vqa"]["color"]["dynamic - static"]["mean"],
            0.0
        );
    }
}
