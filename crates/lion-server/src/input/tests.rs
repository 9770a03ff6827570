use super::*;
use crate::error::ErrorType;
use serde_json::json;

fn png(w: u32, h: u32) -> Vec<u8> {
    let img = RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8, y as u8, 7]));
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// A 54-byte BMP header claiming `w` x `h` pixels, with no pixel data.
fn bmp_header(w: u32, h: u32) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(b"BM");
    b.extend_from_slice(
        &54u32
            .wrapping_add(w.wrapping_mul(3).wrapping_mul(h))
            .to_le_bytes(),
    );
    b.extend_from_slice(&[0; 4]);
    b.extend_from_slice(&54u32.to_le_bytes());
    b.extend_from_slice(&40u32.to_le_bytes());
    b.extend_from_slice(&(w as i32).to_le_bytes());
    b.extend_from_slice(&(h as i32).to_le_bytes());
    b.extend_from_slice(&1u16.to_le_bytes());
    b.extend_from_slice(&24u16.to_le_bytes());
    b.extend_from_slice(&[0; 24]);
    b
}

#[test]
fn decodes_a_png_with_its_pixels() {
    let img = decode_image(&png(5, 3), 100).unwrap();
    assert_eq!(img.dimensions(), (5, 3));
    assert_eq!(img.get_pixel(4, 2).0, [4, 2, 7]);
}

#[test]
fn pixel_limit_is_checked_from_the_header() {
    // 60000 x 60000 claimed by 54 bytes: rejected before any decoding.
    let e = decode_image(&bmp_header(60000, 60000), 40_000_000).unwrap_err();
    assert_eq!(e.error_type, ErrorType::PayloadTooLarge, "{e}");
    assert!(e.error.contains("60000x60000"), "{e}");
    let e = decode_image(&png(20, 20), 399).unwrap_err();
    assert_eq!(e.error_type, ErrorType::PayloadTooLarge);
    assert!(decode_image(&png(20, 20), 400).is_ok());
}

#[test]
fn corrupt_and_unknown_images_are_bad_requests() {
    let mut p = png(32, 32);
    p.truncate(p.len() / 2);
    let e = decode_image(&p, 10_000).unwrap_err();
    assert_eq!(e.error_type, ErrorType::BadRequest);
    assert!(e.error.contains("PNG"), "{e}");
    let e = decode_image(b"definitely not an image", 10_000).unwrap_err();
    assert!(e.error.contains("unrecognised format"), "{e}");
    let e = decode_image(b"", 10_000).unwrap_err();
    assert!(e.error.contains("empty"), "{e}");
    // The BMP header is fine but the pixels are missing.
    let e = decode_image(&bmp_header(8, 8), 10_000).unwrap_err();
    assert_eq!(e.error_type, ErrorType::BadRequest, "{e}");
}

#[test]
fn base64_with_and_without_data_url_prefix() {
    let raw = png(2, 2);
    let b64 = base64::engine::general_purpose::STANDARD.encode(&raw);
    for s in [b64.clone(), format!("data:image/png;base64,{b64}")] {
        let mut m = Map::new();
        m.insert("image".into(), Value::String(s));
        assert_eq!(take_base64_image(&mut m).unwrap(), raw);
        assert!(m.is_empty());
    }
    let mut m = Map::new();
    m.insert("image".into(), Value::String("@@@".into()));
    assert!(take_base64_image(&mut m)
        .unwrap_err()
        .error
        .contains("invalid base64"));
    let mut m = Map::new();
    m.insert("image".into(), Value::from(3));
    assert_eq!(
        take_base64_image(&mut m).unwrap_err().error_type,
        ErrorType::Validation
    );
    assert!(take_base64_image(&mut Map::new())
        .unwrap_err()
        .error
        .contains("missing field `image`"));
}

