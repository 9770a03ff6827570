//! Image loading and the LION / RAM image transforms, matching PIL + torchvision.
//!
//! References: JiuTian-LION `preprocessors/lion_preprocessors.py` (eval L18-34, train L49-70) and
//! `ram/transform.py` (L7-13) @7578437 (docs/DESIGN.md §4); Pillow `src/libImaging/Resample.c`
//! for the resampling arithmetic; torchvision `RandomResizedCrop.get_params`.
//!
//! - [`ImageTransform::lion_eval`]: `Resize((224, 224), BICUBIC)` (no crop: the aspect ratio is not
//!   kept) -> ToTensor -> Normalize(CLIP mean/std).
//! - [`ImageTransform::ram`]: `Resize((384, 384))` (bilinear) -> ToTensor -> Normalize(ImageNet).
//! - [`TrainTransform`]: `RandomResizedCrop(224, scale=(0.5, 1), BICUBIC)` + horizontal flip with
//!   p = 0.5, from a seeded [`Rng`]. [`TrainTransform::apply_with_boxes`] is the box-aware mode for
//!   REC data: it only picks crops that contain every box and maps the boxes through the crop,
//!   resize and flip (upstream flips and crops region-level images without touching their boxes,
//!   which corrupts the targets, docs/DESIGN.md §4).
//!
//! [`resize`] is PIL's `Image.resize` on 8-bit RGB: separable two-pass (horizontal, then vertical)
//! convolution with the filter widened by the downscale factor (antialiasing), coefficients
//! normalised and quantised to 22-bit fixed point, each pass rounded and clipped to u8. It is
//! bit-exact with Pillow for bilinear and bicubic (a = -0.5).
//!
//! [`load_image`] / [`decode_image`] give PIL's `Image.open(p).convert("RGB")` or a clear error
//! naming the file (corrupt, truncated, empty, zero-sized, unsupported), never a panic. Alpha is
//! dropped (not composited), grayscale replicated, 16-bit samples keep their high byte (PIL does
//! this for 16-bit RGB; for 16-bit grayscale PIL clips values above 255 to white, which we
//! deliberately do not copy). JPEGs are decoded by libjpeg-turbo when it can be loaded, equal to
//! Pillow byte for byte (CMYK and greyscale included; see [`crate::jpeg`]), otherwise by the
//! pure-Rust decoder (within 1-2 levels; CMYK converted by the decoder).
//!
//! Shapes: one image -> (3, size, size) f32; a batch -> (b, 3, size, size).

use std::path::Path;

use candle_core::{Device, Tensor};
use image::{DynamicImage, RgbImage};

use crate::{Error, Result};

/// CLIP normalisation (LION's `BaseProcessor`), digits as upstream writes them (f32-rounded,
/// as torchvision's float32 `Normalize` rounds them).
#[allow(clippy::excessive_precision)]
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
#[allow(clippy::excessive_precision)]
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];
/// ImageNet normalisation (RAM's transform).
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

// ------------------------------------------------------------------------------------------
// Loading

/// Reads and decodes an image file to 8-bit RGB (PIL `.convert("RGB")` semantics, see the module
/// docs). Errors name the file.
pub fn load_image(path: impl AsRef<Path>) -> Result<RgbImage> {
    use std::io::{BufRead, Read};
    let path = path.as_ref();
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    // Sniff the first bytes before reading on: a file that is no image (a huge text file,
    // `/dev/zero`) is refused without reading it whole; an image is decoded as a stream (the
    // decoder's allocation limit applies).
    let mut reader = std::io::BufReader::new(file);
    let head = reader.fill_buf().map_err(|e| Error::io(path, e))?;
    if head.is_empty() {
        return Err(Error::format(path, "image file is empty (0 bytes)"));
    }
    let format = image::guess_format(head).map_err(|_| {
        Error::format(
            path,
            format!(
                "not an image: unrecognised format (first bytes {:02x?})",
                &head[..head.len().min(8)]
            ),
        )
    })?;
    if format == image::ImageFormat::Jpeg && crate::jpeg::library().is_some() {
        // Pillow-exact JPEG decoding (libjpeg-turbo) needs the whole file; it is a JPEG, so the
        // decoder's own limits apply to what it allocates.
        // A bound on what is read: no JPEG photograph comes near 1 GiB.
        const MAX_JPEG_BYTES: u64 = 1 << 30;
        let mut bytes = Vec::new();
        reader
            .take(MAX_JPEG_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| Error::io(path, e))?;
        if bytes.len() as u64 > MAX_JPEG_BYTES {
            return Err(Error::format(path, "JPEG file larger than 1 GiB"));
        }
        return decode_image(&bytes, path);
    }
    decode_with(image::ImageReader::with_format(reader, format), path)
}

