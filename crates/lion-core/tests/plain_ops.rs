//! The path a GPU takes, tested on the CPU: every fused CPU op (softmax, GELU, LayerNorm,
//! RMSNorm, bias add, row sums, attention, the linear layer, dropout) run with the plain candle
//! ops forced ([`kernels::with_plain_ops`]) against the fused kernel: values within 1e-5 and the
//! gradient of every input and parameter. On a GPU the fused ops cannot run (their forward is
//! CPU-only); [`kernels::fused`] sends it down exactly this plain path.

use candle_core::{DType, Device, Module, Tensor, Var};
use lion_core::kernels::{self, with_plain_ops};
use lion_core::linear::Linear;
use lion_core::testing::max_abs_diff;

const TOL: f32 = 1e-5;

fn dev() -> Device {
    Device::Cpu
}

/// Inputs with a fixed seed-free pattern (sin of an index ramp, scaled): the same values for
/// both paths.
fn ramp(shape: &[usize], scale: f64, phase: f64) -> Tensor {
    let n: usize = shape.iter().product();
    Tensor::arange(0f32, n as f32, &dev())
        .unwrap()
        .affine(0.37, phase)
        .unwrap()
        .sin()
        .unwrap()
        .affine(scale, 0.0)
        .unwrap()
        .reshape(shape)
        .unwrap()
}

