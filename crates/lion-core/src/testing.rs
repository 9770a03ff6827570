//! Test helpers shared by every crate's tests.

use candle_core::{Tensor, Var};
use candle_nn::VarMap;

/// Checks that every trainable variable in `varmap` receives a gradient from `loss` that is
/// finite and not all zero. Returns the names of the variables that do not, sorted, as an error.
///
/// candle silently drops gradients through some fused ops (docs/DESIGN.md §5); this is the guard.
pub fn check_all_vars_get_grad(varmap: &VarMap, loss: &Tensor) -> crate::Result<usize> {
    check_vars_get_grad(&crate::weights::varmap_vars(varmap), loss)
}

/// As [`check_all_vars_get_grad`] for an explicit list of named variables.
pub fn check_vars_get_grad(vars: &[(String, Var)], loss: &Tensor) -> crate::Result<usize> {
    if vars.is_empty() {
        return Err(crate::Error::Input(
            "no trainable variables to check".into(),
        ));
    }
    let grads = loss.backward()?;
    let mut bad = vec![];
    for (name, var) in vars {
        match grads.get(var.as_tensor()) {
            None => bad.push(format!("{name} (no gradient)")),
            Some(g) => {
                let g = g
                    .flatten_all()?
                    .to_dtype(candle_core::DType::F32)?
                    .to_vec1::<f32>()?;
                if g.iter().any(|x| !x.is_finite()) {
                    bad.push(format!("{name} (non-finite gradient)"));
                } else if g.iter().all(|x| *x == 0.0) {
                    bad.push(format!("{name} (all-zero gradient)"));
                }
            }
        }
    }
    bad.sort();
    if bad.is_empty() {
        Ok(vars.len())
    } else {
        Err(crate::Error::Input(format!(
            "{} of {} trainable variables get no usable gradient: {}",
            bad.len(),
            vars.len(),
            bad.join(", ")
        )))
    }
}

/// The device the device-aware tests run on: `LION_TEST_DEVICE` (`cpu`, `cuda`, `cuda:N`;
/// default `cpu`), so that the parity tests built with `--features cuda` run on a GPU
/// (scripts/gpu-check.sh). Panics (this is for tests) naming the value when it is invalid, when
/// this build has no CUDA, or when the device is absent.
pub fn device() -> candle_core::Device {
    let spec = std::env::var("LION_TEST_DEVICE").unwrap_or_else(|_| "cpu".into());
    let parsed = crate::rules::device(&spec).unwrap_or_else(|e| panic!("LION_TEST_DEVICE: {e}"));
    parsed
        .open()
        .unwrap_or_else(|e| panic!("LION_TEST_DEVICE={spec}: {e}"))
}

/// The repository root of the tests' fixtures: `LION_REPO_ROOT` when set (test binaries carried
/// to another machine, scripts/gpu-check.sh), else the checkout this crate was compiled in (one
/// workspace: the same root for every crate's tests).
pub fn repo_root() -> std::path::PathBuf {
    std::env::var_os("LION_REPO_ROOT")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../..")).to_path_buf()
        })
}

/// A file or folder under the repository's `tests/fixtures/`.
pub fn fixture(rel: &str) -> std::path::PathBuf {
    repo_root().join("tests/fixtures").join(rel)
}

/// The all-MiniLM-L6-v2 folder: `LION_MINILM_DIR`, else `models/all-MiniLM-L6-v2` of the
/// repository. Panics (this is for tests) saying how to get it when it is not there.
pub fn minilm_dir() -> std::path::PathBuf {
    let dir = std::env::var_os("LION_MINILM_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| repo_root().join("models/all-MiniLM-L6-v2"));
    assert!(
        dir.join("model.safetensors").exists(),
        "all-MiniLM-L6-v2 not found in {}: run scripts/get-minilm.sh (the test command does)",
        dir.display()
    );
    dir
}

/// all-MiniLM-L6-v2's `tokenizer.json` (the Q-Former tokenizer of the tests), as a flag value.
pub fn minilm_tokenizer() -> String {
    minilm_dir().join("tokenizer.json").display().to_string()
}

/// Largest absolute value of a tensor (the scale tolerances are taken relative to).
pub fn max_abs(t: &Tensor) -> crate::Result<f32> {
    Ok(t.to_dtype(candle_core::DType::F32)?
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_scalar::<f32>()?)
}

/// The f32 values of a tensor as bit patterns (exact comparisons: same bits, not close).
/// Panics unless the tensor holds f32.
pub fn f32_bits(t: &Tensor) -> Vec<u32> {
    let v = t.flatten_all().and_then(|t| t.to_vec1::<f32>());
    v.expect("f32_bits: an f32 tensor")
        .iter()
        .map(|v| v.to_bits())
        .collect()
}

/// Largest absolute difference between two tensors of the same shape.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> crate::Result<f32> {
    if a.shape() != b.shape() {
        return Err(crate::Error::Input(format!(
            "shape mismatch: {:?} vs {:?}",
            a.shape(),
            b.shape()
        )));
    }
    let d = (a.to_dtype(candle_core::DType::F32)? - b.to_dtype(candle_core::DType::F32)?)?
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_scalar::<f32>()?;
    Ok(d)
}

