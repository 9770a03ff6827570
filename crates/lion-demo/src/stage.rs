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

/// The record a training stage writes when it starts (the same content as [`STAGE_FILE`]), so
/// that a rerun after an interruption knows the run's checkpoints were made from its inputs.
pub const STARTED_FILE: &str = "stage-started.json";

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
    write_record(&dir.join(STAGE_FILE), inputs)?;
    let started = dir.join(STARTED_FILE);
    match std::fs::remove_file(&started) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(&started, e)),
        _ => Ok(()),
    }
}

/// Records that a training stage in `dir` (created if missing) started from `inputs`, before
/// its first step: [`reuse_resume_or_clear`] resumes it after an interruption.
pub fn mark_started(dir: &Path, inputs: &StageInputs) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    write_record(&dir.join(STARTED_FILE), inputs)
}

fn write_record(path: &Path, inputs: &StageInputs) -> Result<()> {
    let text = serde_json::to_string_pretty(&inputs.to_json()).expect("a JSON value serialises");
    lion_core::util::write_atomic(path, text.as_bytes())?;
    Ok(())
}

/// How a training stage goes on: see [`reuse_resume_or_clear`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Made from the same inputs: its outputs are used as they are.
    Reuse,
    /// Interrupted, and started from the same inputs: its run continues from its last
    /// checkpoint (the folder is kept).
    Resume,
    /// Not made, or made from other inputs: the folder was removed; the caller starts the
    /// stage, calling [`mark_started`] before training and [`mark_done`] at the end.
    Fresh,
}

/// [`reuse_or_clear`] for a training stage, whose run keeps checkpoints: a stage interrupted
/// after [`mark_started`] with the same inputs as now is resumed rather than redone (the long
/// backbone legs would otherwise lose hours to a kill).
pub fn reuse_resume_or_clear(stage: &str, dir: &Path, inputs: &StageInputs) -> Result<Start> {
    if freshness(dir, inputs) != Freshness::Fresh && started_from(dir, inputs) {
        tracing::info!(
            "{stage}: resumed ({} was interrupted, and started from the same inputs)",
            dir.display()
        );
        return Ok(Start::Resume);
    }
    Ok(if reuse_or_clear(stage, dir, inputs)? {
        Start::Reuse
    } else {
        Start::Fresh
    })
}

/// Whether `dir` holds a [`STARTED_FILE`] recording `inputs`.
fn started_from(dir: &Path, inputs: &StageInputs) -> bool {
    std::fs::read_to_string(dir.join(STARTED_FILE))
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .is_some_and(|old| inputs.difference(&old).is_none())
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

    #[test]
    fn an_interrupted_training_stage_resumes_only_from_the_same_inputs() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("leg");
        let input = tmp.path().join("in.txt");
        std::fs::write(&input, "a").unwrap();
        let inputs = StageInputs::new(json!({"steps": 4}), &[("data", &input)]).unwrap();
        assert_eq!(
            reuse_resume_or_clear("t", &dir, &inputs).unwrap(),
            Start::Fresh
        );
        mark_started(&dir, &inputs).unwrap();
        std::fs::write(dir.join("checkpoint"), "x").unwrap();
        // killed here: the same inputs resume, keeping what the run wrote
        assert_eq!(
            reuse_resume_or_clear("t", &dir, &inputs).unwrap(),
            Start::Resume
        );
        assert!(dir.join("checkpoint").exists());
        // other settings start over
        let other = StageInputs::new(json!({"steps": 5}), &[("data", &input)]).unwrap();
        assert_eq!(
            reuse_resume_or_clear("t", &dir, &other).unwrap(),
            Start::Fresh
        );
        assert!(!dir.exists(), "a run from other inputs is removed");
        // and so do changed input files
        mark_started(&dir, &inputs).unwrap();
        std::fs::write(&input, "b").unwrap();
        let changed = StageInputs::new(json!({"steps": 4}), &[("data", &input)]).unwrap();
        assert_eq!(
            reuse_resume_or_clear("t", &dir, &changed).unwrap(),
            Start::Fresh
        );
        // a finished stage is reused, and its started record is gone
        mark_started(&dir, &changed).unwrap();
        mark_done(&dir, &changed).unwrap();
        assert!(!dir.join(STARTED_FILE).exists());
        assert_eq!(
            reuse_resume_or_clear("t", &dir, &changed).unwrap(),
            Start::Reuse
        );
    }
}
