//! Each fused kernel against the plain candle composition, forward and backward, on contiguous
//! and non-contiguous inputs.

use candle_core::{Device, Tensor, Var, D};
use lion_core::kernels;
use lion_core::testing::max_abs_diff;

fn input(shape: (usize, usize, usize), transpose: bool) -> Var {
    let t = Tensor::randn(0f32, 2., shape, &Device::Cpu).unwrap();
    let t = if transpose {
        t.transpose(1, 2).unwrap()
    } else {
        t
    };
    Var::from_tensor(&(t * 1.0).unwrap()).unwrap()
}

/// Compares f(x) and g(x), and d/dx of sum(f(x) * w) and sum(g(x) * w).
fn compare(name: &str, f: impl Fn(&Tensor) -> Tensor, g: impl Fn(&Tensor) -> Tensor, tol: f32) {
    for (shape, tr) in [((3, 7, 33), false), ((2, 5, 300), false), ((2, 9, 4), true)] {
        let x = input(shape, tr);
        let x_t = if tr {
            x.as_tensor().transpose(1, 2).unwrap()
        } else {
            x.as_tensor().clone()
        };
        let a = f(&x_t);
        let b = g(&x_t);
        let d = max_abs_diff(&a, &b).unwrap();
        assert!(d <= tol, "{name} {shape:?} forward differs by {d}");
        let w = Tensor::randn(0f32, 1., a.shape(), &Device::Cpu).unwrap();
        let ga = (a * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let gb = (b * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let (ga, gb) = (
            ga.get(x.as_tensor()).unwrap(),
            gb.get(x.as_tensor()).unwrap(),
        );
        let d = max_abs_diff(ga, gb).unwrap();
        assert!(d <= tol, "{name} {shape:?} backward differs by {d}");
    }
}

#[test]
fn softmax_kernel_matches_composition() {
    compare(
        "softmax",
        |x| kernels::softmax_last_dim(x).unwrap(),
        |x| candle_nn::ops::softmax(x, D::Minus1).unwrap(),
        1e-6,
    );
}

#[test]
fn gelu_kernel_matches_composition() {
    compare(
        "gelu",
        |x| kernels::gelu_erf(x).unwrap(),
        |x| x.gelu_erf().unwrap(),
        1e-5,
    );
}

#[test]
fn gelu_tanh_kernel_matches_composition() {
    compare(
        "gelu_tanh",
        |x| kernels::gelu_tanh(x).unwrap(),
        |x| x.gelu().unwrap(),
        2e-6,
    );
}

/// The tanh-GELU (its vectorisable tanh) against the f64 formula on a dense grid, through the
/// saturation on both sides.
#[test]
fn gelu_tanh_matches_libm_on_a_dense_grid() {
    let xs: Vec<f32> = (-120_000..=120_000).map(|i| i as f32 * 1e-4).collect();
    let t = Tensor::from_slice(&xs, xs.len(), &Device::Cpu).unwrap();
    let ours = kernels::gelu_tanh(&t).unwrap().to_vec1::<f32>().unwrap();
    let c = (2.0f64 / std::f64::consts::PI).sqrt();
    for (&x, &y) in xs.iter().zip(&ours) {
        let xd = x as f64;
        let want = 0.5 * xd * (1.0 + (c * (xd + 0.044715 * xd * xd * xd)).tanh());
        let err = (y as f64 - want).abs();
        assert!(
            err <= 3e-7 * (1.0 + xd.abs()),
            "gelu_tanh({x}) = {y}, want {want}"
        );
    }
}

fn affine(d: usize) -> (Tensor, Tensor) {
    (
        Tensor::randn(1f32, 0.3, d, &Device::Cpu).unwrap(),
        Tensor::randn(0f32, 0.3, d, &Device::Cpu).unwrap(),
    )
}

/// A fixed, non-trivial affine pair of width d.
fn fixed_affine(d: usize) -> (Tensor, Tensor) {
    let r = Tensor::arange(0f32, d as f32, &Device::Cpu).unwrap();
    (
        r.sin().unwrap().affine(0.5, 1.0).unwrap(),
        (r.cos().unwrap() * 0.3).unwrap(),
    )
}

#[test]
fn layer_norm_kernel_matches_composition() {
    compare(
        "layer_norm",
        |x| {
            let (w, b) = fixed_affine(x.dim(D::Minus1).unwrap());
            kernels::layer_norm(x, &w, &b, 1e-5).unwrap()
        },
        |x| {
            let (w, b) = fixed_affine(x.dim(D::Minus1).unwrap());
            candle_nn::ops::layer_norm_slow(x, &w, &b, 1e-5).unwrap()
        },
        2e-5,
    );
}

#[test]
fn rms_norm_kernel_matches_composition() {
    compare(
        "rms_norm",
        |x| {
            let (w, _) = fixed_affine(x.dim(D::Minus1).unwrap());
            kernels::rms_norm(x, &w, 1e-6).unwrap()
        },
        |x| {
            let (w, _) = fixed_affine(x.dim(D::Minus1).unwrap());
            let ms = x.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
            let xn = x
                .broadcast_div(&(ms + 1e-6).unwrap().sqrt().unwrap())
                .unwrap();
            xn.broadcast_mul(&w).unwrap()
        },
        2e-5,
    );
}

#[test]
fn layer_norm_weight_and_bias_get_the_composed_gradients() {
    let x = Tensor::randn(0f32, 1., (4, 6, 40), &Device::Cpu).unwrap();
    let (w0, b0) = affine(40);
    let (w, b) = (
        Var::from_tensor(&w0).unwrap(),
        Var::from_tensor(&b0).unwrap(),
    );
    let gw = Tensor::randn(0f32, 1., (4, 6, 40), &Device::Cpu).unwrap();
    let fused = kernels::layer_norm(&x, &w, &b, 1e-12).unwrap();
    let slow = candle_nn::ops::layer_norm_slow(&x, &w, &b, 1e-12).unwrap();
    assert!(max_abs_diff(&fused, &slow).unwrap() <= 2e-5);
    let g1 = (fused * &gw)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let g2 = (slow * &gw).unwrap().sum_all().unwrap().backward().unwrap();
    for v in [&w, &b] {
        let d = max_abs_diff(
            g1.get(v.as_tensor()).unwrap(),
            g2.get(v.as_tensor()).unwrap(),
        )
        .unwrap();
        assert!(d <= 1e-4, "affine grad differs by {d}");
    }
}

#[test]
fn rms_norm_weight_gets_the_composed_gradient() {
    let x = Tensor::randn(0f32, 1., (3, 5, 24), &Device::Cpu).unwrap();
    let w = Var::from_tensor(&fixed_affine(24).0).unwrap();
    let gw = Tensor::randn(0f32, 1., (3, 5, 24), &Device::Cpu).unwrap();
    let fused = kernels::rms_norm(&x, &w, 1e-6).unwrap();
    let ms = x.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
    let slow = x
        .broadcast_div(&(ms + 1e-6).unwrap().sqrt().unwrap())
        .unwrap()
        .broadcast_mul(&w)
        .unwrap();
    let g1 = (fused * &gw)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let g2 = (slow * &gw).unwrap().sum_all().unwrap().backward().unwrap();
    let d = max_abs_diff(
        g1.get(w.as_tensor()).unwrap(),
        g2.get(w.as_tensor()).unwrap(),
    )
    .unwrap();
    assert!(d <= 1e-4, "rms weight grad differs by {d}");
}

#[test]
fn shape_errors_are_errors() {
    let x = Tensor::zeros((2, 3, 8), candle_core::DType::F32, &Device::Cpu).unwrap();
    let w = Tensor::ones(7, candle_core::DType::F32, &Device::Cpu).unwrap();
    assert!(kernels::rms_norm(&x, &w, 1e-6).is_err());
    assert!(kernels::layer_norm(&x, &w, &w, 1e-6).is_err());
}

#[test]
fn vectorised_exp_is_within_two_ulp_and_keeps_the_edge_cases() {
    let mut worst = 0f64;
    let mut x = -87.3f32;
    while x < 88.7 {
        let want = (x as f64).exp();
        let got = kernels::exp(x) as f64;
        // ulp of the exact value at f32 precision
        let ulp = (want as f32).next_up() as f64 - want as f32 as f64;
        worst = worst.max((got - want).abs() / ulp);
        x += 0.013_7;
    }
    assert!(worst <= 2.0, "exp is off by {worst} ulp");
    assert_eq!(kernels::exp(0.0), 1.0);
    assert_eq!(kernels::exp(f32::NEG_INFINITY), 0.0);
    assert_eq!(kernels::exp(-100.0), 0.0);
    assert_eq!(kernels::exp(100.0), f32::INFINITY);
    assert!(kernels::exp(f32::NAN).is_nan());
}

#[test]
fn vectorised_erf_is_within_abramowitz_stegun_bound() {
    let mut worst = 0f64;
    let mut x = -7.0f32;
    while x < 7.0 {
        let want = candle_core::cpu::erf::erf_f64(x as f64);
        worst = worst.max((kernels::erf(x) as f64 - want).abs());
        x += 0.000_93;
    }
    // A&S 7.1.26 guarantees 1.5e-7 in exact arithmetic; f32 rounding adds a few 1e-8 (measured
    // worst: 1.8e-7 near |x| = 1.4). Below |x| = 1 the series is far more accurate.
    assert!(worst <= 2e-7, "erf is off by {worst}");
    assert_eq!(kernels::erf(0.0), 0.0);
    assert_eq!(kernels::erf(10.0), 1.0);
    assert_eq!(kernels::erf(-10.0), -1.0);
    assert!(kernels::erf(f32::NAN).is_nan());
}

/// The fused attention (taken when q, k or v is tracked) against the plain composition: output
/// and the gradients of q, k and v, with a (1, h, q, k) position bias and a (b, 1, 1, k) mask,
/// without biases, and with dropout (the same mask on both sides: same dropout seed).
#[test]
fn fused_attention_matches_composition_forward_and_backward() {
    let dev = Device::Cpu;
    let (b, h, lq, lk, d) = (2, 3, 5, 7, 4);
    let var = |shape: (usize, usize, usize, usize)| {
        Var::from_tensor(&Tensor::randn(0f32, 1., shape, &dev).unwrap()).unwrap()
    };
    let (q, k, v) = (var((b, h, lq, d)), var((b, h, lk, d)), var((b, h, lk, d)));
    let bias = Tensor::randn(0f32, 1., (1, h, lq, lk), &dev).unwrap();
    let mut mask = vec![0f32; b * lk];
    mask[lk - 1] = f32::NEG_INFINITY; // row 0 may not see its last key
    mask[lk + 2] = -1e9;
    let mask = Tensor::from_vec(mask, (b, 1, 1, lk), &dev).unwrap();
    let w = Tensor::randn(0f32, 1., (b, h, lq, d), &dev).unwrap();
    for (biases, p, scale) in [
        (vec![&bias, &mask], 0.0f32, 1.0),
        (vec![], 0.0, 0.5),
        (vec![&bias, &mask], 0.3, 1.0),
        (vec![&mask], 0.2, 0.125),
    ] {
        let run = |fused: bool| {
            kernels::seed_dropout(11);
            let (qt, kt, vt) = (q.as_tensor(), k.as_tensor(), v.as_tensor());
            let out = if fused {
                kernels::attention(qt, kt, vt, scale, &biases, p).unwrap()
            } else {
                kernels::attention_composed(qt, kt, vt, scale, &biases, p).unwrap()
            };
            let grads = (&out * &w).unwrap().sum_all().unwrap().backward().unwrap();
            let g = |x: &Var| grads.get(x.as_tensor()).unwrap().clone();
            (out, [g(&q), g(&k), g(&v)])
        };
        let (a, ga) = run(true);
        let (c, gc) = run(false);
        let what = format!("{} biases, dropout {p}, scale {scale}", biases.len());
        assert!(max_abs_diff(&a, &c).unwrap() < 1e-5, "{what}: forward");
        for (name, (x, y)) in ["q", "k", "v"].iter().zip(ga.iter().zip(&gc)) {
            let dist = max_abs_diff(x, y).unwrap();
            assert!(dist < 1e-5, "{what}: d{name} differs by {dist}");
            assert!(
                y.abs()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap()
                    > 1e-3
            );
        }
        if p > 0.0 {
            // dropout did drop something: the output differs from the undropped one
            let plain = kernels::attention_composed(
                &q.as_tensor().detach(),
                &k.as_tensor().detach(),
                &v.as_tensor().detach(),
                scale,
                &biases,
                0.0,
            )
            .unwrap();
            assert!(max_abs_diff(&a, &plain).unwrap() > 1e-3);
        }
    }
    // untracked inputs (inference) take the composition and build no graph
    let out = kernels::attention(
        &q.as_tensor().detach(),
        &k.as_tensor().detach(),
        &v.as_tensor().detach(),
        1.0,
        &[&bias],
        0.0,
    )
    .unwrap();
    assert!(!out.track_op());
}

/// Row sums (bias and norm-weight gradients) against candle's sum over the leading dimensions,
/// with enough rows for several parallel blocks; the bias add against `broadcast_add`, forward
/// and gradients, the bias trainable or frozen (then it gets no gradient).
#[test]
fn sum_rows_and_bias_add_match_candle() {
    let dev = Device::Cpu;
    let x = Tensor::randn(0f32, 1., (7, 33, 300), &dev).unwrap();
    let want = x.reshape(((), 300)).unwrap().sum(0).unwrap();
    let d = max_abs_diff(&kernels::sum_rows(&x).unwrap(), &want).unwrap();
    assert!(d < 1e-4, "sum_rows: {d}");
    let xv = Var::from_tensor(&x).unwrap();
    let b0 = Tensor::randn(0f32, 1., 300, &dev).unwrap();
    let w = Tensor::randn(0f32, 1., (7, 33, 300), &dev).unwrap();
    for trainable in [true, false] {
        let b = if trainable {
            Var::from_tensor(&b0).unwrap().as_tensor().clone()
        } else {
            b0.clone()
        };
        let ours = kernels::add_bias(xv.as_tensor(), &b).unwrap();
        let theirs = xv.as_tensor().broadcast_add(&b).unwrap();
        assert_eq!(max_abs_diff(&ours, &theirs).unwrap(), 0.0);
        let g1 = (&ours * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = (&theirs * &w)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let gx = max_abs_diff(
            g1.get(xv.as_tensor()).unwrap(),
            g2.get(xv.as_tensor()).unwrap(),
        );
        assert_eq!(gx.unwrap(), 0.0);
        match (g1.get(&b), g2.get(&b)) {
            (Some(a), Some(c)) => {
                assert!(trainable);
                assert!(max_abs_diff(a, c).unwrap() < 1e-4);
            }
            (None, None) => assert!(!trainable),
            _ => panic!("bias gradient present on one side only (trainable {trainable})"),
        }
    }
}

/// `split_heads` and `merge_heads` are the reshape / transpose / contiguous composition, value
/// for value, and pass the gradient back unchanged (one node each instead of three), tracked
/// and untracked, large enough for the parallel copy and small; a width that is not a multiple
/// of the heads is an error.
#[test]
fn split_and_merge_heads_are_the_composition_forward_and_backward() {
    let dev = Device::Cpu;
    for (b, t, h, d) in [(2, 47, 12, 32), (1, 3, 2, 5), (3, 1, 4, 8)] {
        let n = b * t * h * d;
        let vals: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
        let x = Var::from_vec(vals, (b, t, h * d), &dev).unwrap();
        let w = Tensor::arange(0f32, n as f32, &dev)
            .unwrap()
            .reshape((b, h, t, d))
            .unwrap();
        let split = kernels::split_heads(x.as_tensor(), h).unwrap();
        let want = x
            .as_tensor()
            .reshape((b, t, h, d))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .contiguous()
            .unwrap();
        let bits = lion_core::testing::f32_bits;
        assert_eq!(split.dims(), &[b, h, t, d]);
        assert_eq!(bits(&split), bits(&want), "split {b} {t} {h} {d}");
        let merged = kernels::merge_heads(&split).unwrap();
        assert_eq!(bits(&merged), bits(x.as_tensor()), "merge {b} {t} {h} {d}");
        // through both: d/dx sum(split(x) * w) is w merged back; and merge's own gradient
        let g1 = (split.clone() * &w)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let g2 = (want * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let gx = |g: &candle_core::backprop::GradStore| bits(g.get(x.as_tensor()).unwrap());
        assert_eq!(gx(&g1), gx(&g2), "split gradient {b} {t} {h} {d}");
        let wm = kernels::merge_heads(&w).unwrap();
        let g3 = (merged * &wm)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        assert_eq!(gx(&g3), bits(&wm), "merge gradient {b} {t} {h} {d}");
        // untracked: the same values
        let plain = kernels::split_heads(&x.as_tensor().detach(), h).unwrap();
        assert_eq!(bits(&plain), bits(&split));
    }
    let x = Tensor::zeros((1, 2, 10), candle_core::DType::F32, &dev).unwrap();
    assert!(kernels::split_heads(&x, 3).is_err());
    assert!(kernels::split_heads(&x, 0).is_err());
}

/// `attention_in` in a bf16 layer: at inference, from `bf16::PACKED_MIN_ROWS` query rows on a
/// CPU whose bf16 kernel rounds its input (AVX512-BF16), the bf16 products, within bf16's
/// rounding of the f32 attention and not its bits (biases broadcast over batch, over heads,
/// and one strided); an f32 layer, fewer query rows, or tracked inputs get `attention`'s bits.
#[test]
fn attention_in_bf16_runs_the_bf16_products_only_where_it_may() {
    let det = |shape: &[usize], s: usize| {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|j| ((j * 7919 + s * 104_729) % 2001) as f32 / 1000.0 - 1.0)
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    };
    let (b, h, sq, sk, d) = (2, 3, 60, 70, 40);
    let (q, k, v) = (
        det(&[b, h, sq, d], 1),
        det(&[b, h, sk, d], 2),
        det(&[b, h, sk, d], 3),
    );
    let pos = det(&[1, h, sq, sk], 4);
    let mask = det(&[b, 1, 1, sk], 5);
    let strided = det(&[1, 1, sk, sq], 6).transpose(2, 3).unwrap();
    let biases = [&pos, &mask, &strided];
    let bits = lion_core::testing::f32_bits;
    let f32_attention = kernels::attention(&q, &k, &v, 0.3, &biases, 0.0).unwrap();
    let got = kernels::attention_in(&q, &k, &v, 0.3, &biases, 0.0, true).unwrap();
    let diff = max_abs_diff(&got, &f32_attention).unwrap();
    if lion_core::bf16::rounds_x(sq) {
        assert!(
            diff > 0.0 && diff < 1e-2,
            "bf16 attention off f32's by {diff}"
        );
    } else {
        eprintln!("skipped: the bf16 products (this CPU's bf16 kernel does not round its input)");
        assert_eq!(bits(&got), bits(&f32_attention));
    }
    // an f32 layer
    let f32_layer = kernels::attention_in(&q, &k, &v, 0.3, &biases, 0.0, false).unwrap();
    assert_eq!(bits(&f32_layer), bits(&f32_attention));
    // fewer query rows than the bf16 kernel's packed layout wants (a decoding step's few)
    let rows = lion_core::bf16::PACKED_MIN_ROWS - 1;
    let (qs, ps) = (
        q.narrow(2, 0, rows).unwrap(),
        pos.narrow(2, 0, rows).unwrap(),
    );
    let st = strided.narrow(2, 0, rows).unwrap();
    let few = [&ps, &mask, &st];
    assert_eq!(
        bits(&kernels::attention_in(&qs, &k, &v, 0.3, &few, 0.0, true).unwrap()),
        bits(&kernels::attention(&qs, &k, &v, 0.3, &few, 0.0).unwrap())
    );
    // tracked (training)
    let qv = Var::from_tensor(&q).unwrap();
    assert_eq!(
        bits(&kernels::attention_in(qv.as_tensor(), &k, &v, 0.3, &biases, 0.0, true).unwrap()),
        bits(&f32_attention)
    );
}
