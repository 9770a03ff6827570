//! The files of a world, as serde structs in the official layouts (field order = file key order):
//! COCO captions, VQA v2 questions/annotations, RefCOCO-style refs + COCO instances, LION training
//! JSON, per-image tags, and the `world.json` manifest. Readers can use these same structs.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `info` block of the COCO-style files (no dates: files are reproducible byte for byte).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Info {
    pub description: String,
    pub version: String,
    pub seed: u64,
}

/// A COCO `images` entry. `file_name` is relative to the world directory.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CocoImage {
    pub id: u64,
    pub file_name: String,
    pub width: u32,
    pub height: u32,
}

/// One COCO caption annotation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CocoCaption {
    pub id: u64,
    pub image_id: u64,
    pub caption: String,
}

/// `captions_{split}.json`, as COCO's `captions_train2014.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CocoCaptions {
    pub info: Info,
    pub licenses: Vec<serde_json::Value>,
    pub images: Vec<CocoImage>,
    pub annotations: Vec<CocoCaption>,
}

/// One VQA v2 question.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VqaQuestion {
    pub image_id: u64,
    pub question: String,
    pub question_id: u64,
}

/// `questions_{split}.json`, as VQA v2's `v2_OpenEnded_mscoco_train2014_questions.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VqaQuestions {
    pub info: Info,
    pub task_type: String,
    pub data_type: String,
    pub data_subtype: String,
    pub license: serde_json::Value,
    pub questions: Vec<VqaQuestion>,
}

/// One of the ten answers of a VQA v2 annotation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VqaAnswer {
    pub answer: String,
    pub answer_confidence: String,
    pub answer_id: u32,
}

/// One VQA v2 annotation (ground truth of a question).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VqaAnnotation {
    pub question_type: String,
    pub multiple_choice_answer: String,
    pub answers: Vec<VqaAnswer>,
    pub image_id: u64,
    pub answer_type: String,
    pub question_id: u64,
}

/// `annotations_{split}.json`, as VQA v2's `v2_mscoco_train2014_annotations.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VqaAnnotations {
    pub info: Info,
    pub data_type: String,
    pub data_subtype: String,
    pub license: serde_json::Value,
    pub annotations: Vec<VqaAnnotation>,
}

/// A COCO object annotation; `bbox` is `[x, y, w, h]` in pixels of the visible part. `shape`,
/// `color` and `size` are ShapesWorld extras (COCO readers ignore unknown fields). No
/// `segmentation` is written.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CocoInstance {
    pub id: u64,
    pub image_id: u64,
    pub category_id: u32,
    pub bbox: [f64; 4],
    pub area: f64,
    pub iscrowd: u8,
    pub shape: String,
    pub color: String,
    pub size: String,
}

/// A COCO category (one per shape).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CocoCategory {
    pub id: u32,
    pub name: String,
    pub supercategory: String,
}

/// `instances.json` (all splits), as RefCOCO's `instances.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CocoInstances {
    pub info: Info,
    pub images: Vec<CocoImage>,
    pub annotations: Vec<CocoInstance>,
    pub categories: Vec<CocoCategory>,
}

/// One sentence of a RefCOCO ref.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RefSentence {
    pub tokens: Vec<String>,
    pub raw: String,
    pub sent_id: u64,
    pub sent: String,
}

/// One entry of `refs.json`: RefCOCO's `refs(unc).p` record, written as JSON instead of a pickle.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RefRecord {
    pub sent_ids: Vec<u64>,
    pub file_name: String,
    pub ann_id: u64,
    pub ref_id: u64,
    pub image_id: u64,
    pub split: String,
    pub sentences: Vec<RefSentence>,
    pub category_id: u32,
}

/// One record of LION's training JSON (`LION@699a4cc:datasets/jsonl_vqa.py`). `image` is relative
/// to the world directory; `category` is `image_level` or `region_level`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LionRecord {
    pub image: String,
    pub question: String,
    pub answer: String,
    pub category: String,
    pub tags: Vec<String>,
}

/// One entry of `tags_{split}.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ImageTags {
    pub image_id: u64,
    pub file_name: String,
    pub tags: Vec<String>,
}

/// A file listed in the manifest.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FileEntry {
    pub path: String,
    pub format: String,
    pub bytes: u64,
    /// FNV-1a 64 of the file's bytes, hex.
    pub fnv1a64: String,
}

/// Counts of one split.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SplitSummary {
    pub name: String,
    pub images: usize,
    pub first_image_id: u64,
    pub objects: usize,
    pub captions: usize,
    pub questions: usize,
    /// Questions per kind name ("color", "count", ...).
    pub question_kinds: BTreeMap<String, usize>,
    pub refs: usize,
    pub ref_sentences: usize,
}

/// The world's vocabulary.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Vocabulary {
    pub shapes: Vec<String>,
    pub colors: Vec<String>,
    pub sizes: Vec<String>,
    pub textures: Vec<String>,
    pub tags: usize,
}

/// The PNG images, summarised (they are not listed one by one).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ImagesEntry {
    /// `images/{split}/{image_id:06}.png`
    pub pattern: String,
    pub count: usize,
    pub bytes: u64,
    /// FNV-1a 64 over the per-image FNV-1a 64 values in image-id order, hex.
    pub fnv1a64: String,
}

/// `world.json`: what was generated, from what, and where it is.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub name: String,
    pub generator: String,
    pub generator_version: u32,
    pub seed: u64,
    pub width: u32,
    pub height: u32,
    pub questions_per_image: usize,
    pub note: String,
    pub splits: Vec<SplitSummary>,
    pub vocabulary: Vocabulary,
    pub files: Vec<FileEntry>,
    pub images: ImagesEntry,
    /// FNV-1a 64 over every file's digest (JSON, text and images): one number for the whole world.
    pub digest: String,
}

/// FNV-1a 64-bit hash (tiny, dependency-free; a checksum, not a cryptographic hash).
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}
