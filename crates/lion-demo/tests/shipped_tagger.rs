//! The shipped tagger (`assets/shapes-tagger`) was made by the demo's own recipe: `lion demo
//! --train-tagger` (seed 0) trains with exactly the options the folder records, so the one
//! command reproduces it.

use lion_train::tagger_trainer::TaggerTrainOptions;

#[test]
fn the_shipped_tagger_was_made_by_the_demo_recipe() {
    let dir = lion_core::testing::repo_root().join("assets/shapes-tagger");
    let text = std::fs::read_to_string(dir.join("train_options.json")).unwrap();
    let shipped: TaggerTrainOptions = serde_json::from_str(&text).unwrap();
    assert_eq!(shipped, lion_demo::tagger_recipe(0, shipped.epochs));
    // and the folder's model is the one that recipe builds
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["convnet"].is_object(), shipped.convnet, "{cfg}");
}
