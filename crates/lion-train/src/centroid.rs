//! Centroid caption selection (Dynamic LION step 2, docs/DESIGN.md §4): for each image, embed
//! all its captions with the sentence transformer and keep the one whose embedding has the
//! highest cosine to their mean.
//!
//! Captions of consecutive images are embedded together, `batch_size` captions per forward pass.

use lion_core::sentence::{nearest_to_centroid, SentenceEmbedder};
use lion_core::Result;

use crate::records::{Chosen, ImageRecord};

/// Selects the centroid-nearest caption of every image, in order. `on_done(n)` is called after
/// each forward pass with the number of images finished by it (for progress bars).
pub fn select_captions(
    embedder: &SentenceEmbedder,
    images: &[ImageRecord],
    batch_size: usize,
    mut on_done: impl FnMut(usize),
) -> Result<Vec<Chosen>> {
    let batch_size = batch_size.max(1);
    let mut out = Vec::with_capacity(images.len());
    let mut start = 0;
    while start < images.len() {
        // Whole images until at least `batch_size` captions (one image may exceed it alone).
        let mut end = start;
        let mut n_caps = 0;
        while end < images.len()
            && (n_caps == 0 || n_caps + images[end].captions.len() <= batch_size)
        {
            n_caps += images[end].captions.len();
            end += 1;
        }
        let texts: Vec<&str> = images[start..end]
            .iter()
            .flat_map(|r| r.captions.iter().map(String::as_str))
            .collect();
        let embs = embedder.embed(&texts, batch_size)?;
        let mut offset = 0;
        for rec in &images[start..end] {
            let k = rec.captions.len();
            let index = nearest_to_centroid(&embs[offset..offset + k]).expect("captions non-empty");
            out.push(Chosen {
                image: rec.image.clone(),
                caption: rec.captions[index].clone(),
                index,
            });
            offset += k;
        }
        on_done(end - start);
        start = end;
    }
    Ok(out)
}

impl Chosen {
    /// The output line: `{"image", "caption", "index"}`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({ "image": self.image, "caption": self.caption, "index": self.index })
    }
}
