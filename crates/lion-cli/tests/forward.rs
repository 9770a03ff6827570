//! `lion forward --dump` through the binary at the tiny preset with random weights: the file
//! holds every intermediate tensor with the documented names and shapes; bad input is an error
//! and leaves no file.

use lion_core::testing::repo_root as root;
use std::collections::HashMap;
use std::process::Command;

fn lion(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_lion"))
        .current_dir(root())
        .args(["forward", "--preset", "tiny", "--random-weights"])
        .args(args)
        .output()
        .unwrap()
}

/// name -> (dtype, shape) from the safetensors header.
fn header(path: &std::path::Path) -> HashMap<String, (String, Vec<usize>)> {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let h: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    h.as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .map(|(k, v)| {
            let shape = v["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap() as usize)
                .collect();
            (k.clone(), (v["dtype"].as_str().unwrap().to_string(), shape))
        })
        .collect()
}

#[test]
fn forward_dump_has_every_intermediate_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("dump.safetensors");
    let o = lion(&[
        "tests/fixtures/vision/images/astronaut.png",
        "--task",
        "vqa",
        "--text",
        "what is the man wearing?",
        "--tags",
        "man:0.9,helmet:0.8",
        "--target",
        "a space suit",
        "--layers",
        "0,3",
        "--dump",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let h = header(&out);
    let (d, v) = (32, 200); // tiny: d_model 32, vocab 200; ViT 56 px / 14 -> 17 tokens of 32
    let shape = |k: &str| {
        h.get(k)
            .unwrap_or_else(|| panic!("no `{k}` in {h:?}"))
            .1
            .clone()
    };
    let dtype = |k: &str| h[k].0.clone();
    assert_eq!(shape("pixel_values"), vec![1, 3, 56, 56]);
    assert_eq!(shape("vit.block0"), vec![1, 17, 32]);
    assert_eq!(shape("vit.block3"), vec![1, 17, 32]);
    assert!(!h.contains_key("vit.block1"), "only the asked layers");
    assert_eq!(shape("qformer"), vec![1, 4, d]);
    assert_eq!(shape("aggregator"), vec![1, 17, d]);
    assert_eq!(shape("visual"), vec![1, 21, d]);
    let t = shape("prompt_ids")[1];
    assert!(t > 10, "the prompt holds the tag text and question");
    assert_eq!(shape("encoder_input"), vec![1, 21 + t, d]);
    assert_eq!(shape("encoder_mask"), vec![1, 21 + t]);
    let s = shape("labels")[1];
    assert!(s > 1, "the target is tokenized");
    assert_eq!(shape("logits"), vec![1, s, v]);
    assert_eq!(shape("loss"), vec![1]);
    assert_eq!(dtype("logits"), "F32");
    assert_eq!(dtype("labels"), "I64");
    assert_eq!(dtype("encoder_mask"), "I64");
    assert_eq!(h.len(), 12, "{:?}", h.keys().collect::<Vec<_>>());
    // values fit together: the encoder input starts with the visual tokens, which are
    // [qformer | aggregator]; the loss is finite
    let t = candle_core::safetensors::load(&out, &candle_core::Device::Cpu).unwrap();
    let diff = |a: &candle_core::Tensor, b: &candle_core::Tensor| {
        a.sub(b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    assert_eq!(
        diff(&t["encoder_input"].narrow(1, 0, 21).unwrap(), &t["visual"]),
        0.0
    );
    assert_eq!(
        diff(&t["visual"].narrow(1, 0, 4).unwrap(), &t["qformer"]),
        0.0
    );
    assert_eq!(
        diff(&t["visual"].narrow(1, 4, 17).unwrap(), &t["aggregator"]),
        0.0
    );
    assert!(diff(&t["vit.block0"], &t["vit.block3"]) > 0.0);
    let loss = t["loss"].to_vec1::<f32>().unwrap()[0];
    assert!(loss.is_finite() && loss > 0.0, "loss {loss}");
    // stdout lists the tensors
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("logits\t[1, "), "{stdout}");
}

#[test]
fn forward_bad_input_is_an_error_without_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("dump.safetensors");
    let img = "tests/fixtures/vision/images/astronaut.png";
    for (args, want) in [
        (vec!["no/such.png"], "no/such.png"),
        (vec![img, "--layers", "4"], "ViT block 4"),
        (vec![img, "--task", "rec"], "--text"),
    ] {
        let mut a = args.clone();
        a.extend(["--dump", out.to_str().unwrap()]);
        let o = lion(&a);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{args:?} succeeded");
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(!out.exists(), "{args:?} wrote a file");
    }
}

/// A JPEG through `lion forward --dump` gives Pillow + upstream's eval transform's
/// `pixel_values` bit for bit (scripts/fixtures_jpeg.py: `Image.open(f).convert("RGB")`, then
/// torchvision `Resize((56, 56), BICUBIC)`, `ToTensor`, `Normalize(CLIP)`, the tiny preset's size):
/// baseline 4:2:0, progressive 4:2:2 and CMYK photographs.
#[test]
fn forward_dump_pixel_values_of_jpegs_equal_pillow_and_torchvision() {
    if !lion_core::testing::turbojpeg_or_skip(
        "forward_dump_pixel_values_of_jpegs_equal_pillow_and_torchvision",
    ) {
        return;
    }
    let dev = candle_core::Device::Cpu;
    let reference =
        candle_core::safetensors::load(root().join("tests/fixtures/jpeg/e2e.safetensors"), &dev)
            .unwrap();
    assert_eq!(reference.len(), 3);
    let dir = tempfile::tempdir().unwrap();
    for (name, want) in &reference {
        let out = dir.path().join(format!("{name}.safetensors"));
        let img = format!("tests/fixtures/jpeg/{name}.jpg");
        let o = lion(&[&img, "--dump", out.to_str().unwrap()]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let got = candle_core::safetensors::load(&out, &dev).unwrap()["pixel_values"]
            .squeeze(0)
            .unwrap();
        let bits = |t: &candle_core::Tensor| -> Vec<u32> {
            let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
            v.iter().map(|x| x.to_bits()).collect()
        };
        let (g, w) = (bits(&got), bits(want));
        let differ = g.iter().zip(&w).filter(|(a, b)| a != b).count();
        println!(
            "{name}: {differ} of {} pixel values differ from torchvision",
            w.len()
        );
        assert_eq!(got.dims(), want.dims(), "{name}");
        assert_eq!(
            differ, 0,
            "{name}: pixel_values differ from Pillow + torchvision"
        );
    }
}
