//! Training checkpoints: one folder per saved step under `OUT/checkpoints/step-NNNNNNNN/` with
//! - `trainable.safetensors`: only the trainable tensors, under upstream key names;
//! - `optimizer.safetensors`: the AdamW moments (`exp_avg.{key}`, `exp_avg_sq.{key}`);
//! - `state.json`: step, per-task batch counters and the data seed (the data order is a pure
//!   function of these);
//! - `config.json`: the training config;
//! - `manifest.json`, written last: each file's size and FNV-1a 64 checksum.
//!
//! The folder is written under a temporary name and renamed into place, then `OUT/latest` (the
//! folder name) is replaced atomically. A checkpoint whose manifest is missing, or whose files do
//! not match it, is refused with a message naming the file.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use lion_core::{Error, Result};
use serde::{Deserialize, Serialize};

pub const MANIFEST: &str = "manifest.json";
pub const TRAINABLE: &str = "trainable.safetensors";
pub const OPTIMIZER: &str = "optimizer.safetensors";
pub const STATE: &str = "state.json";
pub const CONFIG: &str = "config.json";
const FILES: [&str; 4] = [TRAINABLE, OPTIMIZER, STATE, CONFIG];

/// FNV-1a 64 of a byte string (a corruption check, not a cryptographic hash).
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FileEntry {
    pub bytes: u64,
    pub fnv1a64: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub step: u64,
    pub files: BTreeMap<String, FileEntry>,
}

/// Where the data order and the optimizer clock stand.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrainState {
    /// Optimizer steps done.
    pub step: u64,
    /// Batches drawn so far from each task's data file, in config order.
    pub task_batches: Vec<u64>,
    pub seed: u64,
}

/// A loaded checkpoint.
pub struct Loaded {
    pub dir: PathBuf,
    pub state: TrainState,
    pub trainable: HashMap<String, Tensor>,
    pub optimizer: HashMap<String, Tensor>,
    pub config: serde_json::Value,
}

fn checkpoints_dir(out: &Path) -> PathBuf {
    out.join("checkpoints")
}

