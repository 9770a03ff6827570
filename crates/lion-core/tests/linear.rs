//! lion_core::linear::Linear against candle_nn::Linear: forward, input gradient, weight and bias
//! gradients when they are trainable, and no weight gradient when the weight is frozen.

use candle_core::{DType, Device, Module, Tensor, Var};
use lion_core::linear::Linear;
use lion_core::testing::max_abs_diff;

fn data() -> candle_core::Result<(Tensor, Tensor, Tensor)> {
    let dev = Device::Cpu;
    let x = Tensor::randn(0f32, 1., (3, 5, 7), &dev)?;
    let w = Tensor::randn(0f32, 1., (4, 7), &dev)?;
    let b = Tensor::randn(0f32, 1., 4, &dev)?;
    Ok((x, w, b))
}

#[test]
fn forward_matches_candle_linear_for_2d_3d_4d_and_strided_inputs() -> lion_core::Result<()> {
    let (x, w, b) = data()?;
    for bias in [None, Some(b.clone())] {
        let ours = Linear::new(w.clone(), bias.clone());
        let theirs = candle_nn::Linear::new(w.clone(), bias);
        let xs = [
            x.clone(),
            x.reshape((15, 7))?,
            x.reshape((3, 5, 1, 7))?,
            // non-contiguous input
            x.transpose(0, 1)?,
        ];
        for x in xs {
            let d = max_abs_diff(&ours.forward(&x)?, &theirs.forward(&x.contiguous()?)?)?;
            assert!(d < 1e-5, "{:?}: {d}", x.shape());
        }
    }
    Ok(())
}

#[test]
fn gradients_match_and_frozen_weights_get_none() -> lion_core::Result<()> {
    let (x0, w0, b0) = data()?;
    for trainable_weight in [true, false] {
        let x = Var::from_tensor(&x0)?;
        let b = Var::from_tensor(&b0)?;
        let w = if trainable_weight {
            Var::from_tensor(&w0)?.as_tensor().clone()
        } else {
            w0.clone()
        };
        let wv = Var::from_tensor(&w0)?; // reference weight, always tracked
                                         // a loss whose gradient differs per output element
        let coef = Tensor::arange(0f32, 60., &Device::Cpu)?.reshape((3, 5, 4))?;
        let ours = Linear::new(w.clone(), Some(b.as_tensor().clone()));
        let g1 = (ours.forward(x.as_tensor())?.sqr()? * &coef)?
            .sum_all()?
            .backward()?;
        let theirs = candle_nn::Linear::new(wv.as_tensor().clone(), Some(b.as_tensor().clone()));
        let g2 = (theirs.forward(x.as_tensor())?.sqr()? * &coef)?
            .sum_all()?
            .backward()?;
        let gx = max_abs_diff(
            g1.get(x.as_tensor()).expect("input grad"),
            g2.get(x.as_tensor()).expect("input grad"),
        )?;
        assert!(gx < 1e-3, "input grad {gx}");
        let gb = max_abs_diff(
            g1.get(b.as_tensor()).expect("bias grad"),
            g2.get(b.as_tensor()).expect("bias grad"),
        )?;
        assert!(gb < 1e-3, "bias grad {gb}");
        let reference = g2.get(wv.as_tensor()).expect("weight grad");
        match g1.get(&w) {
            Some(gw) => {
                assert!(trainable_weight, "a frozen weight got a gradient");
                let d = max_abs_diff(gw, reference)?;
                assert!(d < 1e-3, "weight grad {d}");
            }
            None => assert!(!trainable_weight, "a trainable weight got no gradient"),
        }
        // the gradients are not trivially zero
        assert!(reference.abs()?.sum_all()?.to_scalar::<f32>()? > 1.0);
    }
    Ok(())
}

#[test]
fn other_dtypes_and_shape_errors() -> lion_core::Result<()> {
    let (x, w, _) = data()?;
    let ours = Linear::new(w.to_dtype(DType::F64)?, None);
    let theirs = candle_nn::Linear::new(w.to_dtype(DType::F64)?, None);
    let x64 = x.to_dtype(DType::F64)?;
    let d = max_abs_diff(&ours.forward(&x64)?, &theirs.forward(&x64)?)?;
    assert!(d < 1e-9);
    let bad = Tensor::zeros((2, 6), DType::F32, &Device::Cpu)?;
    let err = Linear::new(w, None).forward(&bad).unwrap_err().to_string();
    assert!(err.contains("width"), "{err}");
    Ok(())
}

