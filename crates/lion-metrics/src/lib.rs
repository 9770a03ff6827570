//! Captioning, VQA and grounding metrics. Free of tensors by design.
