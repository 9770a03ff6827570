//! Centroid caption selection with the real all-MiniLM-L6-v2.

use candle_core::Device;
use lion_core::sentence::{nearest_to_centroid, SentenceEmbedder};
use lion_train::centroid::select_captions;
use lion_train::records::ImageRecord;

fn image(id: usize, captions: &[&str]) -> ImageRecord {
    ImageRecord {
        image: serde_json::json!(id),
        captions: captions.iter().map(|s| s.to_string()).collect(),
        tags: None,
        line: id + 1,
    }
}

#[test]
fn picks_the_centroid_caption_whatever_the_batching() {
    let model =
        SentenceEmbedder::load(lion_core::testing::minilm_dir(), &Device::Cpu, None).unwrap();
    let images = vec![
        image(
            0,
            &[
                "the stock market fell sharply on monday",
                "a red circle next to a small blue square",
                "a red circle beside a blue square",
                "a small blue square and a red circle",
                "a red ball near a blue box",
            ],
        ),
        image(1, &["a single caption"]),
        image(
            2,
            &[
                "two dogs play with a frisbee in the park",
                "dogs running on the grass after a frisbee",
                "a recipe for chocolate cake",
            ],
        ),
        image(
            3,
            &[
                "a man rides a horse along the beach",
                "a rider on horseback at the seaside",
                "a person riding a horse by the ocean",
                "quantum chromodynamics lecture notes",
            ],
        ),
    ];
    let mut calls = 0;
    let big = select_captions(&model, &images, 64, |_| calls += 1).unwrap();
    assert_eq!(calls, 1, "13 captions fit one batch of 64");
    let mut done = 0;
    let small = select_captions(&model, &images, 3, |n| done += n).unwrap();
    assert_eq!(done, 4);
    assert_eq!(big, small);
    assert!(big
        .iter()
        .all(|c| c.caption == images[c.image.as_u64().unwrap() as usize].captions[c.index]));
    assert_ne!(big[0].index, 0, "the off-topic caption is not the centroid");
    assert_eq!(big[1].index, 0);
    assert_ne!(big[2].index, 2);
    assert_ne!(big[3].index, 3);
    // the same choice as embedding each image's captions alone
    for (rec, c) in images.iter().zip(&big) {
        let refs: Vec<&str> = rec.captions.iter().map(String::as_str).collect();
        let embs = model.embed(&refs, 8).unwrap();
        assert_eq!(nearest_to_centroid(&embs), Some(c.index));
    }
}
