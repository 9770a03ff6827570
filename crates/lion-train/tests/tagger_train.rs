//! Training the world tagger: RAM's asymmetric loss against PyTorch (`scripts/fixtures_asl.py`),
//! two training steps (loss and every gradient) against the upstream RAM (`scripts/fixtures_ram.py`),
//! gradients reaching every variable, a short training run on a tiny world whose folder loads as
//! a tagger, determinism, and clear errors for broken worlds.

use std::path::Path;

use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use lion_core::tagger::Ram;
use lion_core::testing::fixture;
use lion_train::asymmetric_loss::AsymmetricLoss;
use lion_train::tagger_trainer::{
    best_global_threshold, calibration, load_trained_tagger, micro_prf, tag_world_with,
    train_tagger, tune_class_thresholds, world_tagger_config, world_tagger_init, SeededInit,
    TaggerEpochMetrics, TaggerFiles, TaggerReport, TaggerTrainOptions, CALIBRATION_BINS,
};

/// Max abs error relative to the reference's largest magnitude (at least 1).
fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
    let d = lion_core::testing::max_abs_diff(a, b).unwrap();
    let m = b
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    d / m.max(1.0)
}

/// Two training steps of the tagger as `train_tagger` takes them (forward with `train = false`,
/// the loss summed over tags and images, backward, AdamW) on the upstream RAM's tiny fixture
/// model (`scripts/fixtures_ram.py`, `step.safetensors`): step 1 with RAM's loss, step 2 with
/// binary cross-entropy (the demo tagger's), after one AdamW update. Every variable's gradient
/// is compared, so a wrong backward anywhere in the Swin (shifted windows, relative-position
/// tables, patch merging), the projections or the cross-attention head fails here. Tolerance:
/// 1e-4 of the largest reference gradient (at least 1) per tensor; the fixture's `fc` is scaled
/// up 20x, so its loss and gradients are large (hundreds) and absolute f32 rounding grows with
/// them.
#[test]
fn two_tagger_training_steps_match_upstream_ram() {
    use candle_core::DType;
    use candle_nn::ParamsAdamW;
    use lion_core::tagger::{RamConfig, RAM_IGNORED_KEYS};
    use lion_core::weights::{Checkpoint, WeightLoader};
    let dev = Device::Cpu;
    let cfg = RamConfig::from_name_or_file(fixture("ram/config.json").to_str().unwrap()).unwrap();
    let varmap = VarMap::new();
    let loader = WeightLoader::new(vec![Checkpoint::open(fixture("ram/model.pth")).unwrap()])
        .ignore_unexpected(RAM_IGNORED_KEYS)
        .with_trainable(varmap.clone(), |_| true);
    let model = Ram::new(&cfg, loader.var_builder(DType::F32, &dev)).unwrap();
    let io = candle_core::safetensors::load(fixture("ram/io.safetensors"), &dev).unwrap();
    let r = candle_core::safetensors::load(fixture("ram/step.safetensors"), &dev).unwrap();
    let vars = lion_core::weights::varmap_vars(&varmap);
    // the file's name of a variable (the head is stored as `vision_multi`, as upstream)
    let file_key = |k: &str| match k.strip_prefix("tagging_head.") {
        Some(rest) => format!("vision_multi.{rest}"),
        None => k.to_string(),
    };
    let mut opt = lion_train::optim::AdamW::new(
        vars.iter().map(|(_, v)| v.clone()).collect(),
        ParamsAdamW {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.05,
        },
    )
    .unwrap();
    let bce = AsymmetricLoss {
        gamma_neg: 0.0,
        clip: 0.0,
        ..AsymmetricLoss::ram()
    };
    for (step, loss_fn) in [(1, AsymmetricLoss::ram()), (2, bce)] {
        let logits = model.forward(&io["image"], false).unwrap();
        let loss = loss_fn.forward(&logits, &r["targets"]).unwrap();
        let want = r[&format!("loss{step}")].to_vec1::<f32>().unwrap()[0];
        let got = loss.to_scalar::<f32>().unwrap();
        eprintln!("step {step}: loss {got} (upstream {want})");
        assert!(
            (got - want).abs() <= 1e-5 * want.abs().max(1.0),
            "step {step}: loss {got} vs upstream {want}"
        );
        let grads = loss.backward().unwrap();
        let mut worst = (0f32, String::new());
        for (name, var) in &vars {
            let key = format!("grad{step}.{}", file_key(name));
            let want = r
                .get(&key)
                .unwrap_or_else(|| panic!("{key}: no upstream gradient for variable {name}"));
            let got = grads
                .get(var)
                .unwrap_or_else(|| panic!("step {step}: {name} got no gradient"));
            let e = rel_err(got, want);
            assert!(
                e <= 1e-4,
                "step {step}: gradient of {name} differs by {e:.2e}"
            );
            if e >= worst.0 {
                worst = (e, name.clone());
            }
        }
        let upstream = r
            .keys()
            .filter(|k| k.starts_with(&format!("grad{step}.")))
            .count();
        assert_eq!(
            upstream,
            vars.len(),
            "step {step}: variables vs upstream parameters"
        );
        eprintln!(
            "step {step}: {} gradients, worst {:.2e} ({})",
            vars.len(),
            worst.0,
            worst.1
        );
        opt.step(&grads).unwrap();
    }
}

