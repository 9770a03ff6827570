//! Dataset readers (COCO, VQA, A-OKVQA, TextCaps, RefCOCO, LION jsonl).

pub mod world;