/// Runs `f` on fresh variables made from `inputs`, with the plain ops forced or not; returns the
/// output and the gradient of sum(output * w) for every input.
fn run(
    plain: bool,
    inputs: &[Tensor],
    f: &dyn Fn(&[Tensor]) -> Tensor,
) -> (Tensor, Vec<Option<Tensor>>) {
    with_plain_ops(plain, || {
        let vars: Vec<Var> = inputs
            .iter()
            .map(|t| Var::from_tensor(t).unwrap())
            .collect();
        let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let y = f(&ts);
        let w = ramp(y.dims(), 1.0, 0.5);
        let grads = (&y * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let gs = vars
            .iter()
            .map(|v| grads.get(v.as_tensor()).cloned())
            .collect();
        (y.detach(), gs)
    })
}

/// The fused and the plain path of `f`: values and every gradient within `tol`, relative to the
/// larger of 1 and the values' magnitude.
fn compare(name: &str, inputs: &[Tensor], f: &dyn Fn(&[Tensor]) -> Tensor, tol: f32) {
    let (yf, gf) = run(false, inputs, f);
    let (yp, gp) = run(true, inputs, f);
    let scale = |t: &Tensor| {
        t.abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            .max(1.0)
    };
    let d = max_abs_diff(&yf, &yp).unwrap() / scale(&yf);
    assert!(d <= tol, "{name}: plain and fused values differ by {d:e}");
    for (i, (a, b)) in gf.iter().zip(&gp).enumerate() {
        match (a, b) {
            (Some(a), Some(b)) => {
                let d = max_abs_diff(a, b).unwrap() / scale(a);
                assert!(d <= tol, "{name}: gradient of input {i} differs by {d:e}");
            }
            (None, None) => {}
            _ => panic!(
                "{name}: input {i} has a gradient on one path only (fused: {}, plain: {})",
                a.is_some(),
                b.is_some()
            ),
        }
    }
    println!("{name}: plain == fused within {tol:e}");
}

#[test]
fn the_switch_decides_by_device_and_can_be_forced() {
    let x = ramp(&[2, 3], 1.0, 0.0);
    with_plain_ops(false, || {
        assert!(kernels::fused(&Device::Cpu));
        assert!(kernels::applies(&x));
        // nested: the inner setting wins, the outer comes back
        with_plain_ops(true, || {
            assert!(!kernels::fused(&Device::Cpu));
            assert!(!kernels::applies(&x));
            assert!(kernels::plain_ops_forced());
        });
        assert!(kernels::fused(&Device::Cpu));
    });
    // not f32: never the kernel
    with_plain_ops(false, || {
        assert!(!kernels::applies(&x.to_dtype(DType::F64).unwrap()))
    });
}

#[test]
fn softmax_gelu_plain_match_fused() {
    for shape in [[3usize, 7, 33], [2, 5, 300]] {
        let x = ramp(&shape, 3.0, 0.1);
        compare(
            "softmax",
            std::slice::from_ref(&x),
            &|t| kernels::softmax_last_dim(&t[0]).unwrap(),
            TOL,
        );
        compare(
            "gelu_erf",
            std::slice::from_ref(&x),
            &|t| kernels::gelu_erf(&t[0]).unwrap(),
            TOL,
        );
    }
}

#[test]
fn norms_plain_match_fused_with_affine_gradients() {
    let d = 40;
    let x = ramp(&[4, 6, d], 2.0, 0.3);
    let w = ramp(&[d], 0.5, 1.1).affine(1.0, 1.0).unwrap();
    let b = ramp(&[d], 0.3, 2.0);
    compare(
        "layer_norm",
        &[x.clone(), w.clone(), b],
        &|t| kernels::layer_norm(&t[0], &t[1], &t[2], 1e-5).unwrap(),
        TOL,
    );
    compare(
        "rms_norm",
        &[x.clone(), w.clone()],
        &|t| kernels::rms_norm(&t[0], &t[1], 1e-6).unwrap(),
        TOL,
    );
    // the modules the models use (ops::LayerNorm / RmsNorm, T5's norm), built from a VarBuilder
    let vb = candle_nn::VarBuilder::zeros(DType::F32, &dev());
    let ln = lion_core::ops::LayerNorm::new(d, 1e-6, vb.pp("ln")).unwrap();
    compare(
        "ops::LayerNorm",
        std::slice::from_ref(&x),
        &|t| ln.forward(&t[0]).unwrap(),
        TOL,
    );
    let t5n = lion_core::t5::T5LayerNorm::new(d, 1e-6, vb.pp("t5")).unwrap();
    compare(
        "T5LayerNorm",
        std::slice::from_ref(&x),
        &|t| t5n.forward(&t[0]).unwrap(),
        TOL,
    );
}

#[test]
fn bias_add_and_row_sums_plain_match_fused() {
    let x = ramp(&[3, 9, 24], 1.5, 0.0);
    let b = ramp(&[24], 0.5, 0.7);
    compare(
        "add_bias",
        &[x.clone(), b],
        &|t| kernels::add_bias(&t[0], &t[1]).unwrap(),
        TOL,
    );
    // sum_rows has no backward of its own (it is a gradient): values only
    let a = with_plain_ops(false, || kernels::sum_rows(&x).unwrap());
    let p = with_plain_ops(true, || kernels::sum_rows(&x).unwrap());
    assert_eq!(a.dims(), [24]);
    let d = max_abs_diff(&a, &p).unwrap();
    assert!(d <= TOL * 27.0, "sum_rows differs by {d:e}");
}

#[test]
fn attention_plain_matches_fused_in_training() {
    // (b, h, q, d) / (b, h, k, d), an additive mask and a position bias, BERT's scale
    let q = ramp(&[2, 3, 5, 8], 1.0, 0.0);
    let k = ramp(&[2, 3, 7, 8], 1.0, 0.9);
    let v = ramp(&[2, 3, 7, 8], 1.0, 1.7);
    let mask = Tensor::from_vec(
        (0..14)
            .map(|i| if i % 7 == 6 { -1e4f32 } else { 0.0 })
            .collect::<Vec<_>>(),
        (2, 1, 1, 7),
        &dev(),
    )
    .unwrap();
    let pos = ramp(&[1, 3, 5, 7], 0.5, 0.2);
    let scale = 1.0 / 8f64.sqrt();
    compare(
        "attention",
        &[q, k, v],
        &|t| kernels::attention(&t[0], &t[1], &t[2], scale, &[&mask, &pos], 0.0).unwrap(),
        TOL,
    );
}

#[test]
fn linear_plain_matches_fused_skinny_and_gemm() {
    let (n, k) = (48, 40);
    let w = ramp(&[n, k], 0.2, 0.4);
    let b = ramp(&[n], 0.1, 1.3);
    // 3 rows: the skinny kernel; 2 x 13 rows: the GEMM
    for shape in [vec![3, k], vec![2, 13, k]] {
        let x = ramp(&shape, 1.0, 0.0);
        compare(
            "linear (trainable weight and bias)",
            &[x.clone(), w.clone(), b.clone()],
            &|t| {
                Linear::new(t[1].clone(), Some(t[2].clone()))
                    .forward(&t[0])
                    .unwrap()
            },
            TOL,
        );
        // frozen weight: the input gradient only
        compare(
            "linear (frozen weight)",
            std::slice::from_ref(&x),
            &|t| {
                Linear::new(w.clone(), Some(b.clone()))
                    .forward(&t[0])
                    .unwrap()
            },
            TOL,
        );
    }
}

/// A bf16 weight on the plain path (the GPU's `--dtype bf16`) multiplies in bf16 and returns
/// f32: within bf16 rounding of the fused path (f32 activations, bf16 weight, f32 sums).
#[test]
fn bf16_linear_plain_is_within_bf16_rounding_of_fused() {
    let (n, k) = (64, 96);
    let w = ramp(&[n, k], 0.2, 0.4).to_dtype(DType::BF16).unwrap();
    let b = ramp(&[n], 0.1, 1.3);
    let x = ramp(&[2, 9, k], 1.0, 0.0);
    let lin = Linear::new(w, Some(b));
    let fused = with_plain_ops(false, || lin.forward(&x).unwrap());
    let plain = with_plain_ops(true, || lin.forward(&x).unwrap());
    assert_eq!(plain.dtype(), DType::F32);
    let scale = lion_core::testing::max_abs(&fused).unwrap();
    let d = max_abs_diff(&fused, &plain).unwrap() / scale;
    assert!(
        d <= 2e-2,
        "bf16 linear: plain differs from fused by {d:e} (relative)"
    );
}

/// Dropout: the masks differ by path (a hash in the kernel, candle's RNG otherwise), so each path
/// is checked on its own: p = 0 is the identity, and the gradient is the same mask and scale as
/// the forward.
#[test]
fn dropout_plain_keeps_mask_and_scale_in_its_gradient() {
    let x = ramp(&[4, 64], 1.0, 0.25).affine(1.0, 2.0).unwrap(); // no zeros in x
    for plain in [false, true] {
        with_plain_ops(plain, || {
            assert_eq!(
                max_abs_diff(&kernels::dropout(&x, 0.0).unwrap(), &x).unwrap(),
                0.0
            );
            let v = Var::from_tensor(&x).unwrap();
            let p = 0.3f32;
            let y = kernels::dropout(v.as_tensor(), p).unwrap();
            let g = y.sum_all().unwrap().backward().unwrap();
            let g = g.get(v.as_tensor()).expect("dropout input gets a gradient");
            let kept = y.ne(0f32).unwrap().to_dtype(DType::F32).unwrap();
            let want = (kept * (1.0 / (1.0 - p as f64))).unwrap();
            let d = max_abs_diff(g, &want).unwrap();
            assert!(d <= 1e-6, "plain={plain}: dropout gradient off by {d:e}");
            let dropped = y.eq(0f32).unwrap().to_dtype(DType::F32).unwrap();
            let frac = dropped.mean_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(
                (0.15..0.45).contains(&frac),
                "plain={plain}: dropped {frac}"
            );
        });
    }
}
