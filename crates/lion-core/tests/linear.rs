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