/// The skinny path (1..=8 rows) against candle's matmul, through `Linear` and directly: every row
/// count, widths that are and are not multiples of the SIMD width, an odd number of weight rows
/// and more weight rows than one parallel task takes.
#[test]
fn skinny_rows_match_candle_matmul() -> lion_core::Result<()> {
    use lion_core::skinny;
    let dev = Device::Cpu;
    for &(k, n) in &[(768, 130), (7, 5), (33, 1), (16, 257), (1, 3)] {
        let w = Tensor::randn(0f32, 1., (n, k), &dev)?;
        for m in 1..=skinny::MAX_ROWS + 1 {
            let x = Tensor::randn(0f32, 1., (m, k), &dev)?;
            let reference = x.matmul(&w.t()?)?;
            let ours = Linear::new(w.clone(), None).forward(&x)?;
            let tol = 1e-5 * (k as f32).sqrt();
            let d = max_abs_diff(&ours, &reference)?;
            assert!(d < tol, "m {m} k {k} n {n}: {d}");
            if m <= skinny::MAX_ROWS {
                let direct = skinny::matmul_wt(
                    &x.flatten_all()?.to_vec1()?,
                    m,
                    k,
                    &w.flatten_all()?.to_vec1()?,
                    n,
                );
                let direct = Tensor::from_vec(direct, (m, n), &dev)?;
                let d = max_abs_diff(&direct, &reference)?;
                assert!(d < tol, "direct m {m} k {k} n {n}: {d}");
            }
        }
    }
    // a weight that is a view (offset into its storage) and a 3-d input with 5 rows
    let big = Tensor::randn(0f32, 1., (10, 24), &dev)?;
    let w = big.narrow(0, 3, 6)?;
    let x = Tensor::randn(0f32, 1., (5, 1, 24), &dev)?;
    let d = max_abs_diff(
        &Linear::new(w.clone(), None).forward(&x)?,
        &x.reshape((5, 24))?.matmul(&w.t()?)?.reshape((5, 1, 6))?,
    )?;
    assert!(d < 1e-4, "view weight: {d}");
    Ok(())
}

/// Random f32 data in [-1, 1) from a seed (no candle RNG: the same data on every run).
fn uniform(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2654435761).wrapping_add(1);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(1664525).wrapping_add(1013904223);
            (s >> 8) as f32 / (1u32 << 23) as f32 - 1.0
        })
        .collect()
}

/// `got` (m, n) against the exact product `want` of an (m, k) @ (k, n): f32 accumulation of
/// exact products, so the error bound grows with the width `k`.
fn assert_close_to_exact(got: &[f32], want: &[f64], (m, k, n): (usize, usize, usize), what: &str) {
    assert_eq!(got.len(), m * n, "{what}: output length");
    let tol = 1e-6 * (k as f64).sqrt() * 4.0 + 1e-6;
    for (j, (g, r)) in got.iter().zip(want).enumerate() {
        assert!(
            (*g as f64 - r).abs() < tol,
            "{what} ({m}, {k}) x ({n}, {k}) at {j}: {g} vs {r}"
        );
    }
}

