//! LION-rs core: models, weight loading, preprocessing, prompts and generation.
//!
//! Every model component is one module, built `new(cfg, vb)` from a
//! [`candle_nn::VarBuilder`] whose paths are the upstream checkpoint keys
//! (see [`weights`] for loading and key reports).

// MSRV 1.89 (the AVX-512 intrinsics) brings this lint in; the shape checks keep their `%`.
#![allow(clippy::manual_is_multiple_of)]

pub mod adapter;
pub mod aggregator;
pub mod alloc;
pub mod bbox;
pub mod bert;
pub mod bf16;
pub mod convert;
pub mod convnet;
pub mod cpu;
pub mod device;
pub mod embedding;
pub mod error;
pub mod eva_vit;
pub mod few_rows;
pub mod flip_text;
pub mod generate;
pub mod hub;
#[cfg(feature = "hub-download")]
mod hub_download;
pub mod image_files;
pub mod jpeg;
pub mod kernels;
pub mod linear;
pub mod lion;
pub mod model_spec;
pub mod ops;
pub mod pipeline;
pub mod preprocess;
pub mod presets;
pub mod prompt;
pub mod qformer;
pub mod quant;
pub mod rules;
pub mod sentence;
pub mod sgemm;
pub mod skinny;
pub mod swin;
pub mod t5;
pub mod tagger;
pub mod tags;
pub mod task;
pub mod testing;
pub mod text;
pub mod util;
pub mod weight_checks;
pub mod weights;

pub use error::{Error, Result};
pub use task::Task;
