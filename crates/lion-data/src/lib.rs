//! Dataset readers (COCO, VQA, A-OKVQA, TextCaps, RefCOCO, LION jsonl) and the ShapesWorld
//! generator ([`world`]).

pub mod world;