/// Decodes image bytes to 8-bit RGB; `origin` names the source in errors.
pub fn decode_image(bytes: &[u8], origin: impl AsRef<Path>) -> Result<RgbImage> {
    let origin = origin.as_ref();
    if bytes.is_empty() {
        return Err(Error::format(origin, "image file is empty (0 bytes)"));
    }
    if let Some(decoded) = crate::jpeg::decode(bytes) {
        return decoded.map_err(|msg| Error::format(origin, format!("cannot decode JPEG: {msg}")));
    }
    decode_image_pure_rust(bytes, origin)
}

/// [`decode_image`] without libjpeg-turbo: every format through the `image` crate's pure-Rust
/// decoders (the fallback when the library is absent; JPEGs within 1-2 levels of Pillow).
pub fn decode_image_pure_rust(bytes: &[u8], origin: impl AsRef<Path>) -> Result<RgbImage> {
    let origin = origin.as_ref();
    if bytes.is_empty() {
        return Err(Error::format(origin, "image file is empty (0 bytes)"));
    }
    let reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| Error::format(origin, format!("cannot decode image: {e}")))?;
    decode_with(reader, origin)
}

/// The decoding both loaders share: a known format, a decoder panic turned into an error, no
/// zero-sized image.
fn decode_with<R: std::io::BufRead + std::io::Seek>(
    reader: image::ImageReader<R>,
    origin: &Path,
) -> Result<RgbImage> {
    let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(
        || -> std::result::Result<DynamicImage, String> {
            if reader.format().is_none() {
                return Err("unrecognised image format".into());
            }
            reader.decode().map_err(|e| e.to_string())
        },
    ));
    let img = match decoded {
        Ok(Ok(img)) => img,
        Ok(Err(msg)) => return Err(Error::format(origin, format!("cannot decode image: {msg}"))),
        Err(_) => {
            return Err(Error::format(
                origin,
                "cannot decode image: the decoder failed on malformed data",
            ))
        }
    };
    if img.width() == 0 || img.height() == 0 {
        return Err(Error::format(
            origin,
            format!("image has zero size ({}x{})", img.width(), img.height()),
        ));
    }
    Ok(to_rgb8(img))
}

/// PIL-style `convert("RGB")`: drop alpha, replicate gray, keep the high byte of 16-bit samples,
/// clamp and round float samples.
pub fn to_rgb8(img: DynamicImage) -> RgbImage {
    let (w, h) = (img.width(), img.height());
    let from = |px: &mut dyn Iterator<Item = [u8; 3]>| -> RgbImage {
        let mut out = Vec::with_capacity(w as usize * h as usize * 3);
        for p in px {
            out.extend_from_slice(&p);
        }
        RgbImage::from_raw(w, h, out).expect("buffer sized for the image")
    };
    let hi = |v: u16| (v >> 8) as u8;
    let f = |v: f32| (v.clamp(0.0, 1.0) * 255.0).round() as u8;
    match img {
        DynamicImage::ImageRgb8(im) => im,
        DynamicImage::ImageLuma8(im) => from(&mut im.pixels().map(|p| [p[0]; 3])),
        DynamicImage::ImageLumaA8(im) => from(&mut im.pixels().map(|p| [p[0]; 3])),
        DynamicImage::ImageRgba8(im) => from(&mut im.pixels().map(|p| [p[0], p[1], p[2]])),
        DynamicImage::ImageLuma16(im) => from(&mut im.pixels().map(|p| [hi(p[0]); 3])),
        DynamicImage::ImageLumaA16(im) => from(&mut im.pixels().map(|p| [hi(p[0]); 3])),
        DynamicImage::ImageRgb16(im) => {
            from(&mut im.pixels().map(|p| [hi(p[0]), hi(p[1]), hi(p[2])]))
        }
        DynamicImage::ImageRgba16(im) => {
            from(&mut im.pixels().map(|p| [hi(p[0]), hi(p[1]), hi(p[2])]))
        }
        DynamicImage::ImageRgb32F(im) => {
            from(&mut im.pixels().map(|p| [f(p[0]), f(p[1]), f(p[2])]))
        }
        DynamicImage::ImageRgba32F(im) => {
            from(&mut im.pixels().map(|p| [f(p[0]), f(p[1]), f(p[2])]))
        }
        other => other.to_rgb8(),
    }
}