#[test]
fn asymmetric_loss_and_its_gradient_match_pytorch() {
    let dev = Device::Cpu;
    let r = candle_core::safetensors::load(fixture("asl/reference.safetensors"), &dev).unwrap();
    let settings = [
        ("ram", AsymmetricLoss::ram()),
        (
            "default",
            AsymmetricLoss {
                gamma_neg: 4.0,
                gamma_pos: 1.0,
                clip: 0.05,
                eps: 1e-8,
            },
        ),
        (
            "noclip",
            AsymmetricLoss {
                clip: 0.0,
                ..AsymmetricLoss::ram()
            },
        ),
    ];
    let targets = &r["targets"];
    for (name, asl) in settings {
        let x = candle_core::Var::from_tensor(&r["logits"]).unwrap();
        let loss = asl.forward(x.as_tensor(), targets).unwrap();
        let grads = loss.backward().unwrap();
        let g = grads.get(x.as_tensor()).expect("logits get a gradient");
        let want = r[&format!("loss.{name}")].reshape(()).unwrap();
        let le = rel_err(&loss, &want);
        let ge = rel_err(g, &r[&format!("grad.{name}")]);
        println!("{name}: loss {loss} (err {le:.2e}), grad err {ge:.2e}");
        assert!(le <= 1e-5, "{name}: loss differs by {le}");
        assert!(ge <= 1e-5, "{name}: gradient differs by {ge}");
    }
    // Shapes must agree.
    let bad = AsymmetricLoss::ram().forward(&r["logits"], &r["targets"].narrow(1, 0, 3).unwrap());
    assert!(bad.unwrap_err().to_string().contains("differ in shape"));
}

#[test]
fn every_tagger_variable_gets_a_gradient_from_the_loss() {
    for conv_stem in [false, true] {
        let mut cfg = world_tagger_config(7, 32, 4, 8);
        cfg.swin.conv_stem = conv_stem;
        every_variable_gets_a_gradient(&cfg);
    }
}

fn every_variable_gets_a_gradient(cfg: &lion_core::tagger::RamConfig) {
    let dev = Device::Cpu;
    let varmap = VarMap::new();
    let vb = SeededInit::new(varmap.clone(), 3)
        .with_override(world_tagger_init)
        .into_var_builder(&dev);
    let model = Ram::new(cfg, vb).unwrap();
    let x = Tensor::randn(0f32, 1., (2, 3, 32, 32), &dev).unwrap();
    let y = Tensor::from_vec(
        vec![1f32, 0., 0., 1., 0., 1., 0., 0., 1., 1., 0., 0., 0., 1.],
        (2, 7),
        &dev,
    )
    .unwrap();
    let loss = AsymmetricLoss::ram()
        .forward(&model.forward(&x, false).unwrap(), &y)
        .unwrap();
    let n = lion_core::testing::check_all_vars_get_grad(&varmap, &loss).unwrap();
    assert!(n > 40, "only {n} variables");
}

#[test]
fn seeded_init_is_deterministic() {
    let dev = Device::Cpu;
    let cfg = world_tagger_config(5, 32, 4, 8);
    let weights = |seed| {
        let vm = VarMap::new();
        Ram::new(&cfg, SeededInit::var_builder(vm.clone(), seed, &dev)).unwrap();
        let data = vm.data().lock().unwrap();
        let mut keys: Vec<_> = data.keys().cloned().collect();
        keys.sort();
        keys.iter()
            .map(|k| {
                data[k]
                    .as_tensor()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
            })
            .collect::<Vec<_>>()
    };
    let (a, b, c) = (weights(1), weights(1), weights(2));
    assert_eq!(a, b);
    assert_ne!(a, c);
    // randn-initialised label_embed has roughly unit spread
    let all: Vec<f32> = a.concat();
    assert!(all.iter().all(|v| v.is_finite()));
}