/// The bf16 kernel this CPU runs (AVX512-BF16 or the widening path) against the exact product
/// of the bf16-rounded operands, on edge shapes: 1 row, tile remainders (7, 17 rows; 1..3 weight
/// rows past a tile of 4), odd and short widths, more than one rayon block of weight rows, more
/// than one 512-column slice with a tail.
#[test]
fn bf16_matmul_matches_the_exact_product_on_edge_shapes() {
    let k = lion_core::cpu::kernels().bf16;
    eprintln!("bf16 kernel on this CPU: {k:?}");
    if k != lion_core::cpu::Bf16Kernel::Avx512Bf16 {
        eprintln!("skipped: the AVX512-BF16 kernel (this CPU has no AVX512-BF16); the widening path is tested");
    }
    let shapes = [
        (1, 1, 1),
        (1, 7, 5),
        (7, 16, 17),
        (16, 17, 3),
        (17, 33, 9),
        (6, 64, 4),
        (5, 31, 70),
        (33, 100, 37),
        (2, 768, 67),
        (40, 300, 45),
        // several 512-column slices with a tail, the weight rows where they lie
        (13, 1100, 37),
        (9, 513, 50),
        // rows that share L1 sets, copied side by side in groups of 16 (+ 5, + 2): with a
        // tail of 1 column, and without
        (13, 2049, 37),
        (9, 1024, 50),
        // the outer-product layout (from PACKED_MIN_ROWS rows): a full tile of 14 rows and a
        // short one, panels of 32 weight rows with a column tail, two 64-row tasks, 256-column
        // slices with a pair split by the end of the weight's rows (odd k), a first slice only
        (48, 1100, 37),
        (61, 513, 130),
        (50, 2049, 33),
        (49, 17, 65),
        (57, 256, 1),
    ];
    for (i, &(m, kk, n)) in shapes.iter().enumerate() {
        let x = uniform(m * kk, 2 * i as u32);
        let w = lion_core::bf16::to_bf16(&uniform(n * kk, 2 * i as u32 + 1));
        let rounded = lion_core::bf16::reference(&x, m, kk, &w, n, true);
        let exact = lion_core::bf16::reference(&x, m, kk, &w, n, false);
        // the native kernel rounds x to bf16; the widening paths keep it f32
        let native = lion_core::bf16::rounds_x(m);
        assert_eq!(
            native,
            k == lion_core::cpu::Bf16Kernel::Avx512Bf16
                && (m < lion_core::bf16::WIDEN_MIN_ROWS
                    || lion_core::cpu::kernels().bf16_gemm == lion_core::cpu::Bf16Gemm::Dot)
        );
        let dispatched_want = if native { &rounded } else { &exact };
        for (name, got, want) in [
            (
                "dispatched",
                lion_core::bf16::matmul_wt(&x, m, kk, &w, n),
                dispatched_want,
            ),
            (
                "portable",
                lion_core::bf16::portable_rounded(&x, m, kk, &w, n),
                &rounded,
            ),
        ] {
            assert_close_to_exact(&got, want, (m, kk, n), name);
        }
    }
}

/// A model built under `with_weight_dtype(Bf16)` stores its frozen linear weights in bf16 and
/// keeps trainable ones (and everything built outside the scope) in f32; the bf16 layer's output
/// is f32 and close to the f32 layer's, and its input gradient flows.
#[test]
fn bf16_weights_are_converted_once_at_load_and_run_in_f32_activations() -> lion_core::Result<()> {
    use lion_core::cpu::WeightDtype;
    use lion_core::linear::{load_weight, with_weight_dtype};
    let dev = Device::Cpu;
    let w = Tensor::randn(0f32, 0.1, (33, 48), &dev)?;
    let b = Tensor::randn(0f32, 0.1, 33, &dev)?;
    let trainable = Var::from_tensor(&w)?;
    let (frozen, tracked) = with_weight_dtype(WeightDtype::Bf16, || -> candle_core::Result<_> {
        Ok((
            load_weight(w.clone())?,
            load_weight(trainable.as_tensor().clone())?,
        ))
    })?;
    assert_eq!(frozen.dtype(), DType::BF16);
    assert_eq!(tracked.dtype(), DType::F32);
    assert_eq!(
        load_weight(w.clone())?.dtype(),
        DType::F32,
        "outside the scope"
    );
    let f32_layer = Linear::new(w.clone(), Some(b.clone()));
    let bf16_layer = with_weight_dtype(WeightDtype::Bf16, || Linear::new(frozen, Some(b)));
    for rows in [1, 5, 16, 17, 40] {
        let x = Var::from_tensor(&Tensor::randn(0f32, 1., (rows, 48), &dev)?)?;
        let y = bf16_layer.forward(x.as_tensor())?;
        assert_eq!(y.dtype(), DType::F32);
        let d = max_abs_diff(&y, &f32_layer.forward(x.as_tensor())?)?;
        // bf16 keeps 8 bits of mantissa: ~0.4% of |x| |w| sqrt(k) ~ 0.7
        assert!(d < 0.02, "{rows} rows: {d}");
        let g = y.sum_all()?.backward()?;
        let gx = g.get(x.as_tensor()).expect("input gradient");
        let want = w.sum(0)?.broadcast_as((rows, 48))?;
        assert!(max_abs_diff(gx, &want)? < 0.01);
    }
    Ok(())
}

