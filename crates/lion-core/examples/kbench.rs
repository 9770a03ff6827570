use candle_core::{Device, Tensor, D};
use std::time::Instant;
fn t<F: FnMut()>(name: &str, mut f: F) {
    f();
    let s = Instant::now();
    for _ in 0..20 {
        f();
    }
    println!(
        "{name}: {:.3} ms",
        s.elapsed().as_secs_f64() * 1000.0 / 20.0
    );
}
fn main() {
    let x = Tensor::randn(0f32, 1., (32, 12, 40, 40), &Device::Cpu).unwrap();
    let h = Tensor::randn(0f32, 1., (32, 40, 1536), &Device::Cpu).unwrap();
    let w = Tensor::ones(1536, candle_core::DType::F32, &Device::Cpu).unwrap();
    let b = Tensor::zeros(1536, candle_core::DType::F32, &Device::Cpu).unwrap();
    t("softmax kernel", || {
        lion_core::kernels::softmax_last_dim(&x).unwrap();
    });
    t("softmax candle composed", || {
        candle_nn::ops::softmax(&x, D::Minus1).unwrap();
    });
    t("softmax candle fused (no grad)", || {
        candle_nn::ops::softmax_last_dim(&x).unwrap();
    });
    t("gelu kernel", || {
        lion_core::kernels::gelu_erf(&h).unwrap();
    });
    t("gelu candle", || {
        h.gelu_erf().unwrap();
    });
    t("layernorm kernel", || {
        lion_core::kernels::layer_norm(&h, &w, &b, 1e-12).unwrap();
    });
    t("layernorm candle slow", || {
        candle_nn::ops::layer_norm_slow(&h, &w, &b, 1e-12).unwrap();
    });
}
