//! ShapesWorld's ground truth, read back from the written files and checked by interpreters
//! written independently of the generator, and the files' official keys.

mod world_common;

use world_common::*;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use lion_data::world::formats::*;
use lion_data::world::raster::decode_png;
use lion_data::world::scene::{Color, Shape, Size, Texture};

// ------------------------------------------------------------------------------------------------
// Ground truth, read back from the files and checked by interpreters written independently of
// the generator.

/// An object as the files describe it.
#[derive(Debug, Clone)]
struct Obj {
    id: u64,
    shape: String,
    color: String,
    size: String,
    bbox: [f64; 4], // x, y, w, h
}

impl Obj {
    fn center(&self) -> (f64, f64) {
        (
            self.bbox[0] + self.bbox[2] / 2.0,
            self.bbox[1] + self.bbox[3] / 2.0,
        )
    }
}

/// Canonical shape for a word or synonym ("box" -> square), plural forms included.
fn shape_of(word: &str) -> Option<String> {
    for s in Shape::ALL {
        if word == s.plural() || s.synonyms().contains(&word) {
            return Some(s.name().to_string());
        }
    }
    None
}

fn color_of(word: &str) -> Option<String> {
    Color::ALL
        .iter()
        .find(|c| c.synonyms().contains(&word))
        .map(|c| c.name().to_string())
}

fn size_of(word: &str) -> Option<String> {
    Size::ALL
        .iter()
        .find(|s| s.synonyms().contains(&word))
        .map(|s| s.name().to_string())
}

/// Parsed noun phrase: attribute filters and an optional superlative (axis x?, smallest?).
#[derive(Debug, Default)]
struct Phrase {
    shape: Option<String>,
    color: Option<String>,
    size: Option<String>,
    extreme: Option<(bool, bool)>,
}

/// Replaces multi-word shape synonyms ("plus sign") by the shape name.
fn fold_shapes(text: &str) -> String {
    let mut t = format!(" {text} ");
    for s in Shape::ALL {
        for syn in s.synonyms().iter().filter(|w| w.contains(' ')) {
            for (from, to) in [(syn.to_string(), s.name()), (format!("{syn}s"), s.plural())] {
                t = t.replace(&format!(" {from} "), &format!(" {to} "));
                t = t.replace(&format!(" {from},"), &format!(" {to},"));
                t = t.replace(&format!(" {from}."), &format!(" {to}."));
            }
        }
    }
    t
}

fn parse_phrase(text: &str) -> Phrase {
    let t = fold_shapes(text);
    let mut p = Phrase::default();
    for w in t.split_whitespace() {
        let w = w.trim_end_matches(['?', '.']);
        if let Some(s) = shape_of(w) {
            p.shape = Some(s);
        } else if let Some(c) = color_of(w) {
            p.color = Some(c);
        } else if let Some(s) = size_of(w) {
            p.size = Some(s);
        } else {
            p.extreme = match w {
                "left" | "leftmost" => Some((true, true)),
                "right" | "rightmost" => Some((true, false)),
                "top" | "topmost" | "upper" => Some((false, true)),
                "bottom" | "bottommost" | "lower" => Some((false, false)),
                _ => p.extreme,
            };
        }
    }
    p
}

fn select<'a>(objs: &'a [Obj], p: &Phrase) -> Vec<&'a Obj> {
    let mut c: Vec<&Obj> = objs
        .iter()
        .filter(|o| p.shape.as_ref().is_none_or(|s| *s == o.shape))
        .filter(|o| p.color.as_ref().is_none_or(|s| *s == o.color))
        .filter(|o| p.size.as_ref().is_none_or(|s| *s == o.size))
        .collect();
    if let Some((x_axis, smallest)) = p.extreme {
        let key = |o: &Obj| {
            let (x, y) = o.center();
            let v = if x_axis { x } else { y };
            if smallest {
                v
            } else {
                -v
            }
        };
        let best = c.iter().map(|o| key(o)).fold(f64::INFINITY, f64::min);
        c.retain(|o| key(o) == best);
    }
    c
}

