//! Helpers of the T5 tests (`t5.rs`, `t5_generate.rs`): the fixtures and the models built from
//! them.
#![allow(dead_code)]

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use lion_core::t5::{T5Config, T5ForConditionalGeneration};
use lion_core::testing::fixture;
use lion_core::weights::{Checkpoint, LoadMode, WeightLoader};

pub const TOL: f32 = 1e-4;

/// `LION_TEST_DEVICE` (default cpu): the GPU check runs these parity tests on a GPU.
pub fn dev() -> Device {
    lion_core::testing::device()
}

pub fn io() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture("t5/io.safetensors"), &dev()).unwrap()
}

/// The fixture config with LION's exact-GELU override, and `n` adapters (0 = plain T5).
pub fn cfg(file: &str, adapters: usize) -> T5Config {
    let c = T5Config::from_file(fixture(&format!("t5/{file}")))
        .unwrap()
        .with_exact_gelu();
    if adapters > 0 {
        c.with_adapters(adapters)
    } else {
        c
    }
}

/// Checkpoints by fixture file names joined with `+`: Flan-T5 from its own file plus LION's
/// adapter checkpoint, as upstream loads them.
pub fn checkpoints(weights: &str) -> Vec<Checkpoint> {
    weights
        .split('+')
        .map(|w| Checkpoint::open(fixture(&format!("t5/{w}"))).unwrap())
        .collect()
}

pub const LION: &str = "model.safetensors+lion_adapters.safetensors";
pub const LION1: &str = "model.safetensors+lion1_adapters.safetensors";

pub fn load(cfg: &T5Config, weights: &str) -> T5ForConditionalGeneration {
    let loader = WeightLoader::new(checkpoints(weights));
    let vb = loader.var_builder(DType::F32, &dev());
    let model = T5ForConditionalGeneration::new(cfg, vb).unwrap();
    let report = loader.finish(LoadMode::Strict).unwrap();
    assert!(report.is_clean(), "{report}");
    model
}

pub fn ids(io: &HashMap<String, Tensor>) -> (Tensor, Tensor) {
    (
        io["input_ids"].to_dtype(DType::U32).unwrap(),
        io["attention_mask"].clone(),
    )
}
