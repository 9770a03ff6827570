//! `lion tag` through the binary: JSON lines for a folder and a list file, with a broken image
//! reported by name while the others are tagged.

use std::process::Command;

/// A 2x2 24-bit BMP written by hand (the CLI tests do not depend on the image crate).
fn write_bmp(path: &std::path::Path, shade: u8) {
    let w = 2u32;
    let h = 2u32;
    let row = (w * 3).div_ceil(4) * 4;
    let data_len = row * h;
    let mut b = vec![];
    b.extend_from_slice(b"BM");
    b.extend_from_slice(&(54 + data_len).to_le_bytes());
    b.extend_from_slice(&[0; 4]);
    b.extend_from_slice(&54u32.to_le_bytes());
    b.extend_from_slice(&40u32.to_le_bytes());
    b.extend_from_slice(&(w as i32).to_le_bytes());
    b.extend_from_slice(&(h as i32).to_le_bytes());
    b.extend_from_slice(&1u16.to_le_bytes());
    b.extend_from_slice(&24u16.to_le_bytes());
    b.extend_from_slice(&[0; 4]);
    b.extend_from_slice(&data_len.to_le_bytes());
    b.extend_from_slice(&[0; 16]);
    for y in 0..h {
        for x in 0..w {
            b.extend_from_slice(&[shade, (x * 100) as u8, (y * 100) as u8]);
        }
        b.extend(std::iter::repeat_n(0u8, (row - w * 3) as usize));
    }
    std::fs::write(path, b).unwrap();
}

#[test]
fn tag_folder_and_list_with_a_broken_image() {
    let dir = tempfile::tempdir().unwrap();
    let imgs = dir.path().join("imgs");
    std::fs::create_dir(&imgs).unwrap();
    write_bmp(&imgs.join("a.bmp"), 10);
    write_bmp(&imgs.join("c.bmp"), 250);
    std::fs::write(imgs.join("b.jpg"), b"this is not a jpeg").unwrap();
    std::fs::write(imgs.join("notes.txt"), b"skipped: not an image extension").unwrap();
    let list = dir.path().join("list.txt");
    std::fs::write(&list, "# one more\nimgs/c.bmp\n\n").unwrap();

    let out = Command::new(env!("CARGO_BIN_EXE_lion"))
        .args([
            "tag",
            "--random-weights",
            "--config",
            "tiny",
            "--top-k",
            "3",
        ])
        .args(["--batch-size", "2", "--order", "score", "--list"])
        .arg(&list)
        .arg(&imgs)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let names: Vec<String> = lines
        .iter()
        .map(|l| l["image"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(lines.len(), 4, "{names:?}");
    assert!(names[0].ends_with("a.bmp") && names[1].ends_with("b.jpg"));
    assert!(names[2].ends_with("c.bmp") && names[3].ends_with("c.bmp"));
    assert!(lines[1]["error"].as_str().unwrap().contains("b.jpg"));
    assert!(lines[1].get("tags").is_none());
    assert!(
        stderr.contains("b.jpg"),
        "the warning names the image: {stderr}"
    );
    for i in [0, 2, 3] {
        let tags = lines[i]["tags"].as_array().unwrap();
        assert_eq!(tags.len(), 3);
        let scores: Vec<f64> = tags.iter().map(|t| t["score"].as_f64().unwrap()).collect();
        assert!(
            scores.windows(2).all(|w| w[0] >= w[1]),
            "by score: {scores:?}"
        );
        assert!(scores.iter().all(|s| (0.0..=1.0).contains(s)));
        let names: Vec<&str> = tags.iter().map(|t| t["tag"].as_str().unwrap()).collect();
        assert_eq!(lines[i]["tag_string"].as_str().unwrap(), names.join(", "));
    }
    // the same image tagged in different batches gives the same tags
    assert_eq!(lines[2]["tags"], lines[3]["tags"]);
}

#[test]
fn tag_errors_are_clear() {
    let out = Command::new(env!("CARGO_BIN_EXE_lion"))
        .args(["tag", "--random-weights", "--config", "tiny"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no images"));
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("weights.pth");
    std::fs::write(&bad, b"garbage").unwrap();
    let img = dir.path().join("x.bmp");
    write_bmp(&img, 0);
    let out = Command::new(env!("CARGO_BIN_EXE_lion"))
        .args(["tag", "--config", "tiny", "--weights"])
        .arg(&bad)
        .arg(&img)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("weights.pth"));
}

/// `lion tag --random-weights --init-seed N`: the same random tagger (tags and scores) on every
/// run, another with another seed; `--init-seed` without `--random-weights` is refused.
#[test]
fn random_weights_with_an_init_seed_repeat() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("x.bmp");
    write_bmp(&img, 120);
    let tags = |extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_lion"))
            .args(["tag", "--config", "tiny", "--top-k", "5"])
            .args(extra)
            .arg(&img)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let line: serde_json::Value =
            serde_json::from_slice(out.stdout.split(|&b| b == b'\n').next().unwrap()).unwrap();
        line["tags"].clone()
    };
    let a = tags(&["--random-weights", "--init-seed", "3"]);
    assert_eq!(a.as_array().map(Vec::len), Some(5), "{a}");
    assert_eq!(a, tags(&["--random-weights", "--init-seed", "3"]));
    assert_ne!(a, tags(&["--random-weights", "--init-seed", "4"]));
    let out = Command::new(env!("CARGO_BIN_EXE_lion"))
        .args(["tag", "--config", "tiny", "--init-seed", "3"])
        .arg(&img)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--random-weights"));
}