#[test]
fn threshold_choice_and_micro_prf() {
    let probs = vec![vec![0.9f32, 0.2, 0.6], vec![0.1, 0.7, 0.4]];
    let targets = vec![vec![0usize, 2], vec![1]];
    let p = micro_prf(&probs, &targets, &[0.5; 3], |_| true);
    assert_eq!((p.tp, p.fp, p.fn_), (3, 0, 0));
    let p = micro_prf(&probs, &targets, &[0.65; 3], |_| true);
    assert_eq!((p.tp, p.fp, p.fn_), (2, 0, 1));
    assert!((p.f1 - 0.8).abs() < 1e-12);
    let (t, best) = best_global_threshold(&probs, &targets);
    assert_eq!(best.f1, 1.0);
    // per class: class 1 needs a threshold below 0.2..0.7 and class 2 one below 0.6 but above
    // 0.4; starting from a bad global 0.65, tuning finds thresholds that reach F1 1
    let th = tune_class_thresholds(&probs, &targets, 0.65, 1);
    assert_eq!(micro_prf(&probs, &targets, &th, |_| true).f1, 1.0, "{th:?}");
    assert_eq!(
        th[1], 0.65,
        "class 1 is right at 0.65 already (ties keep it)"
    );
    // classes with too few positives keep the global threshold
    let th = tune_class_thresholds(&probs, &targets, 0.65, 2);
    assert_eq!(th, vec![0.65; 3]);
    // the lowest threshold with the best F1: p > 0.40 keeps 0.9, 0.6 and 0.7
    assert!((t - 0.4).abs() < 1e-6, "{t}");
}

/// `--gamma-neg 0 --clip 0` (the demo tagger's loss) is binary cross-entropy, summed; the
/// defaults are RAM's asymmetric loss; bad values name the field.
#[test]
fn tagger_loss_options() {
    let opts = TaggerTrainOptions {
        gamma_neg: 0.0,
        clip: 0.0,
        ..Default::default()
    };
    let x = [1.5f32, -0.3, 0.2, -2.0];
    let y = [1f32, 0., 0., 1.];
    let logits = Tensor::new(&x, &Device::Cpu)
        .unwrap()
        .reshape((2, 2))
        .unwrap();
    let targets = Tensor::new(&y, &Device::Cpu)
        .unwrap()
        .reshape((2, 2))
        .unwrap();
    let got = opts
        .loss()
        .forward(&logits, &targets)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let want: f32 = x
        .iter()
        .zip(&y)
        .map(|(&x, &y)| {
            let p = 1.0 / (1.0 + (-x).exp());
            -(y * p.ln() + (1.0 - y) * (1.0 - p).ln())
        })
        .sum();
    assert!((got - want).abs() < 1e-5, "{got} vs {want}");
    assert_eq!(TaggerTrainOptions::default().loss(), AsymmetricLoss::ram());
    for (bad, field) in [
        (
            TaggerTrainOptions {
                gamma_neg: -1.0,
                ..Default::default()
            },
            "gamma_neg",
        ),
        (
            TaggerTrainOptions {
                clip: 1.5,
                ..Default::default()
            },
            "clip",
        ),
    ] {
        let err = bad.validate().unwrap_err().to_string();
        assert!(err.contains(field), "{err}");
    }
}

