//! Image bytes of a request: base64 and `data:` payloads, the header probe (format, pixel count
//! before any decoding) and the full decode.

use super::*;

/// The `image` field of a JSON body: base64 (standard alphabet, padding optional), with an
/// optional `data:image/...;base64,` prefix.
pub fn take_base64_image(map: &mut Map<String, Value>) -> Result<Vec<u8>, ApiError> {
    let v = map.remove("image").ok_or_else(|| {
        ApiError::validation(
            "missing field `image` (base64 in JSON, or a file part in multipart/form-data)",
        )
    })?;
    let Value::String(s) = v else {
        return Err(ApiError::validation(format!(
            "field `image`: expected a base64 string, got {}",
            json_kind(&v)
        )));
    };
    let data = match s.strip_prefix("data:") {
        Some(rest) => data_url_payload(rest)?,
        None => s.as_str(),
    };
    base64_bytes("image", data)
}

/// Standard base64 (padding optional, whitespace ignored) of the field `name`.
pub fn base64_bytes(name: &str, data: &str) -> Result<Vec<u8>, ApiError> {
    let data: String = data.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    engine
        .decode(data.as_bytes())
        .map_err(|e| ApiError::bad_request(format!("field `{name}`: invalid base64: {e}")))
}

/// The base64 payload of a `data:` URL (after `data:`): the media type must be `image/...` (415
/// otherwise, naming it) and the data base64 (`;base64,`).
pub(super) fn data_url_payload(rest: &str) -> Result<&str, ApiError> {
    let (meta, data) = rest.split_once(',').ok_or_else(|| {
        ApiError::bad_request("field `image`: a data: URL needs a comma before its data")
    })?;
    let mut params = meta.split(';').map(str::trim);
    let media = params.next().unwrap_or("").to_ascii_lowercase();
    if !media.starts_with("image/") {
        let shown = if media.is_empty() {
            "none (text/plain by default)".to_string()
        } else {
            format!("{media:?}")
        };
        return Err(ApiError::new(
            ErrorType::UnsupportedMediaType,
            format!("field `image`: the data: URL's media type is {shown}; expected image/..."),
        ));
    }
    if !params.any(|p| p.eq_ignore_ascii_case("base64")) {
        return Err(ApiError::bad_request(format!(
            "field `image`: the data: URL ({media}) is not base64; use data:{media};base64,..."
        )));
    }
    Ok(data)
}

/// What an image's header says, read before any pixel is decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageHeader {
    pub format: image::ImageFormat,
    pub width: u32,
    pub height: u32,
    /// Bytes per pixel of the decoder's output (before conversion to RGB).
    pub bytes_per_pixel: u8,
}

impl ImageHeader {
    pub fn pixels(&self) -> u64 {
        self.width as u64 * self.height as u64
    }

    /// Bytes of the RGB image the request keeps until it is answered.
    pub fn rgb_bytes(&self) -> u64 {
        self.pixels() * 3
    }

    /// Most bytes decoding holds at once: the decoder's buffer, plus the RGB copy when the
    /// decoder's output is not already RGB.
    pub fn decode_bytes(&self) -> u64 {
        let decoded = self.pixels() * self.bytes_per_pixel as u64;
        if self.bytes_per_pixel == 3 {
            decoded
        } else {
            decoded + self.rgb_bytes()
        }
    }

    fn name(&self) -> String {
        format!("{:?}", self.format).to_uppercase()
    }
}

pub(super) fn image_reader(bytes: &[u8]) -> Result<ImageReader<Cursor<&[u8]>>, ApiError> {
    ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| ApiError::bad_request(format!("image: cannot read: {e}")))
}

/// Reads an encoded image's format, size and colour type from its header and checks the pixel
/// count, so a small file claiming a huge image costs nothing.
pub fn probe_image(bytes: &[u8], max_pixels: u64) -> Result<ImageHeader, ApiError> {
    if bytes.is_empty() {
        return Err(ApiError::bad_request("field `image` is empty"));
    }
    let r = image_reader(bytes)?;
    let Some(format) = r.format() else {
        return Err(ApiError::bad_request(
            "image: unrecognised format (send PNG, JPEG, WebP, GIF, BMP or TIFF)",
        ));
    };
    let corrupt = |e: ImageError| {
        ApiError::bad_request(format!(
            "image: corrupt {} header: {e}",
            format!("{format:?}").to_uppercase()
        ))
    };
    let decoder = r.into_decoder().map_err(corrupt)?;
    let (width, height) = decoder.dimensions();
    let header = ImageHeader {
        format,
        width,
        height,
        bytes_per_pixel: decoder.color_type().bytes_per_pixel(),
    };
    let pixels = header.pixels();
    if pixels > max_pixels {
        return Err(ApiError::too_large(format!(
            "image: {width}x{height} = {pixels} pixels is more than the limit of {max_pixels} pixels"
        )));
    }
    if pixels == 0 {
        return Err(ApiError::bad_request(format!(
            "image: {width}x{height} has no pixels"
        )));
    }
    Ok(header)
}

/// Decodes an image whose header [`probe_image`] has checked, to RGB, holding the decoder to the
/// header's size.
pub fn decode_probed(bytes: &[u8], header: &ImageHeader) -> Result<RgbImage, ApiError> {
    // JPEGs as Pillow decodes them when libjpeg-turbo is there (lion_core::jpeg)
    if let Some(decoded) = lion_core::jpeg::decode(bytes) {
        return decoded.map_err(|e| {
            ApiError::bad_request(format!("image: cannot decode the JPEG data: {e}"))
        });
    }
    let mut r = image_reader(bytes)?;
    let mut lim = image::Limits::default();
    lim.max_image_width = Some(header.width);
    lim.max_image_height = Some(header.height);
    r.limits(lim);
    let img = r.decode().map_err(|e| match e {
        ImageError::Limits(l) => ApiError::too_large(format!(
            "image: decoding it needs more memory than allowed: {l}"
        )),
        e => ApiError::bad_request(format!(
            "image: cannot decode the {} data (corrupt or truncated?): {e}",
            header.name()
        )),
    })?;
    Ok(img.into_rgb8())
}

/// Checks an encoded image and decodes it to RGB ([`probe_image`], then [`decode_probed`]).
pub fn decode_image(bytes: &[u8], max_pixels: u64) -> Result<RgbImage, ApiError> {
    let header = probe_image(bytes, max_pixels)?;
    decode_probed(bytes, &header)
}
