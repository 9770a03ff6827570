use super::*;

/// `lion.task` takes the route names and LION's; the route of each is the server's.
#[test]
fn explicit_tasks_name_lions_task() {
    for (name, task, kind) in [
        ("caption", Task::Caption, TaskKind::Caption),
        ("vqa", Task::Vqa, TaskKind::Vqa),
        ("ground", Task::Rec, TaskKind::Ground),
        ("rec", Task::Rec, TaskKind::Ground),
    ] {
        let t = parse_chat_task(name).unwrap();
        assert_eq!((t, TaskKind::from(t)), (task, kind), "{name}");
    }
    let e = parse_chat_task("tags").unwrap_err();
    assert!(
        e.error.contains("lion.task") && e.error.contains("\"tags\""),
        "{e}"
    );
}

#[test]
fn tasks_are_inferred_from_the_message() {
    for (text, task, rest) in [
        ("", Task::Caption, ""),
        ("Describe the picture.", Task::Caption, ""),
        (
            "What colour is the car?",
            Task::Vqa,
            "What colour is the car?",
        ),
        ("Where is the red car?", Task::Rec, "the red car"),
        ("where's the dog", Task::Rec, "the dog"),
        (
            "Locate: the man on the left.",
            Task::Rec,
            "the man on the left",
        ),
        ("ground: left cup", Task::Rec, "left cup"),
        ("find the blue ball", Task::Rec, "the blue ball"),
        (
            "Give me the bounding box of the tall tree",
            Task::Rec,
            "the tall tree",
        ),
        ("Bounding box for: zebra?", Task::Rec, "zebra"),
        // a word that merely starts like a trigger is not one
        ("Findings? none", Task::Vqa, "Findings? none"),
        ("groundhog", Task::Caption, ""),
    ] {
        assert_eq!(infer_task(text), (task, rest.to_string()), "{text:?}");
    }
}

#[test]
fn messages_give_the_last_image_and_the_last_user_text() {
    let msgs = vec![
        json!({"role": "system", "content": "be brief"}),
        json!({"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:a"}},
            {"type": "text", "text": "first"}]}),
        json!({"role": "assistant", "content": "ok"}),
        json!({"role": "user", "content": [
            {"type": "text", "text": "what"},
            {"type": "text", "text": "is it?"},
            {"type": "image_url", "image_url": "data:b"}]}),
    ];
    assert_eq!(
        read_messages(&msgs).unwrap(),
        ("data:b".to_string(), "what\nis it?".to_string())
    );
    for (msgs, want) in [
        (vec![], "empty"),
        (vec![json!({"role": "user", "content": "hi"})], "no image"),
        (
            vec![json!({"role": "tool", "content": "x"})],
            "messages[0].role",
        ),
        (
            vec![json!({"role": "user", "content": [{"type": "audio"}]})],
            "messages[0].content[0].type",
        ),
        (
            vec![json!({"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": "data:a"}},
                {"type": "image_url", "image_url": {"url": "data:b"}}]})],
            "one image",
        ),
        (
            vec![json!({"role": "user", "content": [{"type": "image_url"}]})],
            "image_url.url",
        ),
    ] {
        let e = read_messages(&msgs).unwrap_err();
        assert!(e.error.contains(want), "{want}: {e}");
    }
}

#[test]
fn openai_extras_are_ignored_or_refused_by_name() {
    let mut m = input::json_object(
        br#"{"user": "u", "frequency_penalty": 0, "tools": [], "stop": null, "logprobs": false,
            "response_format": {"type": "text"}, "messages": []}"#,
    )
    .unwrap();
    strip_openai_extras(&mut m).unwrap();
    assert_eq!(m.keys().collect::<Vec<_>>(), vec!["messages"]);
    for body in [
        r#"{"stop": ["\n"]}"#,
        r#"{"logprobs": true}"#,
        r#"{"tools": [{"type": "function"}]}"#,
        r#"{"presence_penalty": 0.5}"#,
    ] {
        let mut m = input::json_object(body.as_bytes()).unwrap();
        let key = m.keys().next().unwrap().clone();
        let e = strip_openai_extras(&mut m).unwrap_err();
        assert!(e.error.contains(&format!("`{key}`")), "{body}: {e}");
    }
}

#[test]
fn errors_have_the_openai_shape() {
    let r = OpenAiError(ApiError::validation("field `n` is bad")).into_response();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let r = OpenAiError(ApiError::new(ErrorType::Backend, "x")).into_response();
    assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
}