/// Canonical form of an answer (synonyms, number words, position phrasing) for comparison.
fn canonical(answer: &str) -> String {
    let a = answer.trim().to_lowercase();
    let words: [(&str, &str); 13] = [
        ("none", "0"),
        ("zero", "0"),
        ("one", "1"),
        ("two", "2"),
        ("three", "3"),
        ("four", "4"),
        ("middle", "center"),
        ("centre", "center"),
        ("upper left", "top left"),
        ("upper right", "top right"),
        ("lower left", "bottom left"),
        ("lower right", "bottom right"),
        ("striped", "stripes"),
    ];
    let mut a = a
        .trim_start_matches("at the ")
        .trim_start_matches("on the ")
        .trim_end_matches(" corner")
        .trim_end_matches(" side")
        .to_string();
    for (from, to) in words {
        if a == from {
            a = to.to_string();
        }
    }
    if let Some(c) = color_of(&a) {
        return c;
    }
    if let Some(s) = shape_of(&a) {
        return s;
    }
    for t in Texture::ALL {
        if t.answer_synonyms().contains(&a.as_str()) {
            return t.name().to_string();
        }
    }
    a
}

fn grid_word(o: &Obj, side: f64) -> String {
    let (x, y) = o.center();
    let col = ((x / side * 3.0) as usize).min(2);
    let row = ((y / side * 3.0) as usize).min(2);
    let words = [
        ["top left", "top", "top right"],
        ["left", "center", "right"],
        ["bottom left", "bottom", "bottom right"],
    ];
    words[row][col].to_string()
}

fn the_one<'a>(objs: &'a [Obj], phrase: &str, q: &str) -> &'a Obj {
    let sel = select(objs, &parse_phrase(phrase));
    assert_eq!(sel.len(), 1, "{q}: '{phrase}' must name exactly one object");
    sel[0]
}

/// The true answer of a question, from the scene alone.
fn oracle(q: &str, objs: &[Obj], texture: &str, side: f64) -> String {
    let body = q.trim_end_matches('?');
    if let Some(rest) = body.strip_prefix("What color is the ") {
        return the_one(objs, rest, q).color.clone();
    }
    if let Some(rest) = body.strip_prefix("What shape is the ") {
        return the_one(objs, rest, q).shape.clone();
    }
    if let Some(rest) = body.strip_prefix("How many ") {
        let phrase = rest
            .trim_end_matches(" are there")
            .trim_end_matches(" are in the image");
        return select(objs, &parse_phrase(phrase)).len().to_string();
    }
    if let Some(rest) = body.strip_prefix("Is there ") {
        let phrase = rest.trim_end_matches(" in the image");
        let found = !select(objs, &parse_phrase(phrase)).is_empty();
        return if found { "yes" } else { "no" }.to_string();
    }
    if let Some(rest) = body.strip_prefix("Where is the ") {
        return grid_word(the_one(objs, rest, q), side);
    }
    if body.starts_with("What pattern") {
        return texture.to_string();
    }
    if let Some(rest) = body.strip_prefix("Is the ") {
        for rel in ["to the left of", "to the right of", "above", "below"] {
            if let Some((a, b)) = rest.split_once(&format!(" {rel} the ")) {
                let (ax, ay) = the_one(objs, a, q).center();
                let (bx, by) = the_one(objs, b, q).center();
                let holds = match rel {
                    "to the left of" => ax < bx,
                    "to the right of" => ax > bx,
                    "above" => ay < by,
                    _ => ay > by,
                };
                return if holds { "yes" } else { "no" }.to_string();
            }
        }
    }
    panic!("unknown question form: {q}");
}

struct World {
    dir: PathBuf,
    side: f64,
    objects: BTreeMap<u64, Vec<Obj>>,
    textures: BTreeMap<u64, String>,
    tags: BTreeMap<u64, Vec<String>>,
    files: BTreeMap<u64, String>,
}

