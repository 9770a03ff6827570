//! Horizontal flip augmentation keeps the words true: on ShapesWorld scenes, every left/right
//! word of the generated expressions, questions, answers and captions is swapped, and what the
//! swapped words say holds in the mirrored scene (the object a swapped superlative picks out is
//! the mirrored box the augmented REC sample trains on; swapped relation questions keep their
//! yes/no answer; swapped "where" answers name the mirrored grid cell).

use candle_core::Device;
use image::RgbImage;
use lion_core::adapter::Route;
use lion_core::flip_text::{has_horizontal_words, mirror_spatial_words};
use lion_core::preprocess::{Rng, TrainTransform};
use lion_data::lion_json::LionSample;
use lion_data::world::language::{tag_vocabulary, QuestionKind, RELATION_MARGIN};
use lion_data::world::scene::{position_word, Color, Object, Scene, Shape, Size};
use lion_data::world::{box_text, make_image, Generated, REC_PROMPT};
use lion_train::augment::augment_sample;

const SIZE: u32 = 96;

fn world(n: usize) -> Vec<Generated> {
    let vocab = tag_vocabulary();
    (0..n)
        .map(|i| make_image(11, 0, i, SIZE, 5, &vocab))
        .collect()
}

/// The scene seen in a mirror: boxes and centres reflected about the vertical axis.
fn mirror_scene(s: &Scene) -> Scene {
    let mut m = s.clone();
    for o in &mut m.objects {
        let [x1, y1, x2, y2] = o.bbox;
        o.bbox = [s.width - x2, y1, s.width - x1, y2];
        o.cx = s.width as f64 - o.cx;
    }
    m
}

fn words(t: &str) -> Vec<String> {
    t.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

fn count(t: &str, w: &str) -> usize {
    words(t).iter().filter(|x| *x == w).count()
}

/// The objects an attribute phrase can mean: a color, size and shape named in it (shape
/// synonyms included; "shape", "object", "one" name any shape).
fn matching<'a>(scene: &'a Scene, phrase: &str) -> Vec<(usize, &'a Object)> {
    let p = format!(" {} ", words(phrase).join(" "));
    let has = |w: &str| p.contains(&format!(" {w} "));
    let color = Color::ALL
        .into_iter()
        .find(|c| c.synonyms().iter().any(|w| has(w)));
    let size = Size::ALL
        .into_iter()
        .find(|s| s.synonyms().iter().any(|w| has(w)));
    let shape = Shape::ALL
        .into_iter()
        .find(|s| s.synonyms().iter().any(|w| has(&words(w).join(" "))));
    scene
        .objects
        .iter()
        .enumerate()
        .filter(|(_, o)| {
            color.is_none_or(|c| c == o.color)
                && size.is_none_or(|s| s == o.size)
                && shape.is_none_or(|s| s == o.shape)
        })
        .collect()
}

/// The object a horizontal superlative ("the leftmost star", "blue box on the right") picks
/// out in `scene`: the candidate beyond every other one on that side by the generator's margin.
fn resolve_horizontal(scene: &Scene, expr: &str) -> Option<usize> {
    let w = words(expr);
    let left = w.iter().any(|x| x == "left" || x == "leftmost");
    let right = w.iter().any(|x| x == "right" || x == "rightmost");
    assert!(left != right, "not one horizontal superlative: {expr}");
    let sign = if left { 1.0 } else { -1.0 };
    let margin = RELATION_MARGIN * scene.width.min(scene.height) as f64;
    let cands = matching(scene, expr);
    let key = |o: &Object| sign * o.center().0;
    let (k, best) = cands.iter().min_by(|a, b| key(a.1).total_cmp(&key(b.1)))?;
    let alone = cands
        .iter()
        .all(|(j, o)| j == k || key(o) >= key(best) + margin);
    (alone && cands.len() > 1).then_some(*k)
}

#[test]
fn swapped_referring_expressions_pick_out_the_mirrored_object() {
    let (mut checked, mut wrong_without_swap) = (0, 0);
    for g in world(300) {
        let mirrored = mirror_scene(&g.scene);
        for r in &g.referrals {
            for sent in &r.sentences {
                if !has_horizontal_words(sent) {
                    continue;
                }
                let m = mirror_spatial_words(sent);
                assert_eq!(
                    count(sent, "left") + count(sent, "leftmost"),
                    count(&m, "right") + count(&m, "rightmost"),
                    "{sent} -> {m}"
                );
                assert_eq!(
                    count(sent, "right") + count(sent, "rightmost"),
                    count(&m, "left") + count(&m, "leftmost"),
                    "{sent} -> {m}"
                );
                // The generator's truth on the original scene, and the swapped words' on the mirror.
                assert_eq!(resolve_horizontal(&g.scene, sent), Some(r.object), "{sent}");
                assert_eq!(
                    resolve_horizontal(&mirrored, &m),
                    Some(r.object),
                    "{sent} -> {m}"
                );
                if resolve_horizontal(&mirrored, sent) != Some(r.object) {
                    wrong_without_swap += 1;
                }
                checked += 1;
            }
        }
    }
    assert!(
        checked >= 50,
        "only {checked} horizontal expressions in 300 scenes"
    );
    assert_eq!(
        wrong_without_swap, checked,
        "the unswapped words must be wrong on the mirror"
    );
}