/// The f32 GEMM (`lion_core::sgemm`, its AVX-512 or AVX2 tile as picked here) against an f64
/// product, on edge shapes of its 12 x 32 tile and 256-deep slices, with row-major, transposed
/// (`W^T`) and strided operands; the linear layer's forward and backward through it against
/// candle's matmul.
#[test]
fn sgemm_matches_an_f64_product_on_edge_shapes_and_strides() -> lion_core::Result<()> {
    use lion_core::sgemm::{self, MatRef};
    if !sgemm::available() {
        eprintln!(
            "skipped: no sgemm kernel runs here (neither AVX-512 nor AVX2 + FMA; picked: {:?})",
            lion_core::cpu::kernels().f32_gemm
        );
        return Ok(());
    }
    let shapes = [
        (1, 1, 1),
        (1, 7, 5),
        (7, 16, 17),
        (12, 32, 256),
        (13, 33, 257),
        (16, 17, 3),
        (17, 31, 70),
        (33, 100, 37),
        (25, 64, 513),
        (389, 65, 40),
        (2, 768, 67),
    ];
    for (i, &(m, n, k)) in shapes.iter().enumerate() {
        let a = uniform(m * k, 3 * i as u32);
        let w = uniform(n * k, 3 * i as u32 + 1); // (n, k): B = W^T
        let bt = uniform(k * n, 3 * i as u32 + 2); // (k, n) row-major
        let at = uniform(k * m, 3 * i as u32 + 3); // A^T (k, m) row-major: A a transposed view
        let exact_a = |a: &dyn Fn(usize, usize) -> f32, b: &dyn Fn(usize, usize) -> f32| {
            let mut c = vec![0f64; m * n];
            for r in 0..m {
                for j in 0..n {
                    c[r * n + j] = (0..k).map(|p| a(r, p) as f64 * b(p, j) as f64).sum();
                }
            }
            c
        };
        let exact = |b: &dyn Fn(usize, usize) -> f32| exact_a(&|r, p| a[r * k + p], b);
        let tol = 1e-6 * (k as f64).sqrt() * 4.0 + 1e-6;
        let cases = [
            (
                "W^T",
                sgemm::matmul(m, n, k, MatRef::row_major(&a, k), MatRef::transposed(&w, k)),
                exact(&|p, j| w[j * k + p]),
            ),
            (
                "row-major",
                sgemm::matmul(m, n, k, MatRef::row_major(&a, k), MatRef::row_major(&bt, n)),
                exact(&|p, j| bt[p * n + j]),
            ),
            (
                "A transposed",
                sgemm::matmul(
                    m,
                    n,
                    k,
                    MatRef::transposed(&at, m),
                    MatRef::transposed(&w, k),
                ),
                exact_a(&|r, p| at[p * m + r], &|p, j| w[j * k + p]),
            ),
        ];
        for (name, got, want) in cases {
            assert_eq!(got.len(), m * n);
            for (j, (g, r)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (*g as f64 - r).abs() < tol,
                    "{name} ({m}, {k}) x ({k}, {n}) at {j}: {g} vs {r}"
                );
            }
        }
    }
    // subnormal operands (flushed to 0 while packing) still give the product to f32 accuracy
    let (m, n, k) = (13, 33, 300);
    let mut a = uniform(m * k, 99);
    for (i, v) in a.iter_mut().enumerate() {
        if i % 3 == 0 {
            *v = 1e-40 * (1.0 + *v);
        }
    }
    let w = uniform(n * k, 98);
    let got = sgemm::matmul(m, n, k, MatRef::row_major(&a, k), MatRef::transposed(&w, k));
    for r in 0..m {
        for j in 0..n {
            let want: f64 = (0..k)
                .filter(|p| (r * k + p) % 3 != 0)
                .map(|p| a[r * k + p] as f64 * w[j * k + p] as f64)
                .sum();
            assert!(
                (got[r * n + j] as f64 - want).abs() < 1e-4,
                "subnormals at ({r}, {j})"
            );
        }
    }
    // through the linear layer (forward, input and weight gradients) against candle's matmul
    let dev = Device::Cpu;
    let x = Tensor::randn(0f32, 1., (3, 19, 45), &dev)?;
    let w = Var::from_tensor(&Tensor::randn(0f32, 1., (37, 45), &dev)?)?;
    let xv = Var::from_tensor(&x)?;
    let ours = Linear::new(w.as_tensor().clone(), None).forward(xv.as_tensor())?;
    let theirs = xv.as_tensor().broadcast_matmul(&w.as_tensor().t()?)?;
    assert!(max_abs_diff(&ours, &theirs)? < 1e-4);
    let g1 = (ours.sqr()?.sum_all()?).backward()?;
    let g2 = (theirs.sqr()?.sum_all()?).backward()?;
    for v in [&xv, &w] {
        let d = max_abs_diff(g1.get(v).expect("grad"), g2.get(v).expect("grad"))?;
        assert!(d < 1e-3, "gradient differs by {d}");
    }
    Ok(())
}