fn load(dir: &Path, side: u32) -> World {
    let inst: CocoInstances = read(dir, "instances.json");
    let mut objects: BTreeMap<u64, Vec<Obj>> = BTreeMap::new();
    let cats: BTreeMap<u32, String> = inst
        .categories
        .iter()
        .map(|c| (c.id, c.name.clone()))
        .collect();
    for a in &inst.annotations {
        assert_eq!(cats[&a.category_id], a.shape);
        objects.entry(a.image_id).or_default().push(Obj {
            id: a.id,
            shape: a.shape.clone(),
            color: a.color.clone(),
            size: a.size.clone(),
            bbox: a.bbox,
        });
    }
    let files = inst
        .images
        .iter()
        .map(|i| (i.id, i.file_name.clone()))
        .collect();
    let mut textures = BTreeMap::new();
    let mut tags = BTreeMap::new();
    for split in ["train", "val", "test"] {
        let rows: Vec<ImageTags> = read(dir, &format!("tags_{split}.json"));
        for r in rows {
            let t = r
                .tags
                .iter()
                .find(|t| Texture::ALL.iter().any(|x| x.name() == t.as_str()))
                .expect("a texture tag")
                .clone();
            textures.insert(r.image_id, t);
            tags.insert(r.image_id, r.tags);
        }
    }
    World {
        dir: dir.to_path_buf(),
        side: side as f64,
        objects,
        textures,
        tags,
        files,
    }
}

/// A small world (40/5/5 images of 96 px). For a longer soak run set
/// `SHAPES_SOAK="seed,train,size"`, e.g. `SHAPES_SOAK=7,2000,224` (the split-size asserts then
/// use `train`).
fn world() -> (tempfile::TempDir, World) {
    let tmp = tempfile::tempdir().unwrap();
    let (seed, train, size) = soak();
    let mut c = cfg(seed, train, size);
    c.val = 5;
    c.test = 5;
    let dir = make(tmp.path(), "w", &c);
    let w = load(&dir, size);
    (tmp, w)
}

fn soak() -> (u64, usize, u32) {
    match std::env::var("SHAPES_SOAK") {
        Ok(v) => {
            let p: Vec<u64> = v
                .split(',')
                .map(|x| x.trim().parse().expect("SHAPES_SOAK"))
                .collect();
            (p[0], p[1] as usize, p[2] as u32)
        }
        Err(_) => (2024, 40, 96),
    }
}

#[test]
fn referring_expressions_pick_out_exactly_their_object() {
    let (_tmp, w) = world();
    let refs: Vec<RefRecord> = read(&w.dir, "refs.json");
    assert!(refs.len() >= 100, "{}", refs.len());
    let mut sentences = 0;
    for r in &refs {
        let objs = &w.objects[&r.image_id];
        assert_eq!(r.file_name, w.files[&r.image_id]);
        assert_eq!(r.sent_ids.len(), r.sentences.len());
        for s in &r.sentences {
            assert_eq!(s.tokens.join(" "), s.sent);
            let sel = select(objs, &parse_phrase(&s.sent));
            assert_eq!(
                sel.len(),
                1,
                "'{}' in image {}: {sel:?}",
                s.sent,
                r.image_id
            );
            assert_eq!(sel[0].id, r.ann_id, "'{}' in image {}", s.sent, r.image_id);
            sentences += 1;
        }
    }
    // Sentence ids are unique.
    let mut ids: Vec<u64> = refs.iter().flat_map(|r| r.sent_ids.clone()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), sentences);
}

#[test]
fn vqa_majority_agrees_with_the_scene() {
    let (_tmp, w) = world();
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    let (mut total, mut some_disagreement, mut some_synonym) = (0, 0, 0);
    for split in ["train", "val", "test"] {
        let qs: VqaQuestions = read(&w.dir, &format!("questions_{split}.json"));
        let an: VqaAnnotations = read(&w.dir, &format!("annotations_{split}.json"));
        assert_eq!(qs.questions.len(), an.annotations.len());
        for (q, a) in qs.questions.iter().zip(&an.annotations) {
            assert_eq!((q.question_id, q.image_id), (a.question_id, a.image_id));
            assert!(q.question.to_lowercase().starts_with(&a.question_type));
            let truth = oracle(
                &q.question,
                &w.objects[&q.image_id],
                &w.textures[&q.image_id],
                w.side,
            );
            assert_eq!(a.answers.len(), 10);
            let ok = a
                .answers
                .iter()
                .filter(|x| canonical(&x.answer) == truth)
                .count();
            assert!(
                ok >= 7,
                "{}: truth {truth}, answers {:?}",
                q.question,
                a.answers
            );
            assert_eq!(
                canonical(&a.multiple_choice_answer),
                truth,
                "{}",
                q.question
            );
            let expected_type = match truth.as_str() {
                "yes" | "no" => "yes/no",
                t if t.parse::<u32>().is_ok() => "number",
                _ => "other",
            };
            assert_eq!(a.answer_type, expected_type, "{}", q.question);
            for (i, x) in a.answers.iter().enumerate() {
                assert_eq!(x.answer_id, i as u32 + 1);
                assert!(["yes", "maybe", "no"].contains(&x.answer_confidence.as_str()));
            }
            some_disagreement += (ok < 10) as usize;
            some_synonym += a
                .answers
                .iter()
                .any(|x| canonical(&x.answer) == truth && x.answer != truth)
                as usize;
            *kinds.entry(a.question_type.clone()).or_default() += 1;
            total += 1;
        }
    }
    assert_eq!(total, (soak().1 + 10) * 5);
    assert!(kinds.len() >= 7, "question kinds: {kinds:?}");
    assert!(
        some_disagreement > total / 5,
        "{some_disagreement} of {total}"
    );
    assert!(some_synonym > total / 10, "{some_synonym} of {total}");
}