#[test]
fn calibration_bins_and_expected_calibration_error() {
    // 2 images x 3 tags; scores in bins 0 (0.05), 2 (0.2), 6 (0.6), 7 (0.75, 0.75), 9 (1.0)
    let probs = vec![vec![0.05f32, 0.75, 1.0], vec![0.6, 0.2, 0.75]];
    let targets = vec![vec![1usize, 2], vec![2]];
    let cal = calibration(&probs, &targets, &[0.5; 3]);
    assert_eq!(cal.pairs, 6);
    assert_eq!(cal.bins.len(), CALIBRATION_BINS);
    let b7 = &cal.bins[7];
    assert_eq!(b7.count, 2);
    assert!((b7.mean_score.unwrap() - 0.75).abs() < 1e-6 && b7.positive_rate == Some(1.0));
    assert_eq!(cal.bins[9].count, 1, "a score of 1 falls in the last bin");
    assert!(cal.bins[4].mean_score.is_none() && cal.bins[4].count == 0);
    // |0 - 0.05| + |0 - 0.2| + |0 - 0.6| + 2 |1 - 0.75| + |1 - 1|, over 6 pairs
    let want = (0.05 + 0.2 + 0.6 + 0.5) / 6.0;
    assert!((cal.ece - want).abs() < 1e-6, "{} vs {want}", cal.ece);
    // kept (> 0.5): 0.75 (true), 1.0 (true), 0.6 (false), 0.75 (true)
    assert_eq!(cal.kept, 4);
    let want = (0.6 + 0.5) / 4.0;
    assert!(
        (cal.kept_ece - want).abs() < 1e-6,
        "{} vs {want}",
        cal.kept_ece
    );
    // a perfectly calibrated tagger: scores 0 and 1 that are always right
    let cal = calibration(&[vec![1.0, 0.0]], &[vec![0]], &[0.5; 2]);
    assert_eq!(cal.ece, 0.0);
    assert_eq!(cal.kept_ece, 0.0);
}

fn tiny_world(dir: &Path) -> std::path::PathBuf {
    let world = dir.join("world");
    let cfg = lion_data::world::WorldConfig {
        seed: 0,
        train: 24,
        val: 6,
        test: 6,
        size: 32,
        questions_per_image: 1,
        threads: 1,
    };
    lion_data::world::generate(&cfg, &world, false, &|_| {}).unwrap();
    world
}

fn tiny_opts() -> TaggerTrainOptions {
    TaggerTrainOptions {
        epochs: 8,
        batch_size: 8,
        lr: 1e-3,
        img_size: 32,
        patch_size: 4,
        embed_dim: 8,
        eval_batch_size: 16,
        ..Default::default()
    }
}

