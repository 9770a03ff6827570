//! Property tests (issue 20) for the request parsing layer: JSON bodies, typed fields,
//! multipart text values, base64 images, image decoding, text and generation options. Any
//! input gives `Ok` or an `ApiError` (400 / 413 / 422), never a panic. Fixed seed, small case
//! count (`LION_FUZZ_CASES` raises it).

use lion_core::testing::{fuzz_budget, mutate, mutate_json};
use lion_server::input::{
    check_inputs, check_text, decode_image, generation_options, json_object, multipart_value,
    take_base64_image, typed, CaptionBody, EmbedBody, GroundBody, TagsBody, VqaBody,
};
use lion_server::{ErrorType, Limits, TaskKind};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};
use serde_json::json;

fn config() -> Config {
    let (cases, seed) = fuzz_budget(64);
    Config {
        cases,
        rng_seed: RngSeed::Fixed(seed),
        failure_persistence: None,
        ..Config::default()
    }
}

fn png() -> Vec<u8> {
    let mut b = std::io::Cursor::new(Vec::new());
    image::RgbImage::new(6, 5)
        .write_to(&mut b, image::ImageFormat::Png)
        .unwrap();
    b.into_inner()
}

/// Every parse step a JSON image request goes through; an error is a typed API error.
fn parse_request(bytes: &[u8], limits: &Limits) {
    let Ok(mut map) = json_object(bytes) else {
        return;
    };
    if let Ok(img) = take_base64_image(&mut map) {
        if let Err(e) = decode_image(&img, limits.max_image_pixels) {
            assert!(matches!(
                e.error_type,
                ErrorType::BadRequest | ErrorType::Validation | ErrorType::PayloadTooLarge
            ));
        }
    }
    if let Ok(b) = typed::<VqaBody>(map.clone()) {
        let _ = check_text("question", Some(b.question.clone()), true, limits);
        let _ = generation_options(TaskKind::Vqa, &b, limits);
    }
    if let Ok(b) = typed::<GroundBody>(map.clone()) {
        let _ = generation_options(TaskKind::Ground, &b, limits);
    }
    if let Ok(b) = typed::<CaptionBody>(map.clone()) {
        let _ = generation_options(TaskKind::Caption, &b, limits);
    }
    let _ = typed::<TagsBody>(map.clone());
    if let Ok(b) = typed::<EmbedBody>(map) {
        let _ = check_inputs(b.inputs, limits);
    }
}

proptest! {
    #![proptest_config(config())]

    /// Structurally mutated valid requests, and the same bytes cut short or overwritten.
    #[test]
    fn json_requests_never_panic(edits in prop::collection::vec((any::<usize>(), any::<u8>()), 0..6),
                                 raw in prop::collection::vec((any::<usize>(), any::<u8>()), 0..6),
                                 cut in prop::option::of(any::<usize>())) {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(png());
        let limits = Limits::default();
        for base in [
            json!({"image": b64, "question": "what is it?", "num_beams": 2, "max_new_tokens": 8,
                   "min_new_tokens": 1, "repetition_penalty": 1.5, "length_penalty": 1.0}),
            json!({"image": format!("data:image/png;base64,{b64}"), "expression": "the dog"}),
            json!({"image": b64, "threshold": 0.5, "max_tags": 3}),
            json!({"inputs": ["a", "b"]}),
        ] {
            let v = mutate_json(&base, &edits);
            let bytes = serde_json::to_vec(&v).unwrap();
            parse_request(&bytes, &limits);
            parse_request(&mutate(&bytes, &raw, cut), &limits);
        }
    }

    /// Multipart text values of the numeric and text fields.
    #[test]
    fn multipart_values_never_panic(name in prop_oneof![Just("num_beams".to_string()), Just("threshold".to_string()),
                                        Just("max_tags".to_string()), Just("question".to_string()), "[a-z_]{0,12}"],
                                    text in "\\PC{0,24}") {
        if let Ok(v) = multipart_value(&name, &text) {
            let _ = v.to_string();
        }
    }

    /// Image bytes: a mutated PNG decodes or is refused, and the pixel limit is applied.
    #[test]
    fn image_bytes_never_panic(edits in prop::collection::vec((any::<usize>(), any::<u8>()), 0..10),
                               cut in prop::option::of(any::<usize>()), max_pixels in 0u64..100) {
        let bytes = mutate(&png(), &edits, cut);
        if let Ok(img) = decode_image(&bytes, max_pixels.max(1)) {
            prop_assert!(img.width() as u64 * img.height() as u64 <= max_pixels.max(1));
        }
    }
}
