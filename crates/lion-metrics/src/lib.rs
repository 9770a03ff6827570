//! Captioning, VQA and grounding metrics. Free of tensors by design.
//!
//! - [`caption::CaptionEval`]: pycocoevalcap's BLEU-1..4, ROUGE-L and CIDEr-D after its PTB
//!   tokenisation ([`ptb`]), equal to pycocoevalcap on the committed goldens.
//! - [`vqa`]: the official VQA accuracy (answer normalisation + 10 leave-one-out subsets), the
//!   A-OKVQA direct-answer score, a streaming accumulator.
//! - [`rec`]: IoU, Acc@0.5, the IoU distribution, LION's box-text parser.

pub mod bleu;
pub mod caption;
pub mod cider;
pub mod ptb;
pub mod rec;
pub mod rouge;
pub mod vqa;