/// For tests of Pillow-exact JPEG decoding: true when libjpeg-turbo is loaded
/// ([`crate::jpeg::library`]). Otherwise prints why `test` is skipped and returns false, or
/// panics when `LION_REQUIRE_TURBOJPEG` is set (scripts/test.sh sets it, so CI runs the test).
pub fn turbojpeg_or_skip(test: &str) -> bool {
    if let Some(lib) = crate::jpeg::library() {
        println!("libjpeg-turbo: {lib}");
        return true;
    }
    let why = "libjpeg-turbo (libturbojpeg.so.0, Debian package libturbojpeg0) cannot be loaded";
    if std::env::var_os("LION_REQUIRE_TURBOJPEG").is_some() {
        panic!("{test}: {why}, and LION_REQUIRE_TURBOJPEG is set");
    }
    println!("SKIPPED {test}: {why}; scripts/test.sh installs it");
    false
}

/// The property tests' budget: `(cases, seed)`. Cases come from `LION_FUZZ_CASES` (default
/// `default`, kept small so `scripts/test.sh` stays fast; raise it for a longer run), the seed
/// from `LION_FUZZ_SEED` (default 20), so a run is repeatable.
pub fn fuzz_budget(default: u32) -> (u32, u64) {
    let var = |k: &str| std::env::var(k).ok().and_then(|v| v.parse().ok());
    (
        var("LION_FUZZ_CASES").map_or(default, |v: u64| v as u32),
        var("LION_FUZZ_SEED").unwrap_or(20),
    )
}

/// A mutation of valid bytes for the property tests: each `(position, byte)` overwrites one
/// byte (position modulo the length), then the result is cut to `cut` bytes (modulo length + 1).
pub fn mutate(bytes: &[u8], edits: &[(usize, u8)], cut: Option<usize>) -> Vec<u8> {
    let mut v = bytes.to_vec();
    if !v.is_empty() {
        for &(i, b) in edits {
            let n = v.len();
            v[i % n] = b;
        }
    }
    if let Some(c) = cut {
        v.truncate(c % (v.len() + 1));
    }
    v
}

/// A structural mutation of a JSON document for the property tests: for each `(node, kind)`,
/// the node-th value of a pre-order walk (modulo the count) is replaced by a hostile value
/// chosen by `kind`: null, a bool, 0, -1, 2^64, 1e308, -1e-308, "", a long string, [], {}, or
/// the same value wrapped in a list.
pub fn mutate_json(v: &serde_json::Value, edits: &[(usize, u8)]) -> serde_json::Value {
    use serde_json::{json, Value};
    fn count(v: &Value) -> usize {
        1 + match v {
            Value::Array(a) => a.iter().map(count).sum(),
            Value::Object(o) => o.values().map(count).sum(),
            _ => 0,
        }
    }
    fn hostile(old: &Value, kind: u8) -> Value {
        match kind % 12 {
            0 => Value::Null,
            1 => json!(kind % 2 == 0),
            2 => json!(0),
            3 => json!(-1),
            4 => json!(u64::MAX),
            5 => json!(1e308),
            6 => json!(-1e-308),
            7 => json!(""),
            8 => json!("x".repeat(1 + kind as usize * 16)),
            9 => json!([]),
            10 => json!({}),
            _ => json!([old.clone()]),
        }
    }
    fn replace_nth(v: &mut Value, n: &mut usize, kind: u8) -> bool {
        if *n == 0 {
            *v = hostile(v, kind);
            return true;
        }
        *n -= 1;
        match v {
            Value::Array(a) => a.iter_mut().any(|c| replace_nth(c, n, kind)),
            Value::Object(o) => o.values_mut().any(|c| replace_nth(c, n, kind)),
            _ => false,
        }
    }
    let mut out = v.clone();
    for &(i, kind) in edits {
        let mut n = i % count(&out);
        replace_nth(&mut out, &mut n, kind);
    }
    out
}