/// The f32 GEMM on a bf16 weight widened while packed (`sgemm::matmul_wt_bf16`, the many-rows
/// bf16 path on Intel) against the exact product of f32 `x` and the bf16 weight: edge shapes of
/// the 8 x 8 transposes, the 12 x 32 tile and the 256-deep slices, and subnormal bf16 weights
/// (flushed to 0); the bf16 path on AVX2 too. Skipped with a printed reason without sgemm.
#[test]
fn sgemm_on_bf16_weights_matches_the_exact_product() {
    if !lion_core::sgemm::available() {
        eprintln!("skipped: no sgemm kernel on this CPU (neither AVX-512 nor AVX2 + FMA, or capped by LION_CPU or LION_F32_GEMM)");
        return;
    }
    for (i, &(m, kk, n)) in [
        (1, 1, 1),
        (12, 8, 32),
        (13, 9, 33),
        (17, 255, 7),
        (40, 257, 45),
        (31, 520, 64),
        (100, 768, 129),
    ]
    .iter()
    .enumerate()
    {
        let x = uniform(m * kk, 100 + 2 * i as u32);
        let mut w = lion_core::bf16::to_bf16(&uniform(n * kk, 101 + 2 * i as u32));
        // a few subnormal weights: their products are below f32's resolution here
        for v in w.iter_mut().step_by(11) {
            *v = half::bf16::from_f32(1e-39);
        }
        let want = lion_core::bf16::reference(&x, m, kk, &w, n, false);
        let got = lion_core::sgemm::matmul_wt_bf16(&x, m, kk, &w, n);
        assert_close_to_exact(&got, &want, (m, kk, n), "widened");
    }
}

/// Batched products (attention's scores and context, `sgemm::bmm`) against candle's matmul:
/// 3-D and 4-D, transposed and permuted (non-contiguous) operands, a batch item with fewer rows
/// than the kernel takes (candle's then), and a tracked operand, which must keep its gradient
/// (candle's matmul records it).
#[test]
fn batched_products_match_candle_and_keep_gradients() -> lion_core::Result<()> {
    use lion_core::sgemm::bmm;
    let dev = Device::Cpu;
    let t = |shape: &[usize], seed: u32| {
        let n = shape.iter().product();
        Tensor::from_vec(uniform(n, seed), shape, &dev)
    };
    // scores: q (2, 3, 20, 8) @ k^T, k (2, 3, 19, 8)
    let q = t(&[2, 3, 20, 8], 1)?;
    let k = t(&[2, 3, 19, 8], 2)?;
    let kt = k.t()?;
    // context: probs (2, 3, 20, 19) @ v (2, 3, 19, 8); v from a permute of (2, 19, 3, 8)
    let p = t(&[2, 3, 20, 19], 3)?;
    let v = t(&[2, 19, 3, 8], 4)?.permute((0, 2, 1, 3))?;
    // backward shapes: p^T (transposed batch items) @ g, 3-D
    let g = t(&[6, 20, 8], 5)?;
    let p3 = p.reshape((6, 20, 19))?;
    let few = t(&[2, 3, 5, 8], 6)?; // 5 rows: candle's matmul
    for (name, a, b) in [
        ("q @ k^T", &q, &kt),
        ("p @ v (permuted)", &p, &v),
        ("p^T @ g", &p3.t()?, &g),
        ("5 rows", &few, &kt),
    ] {
        // candle's matmul takes some strides only as copies (the permuted v)
        let want = a.contiguous()?.matmul(&b.contiguous()?)?;
        let got = bmm(a, b)?;
        assert_eq!(got.dims(), want.dims(), "{name}");
        let d = max_abs_diff(&got, &want)?;
        assert!(d < 1e-5, "{name}: max diff {d}");
    }
    // a tracked operand: the gradient arrives as through candle's matmul
    let qv = Var::from_tensor(&q)?;
    let loss = bmm(qv.as_tensor(), &kt)?.sqr()?.sum_all()?;
    let grad = loss.backward()?.get(qv.as_tensor()).cloned();
    let want = (q.matmul(&kt)?.matmul(&k)? * 2.0)?;
    let grad = grad.expect("q's gradient through bmm");
    assert!(max_abs_diff(&grad, &want)? < 1e-4);
    Ok(())
}

