//! The fused AdapterRouter forward (stacked GEMMs, scale and router folded into the weights)
//! against the plain composition: outputs and every parameter's gradient, both routes, 1 and 2
//! adapters, with non-trivial parameter values; and the fused operands an inference router
//! keeps per route.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use lion_core::adapter::{AdapterConfig, AdapterRouter, Route};
use lion_core::testing::{f32_bits as bits, max_abs_diff};
use lion_core::weights::WeightLoader;

#[test]
fn fused_adapter_forward_and_grads_match_the_composition() -> lion_core::Result<()> {
    let dev = Device::Cpu;
    for num_adapters in [1, 2] {
        let cfg = AdapterConfig {
            d_model: 24,
            bottleneck: 8,
            num_adapters,
        };
        let vm = VarMap::new();
        let loader = WeightLoader::random().with_trainable(vm.clone(), |_| true);
        let router = AdapterRouter::new(&cfg, loader.var_builder(DType::F32, &dev))?;
        // LoRA init makes up_proj zero and the router 0/1: randomise everything
        for (i, var) in vm.all_vars().iter().enumerate() {
            let r = Tensor::randn(0f32, 0.5, var.shape(), &dev)?;
            var.set(&(r + 0.1 * i as f64)?)?;
        }
        let x = Tensor::randn(0f32, 1., (2, 5, 24), &dev)?;
        for route in [Route::RegionLevel, Route::ImageLevel] {
            let fused = router.forward(&x, route)?;
            let plain = router.forward_unfused(&x, route)?;
            let d = max_abs_diff(&fused, &plain)?;
            assert!(d < 1e-4, "{num_adapters} adapters, {route:?}: forward {d}");
            let coef = Tensor::randn(0f32, 1., (2, 5, 24), &dev)?;
            let g1 = (fused * &coef)?.sum_all()?.backward()?;
            let g2 = (plain * &coef)?.sum_all()?.backward()?;
            for var in vm.all_vars() {
                let (a, b) = (g1.get(var.as_tensor()), g2.get(var.as_tensor()));
                match (a, b) {
                    (Some(a), Some(b)) => {
                        let d = max_abs_diff(a, b)?;
                        assert!(d < 1e-3, "{num_adapters} adapters, {route:?}: grad {d}");
                    }
                    (None, None) => {}
                    _ => {
                        panic!("the fused and plain forwards give gradients to different variables")
                    }
                }
            }
        }
    }
    Ok(())
}

/// A router over plain tensors keeps its fused operands per route after the first call (the
/// same bits as a router fusing them afresh, on both routes, called repeatedly), except when
/// built over live parameters (`with_live_parameters`): then it follows changes to the storage
/// it shares with the `Var`s, where a kept fusion goes stale.
#[test]
fn kept_fused_operands_give_the_same_bits_and_live_parameters_are_never_kept(
) -> lion_core::Result<()> {
    let dev = Device::Cpu;
    let cfg = AdapterConfig {
        d_model: 24,
        bottleneck: 8,
        num_adapters: 2,
    };
    let vm = VarMap::new();
    let loader = WeightLoader::random().with_trainable(vm.clone(), |_| true);
    AdapterRouter::new(&cfg, loader.var_builder(DType::F32, &dev))?;
    for (i, var) in vm.all_vars().iter().enumerate() {
        var.set(&(Tensor::randn(0f32, 0.5, var.shape(), &dev)? + 0.1 * i as f64)?)?;
    }
    // the vars' current values as plain tensors: own copies, or views of the vars' storage
    let values = |shared: bool| -> HashMap<String, Tensor> {
        let vars = vm.data().lock().unwrap();
        vars.iter()
            .map(|(k, v)| {
                let t = v.as_tensor().detach();
                (k.clone(), if shared { t } else { t.copy().unwrap() })
            })
            .collect()
    };
    let router = |t: HashMap<String, Tensor>| {
        AdapterRouter::new(&cfg, VarBuilder::from_tensors(t, DType::F32, &dev))
    };
    let kept = router(values(false))?;
    let stale = router(values(true))?;
    let live = lion_core::adapter::with_live_parameters(|| router(values(true)))?;
    let x = Tensor::randn(0f32, 1., (2, 5, 24), &dev)?;
    for _ in 0..2 {
        for route in [Route::RegionLevel, Route::ImageLevel, Route::RegionLevel] {
            let want = bits(&router(values(false))?.forward(&x, route)?);
            for (name, r) in [("kept", &kept), ("stale", &stale), ("live", &live)] {
                assert_eq!(bits(&r.forward(&x, route)?), want, "{name} {route:?}");
            }
        }
    }
    // training moves the vars; the live router follows, the one that kept its fusion does not
    for var in vm.all_vars() {
        var.set(&(var.as_tensor() * 1.5)?)?;
    }
    for route in [Route::RegionLevel, Route::ImageLevel] {
        let want = bits(&router(values(false))?.forward(&x, route)?);
        assert_eq!(bits(&live.forward(&x, route)?), want, "live {route:?}");
        assert_ne!(bits(&stale.forward(&x, route)?), want, "stale {route:?}");
    }
    Ok(())
}
