use super::*;

#[test]
fn text_helpers() {
    assert_eq!(with_article("orange star"), "an orange star");
    assert_eq!(with_article("red box"), "a red box");
    assert_eq!(
        join_list(&["a".into(), "b".into(), "c".into()]),
        "a, b and c"
    );
}

#[test]
fn vocabulary_is_unique() {
    let v = tag_vocabulary();
    let mut s = v.clone();
    s.sort();
    s.dedup();
    assert_eq!(s.len(), v.len());
}

#[test]
fn simulated_answers_keep_a_correct_majority() {
    let mut rng = Rng::new(3);
    for _ in 0..200 {
        let (answers, mc) = simulate_answers(&mut rng, &count_model(2));
        assert_eq!(answers.len(), 10);
        let ok = answers
            .iter()
            .filter(|a| a.answer == "2" || a.answer == "two")
            .count();
        assert!(ok >= 7, "{answers:?}");
        assert!(mc == "2" || mc == "two");
    }
}