/// Attention's backward `p^T @ g` with many rows and few columns runs as `(g^T p)^T`
/// (`sgemm`'s swapped path): the same bits as the product of a contiguous copy of `p^T` (every
/// element the same FMA chain), on edge sizes of the tile and of the 256-deep slices. Skipped
/// with a printed reason without sgemm.
#[test]
fn tall_transposed_products_give_the_bits_of_the_plain_product() -> lion_core::Result<()> {
    if !lion_core::sgemm::available() {
        eprintln!("skipped: no sgemm kernel on this CPU (neither AVX-512 nor AVX2 + FMA, or capped by LION_CPU or LION_F32_GEMM)");
        return Ok(());
    }
    let dev = Device::Cpu;
    for (batch, t, d) in [
        (3, 349, 64),
        (2, 17, 1),
        (4, 260, 7),
        (2, 48, 12),
        (5, 300, 33),
    ] {
        let p = Tensor::from_vec(uniform(batch * t * t, t as u32), (batch, t, t), &dev)?;
        let g = Tensor::from_vec(uniform(batch * t * d, d as u32), (batch, t, d), &dev)?;
        let pt = p.t()?;
        let got = lion_core::sgemm::matmul_tensors(&pt, &g)?;
        let want = lion_core::sgemm::matmul_tensors(&pt.contiguous()?, &g)?;
        let (got, want) = (
            got.flatten_all()?.to_vec1::<f32>()?,
            want.flatten_all()?.to_vec1::<f32>()?,
        );
        assert_eq!(got.len(), batch * t * d);
        for (i, (x, y)) in got.iter().zip(&want).enumerate() {
            assert!(
                x.to_bits() == y.to_bits(),
                "({batch}, {t}, {t})^T @ ({t}, {d}), element {i}: {x} vs {y}"
            );
        }
        // and close to candle's product (another summation order)
        let candle = pt
            .contiguous()?
            .matmul(&g)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let d = got
            .iter()
            .zip(&candle)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(d < 1e-3, "max diff from candle's matmul {d}");
    }
    Ok(())
}