#[test]
fn boxes_are_inside_the_image_and_hold_the_object_color() {
    let (_tmp, w) = world();
    let side = w.side as usize;
    let mut tight_checked = 0;
    for (id, objs) in &w.objects {
        let bytes = std::fs::read(w.dir.join(&w.files[id])).unwrap();
        let (iw, ih, px) = decode_png(&bytes).unwrap();
        assert_eq!((iw as usize, ih as usize), (side, side));
        for o in objs {
            let [x, y, bw, bh] = o.bbox;
            assert!(
                bw >= 1.0 && bh >= 1.0 && x + bw <= w.side && y + bh <= w.side,
                "{o:?}"
            );
            let rgb = Color::ALL
                .iter()
                .find(|c| c.name() == o.color)
                .unwrap()
                .rgb();
            // Pure object pixels are within the jitter (10) of the nominal color; blends of two
            // colors mostly are not.
            let near =
                |i: usize| (0..3).all(|c| (px[i * 3 + c] as i32 - rgb[c] as i32).abs() <= 12);
            let (x0, y0, x1, y1) = (x as usize, y as usize, (x + bw) as usize, (y + bh) as usize);
            let inside = (y0..y1)
                .flat_map(|yy| (x0..x1).map(move |xx| yy * side + xx))
                .filter(|&i| near(i))
                .count();
            assert!(
                inside as f64 >= 0.4 * bw * bh * 0.5,
                "image {id} {o:?}: only {inside} pixels of its color in its box"
            );
            // For a color unique in an image without overlaps, the box is tight around that
            // color's pixels. (Where shapes overlap, the blend of two colors can pass near a
            // third, and a thin visible sliver counts in the box without being pure color.)
            // Anti-aliased edges of black shapes pass through gray for one pixel, so for gray
            // objects pixels next to a near-black pixel do not count, and gray beside a black
            // shape is not checked.
            let overlapping = w.tags[id].iter().any(|t| t == "overlapping");
            let gray_by_black = o.color == "gray" && objs.iter().any(|p| p.color == "black");
            if !overlapping
                && !gray_by_black
                && objs.iter().filter(|p| p.color == o.color).count() == 1
            {
                tight_checked += 1;
                let dark = |j: usize| (0..3).all(|c| px[j * 3 + c] < 80);
                let interior = |i: usize| {
                    if !near(i) {
                        return false;
                    }
                    if o.color != "gray" {
                        return true;
                    }
                    let (xx, yy) = ((i % side) as i64, (i / side) as i64);
                    !(-1..=1i64).any(|dy| {
                        (-1..=1i64).any(|dx| {
                            let (nx, ny) = (xx + dx, yy + dy);
                            (0..side as i64).contains(&nx)
                                && (0..side as i64).contains(&ny)
                                && dark(ny as usize * side + nx as usize)
                        })
                    })
                };
                let (mut a0, mut b0, mut a1, mut b1) = (usize::MAX, usize::MAX, 0, 0);
                for i in (0..side * side).filter(|&i| interior(i)) {
                    let (xx, yy) = (i % side, i / side);
                    (a0, b0, a1, b1) = (a0.min(xx), b0.min(yy), a1.max(xx + 1), b1.max(yy + 1));
                }
                // No pixel of the color outside the box; the box at most a few pixels larger
                // (anti-aliased tips, star tips most, are only partly the object's color).
                let slack = if o.shape == "star" { 5 } else { 3 };
                assert!(
                    a0 >= x0 && b0 >= y0 && a1 <= x1 && b1 <= y1,
                    "image {id} {o:?}"
                );
                for (got, want) in [(a0, x0), (b0, y0), (a1, x1), (b1, y1)] {
                    assert!(
                        got.abs_diff(want) <= slack,
                        "image {id} {o:?}: color extent {:?} vs box {:?}",
                        (a0, b0, a1, b1),
                        (x0, y0, x1, y1)
                    );
                }
            }
        }
    }
    let total: usize = w.objects.values().map(|o| o.len()).sum();
    assert!(
        tight_checked * 3 >= total,
        "only {tight_checked} of {total} boxes checked for tightness"
    );
}

