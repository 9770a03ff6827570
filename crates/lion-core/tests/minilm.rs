//! The real all-MiniLM-L6-v2 against sentence-transformers' embeddings of the same sentences
//! (scripts/fixtures_bert.py).

use candle_core::Device;
use lion_core::sentence::SentenceEmbedder;

#[test]
fn minilm_matches_sentence_transformers() {
    let sentences: Vec<String> = serde_json::from_str(
        &std::fs::read_to_string(lion_core::testing::fixture("minilm/sentences.json")).unwrap(),
    )
    .unwrap();
    let reference = candle_core::safetensors::load(
        lion_core::testing::fixture("minilm/embeddings.safetensors"),
        &Device::Cpu,
    )
    .unwrap()["embeddings"]
        .to_vec2::<f32>()
        .unwrap();
    assert!(sentences.len() >= 20);
    assert_eq!(sentences.len(), reference.len());
    let model =
        SentenceEmbedder::load(lion_core::testing::minilm_dir(), &Device::Cpu, None).unwrap();
    let refs: Vec<&str> = sentences.iter().map(|s| s.as_str()).collect();
    // batch of 7 so that batches mix very different lengths (padding must not change results)
    let ours = model.embed(&refs, 7).unwrap();
    for ((s, a), b) in sentences.iter().zip(&ours).zip(&reference) {
        assert_eq!(a.len(), 384);
        let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
        let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
        let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
        let cos = dot / (na * nb);
        let max = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(cos >= 0.99999, "{s:?}: cosine {cos}");
        assert!(max <= 1e-4, "{s:?}: max abs diff {max}");
    }
}

/// The pipeline's memo of tag-encoder embeddings returns what the encoder returns, computes each
/// distinct text once, and keeps the order and repeats of the request.
#[test]
fn tag_cache_returns_the_encoders_embeddings_once_per_text() {
    use lion_core::pipeline::TagCache;
    let enc = SentenceEmbedder::load(lion_core::testing::minilm_dir(), &Device::Cpu, None).unwrap();
    let cache = TagCache::default();
    let s = |xs: &[&str]| xs.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let first = cache
        .embed(
            &enc,
            &s(&[
                "red: 0.91, circle: 0.80",
                "blue: 0.55",
                "red: 0.91, circle: 0.80",
            ]),
        )
        .unwrap();
    assert_eq!(cache.len(), 2);
    assert_eq!(first[0], first[2]);
    let second = cache
        .embed(&enc, &s(&["blue: 0.55", "star: 0.42"]))
        .unwrap();
    assert_eq!(cache.len(), 3);
    // a cached row is the very row computed before, a new one what the encoder gives alone
    assert_eq!(second[0], first[1]);
    let direct = enc.embed(&["star: 0.42", "blue: 0.55"], 2).unwrap();
    for (a, b) in [(&second[1], &direct[0]), (&first[1], &direct[1])] {
        let d = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(
            d < 1e-5,
            "cached embedding differs from the encoder's by {d}"
        );
    }
}
