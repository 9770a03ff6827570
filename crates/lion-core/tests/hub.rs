//! `lion_core::hub::resolve_model` on temporary Hugging Face caches and a LION_HOME: the order
//! of the places, `refs/main` against the newest snapshot, and the error naming what was searched.
//! One test function: the environment variables are the process's.

use std::path::Path;

use lion_core::hub::{resolve_file, resolve_model};

fn snapshot(hub: &Path, id: &str, rev: &str, main: Option<&str>) -> std::path::PathBuf {
    let repo = hub.join(format!("models--{}", id.replace('/', "--")));
    let dir = repo.join("snapshots").join(rev);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("tokenizer.json"), rev).unwrap();
    if let Some(m) = main {
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs/main"), m).unwrap();
    }
    dir
}

#[test]
fn models_are_found_by_folder_lion_home_and_hf_cache_in_that_order() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    for k in ["HF_HUB_CACHE", "HF_HOME", "LION_HOME"] {
        std::env::remove_var(k);
    }
    std::env::set_var("HOME", t.join("home"));
    let id = "org/model-a";

    // nowhere: the error names every place and the way to fill one
    let err = resolve_model(id).unwrap_err().to_string();
    assert!(err.contains("LION_HOME is not set"), "{err}");
    assert!(
        err.contains(&format!(
            "{}/.cache/huggingface/hub/models--org--model-a",
            t.join("home").display()
        )),
        "{err}"
    );
    assert!(err.contains("hub-download"), "{err}");
    let err = resolve_model("sentence-transformers/all-MiniLM-L6-v2")
        .unwrap_err()
        .to_string();
    assert!(err.contains("scripts/get-minilm.sh"), "{err}");
    assert!(resolve_model("not a model")
        .unwrap_err()
        .to_string()
        .contains("Hub id"));

    // ~/.cache/huggingface/hub: refs/main names the snapshot even when another is newer
    let home_hub = t.join("home/.cache/huggingface/hub");
    let main = snapshot(&home_hub, id, "aaa", Some("aaa"));
    std::thread::sleep(std::time::Duration::from_millis(20));
    snapshot(&home_hub, id, "bbb", None);
    assert_eq!(resolve_model(id).unwrap(), main);
    // without refs/main: the newest snapshot
    std::fs::remove_file(home_hub.join("models--org--model-a/refs/main")).unwrap();
    assert!(resolve_model(id).unwrap().ends_with("snapshots/bbb"));

    // HF_HOME/hub before ~/.cache, HF_HUB_CACHE before HF_HOME
    std::env::set_var("HF_HOME", t.join("hfhome"));
    let in_home = snapshot(&t.join("hfhome/hub"), id, "ccc", Some("ccc"));
    assert_eq!(resolve_model(id).unwrap(), in_home);
    std::env::set_var("HF_HUB_CACHE", t.join("hubcache"));
    let in_cache = snapshot(&t.join("hubcache"), id, "ddd", Some("ddd"));
    assert_eq!(resolve_model(id).unwrap(), in_cache);
    assert_eq!(
        resolve_file(id, "tokenizer.json").unwrap(),
        in_cache.join("tokenizer.json")
    );
    assert!(resolve_file(id, "missing.json")
        .unwrap_err()
        .to_string()
        .contains("has no missing.json"));

    // LION_HOME before the cache; an existing folder before everything
    std::env::set_var("LION_HOME", t.join("lion"));
    let lion = t.join("lion/models/org/model-a");
    std::fs::create_dir_all(&lion).unwrap();
    assert_eq!(resolve_model(id).unwrap(), lion);
    let folder = t.join("plain");
    std::fs::create_dir_all(&folder).unwrap();
    assert_eq!(resolve_model(folder.to_str().unwrap()).unwrap(), folder);
    let file = folder.join("tok.json");
    std::fs::write(&file, "{}").unwrap();
    assert_eq!(resolve_file(file.to_str().unwrap(), "x").unwrap(), file);
}
