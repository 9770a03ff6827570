//! TextCaps (`TextCaps_0.1_{train,val}.json`: `{"data": [{image_id, image_name, caption_str,
//! reference_strs, image_width, image_height, ...}]}`, one record per caption; the test file has
//! no captions). Grouped into one [`CaptionImage`] per image.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::coco::CaptionImage;
use crate::error::Result;
use crate::json::{array, decode_all, id, read_value};

#[derive(Deserialize)]
struct TextCapsRecord {
    #[serde(deserialize_with = "id::de")]
    image_id: String,
    #[serde(default)]
    image_name: Option<String>,
    #[serde(default)]
    image_path: Option<String>,
    #[serde(default)]
    caption_str: Option<String>,
    #[serde(default)]
    reference_strs: Option<Vec<String>>,
    #[serde(default)]
    image_width: Option<u32>,
    #[serde(default)]
    image_height: Option<u32>,
    #[serde(default)]
    set_name: Option<String>,
}

/// Reads a TextCaps file; the references of an image are its `reference_strs` (all captions of the
/// image, as the official evaluation uses) or, when absent, the collected `caption_str`s.
pub fn read_textcaps(path: &Path) -> Result<Vec<CaptionImage>> {
    let v = read_value(path)?;
    let recs: Vec<TextCapsRecord> = decode_all(path, "data", array(path, &v, Some("data"))?)?;
    let mut index: BTreeMap<String, usize> = BTreeMap::new();
    let mut out: Vec<CaptionImage> = Vec::new();
    for r in recs {
        let k = *index.entry(r.image_id.clone()).or_insert_with(|| {
            out.push(CaptionImage {
                image_id: r.image_id.clone(),
                file_name: r
                    .image_path
                    .clone()
                    .or_else(|| r.image_name.as_ref().map(|n| format!("{n}.jpg")))
                    .unwrap_or_else(|| format!("{}.jpg", r.image_id)),
                split: r.set_name.clone(),
                width: r.image_width,
                height: r.image_height,
                captions: Vec::new(),
            });
            out.len() - 1
        });
        let im = &mut out[k];
        match r.reference_strs {
            Some(refs) if im.captions.is_empty() => im.captions = refs,
            Some(_) => {}
            None => im.captions.extend(r.caption_str),
        }
    }
    Ok(out)
}