#[test]
fn unknown_fields_and_wrong_types_name_the_field() {
    let m = json_object(br#"{"question": "q", "colour": 0.5}"#).unwrap();
    let e = typed::<VqaBody>(m).unwrap_err();
    assert_eq!(e.error_type, ErrorType::Validation);
    assert!(e.error.contains("unknown field `colour`"), "{e}");
    assert!(e.error.contains("question"), "{e}");

    let m = json_object(br#"{"question": "q", "num_beams": "five"}"#).unwrap();
    let e = typed::<VqaBody>(m).unwrap_err();
    assert!(e.error.contains("`num_beams`"), "{e}");

    let m = json_object(br#"{"inputs": 3}"#).unwrap();
    let e = typed::<EmbedBody>(m).unwrap_err();
    assert!(
        e.error.contains("`inputs`") && e.error.contains("array of strings"),
        "{e}"
    );

    let m = json_object(br#"{}"#).unwrap();
    let e = typed::<GroundBody>(m).unwrap_err();
    assert!(e.error.contains("missing field `expression`"), "{e}");
}

#[test]
fn bad_json_is_400_and_non_objects_422() {
    assert_eq!(
        json_object(b"{\"inputs\": ").unwrap_err().error_type,
        ErrorType::BadRequest
    );
    assert_eq!(
        json_object(b"[1, 2]").unwrap_err().error_type,
        ErrorType::Validation
    );
}

#[test]
fn duplicate_keys_are_422_naming_the_key_at_any_depth() {
    let e = json_object(br#"{"image": "a", "question": "q", "image": "b"}"#).unwrap_err();
    assert_eq!(e.error_type, ErrorType::Validation, "{e}");
    assert!(e.error.contains("field `image` is given twice"), "{e}");
    let e = json_object(br#"{"messages": [{"role": "user", "role": "system"}]}"#).unwrap_err();
    assert!(e.error.contains("field `role` is given twice"), "{e}");
    assert!(e.error.contains("messages[0]"), "{e}");
    // Same key in different objects, numbers, nulls, nesting: all fine and unchanged.
    let text =
        r#"{"a": {"k": 1}, "b": {"k": [-2, 3.5, null, true, "s"]}, "c": 18446744073709551615}"#;
    let m = json_object(text.as_bytes()).unwrap();
    let want: Value = serde_json::from_str(text).unwrap();
    assert_eq!(Value::Object(m), want);
    // Malformed JSON and trailing garbage stay 400.
    assert_eq!(
        json_object(br#"{"a": 1} x"#).unwrap_err().error_type,
        ErrorType::BadRequest
    );
}

#[test]
fn data_urls_must_be_base64_images() {
    let raw = png(2, 2);
    let b64 = base64::engine::general_purpose::STANDARD.encode(&raw);
    let take = |s: String| {
        let mut m = Map::new();
        m.insert("image".into(), Value::String(s));
        take_base64_image(&mut m)
    };
    assert_eq!(take(format!("data:IMAGE/PNG;base64,{b64}")).unwrap(), raw);
    for (url, t, needle) in [
        (
            format!("data:text/plain;base64,{b64}"),
            ErrorType::UnsupportedMediaType,
            "\"text/plain\"",
        ),
        (
            format!("data:;base64,{b64}"),
            ErrorType::UnsupportedMediaType,
            "text/plain by default",
        ),
        (
            format!("data:application/pdf;base64,{b64}"),
            ErrorType::UnsupportedMediaType,
            "application/pdf",
        ),
        (
            format!("data:image/png,{b64}"),
            ErrorType::BadRequest,
            "not base64",
        ),
        (
            "data:image/png;base64".to_string(),
            ErrorType::BadRequest,
            "comma",
        ),
    ] {
        let e = take(url.clone()).unwrap_err();
        assert_eq!(e.error_type, t, "{url}: {e}");
        assert!(e.error.contains(needle), "{url}: {e}");
    }
}

#[test]
fn the_header_gives_the_decoding_memory() {
    let h = probe_image(&png(10, 4), 100).unwrap();
    assert_eq!((h.width, h.height, h.bytes_per_pixel), (10, 4, 3));
    assert_eq!((h.rgb_bytes(), h.decode_bytes()), (120, 120));
    // RGBA: the decoder's 4 bytes a pixel plus the RGB copy.
    let rgba = image::RgbaImage::new(10, 4);
    let mut out = Cursor::new(Vec::new());
    rgba.write_to(&mut out, image::ImageFormat::Png).unwrap();
    let h = probe_image(out.get_ref(), 100).unwrap();
    assert_eq!((h.bytes_per_pixel, h.decode_bytes()), (4, 160 + 120));
    assert_eq!(
        decode_probed(out.get_ref(), &h).unwrap().dimensions(),
        (10, 4)
    );
}

#[test]
fn inputs_accept_a_string_or_a_list() {
    let m = json_object(br#"{"inputs": "one"}"#).unwrap();
    assert_eq!(typed::<EmbedBody>(m).unwrap().inputs.0, vec!["one"]);
    let m = json_object(br#"{"inputs": ["a", "b"]}"#).unwrap();
    assert_eq!(typed::<EmbedBody>(m).unwrap().inputs.0, vec!["a", "b"]);
}

#[test]
fn input_limits() {
    let l = Limits {
        max_embed_inputs: 2,
        max_embed_chars: 5,
        ..Limits::default()
    };
    assert!(check_inputs(Inputs(vec![]), &l).is_err());
    assert!(check_inputs(Inputs(vec!["a".into(); 3]), &l)
        .unwrap_err()
        .error
        .contains("limit is 2"));
    assert!(check_inputs(Inputs(vec!["a".into(), "toolong".into()]), &l)
        .unwrap_err()
        .error
        .contains("inputs[1]"));
    assert_eq!(
        check_inputs(Inputs(vec!["ab".into()]), &l).unwrap(),
        vec!["ab"]
    );
}

#[test]
fn generation_options_defaults_and_ranges() {
    let l = Limits {
        max_new_tokens: 20,
        max_num_beams: 4,
        ..Limits::default()
    };
    let m = json_object(br#"{"question": "q"}"#).unwrap();
    let b: VqaBody = typed(m).unwrap();
    let o = generation_options(TaskKind::Vqa, &b, &l).unwrap();
    assert_eq!(o.num_beams, 4); // LION's 5, capped by the server's limit
    assert_eq!(o.max_new_tokens, 10);
    assert_eq!(o.repetition_penalty, 1.5);
    for (body, field) in [
        (
            r#"{"question": "q", "max_new_tokens": 21}"#,
            "max_new_tokens",
        ),
        (
            r#"{"question": "q", "max_new_tokens": 0}"#,
            "max_new_tokens",
        ),
        (r#"{"question": "q", "num_beams": 9}"#, "num_beams"),
        (
            r#"{"question": "q", "min_new_tokens": 15, "max_new_tokens": 12}"#,
            "min_new_tokens",
        ),
        (
            r#"{"question": "q", "repetition_penalty": 0}"#,
            "repetition_penalty",
        ),
    ] {
        let b: VqaBody = typed(json_object(body.as_bytes()).unwrap()).unwrap();
        let e = generation_options(TaskKind::Vqa, &b, &l).unwrap_err();
        assert!(e.error.contains(field), "{body}: {e}");
        assert_eq!(e.error_type, ErrorType::Validation);
    }
}

#[test]
fn sampling_options_and_their_errors() {
    let l = Limits {
        max_num_beams: 4,
        ..Limits::default()
    };
    let opts = |body: &str| {
        let b: VqaBody = typed(json_object(body.as_bytes()).unwrap()).unwrap();
        generation_options(TaskKind::Vqa, &b, &l)
    };
    // temperature 0 or absent: beam search, top_p ignored
    let o = opts(r#"{"question": "q", "temperature": 0, "top_p": 0.5}"#).unwrap();
    assert_eq!((o.sampling, o.num_beams), (None, 4));
    let o = opts(r#"{"question": "q", "temperature": 0.7, "top_p": 0.9, "top_k": 5, "seed": 3}"#)
        .unwrap();
    assert_eq!(o.num_beams, 1);
    assert_eq!(
        o.sampling,
        Some(Sampling {
            temperature: 0.7,
            top_p: 0.9,
            top_k: Some(5),
            seed: 3
        })
    );
    // no seed: a fresh one per request
    let a = opts(r#"{"question": "q", "temperature": 1}"#).unwrap();
    let b = opts(r#"{"question": "q", "temperature": 1}"#).unwrap();
    assert_ne!(a.sampling.unwrap().seed, b.sampling.unwrap().seed);
    for (body, field) in [
        (r#"{"question": "q", "temperature": -1}"#, "temperature"),
        (
            r#"{"question": "q", "temperature": 1, "top_p": 0}"#,
            "top_p",
        ),
        (
            r#"{"question": "q", "temperature": 1, "top_p": 1.5}"#,
            "top_p",
        ),
        (
            r#"{"question": "q", "temperature": 1, "top_k": 0}"#,
            "top_k",
        ),
        (
            r#"{"question": "q", "temperature": 1, "num_beams": 3}"#,
            "num_beams",
        ),
    ] {
        let e = opts(body).unwrap_err();
        assert!(e.error.contains(field), "{body}: {e}");
    }
}

#[test]
fn given_tags_are_checked() {
    let l = Limits::default();
    let tags = |v: Value| check_tags(serde_json::from_value(v).unwrap(), &l);
    assert_eq!(
        tags(json!([{"tag": " dog ", "score": 0.9}])).unwrap(),
        Some(vec![("dog".to_string(), 0.9)])
    );
    assert_eq!(tags(Value::Null).unwrap(), None);
    let e = tags(json!([{"tag": "a", "score": 0.5}, {"tag": "", "score": 0.5}])).unwrap_err();
    assert!(e.error.contains("tags[1].tag"), "{e}");
    let e = tags(json!([{"tag": "a", "score": 1.5}])).unwrap_err();
    assert!(e.error.contains("tags[0].score"), "{e}");
    let many: Vec<Value> = (0..MAX_TAGS + 1)
        .map(|i| json!({"tag": format!("t{i}"), "score": 0.5}))
        .collect();
    assert!(tags(Value::Array(many))
        .unwrap_err()
        .error
        .contains("limit"));
    // multipart: JSON text
    assert_eq!(
        multipart_value("tags", r#"[{"tag": "x", "score": 0.1}]"#).unwrap(),
        json!([{"tag": "x", "score": 0.1}])
    );
    assert!(multipart_value("tags", "dog").is_err());
}

#[test]
fn text_fields_are_checked() {
    let l = Limits {
        max_prompt_chars: 4,
        ..Limits::default()
    };
    assert!(check_text("question", None, true, &l).is_err());
    assert_eq!(check_text("prompt", None, false, &l).unwrap(), None);
    assert!(check_text("question", Some("  ".into()), true, &l).is_err());
    let e = check_text("question", Some("héllo".into()), true, &l).unwrap_err();
    assert!(e.error.contains("5 characters"), "{e}");
    assert!(check_text("question", Some("héll".into()), true, &l).is_ok());
}

#[test]
fn multipart_numbers_are_parsed_and_errors_name_the_field() {
    assert_eq!(
        multipart_value("num_beams", " 3 ").unwrap(),
        Value::from(3u64)
    );
    assert_eq!(
        multipart_value("threshold", "0.5").unwrap(),
        Value::from(0.5)
    );
    assert_eq!(
        multipart_value("question", "42").unwrap(),
        Value::from("42")
    );
    let e = multipart_value("max_new_tokens", "lots").unwrap_err();
    assert!(e.error.contains("`max_new_tokens`"), "{e}");
}
