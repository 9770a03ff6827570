//! LION-rs training.
//!
//! - [`centroid`]: centroid caption selection (the caption nearest the mean of an image's caption
//!   embeddings).
//! - [`triplet_trainer`]: triplet fine-tuning of the [`tag_encoder`] towards the chosen captions'
//!   embeddings, with [`triplet::TripletMarginLoss`] and AdamW; metrics as JSONL, curves as PNG
//!   ([`plot`]); [`reader_frontier`]: a reference for its validation cosines (an anchor that
//!   knows each image's content from its other captions).
//! - [`optim`]: AdamW updating variables in place in one pass (`lion bench` is the `lion-bench`
//!   crate).
//! - [`peft`]: PEFT training of LION (`lion train`) with [`schedule`] and [`checkpoint`];
//!   [`augment`]: a sample's augmented image and the text that agrees with it.
//! - [`tagger_trainer`]: training the tiny RAM-architecture tagger on a ShapesWorld with RAM's
//!   [`asymmetric_loss`] (`lion train-tagger`).
//! - [`error`]: the error of a training step ([`error::Error::NonFinite`] for a loss or gradient
//!   that overflowed; library errors pass through).
//! - [`records`]: the JSON-lines inputs and outputs of these stages.
//! - [`demo`]: the library side of `lion demo` (stage records, intermediate files, the
//!   multi-seed comparison and its conclusions).

pub mod asymmetric_loss;
pub mod augment;
pub mod bootstrap;
pub mod centroid;
pub mod checkpoint;
pub mod error;
pub mod optim;
pub mod peft;
pub mod plot;
pub mod progress;
pub mod reader_frontier;
pub mod records;
pub mod rng;
pub mod schedule;
pub mod tag_encoder;
pub mod tagger_trainer;
pub mod triplet;
pub mod triplet_trainer;
