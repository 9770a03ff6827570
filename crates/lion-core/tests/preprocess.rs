//! Preprocessing parity with PIL + torchvision on real photographs (crops of scikit-image's
//! sample photos; references by scripts/fixtures_vision.py), the box-aware train transform, and
//! image loading of awkward files.

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use image::RgbImage;
use lion_core::preprocess::{
    crop, decode_image, hflip, load_image, resize, Filter, ImageTransform, Rng, TrainTransform,
};
use lion_core::testing::fixture;
use lion_core::testing::max_abs_diff;

fn vision(rel: &str) -> std::path::PathBuf {
    fixture(&format!("vision/{rel}"))
}

/// (max abs difference in u8 levels, number of differing values)
fn compare(a: &RgbImage, b: &RgbImage) -> (u8, usize) {
    assert_eq!(a.dimensions(), b.dimensions());
    let mut max = 0u8;
    let mut n = 0;
    for (x, y) in a.as_raw().iter().zip(b.as_raw()) {
        let d = x.abs_diff(*y);
        max = max.max(d);
        n += (d != 0) as usize;
    }
    (max, n)
}

#[derive(serde::Deserialize)]
struct Cases {
    cases: HashMap<String, Vec<(String, u32, u32, String)>>,
    crop_flip: HashMap<String, u32>,
}

fn cases() -> Cases {
    serde_json::from_str(&std::fs::read_to_string(vision("preprocess.json")).unwrap()).unwrap()
}

#[test]
fn resize_matches_pil_on_real_photographs() {
    let cases = cases();
    let mut checked = 0;
    let mut photos = vec![];
    for (name, list) in &cases.cases {
        let img = load_image(vision(&format!("images/{name}.png"))).unwrap();
        photos.push(format!("{name} {}x{}", img.width(), img.height()));
        for (tag, w, h, f) in list {
            let filter = if f == "bicubic" {
                Filter::Bicubic
            } else {
                Filter::Bilinear
            };
            let ours = resize(&img, *w, *h, filter).unwrap();
            let pil = load_image(vision(&format!("resize/{name}_{tag}.png"))).unwrap();
            let (max, n) = compare(&ours, &pil);
            println!("{name} -> {tag}: max diff {max}/255, {n} values differ");
            assert!(max <= 1, "{name} {tag}: differs from PIL by {max}/255");
            checked += 1;
        }
    }
    println!("photos: {photos:?}");
    assert!(checked >= 15 && cases.cases.len() >= 4);
}

#[test]
fn eval_and_ram_transforms_match_torchvision() {
    let samples =
        candle_core::safetensors::load(vision("preprocess.safetensors"), &Device::Cpu).unwrap();
    let strided = |t: &Tensor| -> Tensor {
        // t[:, ::16, ::16]
        let (_, h, w) = t.dims3().unwrap();
        let rows: Vec<u32> = (0..h as u32).step_by(16).collect();
        let cols: Vec<u32> = (0..w as u32).step_by(16).collect();
        let r = Tensor::new(rows, t.device()).unwrap();
        let c = Tensor::new(cols, t.device()).unwrap();
        t.index_select(&r, 1).unwrap().index_select(&c, 2).unwrap()
    };
    for name in ["astronaut", "coffee", "chelsea", "rocket"] {
        let img = load_image(vision(&format!("images/{name}.png"))).unwrap();
        for (kind, t) in [
            ("eval", ImageTransform::lion_eval()),
            ("ram", ImageTransform::ram()),
        ] {
            let x = t.apply(&img, &Device::Cpu).unwrap();
            assert_eq!(x.dims(), &[3, t.size as usize, t.size as usize]);
            let d = max_abs_diff(&strided(&x), &samples[&format!("{name}_{kind}")]).unwrap();
            println!("{name} {kind} transform: max abs diff {d:e} (normalised units)");
            // one u8 level is 1/255/std ~ 0.017 normalised units; we expect exact equality
            assert!(d <= 1e-6, "{name} {kind}: {d}");
        }
    }
    let rocket = load_image(vision("images/rocket.png")).unwrap();
    let ours = ImageTransform::ram().resized(&rocket).unwrap();
    let pil = load_image(vision("resize/rocket_ram384.png")).unwrap();
    let (max, n) = compare(&ours, &pil);
    println!("rocket -> ram384: max diff {max}/255, {n} values differ");
    assert!(max <= 1);
    let batch = ImageTransform::lion_eval()
        .apply_batch(&[rocket.clone(), rocket], &Device::Cpu)
        .unwrap();
    assert_eq!(batch.dims(), &[2, 3, 224, 224]);
}