/// NaN in either operand reaches the output through the packing (which flushes subnormals, and
/// once zeroed NaN lanes too): a NaN in row r of `x` makes row r all NaN, one in weight row j
/// column j; every other element stays finite. Skipped with a printed reason without sgemm.
#[test]
fn sgemm_propagates_nan_from_either_operand() {
    if !lion_core::sgemm::available() {
        eprintln!("skipped: no sgemm kernel on this CPU (neither AVX-512 nor AVX2 + FMA, or capped by LION_CPU or LION_F32_GEMM)");
        return;
    }
    let (m, k, n) = (29, 40, 45);
    let mut x = uniform(m * k, 7);
    let mut w = uniform(n * k, 8);
    x[3 * k + 9] = f32::NAN; // row 3 (packed by the 8 x 8 transposes)
    x[20 * k + k - 1] = f32::NAN; // row 20, a column past the multiple of 8
    w[11 * k + 16] = f32::NAN; // weight row 11
    use lion_core::sgemm::{matmul, MatRef};
    let y = matmul(m, n, k, MatRef::row_major(&x, k), MatRef::transposed(&w, k));
    // the same x as a transposed view (x^T stored row-major: the weight gradient's layout)
    let mut xt = vec![0f32; m * k];
    for r in 0..m {
        for p in 0..k {
            xt[p * m + r] = x[r * k + p];
        }
    }
    let yt = matmul(
        m,
        n,
        k,
        MatRef::transposed(&xt, m),
        MatRef::transposed(&w, k),
    );
    // and W^T stored row-major (k, n): the input gradient's and attention's layout of B
    let mut wt = vec![0f32; n * k];
    for j in 0..n {
        for p in 0..k {
            wt[p * n + j] = w[j * k + p];
        }
    }
    let yb = matmul(m, n, k, MatRef::row_major(&x, k), MatRef::row_major(&wt, n));
    for r in 0..m {
        for j in 0..n {
            let nan = r == 3 || r == 20 || j == 11;
            for (v, layout) in [
                (y[r * n + j], "x row-major, W^T"),
                (yt[r * n + j], "x transposed, W^T"),
                (yb[r * n + j], "x row-major, B row-major"),
            ] {
                assert_eq!(v.is_nan(), nan, "{layout}: ({r}, {j}) = {v}");
            }
        }
    }
}

/// `bf16::flush_subnormals` (run at load on frozen bf16 weights): subnormal values become a zero
/// of the same sign; normal values, zeros, infinities and NaN stay bit for bit.
#[test]
fn bf16_subnormal_weights_are_flushed_at_load_and_nothing_else_changes() {
    use half::bf16;
    let vals = [
        bf16::from_bits(0x0001),           // smallest positive subnormal
        bf16::from_bits(0x807f),           // largest negative subnormal
        bf16::from_f32(1e-38),             // subnormal through rounding
        bf16::from_f32(f32::MIN_POSITIVE), // smallest normal: kept
        bf16::from_f32(-2.5),
        bf16::ZERO,
        bf16::NEG_ZERO,
        bf16::INFINITY,
        bf16::NAN,
    ];
    let t = Tensor::from_slice(&vals, (3, 3), &Device::Cpu).unwrap();
    let got: Vec<u16> = lion_core::bf16::flush_subnormals(t)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<bf16>()
        .unwrap()
        .iter()
        .map(|v| v.to_bits())
        .collect();
    let mut want: Vec<u16> = vals.iter().map(|v| v.to_bits()).collect();
    want[0] = 0x0000;
    want[1] = 0x8000;
    want[2] = 0x0000;
    assert_eq!(got, want);
}

/// A linear layer with an f32 bias runs `x @ W^T + b` as one autograd node; its output and every
/// gradient are the bits of the two-node composition it replaced (the bias-free layer, then
/// `kernels::add_bias`), for the GEMM's and the skinny kernel's row counts, and a frozen weight
/// or bias still gets no gradient.
#[test]
fn a_biased_linear_gives_the_bits_of_the_product_then_the_bias() -> lion_core::Result<()> {
    let dev = Device::Cpu;
    let (k, n) = (37, 50);
    for (rows, seed) in [(120, 1), (5, 2)] {
        let x0 = Tensor::from_vec(uniform(rows * k, seed), (rows / 5, 5, k), &dev)?;
        let w0 = Tensor::from_vec(uniform(n * k, seed + 10), (n, k), &dev)?;
        let b0 = Tensor::from_vec(uniform(n, seed + 20), n, &dev)?;
        let coef = Tensor::from_vec(uniform(rows * n, seed + 30), (rows / 5, 5, n), &dev)?;
        for (train_w, train_b) in [(true, true), (false, true), (true, false), (false, false)] {
            let run = |fused: bool| -> lion_core::Result<Vec<Option<Vec<f32>>>> {
                let x = Var::from_tensor(&x0)?;
                let w = if train_w {
                    Var::from_tensor(&w0)?.as_tensor().clone()
                } else {
                    w0.clone()
                };
                let b = if train_b {
                    Var::from_tensor(&b0)?.as_tensor().clone()
                } else {
                    b0.clone()
                };
                let y = if fused {
                    Linear::new(w.clone(), Some(b.clone())).forward(x.as_tensor())?
                } else {
                    let z = Linear::new(w.clone(), None).forward(x.as_tensor())?;
                    lion_core::kernels::add_bias(&z, &b)?
                };
                let grads = (y.sqr()? * &coef)?.sum_all()?.backward()?;
                let flat = |t: &Tensor| t.flatten_all()?.to_vec1::<f32>();
                let mut out = vec![Some(flat(&y)?)];
                for t in [x.as_tensor(), &w, &b] {
                    out.push(grads.get(t).map(flat).transpose()?);
                }
                Ok(out)
            };
            let (fused, plain) = (run(true)?, run(false)?);
            let what = ["output", "x grad", "w grad", "b grad"];
            for ((f, p), what) in fused.iter().zip(&plain).zip(what) {
                let bits = |v: &Option<Vec<f32>>| {
                    v.as_ref()
                        .map(|v| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>())
                };
                assert_eq!(
                    bits(f),
                    bits(p),
                    "{rows} rows, w {train_w} b {train_b}: {what}"
                );
            }
            assert_eq!(fused[2].is_some(), train_w, "weight gradient iff trainable");
            assert_eq!(fused[3].is_some(), train_b, "bias gradient iff trainable");
        }
    }
    Ok(())
}

