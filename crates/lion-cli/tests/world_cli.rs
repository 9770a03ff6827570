//! `lion world generate` through the binary: a small world, its summary, and clear refusals.

use std::process::Command;

fn lion() -> Command {
    Command::new(env!("CARGO_BIN_EXE_lion"))
}

#[test]
fn world_generate_writes_a_world_and_refuses_to_clobber() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("world");
    let args = [
        "world", "generate", "--seed", "3", "--train", "4", "--val", "1", "--test", "1", "--size",
        "64", "--out",
    ];
    let run = lion().args(args).arg(&out).output().unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(stdout.contains("ShapesWorld v1 seed 3"), "{stdout}");
    assert!(stdout.contains("images/s"), "{stdout}");
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("world.json")).unwrap()).unwrap();
    assert_eq!(manifest["images"]["count"], 6);
    assert!(stdout.contains(manifest["digest"].as_str().unwrap()));
    assert!(out.join("images/test/000006.png").is_file());

    // A second run into the same folder needs --force, and then gives the same bytes.
    let again = lion().args(args).arg(&out).output().unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));
    let before = std::fs::read(out.join("refs.json")).unwrap();
    let forced = lion().args(args).arg(&out).arg("--force").output().unwrap();
    assert!(
        forced.status.success(),
        "{}",
        String::from_utf8_lossy(&forced.stderr)
    );
    assert_eq!(std::fs::read(out.join("refs.json")).unwrap(), before);

    // Bad settings are named.
    let bad = lion()
        .args(["world", "generate", "--size", "4", "--out"])
        .arg(tmp.path().join("other"))
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("size 4"));
}