/// "Is the {a} to the left of the {b}?" -> (a, relation words, b).
fn split_relation(q: &str) -> Option<(&str, &str, &str)> {
    let body = q.strip_prefix("Is the ")?.strip_suffix('?')?;
    for rel in ["to the left of", "to the right of", "above", "below"] {
        if let Some((a, b)) = body.split_once(&format!(" {rel} the ")) {
            return Some((a, rel, b));
        }
    }
    None
}

fn unique<'a>(scene: &'a Scene, phrase: &str) -> &'a Object {
    let m = matching(scene, phrase);
    assert_eq!(m.len(), 1, "`{phrase}` is not unique");
    m[0].1
}

/// The answer's grid words in canonical form ("upper left corner" -> "top left").
fn canonical_position(answer: &str) -> String {
    let w: Vec<String> = words(answer)
        .into_iter()
        .filter(|w| !matches!(w.as_str(), "on" | "at" | "the" | "side" | "corner"))
        .map(|w| match w.as_str() {
            "upper" => "top".into(),
            "lower" => "bottom".into(),
            "middle" | "centre" => "center".into(),
            _ => w,
        })
        .collect();
    w.join(" ")
}

#[test]
fn swapped_questions_and_answers_stay_true_on_the_mirror() {
    let (mut relations, mut wheres, mut captions) = (0, 0, 0);
    for g in world(300) {
        let mirrored = mirror_scene(&g.scene);
        for q in &g.questions {
            let mq = mirror_spatial_words(&q.question);
            let ma = mirror_spatial_words(&q.multiple_choice_answer);
            match q.kind {
                QuestionKind::Relation if has_horizontal_words(&q.question) => {
                    let (a, rel, b) = split_relation(&mq).expect("a relation question");
                    let (oa, ob) = (unique(&mirrored, a), unique(&mirrored, b));
                    let dx = oa.center().0 - ob.center().0;
                    let holds = if rel == "to the left of" {
                        dx < 0.0
                    } else {
                        dx > 0.0
                    };
                    assert_eq!(
                        ma == "yes",
                        holds,
                        "{} ({}) -> {mq} ({ma})",
                        q.question,
                        q.multiple_choice_answer
                    );
                    assert_eq!(ma, q.multiple_choice_answer, "yes/no has no side");
                    relations += 1;
                }
                QuestionKind::Where => {
                    let d = q
                        .question
                        .strip_prefix("Where is the ")
                        .unwrap()
                        .trim_end_matches('?');
                    let o = unique(&mirrored, d);
                    let (c, r) = mirrored.grid_cell(o, 0.0).unwrap();
                    assert_eq!(
                        canonical_position(&ma),
                        position_word(c, r),
                        "{} -> {ma}",
                        q.question
                    );
                    for a in &q.answers {
                        let m = mirror_spatial_words(&a.answer);
                        assert_eq!(count(&a.answer, "left"), count(&m, "right"), "{}", a.answer);
                        assert_eq!(count(&a.answer, "right"), count(&m, "left"), "{}", a.answer);
                    }
                    wheres += usize::from(has_horizontal_words(&ma));
                }
                _ => assert_eq!(mq, q.question, "no spatial words to swap"),
            }
        }
        for c in &g.captions {
            let m = mirror_spatial_words(c);
            assert_eq!(count(c, "left"), count(&m, "right"), "{c} -> {m}");
            assert_eq!(count(c, "right"), count(&m, "left"), "{c} -> {m}");
            assert_eq!(words(c).len(), words(&m).len());
            captions += usize::from(has_horizontal_words(c));
        }
    }
    assert!(
        relations >= 30 && wheres >= 30 && captions >= 30,
        "{relations} {wheres} {captions}"
    );
}

fn rec_sample(g: &Generated, object: usize, expr: &str) -> LionSample {
    LionSample {
        image: "x.png".into(),
        question: REC_PROMPT.replace("{}", expr),
        answer: box_text(g.scene.objects[object].bbox, SIZE, SIZE),
        category: "rec".into(),
        route: Route::RegionLevel,
        tags: String::new(),
    }
}

fn parse_box(t: &str) -> [f64; 4] {
    lion_core::bbox::parse_normalized(t).unwrap_or_else(|| panic!("not a box: {t}"))
}

