//! Test helpers shared by every crate's tests.

use candle_core::{Tensor, Var};
use candle_nn::VarMap;

/// Checks that every trainable variable in `varmap` receives a gradient from `loss` that is
/// finite and not all zero. Returns the names of the variables that do not, sorted, as an error.
///
/// candle silently drops gradients through some fused ops (DESIGN.md); this is the guard.
pub fn check_all_vars_get_grad(varmap: &VarMap, loss: &Tensor) -> crate::Result<usize> {
    let vars: Vec<(String, Var)> = varmap
        .data()
        .lock()
        .expect("poisoned")
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    check_vars_get_grad(&vars, loss)
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
