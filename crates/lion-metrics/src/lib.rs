//! Captioning, VQA and grounding metrics. Free of tensors by design.
//!
//! - [`caption::CaptionEval`]: pycocoevalcap's BLEU-1..4, ROUGE-L and CIDEr-D after its PTB
//!   tokenisation ([`ptb`]), equal to pycocoevalcap on the committed goldens.
//! - [`vqa`]: the official VQA accuracy (GT-Vision-Lab vqaEval.py, quirks included), overall,
//!   per answer type and per question type, equal to the official code on the committed goldens.
//! - [`aokvqa`]: A-OKVQA multiple-choice and direct-answer scores as allenai/aokvqa computes them.
//! - [`rec`]: IoU (with written corner-case rules), accuracy at IoU thresholds overall and per
//!   split, the IoU distribution (LION's box text is read by `lion_core::bbox`).
//! - [`py`]: the Python semantics those scorers rely on.

pub mod aokvqa;
pub mod bleu;
pub mod caption;
pub mod cider;
pub mod ptb;
pub mod py;
pub mod rec;
pub mod rouge;
pub mod vqa;