// ------------------------------------------------------------------------------------------
// PIL resampling

/// Resampling filter (PIL names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    /// Triangle filter, support 1 (torchvision's default `Resize` interpolation).
    Bilinear,
    /// Cubic convolution with a = -0.5, support 2 (PIL's BICUBIC; torch tensors use a = -0.75).
    Bicubic,
}

impl Filter {
    fn support(self) -> f64 {
        match self {
            Filter::Bilinear => 1.0,
            Filter::Bicubic => 2.0,
        }
    }

    fn eval(self, x: f64) -> f64 {
        let x = x.abs();
        match self {
            Filter::Bilinear => {
                if x < 1.0 {
                    1.0 - x
                } else {
                    0.0
                }
            }
            Filter::Bicubic => {
                const A: f64 = -0.5;
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
        }
    }
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Per output sample: first input index and fixed-point weights (Pillow `precompute_coeffs` +
/// `normalize_coeffs_8bpc`).
fn coefficients(in_size: usize, out_size: usize, filter: Filter) -> Vec<(usize, Vec<i32>)> {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    let inv = 1.0 / filterscale;
    (0..out_size)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            let xmin = ((center - support + 0.5) as i64).max(0) as usize; // C (int) truncation
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let mut w: Vec<f64> = (xmin..xmax)
                .map(|x| filter.eval((x as f64 - center + 0.5) * inv))
                .collect();
            let total: f64 = w.iter().sum();
            if total != 0.0 {
                w.iter_mut().for_each(|v| *v /= total);
            }
            let one = (1u32 << PRECISION_BITS) as f64;
            let k = w
                .iter()
                .map(|&v| {
                    if v < 0.0 {
                        (-0.5 + v * one) as i32
                    } else {
                        (0.5 + v * one) as i32
                    }
                })
                .collect();
            (xmin, k)
        })
        .collect()
}

#[inline]
fn clip8(v: i32) -> u8 {
    (v >> PRECISION_BITS).clamp(0, 255) as u8
}

/// One separable pass over interleaved RGB rows: along x (`horizontal`) or y, from
/// `(w, h)` to the size the coefficients give.
fn pass(src: &[u8], w: usize, h: usize, coeffs: &[(usize, Vec<i32>)], horizontal: bool) -> Vec<u8> {
    let n = coeffs.len();
    let (ow, oh) = if horizontal { (n, h) } else { (w, n) };
    let mut out = vec![0u8; ow * oh * 3];
    for y in 0..oh {
        for x in 0..ow {
            let (start, k) = if horizontal { &coeffs[x] } else { &coeffs[y] };
            let mut ss = [1i32 << (PRECISION_BITS - 1); 3];
            for (i, &kv) in k.iter().enumerate() {
                let o = if horizontal {
                    (y * w + start + i) * 3
                } else {
                    ((start + i) * w + x) * 3
                };
                for c in 0..3 {
                    ss[c] += src[o + c] as i32 * kv;
                }
            }
            let o = (y * ow + x) * 3;
            for c in 0..3 {
                out[o + c] = clip8(ss[c]);
            }
        }
    }
    out
}

/// PIL `Image.resize((width, height), filter)` of an RGB image (antialiased when shrinking).
/// A same-size resize is a copy, as in PIL.
///
/// Pass order as Pillow 13 (`ImagingResampleInner`): horizontal first, unless the height shrinks
/// by more than twice as many pixels as the width does. Each pass rounds to u8, so the order
/// matters (by up to a few levels); it is followed exactly.
pub fn resize(img: &RgbImage, width: u32, height: u32, filter: Filter) -> Result<RgbImage> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let (ow, oh) = (width as usize, height as usize);
    if w == 0 || h == 0 || ow == 0 || oh == 0 {
        return Err(Error::Input(format!(
            "cannot resize a {w}x{h} image to {ow}x{oh}: sizes must be positive"
        )));
    }
    let src = img.as_raw();
    let dy = h as i64 - oh as i64;
    let dx = w as i64 - ow as i64;
    let horizontal_first = !(dy > 0 && dy > dx * 2);
    let horizontal = |buf: &[u8], bh: usize| -> Option<Vec<u8>> {
        (ow != w).then(|| pass(buf, w, bh, &coefficients(w, ow, filter), true))
    };
    let vertical = |buf: &[u8], bw: usize| -> Option<Vec<u8>> {
        (oh != h).then(|| pass(buf, bw, h, &coefficients(h, oh, filter), false))
    };
    let out = if horizontal_first {
        let a = horizontal(src, h);
        let bw = if a.is_some() { ow } else { w };
        let a = a.unwrap_or_else(|| src.to_vec());
        vertical(&a, bw).unwrap_or(a)
    } else {
        let a = vertical(src, w);
        let a = a.unwrap_or_else(|| src.to_vec());
        // after the vertical pass the buffer is (w, oh)
        if ow != w {
            pass(&a, w, oh, &coefficients(w, ow, filter), true)
        } else {
            a
        }
    };
    Ok(RgbImage::from_raw(width, height, out).expect("buffer sized for the image"))
}

