//! A demo stage's record of what it was made from, so that a rerun reuses its outputs only when
//! they would come out the same.
//!
//! A finished stage writes `stage.json` into its folder: the stage's settings (seed, sizes,
//! epochs, ...) and the FNV-1a 64 checksum of each input file. A rerun compares the record with
//! the inputs it has now; any difference (or no record: an interrupted stage, or one made by an
//! older demo) means the stage is redone, and the reason is logged.

use std::collections::BTreeMap;
use std::path::Path;

use lion_core::{Error, Result};
use serde_json::{json, Value};

/// The record's file name, in the stage's folder.
pub const STAGE_FILE: &str = "stage.json";

/// What a stage is made from: settings and input files (by name, checksummed on creation).
#[derive(Debug, Clone, PartialEq)]
pub struct StageInputs {
    pub settings: Value,
    /// Input name -> FNV-1a 64 of the file's bytes (hex).
    pub files: BTreeMap<String, String>,
}

/// FNV-1a 64 of a file, as 16 hex digits.
pub fn file_checksum(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    Ok(format!("{:016x}", lion_train::checkpoint::fnv1a64(&bytes)))
}

impl StageInputs {
    /// Settings and the named input files (each must exist).
    pub fn new(settings: Value, files: &[(&str, &Path)]) -> Result<Self> {
        let mut f = BTreeMap::new();
        for (name, path) in files {
            f.insert(name.to_string(), file_checksum(path)?);
        }
        Ok(Self { settings, files: f })
    }

    fn to_json(&self) -> Value {
        json!({"settings": self.settings, "files": self.files})
    }

    /// Why a stage recorded as `old` is not made from these inputs, or None when it is.
    fn difference(&self, old: &Value) -> Option<String> {
        let mut why = vec![];
        let (mut now, mut was) = (BTreeMap::new(), BTreeMap::new());
        flatten("", &self.settings, &mut now);
        flatten("", &old["settings"], &mut was);
        let keys: std::collections::BTreeSet<&String> = now.keys().chain(was.keys()).collect();
        for k in keys {
            let (a, b) = (was.get(k), now.get(k));
            if a != b {
                let show = |v: Option<&Value>| v.map_or("(none)".to_string(), Value::to_string);
                why.push(format!("{k} {} -> {}", show(a), show(b)));
            }
        }
        for (name, sum) in &self.files {
            match old["files"][name].as_str() {
                Some(s) if s == sum => {}
                Some(_) => why.push(format!("{name} changed")),
                None => why.push(format!("{name} is a new input")),
            }
        }
        (!why.is_empty()).then(|| why.join(", "))
    }
}

/// Settings as `a.b.c` -> value (objects opened, other values whole).
fn flatten(prefix: &str, v: &Value, out: &mut BTreeMap<String, Value>) {
    match v.as_object() {
        Some(m) => {
            for (k, x) in m {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, x, out);
            }
        }
        None if !prefix.is_empty() => {
            out.insert(prefix.to_string(), v.clone());
        }
        None => {}
    }
}

/// Whether a stage's outputs in `dir` can be reused.
#[derive(Debug, Clone, PartialEq)]
pub enum Freshness {
    /// Made from the same inputs.
    Fresh,
    /// Must be redone, for this reason.
    Stale(String),
}

/// Compares `dir`'s record with `inputs`.
pub fn freshness(dir: &Path, inputs: &StageInputs) -> Freshness {
    let path = dir.join(STAGE_FILE);
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Freshness::Stale(if dir.exists() {
            format!("no {STAGE_FILE} (interrupted, or made by an older demo)")
        } else {
            "not made yet".to_string()
        });
    };
    match serde_json::from_str::<Value>(&text) {
        Err(e) => Freshness::Stale(format!("{} is not JSON ({e})", path.display())),
        Ok(old) => match inputs.difference(&old) {
            None => Freshness::Fresh,
            Some(why) => Freshness::Stale(why),
        },
    }
}

/// Records that the stage in `dir` was made from `inputs` (written atomically, last).
pub fn mark_done(dir: &Path, inputs: &StageInputs) -> Result<()> {
    let text = serde_json::to_string_pretty(&inputs.to_json()).expect("a JSON value serialises");
    lion_core::util::write_atomic(dir.join(STAGE_FILE), text.as_bytes())?;
    Ok(())
}

/// True when `dir` can be reused; otherwise logs why not, removes `dir` (its outputs were made
/// from other inputs) and returns false: the caller redoes the stage, then calls [`mark_done`].
pub fn reuse_or_clear(stage: &str, dir: &Path, inputs: &StageInputs) -> Result<bool> {
    match freshness(dir, inputs) {
        Freshness::Fresh => {
            tracing::info!(
                "{stage}: reused ({} is made from the same inputs)",
                dir.display()
            );
            Ok(true)
        }
        Freshness::Stale(why) => {
            if dir.exists() {
                tracing::info!("{stage}: redone ({why})");
                std::fs::remove_dir_all(dir).map_err(|e| Error::io(dir, e))?;
            }
            Ok(false)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stage_is_fresh_only_for_the_same_settings_and_files() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("stage");
        let input = tmp.path().join("in.txt");
        std::fs::write(&input, "a").unwrap();
        let inputs =
            StageInputs::new(json!({"seed": 0, "epochs": 2}), &[("data", &input)]).unwrap();
        assert!(matches!(freshness(&dir, &inputs), Freshness::Stale(w) if w == "not made yet"));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(
            matches!(freshness(&dir, &inputs), Freshness::Stale(w) if w.contains("no stage.json"))
        );
        mark_done(&dir, &inputs).unwrap();
        assert_eq!(freshness(&dir, &inputs), Freshness::Fresh);

        let other_seed =
            StageInputs::new(json!({"seed": 1, "epochs": 2}), &[("data", &input)]).unwrap();
        assert_eq!(
            freshness(&dir, &other_seed),
            Freshness::Stale("seed 0 -> 1".into())
        );
        std::fs::write(&input, "b").unwrap();
        let changed =
            StageInputs::new(json!({"seed": 0, "epochs": 2}), &[("data", &input)]).unwrap();
        assert_eq!(
            freshness(&dir, &changed),
            Freshness::Stale("data changed".into())
        );
        let nested = StageInputs::new(
            json!({"seed": 0, "epochs": 2, "train": {"steps": 3}}),
            &[("data", &input)],
        )
        .unwrap();
        mark_done(&dir, &nested).unwrap();
        let deeper = StageInputs::new(
            json!({"seed": 0, "epochs": 2, "train": {"steps": 4}}),
            &[("data", &input)],
        )
        .unwrap();
        assert_eq!(
            freshness(&dir, &deeper),
            Freshness::Stale("train.steps 3 -> 4".into())
        );
        mark_done(&dir, &inputs).unwrap();
        let more =
            StageInputs::new(json!({"seed": 0}), &[("data", &input), ("extra", &input)]).unwrap();
        assert_eq!(
            freshness(&dir, &more),
            Freshness::Stale("epochs 2 -> (none), data changed, extra is a new input".into())
        );

        std::fs::write(dir.join("output"), "x").unwrap();
        assert!(!reuse_or_clear("test", &dir, &changed).unwrap());
        assert!(!dir.exists(), "stale outputs are removed");
        std::fs::create_dir_all(&dir).unwrap();
        mark_done(&dir, &changed).unwrap();
        assert!(reuse_or_clear("test", &dir, &changed).unwrap());
        assert!(dir.join(STAGE_FILE).exists());
        assert!(StageInputs::new(json!({}), &[("gone", &tmp.path().join("nope"))]).is_err());
    }
}