/// A weight stored in bf16 but standing for f32 values (an f32 model over a bf16 checkpoint) is
/// multiplied bit for bit as its widened f32 copy, for every row count (the skinny kernels up to
/// 16 rows, the GEMM above), odd widths included; a linear layer built outside
/// `with_weight_dtype(Bf16)` over such a weight takes that path, forward and backward.
#[test]
fn a_widened_bf16_weight_gives_the_bits_of_its_f32_copy() -> lion_core::Result<()> {
    let dev = Device::Cpu;
    for (k, n) in [(7, 3), (48, 33), (300, 17), (1, 1)] {
        let w = Tensor::randn(0f32, 0.5, (n, k), &dev)?.to_dtype(DType::BF16)?;
        let wv = w.flatten_all()?.to_vec1::<half::bf16>()?;
        let wf: Vec<f32> = wv.iter().map(|v| v.to_f32()).collect();
        for m in [1, 2, 5, 6, 7, 12, 16, 17, 40, 100] {
            let x = Tensor::randn(0f32, 1., (m, k), &dev)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            let want = lion_core::sgemm::matmul_wt(&x, m, k, &wf, n);
            let got = lion_core::bf16::matmul_wt_widened(&x, m, k, &wv, n);
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "m {m} k {k} n {n}");
            if m <= lion_core::skinny::MAX_ROWS {
                let s = lion_core::skinny::matmul_wt_bf16(&x, m, k, &wv, n);
                assert_eq!(bits(&s), bits(&want), "skinny m {m} k {k} n {n}");
            }
        }
        // the layer: forward and input gradient, with and without a bias
        let layer = Linear::new(w.clone(), None);
        let twin = Linear::new(w.to_dtype(DType::F32)?, None);
        let b = Tensor::randn(0f32, 1., n, &dev)?;
        let biased = Linear::new(w.clone(), Some(b.clone()));
        let biased_twin = Linear::new(w.to_dtype(DType::F32)?, Some(b));
        for m in [3, 40] {
            let x = Var::from_tensor(&Tensor::randn(0f32, 1., (m, k), &dev)?)?;
            for (l, t) in [(&layer, &twin), (&biased, &biased_twin)] {
                let y = l.forward(x.as_tensor())?;
                assert_eq!(y.dtype(), DType::F32);
                assert_eq!(max_abs_diff(&y, &t.forward(x.as_tensor())?)?, 0.0, "m {m}");
                let g = (y.sqr()?.sum_all()?).backward()?;
                let g2 = (t.forward(x.as_tensor())?.sqr()?.sum_all()?).backward()?;
                let (a, b) = (g.get(x.as_tensor()), g2.get(x.as_tensor()));
                assert_eq!(
                    max_abs_diff(a.unwrap(), b.unwrap())?,
                    0.0,
                    "gradient, m {m}"
                );
            }
        }
    }
    Ok(())
}