#[test]
fn captions_tags_and_lion_records_are_consistent() {
    let (_tmp, w) = world();
    let vocab: Vec<String> = std::fs::read_to_string(w.dir.join("tag_list.txt"))
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    for (split, n) in [("train", soak().1), ("val", 5), ("test", 5)] {
        let caps: CocoCaptions = read(&w.dir, &format!("captions_{split}.json"));
        assert_eq!(caps.images.len(), n);
        assert_eq!(caps.annotations.len(), 5 * n);
        for img in &caps.images {
            let mine: Vec<&str> = caps
                .annotations
                .iter()
                .filter(|a| a.image_id == img.id)
                .map(|a| a.caption.as_str())
                .collect();
            assert_eq!(mine.len(), 5);
            let mut distinct = mine.clone();
            distinct.sort();
            distinct.dedup();
            assert!(distinct.len() >= 4, "{mine:?}");
            // Every shape word in a caption is in the scene, and the captions together name
            // every shape (some captions mention only part of the scene).
            let objs = &w.objects[&img.id];
            let mut named: Vec<String> = Vec::new();
            for c in &mine {
                let lower = fold_shapes(&c.to_lowercase());
                for word in lower.split(|ch: char| !ch.is_alphanumeric() && ch != '-') {
                    if let Some(s) = shape_of(word) {
                        assert!(objs.iter().any(|o| o.shape == s), "{c}: no {s} in {objs:?}");
                        named.push(s);
                    }
                }
            }
            for o in objs {
                assert!(named.contains(&o.shape), "{mine:?} never names {o:?}");
            }
        }
        let ids: Vec<u64> = caps.annotations.iter().map(|a| a.id).collect();
        let mut sorted = ids.clone();
        sorted.dedup();
        assert_eq!(sorted.len(), ids.len());

        // Tags: vocabulary members, in vocabulary order, matching the objects.
        let rows: Vec<ImageTags> = read(&w.dir, &format!("tags_{split}.json"));
        for r in rows {
            let pos: Vec<usize> = r
                .tags
                .iter()
                .map(|t| {
                    vocab
                        .iter()
                        .position(|v| v == t)
                        .expect("tag in vocabulary")
                })
                .collect();
            assert!(pos.windows(2).all(|p| p[0] < p[1]));
            let objs = &w.objects[&r.image_id];
            for o in objs {
                for t in [
                    &o.shape,
                    &o.color,
                    &o.size,
                    &format!("{} {}", o.color, o.shape),
                ] {
                    assert!(r.tags.contains(t), "{:?} lacks {t}", r.tags);
                }
            }
            let count = ["one", "two", "three", "four"][objs.len() - 1];
            assert!(r.tags.iter().any(|t| t == count));
            let pairs = r.tags.iter().filter(|t| t.contains(' ')).count();
            let mut distinct: Vec<String> = objs
                .iter()
                .map(|o| format!("{} {}", o.color, o.shape))
                .collect();
            distinct.sort();
            distinct.dedup();
            assert_eq!(pairs, distinct.len());
            assert_eq!(w.tags[&r.image_id], r.tags);
        }

        // LION records: categories, box texts equal to the instance boxes.
        let cap: Vec<LionRecord> = read(&w.dir, &format!("lion_caption_{split}.json"));
        let vqa: Vec<LionRecord> = read(&w.dir, &format!("lion_vqa_{split}.json"));
        let rec: Vec<LionRecord> = read(&w.dir, &format!("lion_rec_{split}.json"));
        assert_eq!(cap.len(), 5 * n);
        assert_eq!(vqa.len(), 5 * n);
        assert!(cap.iter().chain(&vqa).all(|r| r.category == "image_level"));
        assert!(rec.iter().all(|r| r.category == "region_level"));
        for r in &rec {
            assert!(w.dir.join(&r.image).is_file(), "{}", r.image);
            let inner = r
                .answer
                .strip_prefix('[')
                .unwrap()
                .strip_suffix(']')
                .unwrap();
            let v: Vec<f64> = inner.split(',').map(|x| x.parse().unwrap()).collect();
            assert!(
                inner.split(',').all(|x| x.len() == 5),
                "3 decimals: {}",
                r.answer
            );
            let id: u64 = r.image[r.image.len() - 10..r.image.len() - 4]
                .parse()
                .unwrap();
            let expr = r
                .question
                .strip_prefix("In the image <image>, can you locate ")
                .and_then(|q| q.strip_suffix(" and let me know its coordinates?"))
                .unwrap();
            let o = the_one(&w.objects[&id], expr, &r.question);
            let [x, y, bw, bh] = o.bbox;
            let want = [x / w.side, y / w.side, (x + bw) / w.side, (y + bh) / w.side];
            for (a, b) in v.iter().zip(want) {
                assert!((a - b).abs() <= 0.0005 + 1e-9, "{} vs {want:?}", r.answer);
            }
        }
    }
}

