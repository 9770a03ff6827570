//! The fused dropout kernel: drop rate, scaling, fresh masks per call, and a backward pass equal
//! to the plain composition `x * mask` with the mask the forward pass used.

use candle_core::{Device, Tensor, Var};
use lion_core::kernels::dropout;

#[test]
fn drops_at_the_rate_and_scales_the_rest() -> lion_core::Result<()> {
    let n = 200_000; // several parallel chunks
    let x = (Tensor::arange(0f32, n as f32, &Device::Cpu)? * 0.001)?
        .cos()?
        .affine(1.0, 2.0)?; // > 0
    for p in [0.1f32, 0.5] {
        let y = dropout(&x, p)?;
        let xs = x.to_vec1::<f32>()?;
        let ys = y.to_vec1::<f32>()?;
        let dropped = ys.iter().filter(|&&v| v == 0.0).count() as f64 / n as f64;
        assert!(
            (dropped - p as f64).abs() < 0.01,
            "p {p}: dropped {dropped}"
        );
        for (a, b) in xs.iter().zip(&ys) {
            assert!(*b == 0.0 || (b - a / (1.0 - p)).abs() < 1e-5, "{a} -> {b}");
        }
        // a second call draws a different mask
        let y2 = dropout(&x, p)?.to_vec1::<f32>()?;
        let same = ys
            .iter()
            .zip(&y2)
            .filter(|(a, b)| (**a == 0.0) == (**b == 0.0))
            .count();
        assert!(same < n, "two calls gave the same mask");
    }
    assert!(dropout(&x, 1.0).is_err());
    Ok(())
}

#[test]
fn backward_equals_the_composition_with_the_same_mask() -> lion_core::Result<()> {
    let dev = Device::Cpu;
    let n = 50_000;
    let x0 = (Tensor::arange(0f32, n as f32, &dev)? * 0.37)?
        .sin()?
        .affine(1.0, 1.5)?; // nonzero
    let coef = (Tensor::arange(0f32, n as f32, &dev)? * 0.011)?.cos()?;
    let x = Var::from_tensor(&x0)?;
    let y = dropout(x.as_tensor(), 0.3)?;
    let grads = (y.sqr()? * &coef)?.sum_all()?.backward()?;
    let got = grads.get(x.as_tensor()).expect("grad").to_vec1::<f32>()?;
    // the composition: y = x * m with m = y / x (0 or 1/(1-p)); d/dx sum(c y^2) = 2 c y m
    let m = (y.detach() / &x0)?;
    let want = ((&coef * &y.detach())? * 2.0)?.mul(&m)?.to_vec1::<f32>()?;
    let d = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(d < 1e-4, "max diff {d}");
    assert!(got.iter().filter(|&&g| g == 0.0).count() > n / 5);
    Ok(())
}

/// Each vector path this CPU runs (AVX-512 DQ: 16 lanes; AVX2: 8) gives the scalar hash's mask
/// bit for bit: every length around the vector widths, several bases, thresholds and keys,
/// including extreme ones, and NaN and infinite inputs. A path the CPU lacks is skipped with a
/// printed reason.
#[test]
fn vector_mask_is_the_scalar_mask_bit_for_bit() {
    use lion_core::kernels::{apply_dropout, apply_dropout_paths, apply_dropout_scalar};
    let paths = apply_dropout_paths();
    let names: Vec<&str> = paths.iter().map(|p| p.0).collect();
    for want in ["avx512", "avx2"] {
        if !names.contains(&want) {
            eprintln!("skipped: the {want} path (not on this CPU, or capped by LION_CPU)");
        }
    }
    let mut x: Vec<f32> = (0..1000).map(|i| (i as f32 * 0.37).sin()).collect();
    x[3] = f32::NAN;
    x[18] = f32::INFINITY;
    x[40] = -0.0;
    let all: Vec<(&str, lion_core::kernels::DropoutFn)> = paths
        .into_iter()
        .chain([("dispatch", apply_dropout as lion_core::kernels::DropoutFn)])
        .collect();
    for (name, path) in all {
        for len in [0, 1, 7, 8, 9, 15, 16, 17, 31, 32, 33, 1000] {
            for (key, base) in [
                (0u64, 0u64),
                (0x1234_5678_9abc_def0, 16_384),
                (u64::MAX, 1 << 40),
                (0xdead_beef, u64::MAX - 5),
            ] {
                for thr in [0u64, 429_496_729, 2_147_483_648, (1 << 32) - 1, 1 << 32] {
                    let (mut a, mut b) = (vec![7f32; len], vec![9f32; len]);
                    path(key, base, thr, 1.25, &x[..len], &mut a);
                    apply_dropout_scalar(key, base, thr, 1.25, &x[..len], &mut b);
                    assert!(
                        a.iter().zip(&b).all(|(p, q)| p.to_bits() == q.to_bits()),
                        "{name}: len {len} key {key:x} base {base} thr {thr}"
                    );
                }
            }
        }
    }
}