#[test]
fn short_training_run_writes_a_tagger_folder_that_loads_and_tags() {
    let dir = tempfile::tempdir().unwrap();
    let world = tiny_world(dir.path());
    let out = dir.path().join("tagger");
    let report = train_tagger(&world, &out, &tiny_opts()).unwrap();
    assert_eq!(report.steps, 24);
    assert_eq!(
        (report.train_images, report.val_images, report.test_images),
        (24, 6, 6)
    );

    // metrics: epoch 0 (untrained) .. 8, losses falling
    let metrics: Vec<TaggerEpochMetrics> = std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(metrics.len(), 9);
    println!("{metrics:#?}");
    let first = metrics[1].train_loss.unwrap();
    let last = metrics[8].train_loss.unwrap();
    assert!(last < first, "train loss {first} -> {last}");
    assert!(
        metrics[8].val_loss < metrics[0].val_loss,
        "val loss {} -> {}",
        metrics[0].val_loss,
        metrics[8].val_loss
    );

    // the folder: weights, config, tags, thresholds (the chosen one for every class)
    let files = TaggerFiles::new(&out);
    let tags = std::fs::read_to_string(files.tag_list()).unwrap();
    let world_tags = std::fs::read_to_string(world.join("tag_list.txt")).unwrap();
    assert_eq!(
        tags.lines().collect::<Vec<_>>(),
        world_tags.lines().collect::<Vec<_>>()
    );
    let th: Vec<f32> = std::fs::read_to_string(files.thresholds())
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert_eq!(th.len(), tags.lines().count());
    assert_eq!(th, report.thresholds);
    assert!(th.iter().all(|&t| t > 0.0 && t < 1.0));

    // eval_test.json is the report
    let saved: TaggerReport =
        serde_json::from_str(&std::fs::read_to_string(files.eval()).unwrap()).unwrap();
    let (a, b) = (saved.tagging.test, report.tagging.test);
    assert_eq!((a.tp, a.fp, a.fn_), (b.tp, b.fp, b.fn_));
    assert!((a.f1 - b.f1).abs() < 1e-12);
    assert!(saved.tagging.test_groups.contains_key("color+shape"));
    assert!(saved.tagging.test_groups.contains_key("shape"));
    let g = &saved.tagging.test_groups["shape"];
    assert!(g.tp + g.fn_ > 0, "the test split has shape tags");

    // every split tagged, one line per image, scores above the threshold
    for (split, n) in [("train", 24), ("val", 6), ("test", 6)] {
        let text = std::fs::read_to_string(files.tags_jsonl(split)).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), n, "{split}");
        for l in &lines {
            assert!(l["image"].is_u64());
            for t in l["tags"].as_array().unwrap() {
                let s = t["score"].as_f64().unwrap() as f32;
                assert!(s > report.threshold && s <= 1.0);
                assert!(world_tags.lines().any(|w| w == t["tag"].as_str().unwrap()));
            }
        }
    }

    // the folder loads as a tagger and gives the same scores as the training run wrote
    let tagger = load_trained_tagger(&out, &Device::Cpu).unwrap();
    let first_test: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(files.tags_jsonl("test"))
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    let img = world.join(first_test["file_name"].as_str().unwrap());
    let r = tagger
        .tag_files(&[img.as_path()])
        .unwrap()
        .remove(0)
        .unwrap();
    assert_eq!(r.probs.len(), tags.lines().count());
    let want: Vec<(String, f32)> = first_test["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["tag"].as_str().unwrap().to_string(),
                t["score"].as_f64().unwrap() as f32,
            )
        })
        .collect();
    let got: Vec<(String, f32)> = r
        .tags
        .iter()
        .map(|t| t.scored.clone().into_pair())
        .collect();
    assert_eq!(got.len(), want.len());
    for ((a, sa), (b, sb)) in got.iter().zip(&want) {
        assert_eq!(a, b);
        assert!((sa - sb).abs() < 1e-5, "{a}: {sa} vs {sb}");
    }

    // tagging the world again with the saved folder gives the training run's files and scores
    let again = dir.path().join("again");
    let tagged = tag_world_with(&out, &world, &again, |_| {}).unwrap();
    assert_eq!(tagged.test, report.tagging.test);
    assert_eq!(tagged.test_groups, report.tagging.test_groups);
    assert!(tagged.calibration.ece.is_finite() && tagged.calibration.pairs > 0);
    assert!(TaggerFiles::new(&again).reliability().exists());
    for split in ["train", "val", "test"] {
        let a = std::fs::read_to_string(files.tags_jsonl(split)).unwrap();
        let b = std::fs::read_to_string(TaggerFiles::new(&again).tags_jsonl(split)).unwrap();
        let parse = |t: &str| -> Vec<serde_json::Value> {
            t.lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect()
        };
        let (a, b) = (parse(&a), parse(&b));
        assert_eq!(a.len(), b.len(), "{split}");
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x["file_name"], y["file_name"]);
            let names = |v: &serde_json::Value| -> Vec<String> {
                v["tags"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|t| t["tag"].as_str().unwrap().to_string())
                    .collect()
            };
            assert_eq!(names(x), names(y), "{split}");
        }
    }
    // a world with another vocabulary is refused, naming both sizes
    let other = dir.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    for f in [
        "tags_train.json",
        "tags_val.json",
        "tags_test.json",
        "world.json",
    ] {
        std::fs::copy(world.join(f), other.join(f)).unwrap();
    }
    std::fs::write(other.join("tag_list.txt"), "circle\nsquare\n").unwrap();
    let err = tag_world_with(&out, &other, &dir.path().join("x"), |_| {}).unwrap_err();
    assert!(
        err.to_string().contains("differs from the tagger's"),
        "{err}"
    );

    // same seed, same run
    let out2 = dir.path().join("tagger2");
    let opts = TaggerTrainOptions {
        epochs: 1,
        ..tiny_opts()
    };
    let a = train_tagger(&world, &out2, &opts).unwrap();
    let b = train_tagger(&world, &out2, &opts).unwrap();
    assert_eq!(a.final_train_loss, b.final_train_loss);
    assert_eq!(a.val, b.val);
}

