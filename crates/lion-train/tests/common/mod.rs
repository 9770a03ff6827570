//! Shared test helpers: fixture paths.
#![allow(dead_code)]

use std::path::PathBuf;

/// The repository root (`LION_REPO_ROOT` when set: test binaries carried to another machine).
pub fn repo_root() -> PathBuf {
    lion_core::testing::repo_root(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

pub fn fixture(rel: &str) -> PathBuf {
    repo_root().join("tests/fixtures").join(rel)
}

/// The all-MiniLM-L6-v2 folder: `LION_MINILM_DIR`, else `models/all-MiniLM-L6-v2`.
pub fn minilm_dir() -> PathBuf {
    let dir = std::env::var_os("LION_MINILM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("models/all-MiniLM-L6-v2"));
    assert!(
        dir.join("model.safetensors").exists(),
        "all-MiniLM-L6-v2 not found in {}: run scripts/get-minilm.sh (the test command does)",
        dir.display()
    );
    dir
}
