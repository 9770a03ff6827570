//! `lion train` configs name models as the CLI does: a path relative to the config, else a Hub
//! id found under `$LION_HOME/models` or in the Hugging Face cache (issue 24). One test: it sets
//! `LION_HOME` and `HF_HUB_CACHE` for this process.

use lion_train::peft::PeftConfig;
use serde_json::json;

#[test]
fn model_fields_take_hub_ids_and_relative_paths() {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("lion-home");
    let model = home.join("models/acme/tiny-bert");
    std::fs::create_dir_all(&model).unwrap();
    std::fs::write(model.join("tokenizer.json"), "{}").unwrap();
    std::env::set_var("LION_HOME", &home);
    std::env::set_var("HF_HUB_CACHE", t.path().join("empty-cache"));
    let cfg_dir = t.path().join("run");
    std::fs::create_dir_all(cfg_dir.join("local/enc")).unwrap();
    let read = |fields: serde_json::Value| {
        let mut v = json!({
            "preset": "tiny",
            "prompt": "dynamic",
            "image_root": "images",
            "tasks": [{"kind": "caption", "train": "cap.json"}],
            "schedule": {"init_lr": 1e-4, "min_lr": 1e-5, "warmup_steps": 2},
            "batch_size": 2,
            "steps": 10,
            "output_dir": "out"
        });
        for (k, x) in fields.as_object().unwrap() {
            v[k] = x.clone();
        }
        let p = cfg_dir.join("train.json");
        std::fs::write(&p, v.to_string()).unwrap();
        PeftConfig::read(&p)
    };
    let c = read(json!({"qformer_tokenizer": "acme/tiny-bert", "tag_encoder": "acme/tiny-bert"}))
        .unwrap();
    assert_eq!(c.qformer_tokenizer.unwrap(), model.join("tokenizer.json"));
    assert_eq!(c.tag_encoder.unwrap(), model);
    // a folder next to the config wins over a Hub id of the same spelling
    let c = read(json!({"tag_encoder": "local/enc"})).unwrap();
    assert_eq!(c.tag_encoder.unwrap(), cfg_dir.join("local/enc"));
    // a Hub id found nowhere: the field, the id and the places searched
    let err = read(json!({"tag_encoder": "acme/missing"}))
        .unwrap_err()
        .to_string();
    for want in ["`tag_encoder`", "acme/missing", "lion-home", "empty-cache"] {
        assert!(err.contains(want), "{want:?} not in: {err}");
    }
}
