//! JPEG decoding against Pillow's `Image.open(f).convert("RGB")` on the corpus of
//! scripts/fixtures_jpeg.py (120 small photographs: baseline / progressive, 4:4:4 / 4:2:2 /
//! 4:2:0, restart markers, CMYK, greyscale, EXIF-oriented; at least 20 of each kind).
//!
//! With libjpeg-turbo loadable (`lion_core::jpeg`), every byte must equal Pillow's. Without it the
//! exactness test is skipped with a printed reason, unless `LION_REQUIRE_TURBOJPEG` is set (as
//! scripts/test.sh, and so CI, does): then it fails.

use std::collections::BTreeMap;

use image::RgbImage;
use lion_core::preprocess::{decode_image, decode_image_pure_rust, load_image};
use lion_core::testing::fixture;
use lion_core::testing::turbojpeg_or_skip;

#[derive(serde::Deserialize)]
struct Corpus {
    files: Vec<Entry>,
}

#[derive(serde::Deserialize)]
struct Entry {
    file: String,
    kinds: Vec<String>,
    size: (u32, u32),
}

fn corpus() -> Vec<Entry> {
    let text = std::fs::read_to_string(fixture("jpeg/corpus.json")).unwrap();
    serde_json::from_str::<Corpus>(&text).unwrap().files
}

fn pillow(e: &Entry) -> RgbImage {
    let png = fixture(&format!("jpeg/{}", e.file.replace(".jpg", ".png")));
    let img = load_image(png).unwrap();
    assert_eq!(img.dimensions(), e.size, "{}", e.file);
    img
}

/// (max difference in levels, differing bytes)
fn diff(a: &RgbImage, b: &RgbImage) -> (u8, usize) {
    assert_eq!(a.dimensions(), b.dimensions());
    a.as_raw()
        .iter()
        .zip(b.as_raw())
        .fold((0, 0), |(m, n), (x, y)| {
            let d = x.abs_diff(*y);
            (m.max(d), n + (d != 0) as usize)
        })
}

#[test]
fn jpeg_decoding_equals_pillow_byte_for_byte() {
    if !turbojpeg_or_skip("jpeg_decoding_equals_pillow_byte_for_byte") {
        return;
    }
    let files = corpus();
    let mut per_kind: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let mut failures = vec![];
    for e in &files {
        let ours = load_image(fixture(&format!("jpeg/{}", e.file))).unwrap();
        let (max, n) = diff(&ours, &pillow(e));
        for k in &e.kinds {
            let c = per_kind.entry(k.clone()).or_default();
            c.0 += 1;
            c.1 += (n == 0) as usize;
        }
        if n != 0 {
            failures.push(format!("{}: {n} bytes differ, by up to {max}", e.file));
        }
    }
    for (k, (total, equal)) in &per_kind {
        println!("{k}: {equal}/{total} equal to Pillow");
        assert!(*total >= 20, "only {total} {k} files in the corpus");
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The fallback: the pure-Rust decoder decodes every file to nearly Pillow's pixels, and the test
/// says how far off it is (the reason libjpeg-turbo is used when it can be).
#[test]
fn pure_rust_fallback_is_close_to_pillow() {
    let (mut bytes, mut differing, mut sum, mut worst) = (0usize, 0usize, 0u64, 0u8);
    for e in corpus() {
        let path = fixture(&format!("jpeg/{}", e.file));
        let data = std::fs::read(&path).unwrap();
        let ours = decode_image_pure_rust(&data, &path).unwrap();
        let want = pillow(&e);
        let (max, n) = diff(&ours, &want);
        assert!(max <= 16, "{}: {max} levels from Pillow", e.file);
        worst = worst.max(max);
        differing += n;
        bytes += ours.as_raw().len();
        sum += ours
            .as_raw()
            .iter()
            .zip(want.as_raw())
            .map(|(a, b)| a.abs_diff(*b) as u64)
            .sum::<u64>();
    }
    let mean = sum as f64 / bytes as f64;
    println!(
        "pure-Rust decoder vs Pillow: {differing} of {bytes} bytes differ ({:.2}%), by up to {worst} \
         levels, mean {mean:.3}",
        100.0 * differing as f64 / bytes as f64
    );
    assert!(mean < 0.5, "mean difference {mean} levels");
}

#[test]
fn broken_jpegs_are_errors_naming_the_file() {
    if !turbojpeg_or_skip("broken_jpegs_are_errors_naming_the_file") {
        return;
    }
    let data = std::fs::read(fixture("jpeg/000_baseline_s444.jpg")).unwrap();
    let cases = [
        (
            "truncated.jpg",
            data[..data.len() / 2].to_vec(),
            "truncated",
        ),
        ("header-only.jpg", data[..20].to_vec(), "header-only.jpg"),
        ("soi-only.jpg", b"\xff\xd8\xff".to_vec(), "soi-only.jpg"),
    ];
    for (name, bytes, want) in cases {
        let e = decode_image(&bytes, name).unwrap_err().to_string();
        println!("{name}: {e}");
        assert!(e.contains(name) && e.contains(want), "{name}: {e}");
    }
}