/// PIL `img.crop((left, top, left + width, top + height))` for a box inside the image.
pub fn crop(img: &RgbImage, left: u32, top: u32, width: u32, height: u32) -> Result<RgbImage> {
    if width == 0 || height == 0 || left + width > img.width() || top + height > img.height() {
        return Err(Error::Input(format!(
            "crop ({left}, {top}, {width}x{height}) is not inside the {}x{} image",
            img.width(),
            img.height()
        )));
    }
    Ok(image::imageops::crop_imm(img, left, top, width, height).to_image())
}

/// Mirrors an image left-right.
pub fn hflip(img: &RgbImage) -> RgbImage {
    image::imageops::flip_horizontal(img)
}

/// torchvision `ToTensor` + `Normalize(mean, std)` in f32: (h, w) RGB -> (3, h, w).
pub fn to_tensor(img: &RgbImage, mean: [f32; 3], std: [f32; 3], dev: &Device) -> Result<Tensor> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let raw = img.as_raw();
    let mut data = vec![0f32; 3 * h * w];
    for c in 0..3 {
        let plane = &mut data[c * h * w..(c + 1) * h * w];
        for (i, v) in plane.iter_mut().enumerate() {
            *v = (raw[i * 3 + c] as f32 / 255.0 - mean[c]) / std[c];
        }
    }
    Ok(Tensor::from_vec(data, (3, h, w), dev)?)
}

// ------------------------------------------------------------------------------------------
// Deterministic transforms

/// Resize to a square (no crop), then ToTensor + Normalize.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageTransform {
    pub size: u32,
    pub filter: Filter,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl ImageTransform {
    /// LION's `ImageEvalProcessor(224)`: bicubic 224x224, CLIP mean/std.
    pub fn lion_eval() -> Self {
        Self {
            size: 224,
            filter: Filter::Bicubic,
            mean: CLIP_MEAN,
            std: CLIP_STD,
        }
    }

    /// RAM's `get_transform(384)`: bilinear 384x384, ImageNet mean/std.
    pub fn ram() -> Self {
        Self {
            size: 384,
            filter: Filter::Bilinear,
            mean: IMAGENET_MEAN,
            std: IMAGENET_STD,
        }
    }

    /// The resized image before normalisation.
    pub fn resized(&self, img: &RgbImage) -> Result<RgbImage> {
        resize(img, self.size, self.size, self.filter)
    }

    /// img -> (3, size, size)
    pub fn apply(&self, img: &RgbImage, dev: &Device) -> Result<Tensor> {
        to_tensor(&self.resized(img)?, self.mean, self.std, dev)
    }

    /// imgs -> (b, 3, size, size)
    pub fn apply_batch(&self, imgs: &[RgbImage], dev: &Device) -> Result<Tensor> {
        if imgs.is_empty() {
            crate::input_err!("empty image batch");
        }
        let ts = imgs
            .iter()
            .map(|im| self.apply(im, dev))
            .collect::<Result<Vec<_>>>()?;
        Ok(Tensor::stack(&ts, 0)?)
    }
}