#[test]
fn crop_resize_flip_matches_torchvision_resized_crop() {
    let c = cases().crop_flip;
    let img = load_image(vision("images/chelsea.png")).unwrap();
    let cropped = crop(&img, c["left"], c["top"], c["width"], c["height"]).unwrap();
    let ours = hflip(&resize(&cropped, 112, 112, Filter::Bicubic).unwrap());
    let pil = load_image(vision("resize/chelsea_crop_flip112.png")).unwrap();
    let (max, n) = compare(&ours, &pil);
    println!("chelsea resized_crop + hflip: max diff {max}/255, {n} values differ");
    assert!(max <= 1);
    let e = crop(&img, 100, 0, 60, 10).unwrap_err().to_string();
    assert!(e.contains("not inside the 150x120 image"), "{e}");
}

#[test]
fn train_transform_is_seeded_and_in_range() {
    let img = load_image(vision("images/coffee.png")).unwrap();
    let t = TrainTransform::lion();
    let a = t.apply(&img, &mut Rng::new(7), &Device::Cpu).unwrap();
    let b = t.apply(&img, &mut Rng::new(7), &Device::Cpu).unwrap();
    assert_eq!(a.crop, b.crop);
    assert_eq!(max_abs_diff(&a.pixel_values, &b.pixel_values).unwrap(), 0.0);
    assert_eq!(a.pixel_values.dims(), &[3, 224, 224]);
    let mut rng = Rng::new(1);
    let (mut flips, n) = (0, 200);
    for _ in 0..n {
        let out = t.apply(&img, &mut rng, &Device::Cpu).unwrap();
        let c = out.crop;
        assert!(c.left + c.width <= 300 && c.top + c.height <= 120);
        let frac = (c.width * c.height) as f64 / (300.0 * 120.0);
        // scale (0.5, 1) unless the central-crop fallback was taken (ratio clamps to 4/3)
        assert!(frac <= 1.0 && (frac >= 0.45 || c.height == 120), "{c:?}");
        flips += out.flipped as usize;
    }
    assert!((60..140).contains(&flips), "{flips} flips of {n}");
}

/// The mean colour of the output pixels inside a box, to check that it still shows the object.
fn mean_inside(x: &Tensor, b: [f32; 4]) -> Vec<f32> {
    let x = x.to_vec3::<f32>().unwrap();
    let (x1, y1, x2, y2) = (
        b[0].round() as usize,
        b[1].round() as usize,
        b[2].round() as usize,
        b[3].round() as usize,
    );
    (0..3)
        .map(|c| {
            let mut s = 0.0;
            for row in &x[c][y1..y2] {
                s += row[x1..x2].iter().sum::<f32>();
            }
            s / ((x2 - x1) * (y2 - y1)) as f32
        })
        .collect()
}

