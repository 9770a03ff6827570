//! The systems `lion demo` trains and compares: the static, dynamic and gated soft prompts fed
//! the tagger's scored tags, and the ablations beside them (no tags at all; the dynamic prompt
//! fed the world's ground-truth tags), with the differences its report gives.

/// An ablation beside the three prompt kinds (`--ablations none,oracle`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ablation {
    /// No soft prompt and no tags in the prompt (`--prompt none`).
    None,
    /// The dynamic prompt fed the world's ground-truth tags, each with score 1.0.
    Oracle,
}

impl std::str::FromStr for Ablation {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(Ablation::None),
            "oracle" => Ok(Ablation::Oracle),
            other => Err(format!(
                "unknown ablation `{other}` (expected none or oracle)"
            )),
        }
    }
}

/// Where a system's tags come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TagSource {
    /// The demo's tagger, with its scores.
    Predicted,
    /// The world's ground truth, score 1.0.
    Oracle,
    /// No tags.
    Empty,
}

impl TagSource {
    /// (LION data folder, evaluation tags file), relative to the demo's folder.
    pub fn files(self) -> (&'static str, &'static str) {
        match self {
            TagSource::Predicted => ("lion-data", "tags.jsonl"),
            TagSource::Oracle => ("lion-data-oracle", "tags-oracle.jsonl"),
            TagSource::Empty => ("lion-data-none", "tags-none.jsonl"),
        }
    }
}

/// A trained system of the comparison: a prompt kind fed one source of tags.
pub struct SystemSpec {
    /// Short name (folders, comparison tables).
    pub name: &'static str,
    /// The row title of the main table.
    pub title: &'static str,
    pub prompt: &'static str,
    pub tags: TagSource,
}

pub fn system_specs(ablations: &[Ablation]) -> Vec<SystemSpec> {
    let mut v = vec![
        SystemSpec {
            name: "static",
            title: "LION (static prompt)",
            prompt: "static",
            tags: TagSource::Predicted,
        },
        SystemSpec {
            name: "dynamic",
            title: "LION (dynamic prompt)",
            prompt: "dynamic",
            tags: TagSource::Predicted,
        },
        SystemSpec {
            name: "gated",
            title: "LION (gated prompt)",
            prompt: "gated",
            tags: TagSource::Predicted,
        },
    ];
    if ablations.contains(&Ablation::None) {
        v.push(SystemSpec {
            name: "no-tags",
            title: "LION (no tags, no soft prompt)",
            prompt: "none",
            tags: TagSource::Empty,
        });
    }
    if ablations.contains(&Ablation::Oracle) {
        v.push(SystemSpec {
            name: "oracle-tags",
            title: "LION (dynamic prompt, ground-truth tags)",
            prompt: "dynamic",
            tags: TagSource::Oracle,
        });
    }
    v
}

/// The differences the comparison reports, `a - b`.
pub fn comparison_pairs(ablations: &[Ablation]) -> Vec<(&'static str, &'static str)> {
    let mut v = vec![
        ("dynamic", "static"),
        ("gated", "static"),
        ("gated", "dynamic"),
    ];
    if ablations.contains(&Ablation::None) {
        v.extend([("static", "no-tags"), ("dynamic", "no-tags")]);
    }
    if ablations.contains(&Ablation::Oracle) {
        v.push(("oracle-tags", "dynamic"));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ablations_add_systems_and_differences() {
        assert_eq!("oracle".parse::<Ablation>(), Ok(Ablation::Oracle));
        assert!("nope"
            .parse::<Ablation>()
            .unwrap_err()
            .contains("none or oracle"));
        let names = |a: &[Ablation]| system_specs(a).iter().map(|s| s.name).collect::<Vec<_>>();
        assert_eq!(names(&[]), ["static", "dynamic", "gated"]);
        assert_eq!(
            names(&[Ablation::Oracle, Ablation::None]),
            ["static", "dynamic", "gated", "no-tags", "oracle-tags"]
        );
        let both = [Ablation::None, Ablation::Oracle];
        let specs = system_specs(&both);
        for (a, b) in comparison_pairs(&both) {
            assert!(specs.iter().any(|s| s.name == a) && specs.iter().any(|s| s.name == b));
        }
        assert_eq!(comparison_pairs(&[]).len(), 3);
        assert_ne!(TagSource::Oracle.files(), TagSource::Empty.files());
    }
}