// ------------------------------------------------------------------------------------------
// Random transforms

/// The seeded generator of data augmentation (`lion_rng`'s SplitMix64): the same seed gives the
/// same crops on every platform.
#[derive(Debug, Clone)]
pub struct Rng(lion_rng::SplitMix64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(lion_rng::SplitMix64::new(seed))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.0.next_f64()
    }

    /// Uniform integer in [lo, hi] (inclusive).
    pub fn int(&mut self, lo: u32, hi: u32) -> u32 {
        lo + (self.next_u64() % (hi as u64 - lo as u64 + 1)) as u32
    }
}

/// A crop window in input pixels: columns `left..left + width`, rows `top..top + height`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CropBox {
    pub left: u32,
    pub top: u32,
    pub width: u32,
    pub height: u32,
}

/// A box `[x1, y1, x2, y2]` in pixels (x right, y down).
pub type BoxXyxy = [f32; 4];

/// Output of [`TrainTransform`].
#[derive(Debug, Clone)]
pub struct Augmented {
    /// (3, size, size), normalised.
    pub pixel_values: Tensor,
    /// The crop taken from the input image.
    pub crop: CropBox,
    /// Whether the crop was mirrored.
    pub flipped: bool,
    /// The input boxes in output pixels (`size x size` image), in the same order.
    pub boxes: Vec<BoxXyxy>,
}

