//! The fused AdapterRouter forward (stacked GEMMs, scale and router folded into the weights)
//! against the plain composition: outputs and every parameter's gradient, both routes, 1 and 2
//! adapters, with non-trivial parameter values.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use lion_core::adapter::{AdapterConfig, AdapterRouter, Route};
use lion_core::testing::max_abs_diff;
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