#[test]
fn broken_worlds_give_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let opts = tiny_opts();
    let out = dir.path().join("out");

    let missing = dir.path().join("nope");
    let e = train_tagger(&missing, &out, &opts).unwrap_err().to_string();
    assert!(e.contains("nope") && e.contains("ShapesWorld"), "{e}");

    let world = dir.path().join("w");
    std::fs::create_dir(&world).unwrap();
    let e = train_tagger(&world, &out, &opts).unwrap_err().to_string();
    assert!(e.contains("tag_list.txt"), "{e}");

    std::fs::write(world.join("tag_list.txt"), "red\ncircle\n").unwrap();
    std::fs::write(
        world.join("tags_train.json"),
        r#"[{"image_id": 1, "file_name": "images/train/000001.png", "tags": ["red"]}]"#,
    )
    .unwrap();
    let e = train_tagger(&world, &out, &opts).unwrap_err().to_string();
    assert!(e.contains("tags_val.json"), "{e}");

    std::fs::write(
        world.join("tags_val.json"),
        r#"[{"image_id": 2, "file_name": "images/val/000002.png", "tags": ["blue"]}]"#,
    )
    .unwrap();
    std::fs::write(world.join("tags_test.json"), "[]").unwrap();
    let e = train_tagger(&world, &out, &opts).unwrap_err().to_string();
    assert!(e.contains("tags_val.json") && e.contains("`blue`"), "{e}");

    std::fs::write(
        world.join("tags_val.json"),
        r#"[{"image_id": 2, "file_name": "images/val/000002.png", "tags": ["circle"]}]"#,
    )
    .unwrap();
    let e = train_tagger(&world, &out, &opts).unwrap_err().to_string();
    assert!(e.contains("000001.png"), "missing image named: {e}");

    std::fs::write(world.join("tags_test.json"), "{not json").unwrap();
    let e = train_tagger(&world, &out, &opts).unwrap_err().to_string();
    assert!(e.contains("tags_test.json"), "{e}");

    let bad = TaggerTrainOptions {
        img_size: 40,
        ..tiny_opts()
    };
    let e = train_tagger(&world, &out, &bad).unwrap_err().to_string();
    assert!(e.contains("multiple of 16"), "{e}");

    let e = load_trained_tagger(dir.path(), &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("config.json"), "{e}");
}

/// The shipped pretrained tagger (`assets/shapes-tagger`, RAM's stand-in in `lion demo`) tags a
/// fresh world it never saw (another seed) about as well as its own test split says: micro F1 and
/// every tag group well above chance, scores that are probabilities.
#[test]
fn the_shipped_tagger_tags_an_unseen_world() {
    let dir = tempfile::tempdir().unwrap();
    let world = dir.path().join("world");
    let cfg = lion_data::world::WorldConfig {
        seed: 77,
        train: 4,
        val: 4,
        test: 80,
        size: 96,
        questions_per_image: 1,
        threads: 0,
    };
    lion_data::world::generate(&cfg, &world, false, &|_| {}).unwrap();
    let tagger = lion_core::testing::repo_root().join("assets/shapes-tagger");
    let shipped: TaggerReport =
        serde_json::from_str(&std::fs::read_to_string(TaggerFiles::new(&tagger).eval()).unwrap())
            .unwrap();
    let r = tag_world_with(&tagger, &world, &dir.path().join("out"), |_| {}).unwrap();
    eprintln!(
        "unseen world: micro F1 {:.3} (shipped test split {:.3}), ECE {:.3}",
        r.test.f1, shipped.tagging.test.f1, r.calibration.ece
    );
    for (g, p) in &r.test_groups {
        eprintln!("  {g}: F1 {:.3}", p.f1);
    }
    // 80 images: within sampling noise of the shipped test split's F1
    assert!(
        (r.test.f1 - shipped.tagging.test.f1).abs() < 0.06,
        "{} vs {}",
        r.test.f1,
        shipped.tagging.test.f1
    );
    for (g, p) in &r.test_groups {
        let want = shipped.tagging.test_groups[g].f1;
        assert!(p.f1 > want - 0.12, "{g}: {} vs shipped {want}", p.f1);
    }
    assert!(r.calibration.ece < 0.1, "{}", r.calibration.ece);
}

/// `patch_norm: false` (`lion train-tagger --no-patch-norm`): the folder's config records it,
/// its weights have no `patch_embed.norm`, and it loads back and tags its test split as the
/// training run did.
#[test]
fn a_tagger_without_the_patch_norm_trains_saves_and_loads() {
    let opts = TaggerTrainOptions {
        epochs: 1,
        patch_norm: false,
        ..tiny_opts()
    };
    let (dir, world, out, cfg, st) = train_on_tiny_world(&opts);
    assert_eq!(cfg["swin"]["patch_norm"], serde_json::Value::Bool(false));
    assert!(st
        .keys()
        .any(|k| k.starts_with("visual_encoder.patch_embed.proj")));
    assert!(!st.keys().any(|k| k.contains("patch_embed.norm")));
    assert!(!st.keys().any(|k| k.contains("patch_embed.stem")));
    reloads_and_tags_as_trained(&out, &world, dir.path());
}

