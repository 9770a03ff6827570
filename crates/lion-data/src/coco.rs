//! COCO captions: the Karpathy split file (`dataset_coco.json`, also Flickr30K's
//! `dataset_flickr30k.json`) and the official `captions_{train,val}2014.json`; and caption
//! results (`[{image_id, caption}]`).

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::json::{array, decode_all, id, read_value};

/// One image with its reference captions.
#[derive(Debug, Clone, PartialEq)]
pub struct CaptionImage {
    /// COCO's numeric id as a string, or the dataset's own string id (TextCaps).
    pub image_id: String,
    pub file_name: String,
    /// Karpathy split (`train`, `restval`, `val`, `test`), when the file says.
    pub split: Option<String>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub captions: Vec<String>,
}

#[derive(Deserialize)]
struct KarpathyImage {
    filename: String,
    #[serde(default)]
    filepath: Option<String>,
    split: String,
    sentences: Vec<KarpathySentence>,
    #[serde(default, deserialize_with = "opt_id")]
    cocoid: Option<String>,
    #[serde(default, deserialize_with = "opt_id")]
    imgid: Option<String>,
}

#[derive(Deserialize)]
struct KarpathySentence {
    raw: String,
}

fn opt_id<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Option<String>, D::Error> {
    id::de(d).map(Some)
}

/// Reads a Karpathy split file (`{"images": [{filename, filepath, split, sentences: [{raw}],
/// cocoid}]}`), keeping the images of `split` (all when None; `"train"` includes `restval` only
/// if asked for by name).
pub fn read_karpathy(path: &Path, split: Option<&str>) -> Result<Vec<CaptionImage>> {
    let v = read_value(path)?;
    let items = array(path, &v, Some("images"))?;
    let imgs: Vec<KarpathyImage> = decode_all(path, "images", items)?;
    let mut out = Vec::new();
    for (i, im) in imgs.into_iter().enumerate() {
        if split.is_some_and(|s| s != im.split) {
            continue;
        }
        let image_id = im.cocoid.or(im.imgid).ok_or_else(|| {
            Error::at_index(
                path,
                format!("images[{i}]"),
                "neither \"cocoid\" nor \"imgid\"",
            )
        })?;
        if im.sentences.is_empty() {
            return Err(Error::at_index(
                path,
                format!("images[{i}]"),
                "no sentences",
            ));
        }
        let file_name = match im.filepath {
            Some(d) if !d.is_empty() => format!("{d}/{}", im.filename),
            _ => im.filename,
        };
        out.push(CaptionImage {
            image_id,
            file_name,
            split: Some(im.split),
            width: None,
            height: None,
            captions: im.sentences.into_iter().map(|s| s.raw).collect(),
        });
    }
    Ok(out)
}

#[derive(Deserialize)]
struct CocoImage {
    #[serde(deserialize_with = "id::de")]
    id: String,
    file_name: String,
    #[serde(default)]
    width: Option<u32>,
    #[serde(default)]
    height: Option<u32>,
}

#[derive(Deserialize)]
struct CocoCaptionAnn {
    #[serde(deserialize_with = "id::de")]
    image_id: String,
    caption: String,
}

/// Reads the official `captions_*.json` (`images` + `annotations: [{image_id, id, caption}]`):
/// every image with its captions, in the file's image order. A caption whose image is not listed
/// is an error naming the annotation.
pub fn read_coco_captions(path: &Path) -> Result<Vec<CaptionImage>> {
    let v = read_value(path)?;
    let images: Vec<CocoImage> = decode_all(path, "images", array(path, &v, Some("images"))?)?;
    let anns: Vec<CocoCaptionAnn> =
        decode_all(path, "annotations", array(path, &v, Some("annotations"))?)?;
    let mut index: BTreeMap<String, usize> = BTreeMap::new();
    let mut out: Vec<CaptionImage> = Vec::with_capacity(images.len());
    for (i, im) in images.into_iter().enumerate() {
        if index.insert(im.id.clone(), out.len()).is_some() {
            return Err(Error::at_index(
                path,
                format!("images[{i}]"),
                format!("duplicate image id {}", im.id),
            ));
        }
        out.push(CaptionImage {
            image_id: im.id,
            file_name: im.file_name,
            split: None,
            width: im.width,
            height: im.height,
            captions: Vec::new(),
        });
    }
    for (i, a) in anns.into_iter().enumerate() {
        let k = *index.get(&a.image_id).ok_or_else(|| {
            Error::at_index(
                path,
                format!("annotations[{i}]"),
                format!("image_id {} is not in \"images\"", a.image_id),
            )
        })?;
        out[k].captions.push(a.caption);
    }
    Ok(out)
}

/// One caption prediction of the official result format.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct CaptionResult {
    #[serde(deserialize_with = "id::de")]
    pub image_id: String,
    pub caption: String,
}

/// Reads caption results `[{image_id, caption}]` (a JSON array or JSON lines).
pub fn read_caption_results(path: &Path) -> Result<Vec<CaptionResult>> {
    crate::json::read_records(path)
}