#[test]
fn an_augmented_flipped_rec_sample_trains_on_the_object_its_words_name() {
    let dev = Device::Cpu;
    // No crop, a certain flip: the augmented image is the mirrored world image.
    let flip = TrainTransform {
        size: SIZE,
        scale: (1.0, 1.0),
        ratio: (1.0, 1.0),
        flip_p: 1.0,
        ..TrainTransform::lion()
    };
    let keep = TrainTransform {
        flip_p: 0.0,
        ..flip.clone()
    };
    let mut checked = 0;
    for g in world(120) {
        let img = RgbImage::from_raw(SIZE, SIZE, g.pixels.clone()).unwrap();
        let mirrored = mirror_scene(&g.scene);
        for r in &g.referrals {
            for sent in r.sentences.iter().filter(|s| has_horizontal_words(s)) {
                let s = rec_sample(&g, r.object, sent);
                let a = augment_sample(&flip, &img, &s, &mut Rng::new(1), &dev, &"test").unwrap();
                assert!(a.flipped);
                let expr = mirror_spatial_words(sent);
                assert_eq!(a.sample.question, REC_PROMPT.replace("{}", &expr));
                // The object the swapped words name, in the mirrored scene, has the target box.
                let k = resolve_horizontal(&mirrored, &expr).expect("names one object");
                let want = parse_box(&box_text(mirrored.objects[k].bbox, SIZE, SIZE));
                let got = parse_box(&a.sample.answer);
                for (x, y) in want.iter().zip(got) {
                    assert!(
                        (x - y).abs() <= 0.002,
                        "{sent} -> {expr}: box {got:?}, want {want:?}"
                    );
                }
                let b = augment_sample(&keep, &img, &s, &mut Rng::new(1), &dev, &"test").unwrap();
                assert!(!b.flipped);
                assert_eq!(b.sample.question, s.question);
                checked += 1;
            }
        }
    }
    assert!(checked >= 20, "{checked}");
}

#[test]
fn an_augmented_flipped_vqa_sample_swaps_question_and_answer() {
    let dev = Device::Cpu;
    let flip = TrainTransform {
        size: 32,
        flip_p: 1.0,
        ..TrainTransform::lion()
    };
    let img = RgbImage::new(40, 40);
    let s = LionSample {
        image: "x.png".into(),
        question: "Question: Is the red circle to the left of the blue star? Short answer:".into(),
        answer: "upper left".into(),
        category: "vqa".into(),
        route: Route::ImageLevel,
        tags: "red, circle".into(),
    };
    let a = augment_sample(&flip, &img, &s, &mut Rng::new(3), &dev, &"test").unwrap();
    assert_eq!(
        a.sample.question,
        "Question: Is the red circle to the right of the blue star? Short answer:"
    );
    assert_eq!(a.sample.answer, "upper right");
    assert_eq!(a.sample.tags, s.tags);
    let bad = LionSample {
        route: Route::RegionLevel,
        answer: "left".into(),
        ..s
    };
    let e = augment_sample(&flip, &img, &bad, &mut Rng::new(3), &dev, &"data.json")
        .err()
        .unwrap();
    assert!(
        e.to_string().contains("data.json") && e.to_string().contains("not a box"),
        "{e}"
    );
}

#[test]
fn refcoco_style_phrases_swap_every_form_case_and_punctuation() {
    for (a, b) in [
        ("the leftmost star", "the rightmost star"),
        ("circle on the right", "circle on the left"),
        (
            "Is the red circle to the left of the blue star?",
            "Is the red circle to the right of the blue star?",
        ),
        ("top left corner", "top right corner"),
        ("LEFT guy", "RIGHT guy"),
        ("Left man, (right) woman.", "Right man, (left) woman."),
        ("left-most zebra", "right-most zebra"),
        ("the left-hand side", "the right-hand side"),
        ("second from left", "second from right"),
        ("2nd guy from right", "2nd guy from left"),
        ("lefter one", "righter one"),
        ("man's left", "man's right"),
        ("left's", "right's"),
        ("leftside bike", "rightside bike"),
        ("right:", "left:"),
    ] {
        assert_eq!(mirror_spatial_words(a), b, "{a}");
        assert_eq!(mirror_spatial_words(b), a, "{b}");
    }
}

#[test]
fn words_that_only_contain_left_or_right_stay() {
    for t in [
        "bright red upright cross",
        "leftover pizza",
        "copyright sign, alright",
        "the top one",
        "",
        "   ",
        "über café left",
    ] {
        let m = mirror_spatial_words(t);
        if t.contains("left") && !t.contains("leftover") {
            assert_eq!(m, t.replace("left", "right"));
        } else {
            assert_eq!(m, t);
        }
    }
    assert!(!has_horizontal_words("bright upright leftover"));
    assert!(has_horizontal_words("Upper-Left corner"));
}
