//! Downloading a model from the Hugging Face Hub into the local hub cache (cargo feature
//! `hub-download`, off by default: `hf-hub` with `ureq` and rustls adds ~40 crates).
//!
//! Which files: for a LION model folder (the repo has `lion.json`), `lion.json` and every file
//! it names (a weight entry naming a folder takes the files under it); otherwise every file of
//! the repo except other frameworks' weights (`*.h5`, `*.msgpack`, `*.ot`, `*.onnx`, `onnx/`,
//! `openvino/`, and `*.bin` / `*.pt` / `*.pth` when the repo has `*.safetensors`).

use std::path::{Path, PathBuf};

use hf_hub::api::sync::ApiBuilder;

/// Downloads `id` into `cache` (the hub folder) and returns its snapshot folder.
pub(crate) fn download(id: &str, cache: &Path) -> Result<PathBuf, String> {
    let mut builder = ApiBuilder::from_cache(hf_hub::Cache::new(cache.to_path_buf()));
    if let Some(endpoint) = std::env::var("HF_ENDPOINT").ok().filter(|e| !e.is_empty()) {
        builder = builder.with_endpoint(endpoint);
    }
    let api = builder.build().map_err(|e| e.to_string())?;
    let repo = api.model(id.to_string());
    let info = repo.info().map_err(|e| format!("repo info: {e}"))?;
    let names: Vec<String> = info.siblings.into_iter().map(|s| s.rfilename).collect();
    let wanted = if names.iter().any(|n| n == "lion.json") {
        let manifest = repo
            .get("lion.json")
            .map_err(|e| format!("lion.json: {e}"))?;
        let m = crate::pipeline::Manifest::read(&manifest).map_err(|e| e.to_string())?;
        lion_files(&m, &names)
    } else {
        default_files(&names)
    };
    tracing::info!(model = id, files = wanted.len(), cache = %cache.display(), "downloading from the Hugging Face Hub");
    let mut snapshot = None;
    for name in &wanted {
        let path = repo.get(name).map_err(|e| format!("{name}: {e}"))?;
        // the snapshot folder: the file's path less its (possibly nested) name
        let depth = Path::new(name).components().count();
        snapshot = path.ancestors().nth(depth).map(Path::to_path_buf);
    }
    snapshot.ok_or_else(|| format!("the repo {id} has no files to download"))
}

fn lion_files(m: &crate::pipeline::Manifest, names: &[String]) -> Vec<String> {
    let mut refs: Vec<&Path> = m.weights.iter().map(|w| w.file.as_path()).collect();
    refs.push(&m.t5_tokenizer);
    refs.extend(m.qformer_tokenizer.as_deref());
    refs.extend(m.tag_encoder.as_deref());
    names
        .iter()
        .filter(|n| {
            n.as_str() == "lion.json"
                || refs.iter().any(|r| {
                    let r = r.to_string_lossy();
                    n.as_str() == r || n.starts_with(&format!("{}/", r.trim_end_matches('/')))
                })
        })
        .cloned()
        .collect()
}

fn default_files(names: &[String]) -> Vec<String> {
    let has_safetensors = names.iter().any(|n| n.ends_with(".safetensors"));
    names
        .iter()
        .filter(|n| {
            let other_framework = [".h5", ".msgpack", ".ot", ".onnx"]
                .iter()
                .any(|x| n.ends_with(x))
                || n.starts_with("onnx/")
                || n.starts_with("openvino/");
            let pickled = [".bin", ".pt", ".pth"].iter().any(|x| n.ends_with(x));
            let pickled_beside_safetensors = has_safetensors && pickled;
            !(other_framework || pickled_beside_safetensors)
        })
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn default_files_skip_other_frameworks() {
        let names: Vec<String> = [
            "config.json",
            "model.safetensors",
            "pytorch_model.bin",
            "tf_model.h5",
            "onnx/model.onnx",
            "1_Pooling/config.json",
            "tokenizer.json",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            super::default_files(&names),
            [
                "config.json",
                "model.safetensors",
                "1_Pooling/config.json",
                "tokenizer.json"
            ]
        );
    }
}
