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

/// Gradients as a slice (one per var, [`AdamW::vars`]' order) and as a `GradStore` give the same
/// update; a slice of the wrong length is an error, not a panic.
#[test]
fn slice_and_grad_store_steps_agree() -> candle_core::Result<()> {
    let dev = Device::Cpu;
    let make = || -> candle_core::Result<(Var, Var)> {
        Ok((
            Var::from_tensor(&Tensor::new(&[2f32, -3.0, 0.5], &dev)?)?,
            Var::from_tensor(&Tensor::new(&[[1f32, 2.0], [-1.0, 0.25]], &dev)?)?,
        ))
    };
    let c = Tensor::new(&[1f32, -4.0, 0.3], &dev)?;
    let (a1, b1) = make()?;
    let (a2, b2) = make()?;
    let mut by_store = AdamW::new(vec![a1.clone(), b1.clone()], params())?;
    let mut by_slice = AdamW::new(vec![a2.clone(), b2.clone()], params())?;
    assert_eq!(by_slice.vars()[1].0, "1");
    for _ in 0..3 {
        let l = |a: &Var, b: &Var| -> candle_core::Result<Tensor> {
            (a.as_tensor().sqr()? * &c)?.sum_all()? + b.as_tensor().sin()?.sum_all()?
        };
        by_store.step(&l(&a1, &b1)?.backward()?)?;
        let gs = l(&a2, &b2)?.backward()?;
        let grads: Vec<Tensor> = by_slice
            .vars()
            .iter()
            .map(|(_, v)| gs.get(v.as_tensor()).unwrap().clone())
            .collect();
        by_slice.step_grads(&grads)?;
    }
    assert_eq!(
        a1.as_tensor().to_vec1::<f32>()?,
        a2.as_tensor().to_vec1::<f32>()?
    );
    assert_eq!(
        b1.as_tensor().to_vec2::<f32>()?,
        b2.as_tensor().to_vec2::<f32>()?
    );
    assert!(by_slice.step_grads(&[]).is_err());
    Ok(())
}

/// Groups: each var trains at its group's lr scale with its group's weight decay; the vars are
/// kept in name order.
#[test]
fn groups_scale_the_rate_and_set_the_decay() -> candle_core::Result<()> {
    use lion_train::optim::Group;
    let dev = Device::Cpu;
    let w = Var::from_tensor(&Tensor::new(&[2f32, -3.0], &dev)?)?;
    let b = Var::from_tensor(&Tensor::new(&[0.5f32, 1.0], &dev)?)?;
    let vars = vec![("w".to_string(), w.clone()), ("b".to_string(), b.clone())];
    let mut opt = AdamW::grouped(vars, params(), |k, _| Group {
        name: k.to_string(),
        lr_scale: if k == "b" { 3.0 } else { 1.0 },
        weight_decay: if k == "b" { 0.0 } else { 0.1 },
    })?;
    assert_eq!(opt.vars()[0].0, "b");
    assert_eq!(opt.groups().len(), 2);
    let grads = (w.as_tensor().sum_all()? + b.as_tensor().sum_all()?)?.backward()?;
    opt.step(&grads)?;
    let p = params();
    // first step: theta * (1 - lr wd) - lr * sign(g)
    let want_w = [
        2.0 * (1.0 - p.lr * 0.1) - p.lr,
        -3.0 * (1.0 - p.lr * 0.1) - p.lr,
    ];
    let want_b = [0.5 - 3.0 * p.lr, 1.0 - 3.0 * p.lr];
    for (g, w) in w.as_tensor().to_vec1::<f32>()?.iter().zip(want_w) {
        assert!((*g as f64 - w).abs() < 1e-6, "{g} vs {w}");
    }
    for (g, w) in b.as_tensor().to_vec1::<f32>()?.iter().zip(want_b) {
        assert!((*g as f64 - w).abs() < 1e-6, "{g} vs {w}");
    }
    Ok(())
}

/// The moments saved and restored continue exactly as the uninterrupted optimizer (fused path
/// and tensor path); a state without a var's moments, or with the wrong shape, is refused and
/// changes nothing.
#[test]
fn state_round_trip_continues_bit_for_bit() -> candle_core::Result<()> {
    use std::collections::HashMap;
    for dtype in [DType::F32, DType::F64] {
        let dev = Device::Cpu;
        let start = (Tensor::arange(0f32, 40_000., &dev)? * 0.37)?
            .sin()?
            .to_dtype(dtype)?;
        let c = (Tensor::arange(0f32, 40_000., &dev)? / 20_000.)?.to_dtype(dtype)?;
        let grads = |w: &Var| (w.as_tensor().powf(3.0)? * &c)?.sum_all()?.backward();
        let flat = |w: &Var| w.as_tensor().to_dtype(DType::F64)?.to_vec1::<f64>();
        // uninterrupted: 5 steps
        let w = Var::from_tensor(&start)?;
        let mut opt = AdamW::new(vec![w.clone()], params())?;
        for _ in 0..5 {
            opt.step(&grads(&w)?)?;
        }
        let want = flat(&w)?;
        // 3 steps, state saved; a fresh optimizer restores it and does 2 more
        let w2 = Var::from_tensor(&start)?;
        let mut first = AdamW::new(vec![w2.clone()], params())?;
        for _ in 0..3 {
            first.step(&grads(&w2)?)?;
        }
        let st = first.state_tensors()?;
        assert_eq!(st.len(), 2);
        assert_eq!(st["exp_avg.0"].dims(), &[40_000]);
        let mut second = AdamW::new(vec![w2.clone()], params())?;
        let mut missing: HashMap<String, Tensor> = st.clone();
        missing.remove("exp_avg_sq.0");
        let e = second.load_state(3, &missing).unwrap_err().to_string();
        assert!(e.contains("no `exp_avg_sq.0`"), "{e}");
        let mut wrong = st.clone();
        wrong.insert("exp_avg.0".into(), Tensor::zeros(3, dtype, &dev)?);
        let e = second.load_state(3, &wrong).unwrap_err().to_string();
        assert!(e.contains("`exp_avg.0` is"), "{e}");
        assert_eq!(second.steps(), 0);
        second
            .load_state(3, &st)
            .map_err(candle_core::Error::wrap)?;
        assert_eq!(second.steps(), 3);
        for _ in 0..2 {
            second.step(&grads(&w2)?)?;
        }
        assert_eq!(flat(&w2)?, want, "{dtype:?}");
    }
    Ok(())
}
