//! Helpers of the ShapesWorld tests (`world.rs`, `world_scenes.rs`).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use lion_data::world::{generate, WorldConfig};

pub fn cfg(seed: u64, train: usize, size: u32) -> WorldConfig {
    WorldConfig {
        seed,
        train,
        val: 3,
        test: 3,
        size,
        questions_per_image: 5,
        threads: 2,
    }
}

pub fn make(dir: &Path, name: &str, c: &WorldConfig) -> PathBuf {
    let out = dir.join(name);
    generate(c, &out, false, &|_| {}).expect("generate");
    out
}

/// Every file under `root` with its bytes, sorted by relative path.
pub fn tree(root: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

pub fn read<T: serde::de::DeserializeOwned>(dir: &Path, rel: &str) -> T {
    let text = std::fs::read_to_string(dir.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{rel}: {e}"))
}
