use super::*;

struct Nothing;
impl Backend for Nothing {
    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }
}

#[test]
fn defaults_answer_not_loaded_for_every_kind() {
    let mut b = Nothing;
    let img = RgbImage::new(2, 2);
    let opts = GenerationOptions::lion_defaults(10);
    assert_eq!(
        b.embed(&["x".into()]),
        Err(BackendError::NotLoaded {
            kind: TaskKind::Embed
        })
    );
    let cap = CaptionRequest {
        image: img.clone(),
        prompt: None,
        tags: None,
        options: opts,
        stream: None,
    };
    assert!(matches!(
        b.caption(&[cap]),
        Err(BackendError::NotLoaded {
            kind: TaskKind::Caption
        })
    ));
    let vqa = VqaRequest {
        image: img.clone(),
        question: "q".into(),
        tags: None,
        options: opts,
        stream: None,
    };
    assert!(matches!(
        b.vqa(&[vqa]),
        Err(BackendError::NotLoaded {
            kind: TaskKind::Vqa
        })
    ));
    let g = GroundRequest {
        image: img.clone(),
        expression: "e".into(),
        tags: None,
        options: opts,
        stream: None,
    };
    assert!(matches!(
        b.ground(&[g]),
        Err(BackendError::NotLoaded {
            kind: TaskKind::Ground
        })
    ));
    let t = TagsRequest {
        image: img,
        threshold: None,
        max_tags: None,
    };
    assert!(matches!(
        b.tags(&[t]),
        Err(BackendError::NotLoaded {
            kind: TaskKind::Tags
        })
    ));
    for k in TaskKind::ALL {
        assert!(!b.capabilities().supports(k));
    }
}

#[test]
fn not_loaded_message_names_the_task_and_the_flag() {
    let e = BackendError::NotLoaded {
        kind: TaskKind::Vqa,
    };
    let msg = e.to_string();
    assert!(msg.contains("vqa") && msg.contains("--model"), "{msg}");
}

#[test]
fn ground_text_becomes_a_pixel_box() {
    let g = GroundResponse::from_text("Answer: [0.440,0.060,0.650,0.367]".into(), 200, 100);
    let b = g.bbox.unwrap();
    let want = [88.0, 6.0, 130.0, 36.7];
    for (x, y) in b.iter().zip(want) {
        assert!((x - y).abs() < 1e-3, "{b:?}");
    }
    assert_eq!(g.bbox_normalized, Some([0.44, 0.06, 0.65, 0.367]));
    // The last four-number bracket wins; rounding slack up to 1.05 is clamped.
    let g = GroundResponse::from_text("[1,2] then [0.1, 0.2, 1.04, 0.4] [x]".into(), 10, 10);
    assert_eq!(g.bbox_normalized, Some([0.1, 0.2, 1.0, 0.4]));
    // Out of range or inverted: no box (as `lion eval --task rec` scores it), not a clamped one.
    for t in [
        "no box",
        "[0.1,0.2,0.3]",
        "[a,b,c,d]",
        "[0.1,0.2,0.3,0.4",
        "[0.1, 0.2, 1.5, 0.4]",
        "[0.3,0.2,0.1,0.4]",
    ] {
        let g = GroundResponse::from_text(t.into(), 10, 10);
        assert_eq!((g.bbox, g.bbox_normalized), (None, None), "{t}");
        assert_eq!(g.text, t);
    }
}

#[test]
fn generation_options_map_to_the_decoder_config() {
    let o = GenerationOptions {
        num_beams: 3,
        max_new_tokens: 17,
        min_new_tokens: 4,
        repetition_penalty: 1.2,
        length_penalty: 0.5,
        sampling: None,
        n: 2,
    };
    let g = o.generation_config();
    assert_eq!((g.num_beams, g.max_new_tokens), (3, 17));
    // min_length counts the decoder start token.
    assert_eq!(g.min_length, 5);
    assert_eq!((g.repetition_penalty, g.length_penalty), (1.2, 0.5));
    assert_eq!((g.sampling, g.num_return_sequences), (None, 2));
    // The defaults are upstream LION's generate(): min_length 1, 5 beams, penalty 1.5.
    let g = GenerationOptions::lion_defaults(30).generation_config();
    let up = GenerationConfig::default();
    assert_eq!(
        (
            g.num_beams,
            g.min_length,
            g.repetition_penalty,
            g.length_penalty
        ),
        (
            up.num_beams,
            up.min_length,
            up.repetition_penalty,
            up.length_penalty
        )
    );
    assert_eq!(g.max_new_tokens, 30);
}

#[test]
fn a_batch_must_share_its_options() {
    let a = GenerationOptions::lion_defaults(10);
    let b = GenerationOptions::lion_defaults(11);
    assert_eq!(shared_options([a, a].iter()), Ok(a));
    assert!(matches!(
        shared_options([a, b].iter()),
        Err(BackendError::Inference(m)) if m.contains("mixes")
    ));
    assert!(shared_options([].iter()).is_err());
}

#[test]
fn model_backend_without_embedder_supports_nothing() {
    let mut b = ModelBackend::new(None, 8);
    assert_eq!(b.capabilities(), Capabilities::default());
    assert!(matches!(
        b.embed(&["x".into()]),
        Err(BackendError::NotLoaded { .. })
    ));
}
