//! Training augmentation of one LION sample: the image through
//! [`TrainTransform`] (box-aware for region-level samples), and the text made to agree with it.
//! A mirrored sample's expression, question and answer (a caption is the answer of the caption
//! task) go through [`mirror_spatial_words`], so "the leftmost star" names the star that is
//! leftmost in the mirrored picture, and a REC target box moves with the pixels.

use candle_core::{Device, Tensor};
use image::RgbImage;
use lion_core::adapter::Route;
use lion_core::flip_text::mirror_spatial_words;
use lion_core::preprocess::{Rng, TrainTransform};
use lion_core::{Error, Result};
use lion_data::lion_json::LionSample;

/// An augmented sample: pixels (3, size, size), the sample with its text as the model sees it
/// (answer: the target; for region-level samples the box in the augmented image), and whether
/// the image was mirrored.
pub struct AugmentedSample {
    pub pixel_values: Tensor,
    pub sample: LionSample,
    pub flipped: bool,
}

/// Augments `s` (its image `img`) with `tf`. `origin` names the data file for errors (a
/// region-level answer that is not a box).
pub fn augment_sample(
    tf: &TrainTransform,
    img: &RgbImage,
    s: &LionSample,
    rng: &mut Rng,
    dev: &Device,
    origin: &dyn std::fmt::Display,
) -> Result<AugmentedSample> {
    let mut out = s.clone();
    let (pixel_values, flipped) = if s.route == Route::RegionLevel {
        let (w, h) = (img.width() as f64, img.height() as f64);
        let b = lion_core::bbox::parse(&s.answer, w, h).ok_or_else(|| {
            Error::config(
                origin,
                format!("region-level answer `{}` is not a box", s.answer),
            )
        })?;
        let b = [b[0] as f32, b[1] as f32, b[2] as f32, b[3] as f32];
        let a = tf.apply_with_boxes(img, &[b], rng, dev)?;
        out.answer = lion_core::bbox::format(a.boxes[0], tf.size, tf.size);
        (a.pixel_values, a.flipped)
    } else {
        let a = tf.apply(img, rng, dev)?;
        if a.flipped {
            out.answer = mirror_spatial_words(&s.answer);
        }
        (a.pixel_values, a.flipped)
    };
    if flipped {
        out.question = mirror_spatial_words(&s.question);
    }
    Ok(AugmentedSample {
        pixel_values,
        sample: out,
        flipped,
    })
}