/// Writes a checkpoint of `state.step` and points `OUT/latest` at it; keeps the newest `keep`.
pub fn save(
    out: &Path,
    state: &TrainState,
    trainable: &HashMap<String, Tensor>,
    optimizer: &HashMap<String, Tensor>,
    config: &serde_json::Value,
    keep: usize,
) -> Result<PathBuf> {
    let root = checkpoints_dir(out);
    std::fs::create_dir_all(&root).map_err(|e| Error::io(&root, e))?;
    let name = format!("step-{:08}", state.step);
    let dir = root.join(&name);
    let tmp = root.join(format!(".{name}.{}.tmp", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    let written = write_into(&tmp, &dir, &name, out, state, trainable, optimizer, config);
    if written.is_err() {
        // A failed write (disk full, say) leaves no half folder behind to fill the disk.
        let _ = std::fs::remove_dir_all(&tmp);
    }
    written?;
    // Prune older checkpoints (never the one just written).
    let mut old: Vec<PathBuf> = std::fs::read_dir(&root)
        .map_err(|e| Error::io(&root, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            name.starts_with("step-")
        })
        .collect();
    old.sort();
    while old.len() > keep.max(1) {
        let p = old.remove(0);
        if p != dir {
            let _ = std::fs::remove_dir_all(&p);
        }
    }
    clean_stale(out);
    Ok(dir)
}

/// Removes the temporary folders (`.step-*.tmp`) a killed or failed save left in
/// `OUT/checkpoints`; called by every save and by `lion train` at start.
pub fn clean_stale(out: &Path) {
    let Ok(entries) = std::fs::read_dir(checkpoints_dir(out)) else {
        return;
    };
    for p in entries.filter_map(|e| e.ok().map(|e| e.path())) {
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with(".step-") && name.ends_with(".tmp") {
            match std::fs::remove_dir_all(&p) {
                Ok(()) => tracing::info!(path = %p.display(), "removed a stale checkpoint folder"),
                Err(e) => {
                    tracing::warn!(path = %p.display(), "cannot remove a stale checkpoint folder: {e}")
                }
            }
        }
    }
}

/// The checkpoint's files into `tmp`, renamed to `dir`, `OUT/latest` set to `name`.
#[allow(clippy::too_many_arguments)]
fn write_into(
    tmp: &Path,
    dir: &Path,
    name: &str,
    out: &Path,
    state: &TrainState,
    trainable: &HashMap<String, Tensor>,
    optimizer: &HashMap<String, Tensor>,
    config: &serde_json::Value,
) -> Result<()> {
    std::fs::create_dir_all(tmp).map_err(|e| Error::io(tmp, e))?;
    let save_st = |m: &HashMap<String, Tensor>, p: &Path| {
        candle_core::safetensors::save(m, p)
            .map_err(|e| Error::format(p, format!("cannot write safetensors: {e}")))
    };
    save_st(trainable, &tmp.join(TRAINABLE))?;
    save_st(optimizer, &tmp.join(OPTIMIZER))?;
    let json = |v: &dyn erased::Ser, p: &Path| -> Result<()> {
        let s = v.to_string_pretty();
        std::fs::write(p, s).map_err(|e| Error::io(p, e))
    };
    json(state, &tmp.join(STATE))?;
    json(config, &tmp.join(CONFIG))?;
    let mut files = BTreeMap::new();
    for f in FILES {
        let p = tmp.join(f);
        let bytes = std::fs::read(&p).map_err(|e| Error::io(&p, e))?;
        files.insert(
            f.to_string(),
            FileEntry {
                bytes: bytes.len() as u64,
                fnv1a64: format!("{:016x}", fnv1a64(&bytes)),
            },
        );
    }
    let manifest = Manifest {
        step: state.step,
        files,
    };
    let m = serde_json::to_vec_pretty(&manifest).expect("serializable");
    lion_core::util::write_atomic(tmp.join(MANIFEST), &m)?;
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    std::fs::rename(tmp, dir).map_err(|e| Error::io(dir, e))?;
    lion_core::util::write_atomic(out.join("latest"), name.as_bytes())
}

/// Small helper so `save` can write any serializable value.
mod erased {
    pub trait Ser {
        fn to_string_pretty(&self) -> String;
    }
    impl<T: serde::Serialize> Ser for T {
        fn to_string_pretty(&self) -> String {
            serde_json::to_string_pretty(self).expect("serializable")
        }
    }
}

/// The folder `OUT/latest` points at, if any.
pub fn latest(out: &Path) -> Result<Option<PathBuf>> {
    let p = out.join("latest");
    match std::fs::read_to_string(&p) {
        Ok(name) => {
            let name = name.trim();
            // Only a folder of this run: `step-` and digits, no path.
            let ok = name
                .strip_prefix("step-")
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
            if !ok {
                return Err(Error::format(
                    &p,
                    format!(
                        "names `{name}`: must be a checkpoint folder name `step-NNNNNNNN` inside {}",
                        checkpoints_dir(out).display()
                    ),
                ));
            }
            Ok(Some(checkpoints_dir(out).join(name)))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(&p, e)),
    }
}

/// Checks every file of a checkpoint folder against its manifest.
pub fn verify(dir: &Path) -> Result<Manifest> {
    let mp = dir.join(MANIFEST);
    let text = std::fs::read_to_string(&mp).map_err(|e| {
        Error::format(
            &mp,
            format!("checkpoint is incomplete or corrupt: no readable manifest ({e})"),
        )
    })?;
    let m: Manifest = serde_json::from_str(&text)
        .map_err(|e| Error::format(&mp, format!("checkpoint manifest is corrupt: {e}")))?;
    for f in FILES {
        let p = dir.join(f);
        let Some(want) = m.files.get(f) else {
            return Err(Error::format(
                &mp,
                format!("checkpoint manifest lacks `{f}`"),
            ));
        };
        let bytes = std::fs::read(&p).map_err(|e| {
            Error::format(&p, format!("checkpoint file missing or unreadable: {e}"))
        })?;
        if bytes.len() as u64 != want.bytes {
            return Err(Error::format(
                &p,
                format!(
                    "checkpoint file is partial or corrupt: {} bytes, the manifest says {}",
                    bytes.len(),
                    want.bytes
                ),
            ));
        }
        let got = format!("{:016x}", fnv1a64(&bytes));
        if got != want.fnv1a64 {
            return Err(Error::format(
                &p,
                format!(
                    "checkpoint file is corrupt: checksum {got}, the manifest says {}",
                    want.fnv1a64
                ),
            ));
        }
    }
    Ok(m)
}

/// Verifies and loads a checkpoint folder.
pub fn load(dir: &Path, dev: &Device) -> Result<Loaded> {
    verify(dir)?;
    let st = |f: &str| {
        let p = dir.join(f);
        candle_core::safetensors::load(&p, dev)
            .map_err(|e| Error::format(&p, format!("cannot read safetensors: {e}")))
    };
    let state: TrainState = lion_core::util::read_json(dir.join(STATE))?;
    let config: serde_json::Value = lion_core::util::read_json(dir.join(CONFIG))?;
    Ok(Loaded {
        dir: dir.to_path_buf(),
        state,
        trainable: st(TRAINABLE)?,
        optimizer: st(OPTIMIZER)?,
        config,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_reference_values() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn latest_must_name_a_folder_of_this_run() {
        let dir = tempfile::tempdir().unwrap();
        for bad in [
            "../../other/checkpoints/step-00000001",
            "/tmp/x",
            "step-",
            "step-1/..",
        ] {
            std::fs::write(dir.path().join("latest"), bad).unwrap();
            let e = latest(dir.path()).unwrap_err().to_string();
            assert!(e.contains("step-NNNNNNNN"), "{bad}: {e}");
        }
        std::fs::write(dir.path().join("latest"), "step-00000004\n").unwrap();
        assert_eq!(
            latest(dir.path()).unwrap().unwrap(),
            dir.path().join("checkpoints/step-00000004")
        );
    }

    #[test]
    fn a_failed_save_leaves_no_temporary_folder_and_stale_ones_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let dev = Device::Cpu;
        let mut t = HashMap::new();
        t.insert("w".to_string(), Tensor::arange(0f32, 6., &dev).unwrap());
        let st = TrainState {
            step: 3,
            task_batches: vec![1],
            seed: 0,
        };
        let cfg = serde_json::json!({});
        // A stale folder of a killed (or ENOSPC-failed) run of another process.
        let root = dir.path().join("checkpoints");
        let stale = root.join(".step-00000002.999999.tmp");
        std::fs::create_dir_all(&stale).unwrap();
        std::fs::write(stale.join(TRAINABLE), [0u8; 64]).unwrap();
        clean_stale(dir.path());
        assert!(!stale.exists());
        // The save fails after writing its files (the final folder's name is taken by a file
        // that cannot be removed as a folder): its temporary folder goes too.
        std::fs::write(root.join("step-00000003"), b"in the way").unwrap();
        assert!(save(dir.path(), &st, &t, &t, &cfg, 2).is_err());
        let left: Vec<String> = std::fs::read_dir(&root)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left, vec!["step-00000003".to_string()], "{left:?}");
    }

    #[test]
    fn round_trip_and_corruption_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let dev = Device::Cpu;
        let mut t = HashMap::new();
        t.insert("w".to_string(), Tensor::arange(0f32, 6., &dev).unwrap());
        let st = TrainState {
            step: 3,
            task_batches: vec![2, 1],
            seed: 7,
        };
        let cfg = serde_json::json!({"a": 1});
        let p = save(dir.path(), &st, &t, &t, &cfg, 2).unwrap();
        assert_eq!(latest(dir.path()).unwrap().unwrap(), p);
        let l = load(&p, &dev).unwrap();
        assert_eq!(l.state, st);
        assert_eq!(l.trainable["w"].to_vec1::<f32>().unwrap().len(), 6);
        // Flip one byte of the weights.
        let f = p.join(TRAINABLE);
        let mut b = std::fs::read(&f).unwrap();
        let n = b.len();
        b[n - 1] ^= 1;
        std::fs::write(&f, &b).unwrap();
        let e = load(&p, &dev).err().unwrap().to_string();
        assert!(e.contains("corrupt"), "{e}");
        // Truncate it.
        std::fs::write(&f, &b[..n / 2]).unwrap();
        let e = load(&p, &dev).err().unwrap().to_string();
        assert!(e.contains("partial"), "{e}");
        // No manifest.
        std::fs::remove_file(p.join(MANIFEST)).unwrap();
        let e = load(&p, &dev).err().unwrap().to_string();
        assert!(e.contains("incomplete"), "{e}");
    }
}