/// `conv_stem: true` (`lion train-tagger --conv-stem`): the config records it, the weights hold
/// two 3x3 stride-2 convolutions (patch 4) and a 1x1 `proj`, and the folder loads back and tags
/// its test split as the training run did.
#[test]
fn a_tagger_with_the_conv_stem_trains_saves_and_loads() {
    let opts = TaggerTrainOptions {
        epochs: 1,
        patch_norm: false,
        conv_stem: true,
        ..tiny_opts()
    };
    let (dir, world, out, cfg, st) = train_on_tiny_world(&opts);
    assert_eq!(cfg["swin"]["conv_stem"], serde_json::Value::Bool(true));
    let (c, p) = (opts.embed_dim, opts.patch_size);
    assert_eq!(p, 4);
    for (key, dims) in [
        ("stem.0.weight", vec![c, 3, 3, 3]),
        ("stem.1.weight", vec![2 * c, c, 3, 3]),
        ("proj.weight", vec![c, 2 * c, 1, 1]),
    ] {
        let key = format!("visual_encoder.patch_embed.{key}");
        assert_eq!(st.shape(&key).unwrap().dims(), dims.as_slice(), "{key}");
    }
    reloads_and_tags_as_trained(&out, &world, dir.path());
}

/// `convnet: true` (`lion train-tagger --convnet`): the config records the CNN, the weights hold
/// its convolutions and BatchNorm statistics (moved away from their 0 / 1 start by training), and
/// the folder loads back and tags its test split as the training run did (inference reads the
/// saved running statistics).
#[test]
fn a_tagger_with_the_convnet_trains_saves_and_loads() {
    let opts = TaggerTrainOptions {
        epochs: 1,
        convnet: true,
        ..tiny_opts()
    };
    let (dir, world, out, cfg, st) = train_on_tiny_world(&opts);
    assert_eq!(
        cfg["convnet"]["widths"],
        serde_json::json!([16, 32, 64, 64])
    );
    assert_eq!(cfg["convnet"]["img_size"], serde_json::json!(32));
    assert_eq!(
        st.shape("visual_encoder.stages.0.0.conv.weight")
            .unwrap()
            .dims(),
        [16, 3, 3, 3]
    );
    let rv = st
        .get("visual_encoder.stages.3.1.bn.running_var", &Device::Cpu)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert_eq!(rv.len(), 64);
    assert!(rv.iter().all(|v| v.is_finite() && *v > 0.0));
    assert!(
        rv.iter().any(|v| (v - 1.0).abs() > 1e-3),
        "running_var never moved: {rv:?}"
    );
    assert!(!st.keys().any(|k| k.contains("patch_embed")));
    reloads_and_tags_as_trained(&out, &world, dir.path());
}

/// Trains a tagger with `opts` on a tiny world in a temporary folder: (that folder, the world,
/// the tagger folder, its `config.json`, its weights).
fn train_on_tiny_world(
    opts: &TaggerTrainOptions,
) -> (
    tempfile::TempDir,
    std::path::PathBuf,
    std::path::PathBuf,
    serde_json::Value,
    lion_core::weights::Checkpoint,
) {
    let dir = tempfile::tempdir().unwrap();
    let world = tiny_world(dir.path());
    let out = dir.path().join("tagger");
    train_tagger(&world, &out, opts).unwrap();
    let files = lion_train::tagger_trainer::TaggerFiles::new(&out);
    let cfg = serde_json::from_str(&std::fs::read_to_string(files.config()).unwrap()).unwrap();
    let st = lion_core::weights::Checkpoint::open(files.weights()).unwrap();
    (dir, world, out, cfg, st)
}

fn reloads_and_tags_as_trained(out: &Path, world: &Path, dir: &Path) {
    let files = lion_train::tagger_trainer::TaggerFiles::new(out);
    load_trained_tagger(out, &Device::Cpu).unwrap();
    let again = tag_world_with(out, world, &dir.join("again"), |_| {}).unwrap();
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(files.eval()).unwrap()).unwrap();
    // (serde_json's default float parsing may be one ulp off the written value)
    let written = r["test"]["f1"].as_f64().unwrap();
    assert!(
        (again.test.f1 - written).abs() < 1e-12,
        "{:?} vs {written}",
        again.test
    );
}