/// LION's `ImageTrainProcessor`: RandomResizedCrop + RandomHorizontalFlip + ToTensor + Normalize.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainTransform {
    pub size: u32,
    /// Crop area as a fraction of the image, (0.5, 1.0) in LION.
    pub scale: (f64, f64),
    /// Crop aspect ratio range, torchvision's default (3/4, 4/3).
    pub ratio: (f64, f64),
    pub filter: Filter,
    /// Probability of a horizontal flip (0.5).
    pub flip_p: f64,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl TrainTransform {
    /// LION's train transform at 224 px.
    pub fn lion() -> Self {
        Self {
            size: 224,
            scale: (0.5, 1.0),
            ratio: (3.0 / 4.0, 4.0 / 3.0),
            filter: Filter::Bicubic,
            flip_p: 0.5,
            mean: CLIP_MEAN,
            std: CLIP_STD,
        }
    }

    /// torchvision `RandomResizedCrop.get_params`, optionally restricted to crops containing the
    /// region `keep` = `[x1, y1, x2, y2]`; falls back to the central crop (or, with `keep`, the
    /// whole image) after 10 failed draws.
    fn crop_params(&self, w: u32, h: u32, keep: Option<BoxXyxy>, rng: &mut Rng) -> CropBox {
        let area = w as f64 * h as f64;
        let (lr0, lr1) = (self.ratio.0.ln(), self.ratio.1.ln());
        for _ in 0..10 {
            let target = area * rng.uniform(self.scale.0, self.scale.1);
            let aspect = rng.uniform(lr0, lr1).exp();
            let cw = (target * aspect).sqrt().round() as u32;
            let ch = (target / aspect).sqrt().round() as u32;
            if cw == 0 || ch == 0 || cw > w || ch > h {
                continue;
            }
            // allowed offsets: the window must contain `keep`
            let (mut x_lo, mut x_hi) = (0i64, (w - cw) as i64);
            let (mut y_lo, mut y_hi) = (0i64, (h - ch) as i64);
            if let Some([x1, y1, x2, y2]) = keep {
                x_lo = x_lo.max(x2.ceil() as i64 - cw as i64);
                x_hi = x_hi.min(x1.floor() as i64);
                y_lo = y_lo.max(y2.ceil() as i64 - ch as i64);
                y_hi = y_hi.min(y1.floor() as i64);
                if x_lo > x_hi || y_lo > y_hi {
                    continue;
                }
            }
            let top = rng.int(y_lo as u32, y_hi as u32);
            let left = rng.int(x_lo as u32, x_hi as u32);
            return CropBox {
                left,
                top,
                width: cw,
                height: ch,
            };
        }
        if keep.is_some() {
            return CropBox {
                left: 0,
                top: 0,
                width: w,
                height: h,
            };
        }
        let in_ratio = w as f64 / h as f64;
        let (cw, ch) = if in_ratio < self.ratio.0 {
            (w, ((w as f64 / self.ratio.0).round() as u32).min(h))
        } else if in_ratio > self.ratio.1 {
            (((h as f64 * self.ratio.1).round() as u32).min(w), h)
        } else {
            (w, h)
        };
        CropBox {
            left: (w - cw) / 2,
            top: (h - ch) / 2,
            width: cw,
            height: ch,
        }
    }

    fn run(
        &self,
        img: &RgbImage,
        crop_box: CropBox,
        flipped: bool,
        dev: &Device,
    ) -> Result<Tensor> {
        let c = crop(
            img,
            crop_box.left,
            crop_box.top,
            crop_box.width,
            crop_box.height,
        )?;
        let mut r = resize(&c, self.size, self.size, self.filter)?;
        if flipped {
            r = hflip(&r);
        }
        to_tensor(&r, self.mean, self.std, dev)
    }

    /// Image-only augmentation (upstream behaviour for image-level data).
    pub fn apply(&self, img: &RgbImage, rng: &mut Rng, dev: &Device) -> Result<Augmented> {
        let crop_box = self.crop_params(img.width(), img.height(), None, rng);
        let flipped = rng.uniform(0.0, 1.0) < self.flip_p;
        Ok(Augmented {
            pixel_values: self.run(img, crop_box, flipped, dev)?,
            crop: crop_box,
            flipped,
            boxes: vec![],
        })
    }

    /// Box-aware augmentation for region-level (REC) data: only crops that contain every box are
    /// drawn (the whole image if 10 draws fail), and each box `[x1, y1, x2, y2]` (input pixels)
    /// is mapped through the crop, the resize and the flip to output pixels. Boxes are checked:
    /// finite, x1 <= x2, y1 <= y2, and inside the image (a rounding margin of 1 px is clamped).
    pub fn apply_with_boxes(
        &self,
        img: &RgbImage,
        boxes: &[BoxXyxy],
        rng: &mut Rng,
        dev: &Device,
    ) -> Result<Augmented> {
        let (w, h) = (img.width() as f32, img.height() as f32);
        let mut clean = Vec::with_capacity(boxes.len());
        for (i, b) in boxes.iter().enumerate() {
            let [x1, y1, x2, y2] = *b;
            let ok = b.iter().all(|v| v.is_finite())
                && x1 <= x2
                && y1 <= y2
                && x1 >= -1.0
                && y1 >= -1.0
                && x2 <= w + 1.0
                && y2 <= h + 1.0;
            if !ok {
                crate::input_err!(
                    "box {i} {b:?} is not an [x1, y1, x2, y2] box inside the {w}x{h} image"
                );
            }
            clean.push([x1.max(0.0), y1.max(0.0), x2.min(w), y2.min(h)]);
        }
        let keep = clean.iter().copied().reduce(|a, b| {
            [
                a[0].min(b[0]),
                a[1].min(b[1]),
                a[2].max(b[2]),
                a[3].max(b[3]),
            ]
        });
        let crop_box = self.crop_params(img.width(), img.height(), keep, rng);
        let flipped = rng.uniform(0.0, 1.0) < self.flip_p;
        let sx = self.size as f32 / crop_box.width as f32;
        let sy = self.size as f32 / crop_box.height as f32;
        let s = self.size as f32;
        let boxes = clean
            .iter()
            .map(|&[x1, y1, x2, y2]| {
                let mut nx1 = (x1 - crop_box.left as f32) * sx;
                let mut nx2 = (x2 - crop_box.left as f32) * sx;
                if flipped {
                    (nx1, nx2) = (s - nx2, s - nx1);
                }
                let ny1 = (y1 - crop_box.top as f32) * sy;
                let ny2 = (y2 - crop_box.top as f32) * sy;
                [nx1, ny1, nx2, ny2]
            })
            .collect();
        Ok(Augmented {
            pixel_values: self.run(img, crop_box, flipped, dev)?,
            crop: crop_box,
            flipped,
            boxes,
        })
    }
}
