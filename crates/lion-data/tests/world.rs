//! ShapesWorld's files: determinism (same seed, same bytes), the manifest, refusals of foreign or
//! existing outputs, interrupted runs and hostile sizes. The ground truth's consistency is
//! checked in `world_scenes.rs`.

mod world_common;

use world_common::*;

use std::path::Path;

use lion_data::world::formats::*;
use lion_data::world::{generate, WorldError};

#[test]
fn same_seed_same_bytes_different_seed_different_world() {
    let tmp = tempfile::tempdir().unwrap();
    let a = make(tmp.path(), "a", &cfg(11, 8, 64));
    let mut c1 = cfg(11, 8, 64);
    c1.threads = 1; // a different thread count must not matter
    let b = make(tmp.path(), "b", &c1);
    let c = make(tmp.path(), "c", &cfg(12, 8, 64));
    let (ta, tb, tc) = (tree(&a), tree(&b), tree(&c));
    assert!(ta.len() > 20, "{:?}", ta.keys());
    assert_eq!(ta.keys().collect::<Vec<_>>(), tb.keys().collect::<Vec<_>>());
    for (k, v) in &ta {
        assert!(
            tb[k] == *v,
            "{k} differs between two runs with the same seed"
        );
    }
    let m_a: Manifest = read(&a, "world.json");
    let m_c: Manifest = read(&c, "world.json");
    assert_ne!(m_a.digest, m_c.digest);
    let differing_images = ta
        .iter()
        .filter(|(k, v)| k.ends_with(".png") && tc.get(*k) != Some(*v))
        .count();
    assert_eq!(
        differing_images, 14,
        "every image should differ with another seed"
    );
    // No staging directory is left beside the outputs.
    let names: Vec<String> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 3, "{names:?}");
}

#[test]
fn first_images_do_not_depend_on_the_split_size() {
    let tmp = tempfile::tempdir().unwrap();
    let small = make(tmp.path(), "s", &cfg(5, 3, 48));
    let big = make(tmp.path(), "b", &cfg(5, 6, 48));
    for id in 1..=3 {
        let rel = format!("images/train/{id:06}.png");
        assert_eq!(
            std::fs::read(small.join(&rel)).unwrap(),
            std::fs::read(big.join(&rel)).unwrap(),
            "{rel}"
        );
    }
}

#[test]
fn manifest_lists_files_with_checksums() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = make(tmp.path(), "w", &cfg(2, 4, 48));
    let m: Manifest = read(&dir, "world.json");
    assert_eq!((m.seed, m.width, m.generator_version), (2, 48, 1));
    assert_eq!(m.splits.iter().map(|s| s.images).sum::<usize>(), 10);
    assert_eq!(m.images.count, 10);
    for f in &m.files {
        let bytes = std::fs::read(dir.join(&f.path)).unwrap();
        assert_eq!(bytes.len() as u64, f.bytes, "{}", f.path);
        assert_eq!(format!("{:016x}", fnv1a64(&bytes)), f.fnv1a64, "{}", f.path);
    }
    let vocab = std::fs::read_to_string(dir.join("tag_list.txt")).unwrap();
    assert_eq!(vocab.lines().count(), m.vocabulary.tags);
    assert_eq!(m.vocabulary.tags, 83);
}

#[test]
fn refuses_to_replace_foreign_or_existing_outputs() {
    let tmp = tempfile::tempdir().unwrap();
    let foreign = tmp.path().join("foreign");
    std::fs::create_dir(&foreign).unwrap();
    std::fs::write(foreign.join("precious.txt"), b"keep me").unwrap();
    let err = generate(&cfg(1, 2, 32), &foreign, true, &|_| {}).unwrap_err();
    assert!(matches!(err, WorldError::Output { .. }), "{err}");
    assert!(err.to_string().contains("no world.json"), "{err}");
    assert_eq!(
        std::fs::read(foreign.join("precious.txt")).unwrap(),
        b"keep me"
    );

    let w = make(tmp.path(), "w", &cfg(1, 2, 32));
    let err = generate(&cfg(1, 2, 32), &w, false, &|_| {}).unwrap_err();
    assert!(err.to_string().contains("--force"), "{err}");
    generate(&cfg(2, 2, 32), &w, true, &|_| {}).expect("--force replaces a world");
    let m: Manifest = read(&w, "world.json");
    assert_eq!(m.seed, 2);

    let mut bad = cfg(1, 2, 8);
    let err = generate(&bad, &tmp.path().join("x"), false, &|_| {}).unwrap_err();
    assert!(err.to_string().contains("size 8"), "{err}");
    bad = cfg(1, 0, 64);
    bad.val = 0;
    bad.test = 0;
    let err = generate(&bad, &tmp.path().join("x"), false, &|_| {}).unwrap_err();
    assert!(err.to_string().contains("no images"), "{err}");
    assert!(!tmp.path().join("x").exists());
}

#[test]
fn an_interrupted_run_leaves_nothing_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("w");
    let stop_after_three = |n: u64| {
        if n == 3 {
            panic!("interrupted on purpose (test)");
        }
    };
    let err = generate(&cfg(1, 20, 48), &out, false, &stop_after_three).unwrap_err();
    assert!(matches!(err, WorldError::Stopped(_)), "{err}");
    assert!(!out.exists());
    assert_eq!(
        std::fs::read_dir(tmp.path()).unwrap().count(),
        0,
        "staging left behind"
    );
}

/// Hostile input (issue 20): `--train 18446744073709551615` overflowed `train + val + test` to a
/// small number that passed the size cap, and the run aborted at 21 GB. Now it is refused before
/// anything is written, naming the counts.
#[test]
fn image_counts_that_overflow_are_refused_before_any_work() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = cfg(0, usize::MAX, 64);
    c.val = 100;
    c.test = 100;
    let out = tmp.path().join("w");
    match generate(&c, &out, false, &|_| {}) {
        Err(WorldError::Config(m)) => assert!(m.contains("overflows"), "{m}"),
        other => panic!("expected a config error, got {other:?}"),
    }
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
}

/// A staging folder left by a run that died (OOM, SIGKILL) is removed by the next run; a live
/// process's folder (ours) is not touched.
#[test]
fn a_dead_runs_staging_folder_is_removed_on_the_next_start() {
    let tmp = tempfile::tempdir().unwrap();
    // PIDs above the kernel's pid_max (at most 2^22) are never alive.
    let dead = tmp.path().join(".w.partial-4294967290");
    std::fs::create_dir_all(dead.join("images")).unwrap();
    let other = tmp.path().join(".x.partial-4294967290");
    std::fs::create_dir_all(&other).unwrap();
    make(tmp.path(), "w", &cfg(0, 2, 64));
    if Path::new("/proc/self").exists() {
        assert!(!dead.exists(), "the dead run's folder is still there");
    }
    assert!(other.exists(), "another world's folder was removed");
}
