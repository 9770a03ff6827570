//! The in-place AdamW against candle_nn::AdamW (same rule) over several steps, on the fused f32
//! path and the tensor fallback (f64), with weight decay, and for variables without a gradient.

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{Optimizer, ParamsAdamW};
use lion_train::optim::AdamW;

fn params() -> ParamsAdamW {
    ParamsAdamW {
        lr: 0.01,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.1,
    }
}

/// A loss whose gradient changes with the parameters: sum(w^3 * c) + sum(sin(u) * c2).
fn loss(w: &Var, u: &Var, c: &Tensor, c2: &Tensor) -> candle_core::Result<Tensor> {
    let a = (w.as_tensor().powf(3.0)? * c)?.sum_all()?;
    let b = (u.as_tensor().sin()? * c2)?.sum_all()?;
    a + b
}

fn run(dtype: DType, ours: bool) -> candle_core::Result<(Vec<f64>, Vec<f64>, Vec<f64>)> {
    let dev = Device::Cpu;
    // > one rayon chunk so the parallel split is exercised
    let n = 40_000;
    let w0 = (Tensor::arange(0f32, n as f32, &dev)? * 0.37)?.sin()?;
    let w = Var::from_tensor(&w0.to_dtype(dtype)?)?;
    let u = Var::from_tensor(
        &Tensor::arange(0f32, 12., &dev)?
            .reshape((3, 4))?
            .to_dtype(dtype)?,
    )?;
    // a variable that never gets a gradient: must stay put
    let frozen = Var::from_tensor(&Tensor::ones(5, dtype, &dev)?)?;
    let c = ((Tensor::arange(0f32, n as f32, &dev)? / (n as f64 / 2.0))? - 1.0)?.to_dtype(dtype)?;
    let c2 = Tensor::full(0.5f32, (3, 4), &dev)?.to_dtype(dtype)?;
    let vars = vec![w.clone(), u.clone(), frozen.clone()];
    let mut ref_opt = candle_nn::AdamW::new(vars.clone(), params())?;
    let mut our_opt = AdamW::new(vars, params())?;
    for _ in 0..6 {
        let grads = loss(&w, &u, &c, &c2)?.backward()?;
        if ours {
            our_opt.step(&grads)?;
        } else {
            ref_opt.step(&grads)?;
        }
    }
    let flat = |v: &Var| {
        v.as_tensor()
            .to_dtype(DType::F64)?
            .flatten_all()?
            .to_vec1::<f64>()
    };
    Ok((flat(&w)?, flat(&u)?, flat(&frozen)?))
}

fn max_diff(a: &[f64], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

#[test]
fn fused_adamw_matches_candle_adamw() -> candle_core::Result<()> {
    for dtype in [DType::F32, DType::F64] {
        let (rw, ru, rf) = run(dtype, false)?;
        let (ow, ou, of) = run(dtype, true)?;
        let tol = if dtype == DType::F32 { 2e-6 } else { 1e-12 };
        assert!(
            max_diff(&rw, &ow) <= tol,
            "{dtype:?} w: {}",
            max_diff(&rw, &ow)
        );
        assert!(
            max_diff(&ru, &ou) <= tol,
            "{dtype:?} u: {}",
            max_diff(&ru, &ou)
        );
        assert_eq!(rf, of);
        assert!(
            of.iter().all(|&x| x == 1.0),
            "a variable without gradient moved"
        );
        // the parameters did move (six steps of lr 0.01)
        assert!(ru[0] != 0.0 && (ru[5] - 5.0).abs() > 0.01);
    }
    Ok(())
}

/// First step by hand: m_hat = g, v_hat = g^2, so theta -= lr * g / (|g| + eps) after decay.
#[test]
fn first_step_is_sign_descent_with_decay() -> candle_core::Result<()> {
    let dev = Device::Cpu;
    let w = Var::from_tensor(&Tensor::new(&[2f32, -3.0, 0.5], &dev)?)?;
    let g_scale = Tensor::new(&[1f32, -4.0, 0.0], &dev)?;
    let mut opt = AdamW::new(vec![w.clone()], params())?;
    let grads = (w.as_tensor() * &g_scale)?.sum_all()?.backward()?;
    opt.step(&grads)?;
    let got = w.as_tensor().to_vec1::<f32>()?;
    let p = params();
    let want = [
        2.0 * (1.0 - p.lr * p.weight_decay) - p.lr,
        -3.0 * (1.0 - p.lr * p.weight_decay) + p.lr,
        0.5 * (1.0 - p.lr * p.weight_decay),
    ];
    for (g, w) in got.iter().zip(want) {
        assert!((*g as f64 - w).abs() < 1e-6, "{got:?} vs {want:?}");
    }
    Ok(())
}

/// The GPU's path on the CPU: f32 variables with the plain ops forced
/// ([`lion_core::kernels::with_plain_ops`]) take the tensor path of our AdamW (as on a GPU, where
/// the in-place fused update cannot run), and give the fused path's parameters within 2e-6.
#[test]
fn plain_path_adamw_matches_the_fused_update() -> candle_core::Result<()> {
    use lion_core::kernels::with_plain_ops;
    let (fw, fu, ff) = with_plain_ops(false, || run(DType::F32, true))?;
    let (pw, pu, pf) = with_plain_ops(true, || run(DType::F32, true))?;
    assert!(max_diff(&fw, &pw) <= 2e-6, "w: {}", max_diff(&fw, &pw));
    assert!(max_diff(&fu, &pu) <= 2e-6, "u: {}", max_diff(&fu, &pu));
    assert_eq!(ff, pf);
    Ok(())
}