#[test]
fn box_aware_train_transform_keeps_boxes_on_their_objects() {
    // a synthetic scene: a red square on gray; its box must follow crop, resize and flip
    let mut img = RgbImage::from_pixel(300, 200, image::Rgb([128, 128, 128]));
    let (x1, y1, x2, y2) = (200u32, 40u32, 260u32, 110u32);
    for y in y1..y2 {
        for x in x1..x2 {
            img.put_pixel(x, y, image::Rgb([250, 10, 10]));
        }
    }
    let bx = [x1 as f32, y1 as f32, x2 as f32, y2 as f32];
    let t = TrainTransform::lion();
    let mut rng = Rng::new(3);
    let mut flipped = 0;
    for _ in 0..50 {
        let out = t
            .apply_with_boxes(&img, &[bx, [0.0, 0.0, 10.0, 10.0]], &mut rng, &Device::Cpu)
            .unwrap();
        let c = out.crop;
        // the crop contains both boxes
        assert!(c.left == 0 && c.top == 0, "{c:?}");
        assert!(c.left + c.width >= x2 && c.top + c.height >= y2, "{c:?}");
        let b = out.boxes[0];
        assert!(b.iter().all(|v| (0.0..=224.0).contains(v)), "{b:?}");
        // the box (shrunk by 2 px for resampling blur) is all red in the output
        let inner = [b[0] + 2.0, b[1] + 2.0, b[2] - 2.0, b[3] - 2.0];
        let m = mean_inside(&out.pixel_values, inner);
        assert!(
            m[0] > 1.5 && m[1] < -1.0 && m[2] < -1.0,
            "box {b:?} not on the object: {m:?}"
        );
        // the box area scales with the crop
        let sx = 224.0 / c.width as f32;
        assert!(((b[2] - b[0]) - 60.0 * sx).abs() < 1e-3);
        flipped += out.flipped as usize;
    }
    assert!(flipped > 5 && flipped < 45);
    // bad boxes are rejected with a message naming the box
    let e = t
        .apply_with_boxes(&img, &[[10.0, 10.0, 5.0, 20.0]], &mut rng, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(e.contains("box 0"), "{e}");
    let e = t
        .apply_with_boxes(&img, &[[10.0, 10.0, 500.0, 20.0]], &mut rng, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(e.contains("inside the 300x200 image"), "{e}");
}

// ------------------------------------------------------------------------------------------
// Loading awkward files

fn pil(name: &str) -> RgbImage {
    load_image(vision(&format!("robust/{name}"))).unwrap()
}

#[test]
fn conversions_match_pil_convert_rgb() {
    // exact for lossless formats and, with libjpeg-turbo, for JPEG; within the pure-Rust
    // decoder's differences for JPEG without it
    let exact_jpeg = lion_core::jpeg::library().is_some();
    let cases = [
        ("palette.png", "palette_pil.png", 0),
        ("rgb16.png", "rgb16_pil.png", 0),
        ("photo.jpg", "photo_jpg_pil.png", 3),
        ("gray.jpg", "gray_jpg_pil.png", 3),
        ("cmyk.jpg", "cmyk_pil.png", 4),
    ];
    for (file, reference, tol) in cases {
        let ours =
            load_image(vision(&format!("robust/{file}"))).unwrap_or_else(|e| panic!("{file}: {e}"));
        let (max, n) = compare(&ours, &pil(reference));
        println!("{file}: max diff {max}/255 vs PIL convert('RGB'), {n} values differ");
        let tol = if exact_jpeg { 0 } else { tol };
        assert!(max <= tol, "{file}: differs from PIL by {max}/255");
    }
    let rocket = load_image(vision("images/rocket.png")).unwrap();
    let gray = pil("gray.png");
    assert!(gray.pixels().all(|p| p[0] == p[1] && p[1] == p[2]));
    // gray + alpha and RGBA: alpha dropped, not composited (PIL's convert)
    assert_eq!(compare(&pil("la.png"), &gray).0, 0);
    assert_eq!(compare(&pil("rgba.png"), &rocket).0, 0);
    // 16-bit gray: the high byte (PIL would clip every value above 255 to white)
    let g16 = pil("gray16.png");
    assert_eq!(compare(&g16, &gray).0, 0);
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in bytes {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    !c
}

#[test]
fn broken_files_give_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let jpg = std::fs::read(vision("robust/photo.jpg")).unwrap();
    let png = std::fs::read(vision("images/rocket.png")).unwrap();
    let mut corrupt_png = png.clone();
    for b in corrupt_png.iter_mut().skip(60).take(200) {
        *b ^= 0x5A;
    }
    let mut corrupt_jpg = jpg.clone();
    for b in corrupt_jpg.iter_mut().skip(2).take(300) {
        *b = 0xFF;
    }
    // a PNG whose (valid, CRC-correct) header says 0 x 0 pixels, followed by the real data
    let mut zero = png.clone();
    zero[16..24].copy_from_slice(&[0; 8]);
    let crc = crc32(&zero[12..29]);
    zero[29..33].copy_from_slice(&crc.to_be_bytes());
    let cases = [
        ("empty.jpg", Vec::new()),
        ("truncated.png", png[..png.len() / 2].to_vec()),
        ("header-only.png", png[..40].to_vec()),
        ("corrupt.png", corrupt_png),
        ("corrupt.jpg", corrupt_jpg),
        ("zero-size.png", zero),
        ("text.jpg", b"not an image at all".to_vec()),
    ];
    for (name, bytes) in cases {
        let p = dir.path().join(name);
        std::fs::write(&p, &bytes).unwrap();
        match load_image(&p) {
            Err(e) => {
                let msg = e.to_string();
                println!("{name}: {msg}");
                assert!(
                    msg.contains(name),
                    "{name}: error does not name the file: {msg}"
                );
            }
            // A truncated JPEG may decode (its tail gray), as PIL with LOAD_TRUNCATED_IMAGES.
            Ok(img) => assert!(name.ends_with(".jpg") && img.width() > 0, "{name} decoded"),
        }
    }
    let truncated_jpg = dir.path().join("truncated.jpg");
    std::fs::write(&truncated_jpg, &jpg[..jpg.len() / 2]).unwrap();
    match load_image(&truncated_jpg) {
        Err(e) => assert!(e.to_string().contains("truncated.jpg")),
        Ok(img) => assert_eq!(img.dimensions(), (80, 60)),
    }
    let e = load_image(dir.path().join("missing.png"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing.png"), "{e}");
    let e = decode_image(&[], "memory.png").unwrap_err().to_string();
    assert!(e.contains("memory.png") && e.contains("empty"), "{e}");
    let e = resize(&RgbImage::new(4, 4), 0, 3, Filter::Bicubic)
        .unwrap_err()
        .to_string();
    assert!(e.contains("sizes must be positive"), "{e}");
}
