//! Where models are found: one resolver for every `--model`, `--embed-model`, `--tag-encoder`
//! and tokenizer flag, so no default depends on the current directory.
//!
//! [`resolve_model`] takes what the user wrote and tries, in order:
//! 1. an existing folder: that folder;
//! 2. a Hub id `org/name`: `$LION_HOME/models/org/name`, then the local Hugging Face cache
//!    (`$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`) in its
//!    `models--org--name/snapshots/REV/` layout, `REV` being the commit `refs/main` names, else
//!    the only (or the newest) snapshot;
//! 3. with the `hub-download` cargo feature, a download into that cache through the `hf-hub`
//!    crate (`HF_ENDPOINT` honoured). Without it, or offline, the error names every place
//!    searched and how to fill one (`scripts/get-minilm.sh` for all-MiniLM-L6-v2).
//!
//! [`resolve_file`] does the same for a file inside a model (a tokenizer): a file path, a model
//! folder, or a Hub id, the file then being `name` inside it.

use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// all-MiniLM-L6-v2: the default sentence embedder, tag encoder and Q-Former tokenizer.
pub const DEFAULT_MINILM: &str = "sentence-transformers/all-MiniLM-L6-v2";

/// The Hugging Face hub cache: `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else
/// `~/.cache/huggingface/hub` (None without any of them, e.g. no `HOME`).
pub fn hf_hub_cache() -> Option<PathBuf> {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    var("HF_HUB_CACHE")
        .or_else(|| var("HF_HOME").map(|h| h.join("hub")))
        .or_else(|| var("HOME").map(|h| h.join(".cache/huggingface/hub")))
}

/// `$LION_HOME` when set: models live under `$LION_HOME/models/org/name`.
pub fn lion_home() -> Option<PathBuf> {
    std::env::var_os("LION_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// Whether `s` has the form of a Hub model id, `org/name` (letters, digits, `-`, `_`, `.`; no
/// leading `.`, no `..`).
pub fn is_hub_id(s: &str) -> bool {
    let part = |p: &str| {
        !p.is_empty()
            && !p.starts_with('.')
            && !p.contains("..")
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    matches!(s.split_once('/'), Some((org, name)) if part(org) && part(name))
}

/// The snapshot folder of `id` in a hub cache: the commit `refs/main` names when its folder
/// exists, else the only (or most recently modified) snapshot; None when the model is not there.
pub fn cached_snapshot(cache: &Path, id: &str) -> Option<PathBuf> {
    let repo = cache.join(format!("models--{}", id.replace('/', "--")));
    let snapshots = repo.join("snapshots");
    if let Ok(rev) = std::fs::read_to_string(repo.join("refs/main")) {
        let dir = snapshots.join(rev.trim());
        if !rev.trim().is_empty() && dir.is_dir() {
            return Some(dir);
        }
    }
    std::fs::read_dir(&snapshots)
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .max_by_key(|e| {
            let modified = e.metadata().and_then(|m| m.modified()).ok();
            (modified, e.file_name())
        })
        .map(|e| e.path())
}

/// Resolves a model given as a folder or a Hub id (see the module docs).
pub fn resolve_model(spec: &str) -> Result<PathBuf> {
    let path = Path::new(spec);
    if path.is_dir() {
        return Ok(path.to_path_buf());
    }
    let mut searched = vec![format!("{} (no such folder)", path.display())];
    if !is_hub_id(spec) {
        return Err(Error::ModelNotFound {
            spec: spec.to_string(),
            searched,
            hint: "give an existing folder or a Hub id `org/name`".into(),
        });
    }
    if let Some(home) = lion_home() {
        let dir = home.join("models").join(spec);
        if dir.is_dir() {
            return Ok(dir);
        }
        searched.push(format!("{} ($LION_HOME)", dir.display()));
    } else {
        searched.push("$LION_HOME/models/ (LION_HOME is not set)".into());
    }
    let cache = hf_hub_cache();
    match &cache {
        Some(c) => {
            if let Some(dir) = cached_snapshot(c, spec) {
                tracing::debug!(model = spec, dir = %dir.display(), "found in the Hugging Face cache");
                return Ok(dir);
            }
            searched.push(format!(
                "{}/snapshots/ (Hugging Face cache)",
                c.join(format!("models--{}", spec.replace('/', "--")))
                    .display()
            ));
        }
        None => searched.push("the Hugging Face cache (no HF_HUB_CACHE, HF_HOME or HOME)".into()),
    }
    #[cfg(feature = "hub-download")]
    if let Some(c) = &cache {
        return crate::hub_download::download(spec, c).map_err(|msg| Error::ModelNotFound {
            spec: spec.to_string(),
            searched: searched.clone(),
            hint: format!("downloading it failed: {msg}"),
        });
    }
    let fetch = if spec == DEFAULT_MINILM {
        "run scripts/get-minilm.sh (fills the Hugging Face cache), or ".to_string()
    } else {
        String::new()
    };
    Err(Error::ModelNotFound {
        spec: spec.to_string(),
        searched,
        hint: format!(
            "{fetch}`huggingface-cli download {spec}` while online, or build with \
             `--features hub-download` to let lion download it"
        ),
    })
}

/// Resolves a file of a model: `spec` an existing file (taken as it is), or a folder or Hub id
/// holding `name`.
pub fn resolve_file(spec: &str, name: &str) -> Result<PathBuf> {
    let path = Path::new(spec);
    if path.is_file() {
        return Ok(path.to_path_buf());
    }
    let file = resolve_model(spec)?.join(name);
    if !file.is_file() {
        return Err(Error::format(&file, format!("`{spec}` has no {name}")));
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_ids_are_org_slash_name() {
        assert!(is_hub_id("sentence-transformers/all-MiniLM-L6-v2"));
        assert!(is_hub_id("google/flan-t5-xl"));
        for bad in [
            "model",
            "a/b/c",
            "/abs",
            "./x",
            "../x/y",
            "a/",
            "a b/c",
            "x/.hidden",
        ] {
            assert!(!is_hub_id(bad), "{bad}");
        }
    }
}
