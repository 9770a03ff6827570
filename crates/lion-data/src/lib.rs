//! Dataset readers: COCO captions (Karpathy split and official), VQA v2 / OK-VQA, A-OKVQA,
//! TextCaps, RefCOCO/+/g (refs pickle + instances.json), LION's training JSON, and the official
//! result formats, and the ShapesWorld generator. Every reader reports a malformed record by file and position; none panics.

pub mod aokvqa;
pub mod coco;
pub mod error;
pub mod json;
pub mod lion_json;
pub mod pickle;
pub mod refcoco;
pub mod shard;
pub mod textcaps;
pub mod vqa;
pub mod world;

pub use error::{Error, Position, Result};