#[test]
fn files_have_the_official_keys() {
    let (_tmp, w) = world();
    let keys = |rel: &str, path: &[&str], want: &[&str]| {
        let v: serde_json::Value = read(&w.dir, rel);
        let mut node = &v;
        for p in path {
            node = match p.parse::<usize>() {
                Ok(i) => &node[i],
                Err(_) => &node[*p],
            };
        }
        let obj = node.as_object().unwrap_or_else(|| panic!("{rel} {path:?}"));
        for k in want {
            assert!(obj.contains_key(*k), "{rel} {path:?} lacks {k}");
        }
    };
    keys(
        "captions_train.json",
        &[],
        &["info", "images", "annotations"],
    );
    keys(
        "captions_train.json",
        &["images", "0"],
        &["id", "file_name", "width", "height"],
    );
    keys(
        "captions_train.json",
        &["annotations", "0"],
        &["id", "image_id", "caption"],
    );
    keys(
        "questions_val.json",
        &[],
        &["questions", "task_type", "data_type", "data_subtype"],
    );
    keys(
        "questions_val.json",
        &["questions", "0"],
        &["image_id", "question", "question_id"],
    );
    keys(
        "annotations_val.json",
        &[],
        &["annotations", "data_type", "data_subtype"],
    );
    keys(
        "annotations_val.json",
        &["annotations", "0"],
        &[
            "question_type",
            "multiple_choice_answer",
            "answers",
            "image_id",
            "answer_type",
            "question_id",
        ],
    );
    keys(
        "annotations_val.json",
        &["annotations", "0", "answers", "0"],
        &["answer", "answer_confidence", "answer_id"],
    );
    keys(
        "instances.json",
        &[],
        &["images", "annotations", "categories"],
    );
    keys(
        "instances.json",
        &["annotations", "0"],
        &["id", "image_id", "category_id", "bbox", "area", "iscrowd"],
    );
    keys(
        "instances.json",
        &["categories", "0"],
        &["id", "name", "supercategory"],
    );
    keys(
        "refs.json",
        &["0"],
        &[
            "ref_id",
            "ann_id",
            "image_id",
            "split",
            "sentences",
            "category_id",
            "file_name",
        ],
    );
    keys(
        "refs.json",
        &["0", "sentences", "0"],
        &["sent", "tokens", "sent_id", "raw"],
    );
    keys(
        "lion_rec_test.json",
        &["0"],
        &["image", "question", "answer", "category", "tags"],
    );
    // Every ref's ann_id and category exist in instances.json.
    let inst: CocoInstances = read(&w.dir, "instances.json");
    let refs: Vec<RefRecord> = read(&w.dir, "refs.json");
    for r in &refs {
        let a = inst
            .annotations
            .iter()
            .find(|a| a.id == r.ann_id)
            .expect("ann");
        assert_eq!((a.image_id, a.category_id), (r.image_id, r.category_id));
        assert!(["train", "val", "test"].contains(&r.split.as_str()));
    }
}
