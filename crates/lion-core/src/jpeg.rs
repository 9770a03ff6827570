//! JPEG decoding equal to Pillow's, byte for byte, through libjpeg-turbo loaded at run time.
//!
//! Pillow (13, bundling libjpeg-turbo 3.2) decodes JPEGs with libjpeg's defaults: the accurate
//! integer IDCT (`JDCT_ISLOW`) and fancy (triangle) chroma upsampling. The pure-Rust decoder of the
//! `image` crate (zune-jpeg) uses another IDCT and upsampler: on photographs about 1% of the bytes
//! differ by 1-2 levels, up to 1.5e-2 in LION's `pixel_values`. Every JPEG dataset number passes
//! through this, so when the TurboJPEG library (`libturbojpeg.so.0`, Debian/Ubuntu package
//! `libturbojpeg0`) can be loaded, JPEGs are decoded by it with the same settings, and
//! `Image.open(f).convert("RGB")` is reproduced exactly:
//! - YCbCr / RGB JPEGs -> RGB (libjpeg's own colour conversion);
//! - greyscale -> L, replicated to RGB;
//! - CMYK / YCCK -> CMYK, inverted (Pillow's `CMYK;I` raw mode: it assumes Adobe's inverted
//!   convention for every 4-component JPEG), then Pillow's `cmyk2rgb`:
//!   `v = 255 - k; out = v - round(c * v / 255)` (its `MULDIV255` rounding);
//! - the EXIF orientation is not applied (`Image.open` does not rotate).
//!
//! Measured on the 120-file corpus of `scripts/fixtures_jpeg.py` (baseline / progressive, 4:4:4 /
//! 4:2:2 / 4:2:0, restart markers, CMYK, greyscale, EXIF-oriented): Debian bookworm's libjpeg-turbo
//! 2.1.5 equals Pillow's 3.2.0 on every byte of every file (`tests/jpeg.rs`).
//!
//! The library is opened once, with `dlopen` (no build-time dependency: the default build works
//! everywhere). `LION_TURBOJPEG` names another library file, or `off` to not use one. Without it
//! [`decode`] returns `None` and the caller falls back to the pure-Rust decoder; a warning says so
//! once per process.
//!
//! libjpeg warnings (e.g. stray bytes before a marker) do not stop Pillow, and do not stop us; a
//! file that ends before its image data does ("Premature end of JPEG file") is an error here, as
//! in Pillow without `LOAD_TRUNCATED_IMAGES`.

use std::sync::OnceLock;

use image::RgbImage;

/// True when `bytes` start like a JPEG file (SOI marker followed by another marker).
pub fn is_jpeg(bytes: &[u8]) -> bool {
    bytes.len() >= 3 && bytes[0] == 0xFF && bytes[1] == 0xD8 && bytes[2] == 0xFF
}

/// The libjpeg-turbo file in use, if one could be loaded (e.g. `libturbojpeg.so.0`).
pub fn library() -> Option<&'static str> {
    api().map(|a| a.name.as_str())
}

/// Decodes a JPEG as Pillow's `Image.open(f).convert("RGB")` does. `None`: libjpeg-turbo is not
/// available (or `bytes` is not a JPEG), decode another way. The error says what was wrong with
/// the data (the caller names the file).
pub fn decode(bytes: &[u8]) -> Option<Result<RgbImage, String>> {
    if !is_jpeg(bytes) {
        return None;
    }
    Some(api()?.decode(bytes))
}

/// Pillow's `cmyk2rgb` (Convert.c) of one inverted-back CMYK pixel.
fn cmyk_to_rgb(c: u8, m: u8, y: u8, k: u8) -> [u8; 3] {
    let nk = 255 - k as i32;
    let f = |v: u8| {
        let t = v as i32 * nk + 128;
        (nk - (((t >> 8) + t) >> 8)).clamp(0, 255) as u8
    };
    [f(c), f(m), f(y)]
}

// TurboJPEG API constants (turbojpeg.h, stable since libjpeg-turbo 1.4 / 2.0)
const TJPF_RGB: i32 = 0;
const TJPF_GRAY: i32 = 6;
const TJPF_CMYK: i32 = 11;
const TJCS_GRAY: i32 = 2;
const TJCS_CMYK: i32 = 3;
const TJCS_YCCK: i32 = 4;
const TJFLAG_ACCURATEDCT: i32 = 4096;
const TJERR_WARNING: i32 = 0;

static API: OnceLock<Option<Api>> = OnceLock::new();

fn api() -> Option<&'static Api> {
    API.get_or_init(|| {
        let api = Api::load();
        match &api {
            Ok(a) => tracing::debug!(library = %a.name, "JPEGs are decoded by libjpeg-turbo (Pillow-exact)"),
            Err(why) => tracing::warn!(
                "libjpeg-turbo not used ({why}): JPEGs are decoded by the pure-Rust decoder, which \
                 differs from Pillow by 1-2 levels on ~1% of the bytes of a photograph; install \
                 libturbojpeg0 (or set LION_TURBOJPEG to the library file) for Pillow-exact decoding"
            ),
        }
        api.ok()
    })
    .as_ref()
}

#[cfg(unix)]
use ffi::Api;

#[cfg(not(unix))]
struct Api {
    name: String,
}

#[cfg(not(unix))]
impl Api {
    fn load() -> Result<Self, String> {
        Err("run-time loading is only implemented on Unix".into())
    }

    fn decode(&self, _: &[u8]) -> Result<RgbImage, String> {
        unreachable!("no library is loaded off Unix")
    }
}

#[cfg(unix)]
mod ffi {
    use std::ffi::{c_char, c_int, c_ulong, c_void, CStr, CString};

    use super::*;

    type Handle = *mut c_void;
    /// `tjDecompressHeader3(handle, jpeg, size, &width, &height, &subsamp, &colorspace)`
    type HeaderFn = unsafe extern "C" fn(
        Handle,
        *const u8,
        c_ulong,
        *mut c_int,
        *mut c_int,
        *mut c_int,
        *mut c_int,
    ) -> c_int;
    /// `tjDecompress2(handle, jpeg, size, dst, width, pitch, height, pixel_format, flags)`
    type DecompressFn = unsafe extern "C" fn(
        Handle,
        *const u8,
        c_ulong,
        *mut u8,
        c_int,
        c_int,
        c_int,
        c_int,
        c_int,
    ) -> c_int;

    /// The TurboJPEG functions we call, resolved from the library.
    pub(super) struct Api {
        pub(super) name: String,
        init: unsafe extern "C" fn() -> Handle,
        header: HeaderFn,
        decompress: DecompressFn,
        error_str: unsafe extern "C" fn(Handle) -> *mut c_char,
        error_code: unsafe extern "C" fn(Handle) -> c_int,
        destroy: unsafe extern "C" fn(Handle) -> c_int,
    }

    // SAFETY: the function pointers are plain C functions of a library that is never unloaded;
    // every call below uses its own handle, which TurboJPEG allows from any thread.
    unsafe impl Send for Api {}
    unsafe impl Sync for Api {}

    /// A decompressor handle, destroyed on drop.
    struct Decompressor<'a> {
        api: &'a Api,
        h: Handle,
    }

    impl Drop for Decompressor<'_> {
        fn drop(&mut self) {
            // SAFETY: `h` came from tjInitDecompress and is destroyed once.
            unsafe { (self.api.destroy)(self.h) };
        }
    }

    impl Decompressor<'_> {
        fn message(&self) -> String {
            // SAFETY: tjGetErrorStr2 returns a NUL-terminated string owned by the handle.
            let p = unsafe { (self.api.error_str)(self.h) };
            if p.is_null() {
                return "unknown libjpeg-turbo error".into();
            }
            unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
        }

        /// Ok for success and for warnings other than a premature end of the data.
        fn check(&self, rc: c_int) -> Result<(), String> {
            if rc == 0 {
                return Ok(());
            }
            let msg = self.message();
            // SAFETY: a live handle.
            let code = unsafe { (self.api.error_code)(self.h) };
            if code == TJERR_WARNING && !msg.contains("Premature end") {
                tracing::debug!("libjpeg-turbo warning: {msg}");
                return Ok(());
            }
            if msg.contains("Premature end") {
                return Err(format!("image file is truncated ({msg})"));
            }
            Err(msg)
        }
    }

    fn symbol<T: Copy>(lib: *mut c_void, name: &str) -> Result<T, String> {
        let c = CString::new(name).expect("no NUL in symbol names");
        // SAFETY: dlsym on a handle from dlopen; the pointer is only transmuted to the function
        // type the TurboJPEG header declares for `name`.
        let p = unsafe { libc::dlsym(lib, c.as_ptr()) };
        if p.is_null() {
            return Err(format!("symbol {name} not found"));
        }
        assert_eq!(std::mem::size_of::<T>(), std::mem::size_of::<*mut c_void>());
        Ok(unsafe { std::mem::transmute_copy::<*mut c_void, T>(&p) })
    }

    impl Api {
        pub(super) fn load() -> Result<Self, String> {
            let names: Vec<String> = match std::env::var("LION_TURBOJPEG") {
                Ok(v) if v == "off" || v == "0" => return Err("LION_TURBOJPEG=off".into()),
                Ok(v) if !v.is_empty() => vec![v],
                _ => [
                    "libturbojpeg.so.0",
                    "libturbojpeg.so",
                    "libturbojpeg.0.dylib",
                    "libturbojpeg.dylib",
                ]
                .map(String::from)
                .to_vec(),
            };
            for name in &names {
                let c = CString::new(name.as_str()).map_err(|_| "bad library name".to_string())?;
                // SAFETY: loading a shared library runs its initialisers; libturbojpeg has none
                // beyond the C runtime's.
                let lib = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
                if lib.is_null() {
                    continue;
                }
                return Ok(Self {
                    name: name.clone(),
                    init: symbol(lib, "tjInitDecompress")?,
                    header: symbol(lib, "tjDecompressHeader3")?,
                    decompress: symbol(lib, "tjDecompress2")?,
                    error_str: symbol(lib, "tjGetErrorStr2")?,
                    error_code: symbol(lib, "tjGetErrorCode")?,
                    destroy: symbol(lib, "tjDestroy")?,
                });
            }
            Err(format!("none of {} could be loaded", names.join(", ")))
        }

        pub(super) fn decode(&self, bytes: &[u8]) -> Result<RgbImage, String> {
            // SAFETY: tjInitDecompress allocates a handle (null on failure).
            let h = unsafe { (self.init)() };
            if h.is_null() {
                return Err("libjpeg-turbo could not allocate a decompressor".into());
            }
            let d = Decompressor { api: self, h };
            let (mut w, mut ht, mut sub, mut cs) = (0, 0, 0, 0);
            let len = bytes.len() as c_ulong;
            // SAFETY: `bytes` is valid for `len` bytes; the outputs are plain ints.
            let rc = unsafe {
                (self.header)(h, bytes.as_ptr(), len, &mut w, &mut ht, &mut sub, &mut cs)
            };
            d.check(rc)?;
            if w <= 0 || ht <= 0 {
                return Err(format!(
                    "no image size in the header ({w}x{ht}; truncated, or not a JPEG?)"
                ));
            }
            let (format, channels) = match cs {
                TJCS_GRAY => (TJPF_GRAY, 1),
                TJCS_CMYK | TJCS_YCCK => (TJPF_CMYK, 4),
                _ => (TJPF_RGB, 3),
            };
            let (wu, hu) = (w as usize, ht as usize);
            // The same bound as the pure-Rust decoders' default allocation limit (512 MiB), so a
            // small file declaring a huge image is refused before anything is allocated.
            const MAX_DECODED_BYTES: usize = 512 << 20;
            if wu.saturating_mul(hu).saturating_mul(channels.max(3)) > MAX_DECODED_BYTES {
                return Err(format!(
                    "image of {w}x{ht} pixels exceeds the 512 MiB decoding limit"
                ));
            }
            let mut buf = vec![0u8; wu * hu * channels];
            // SAFETY: `buf` holds exactly width * height * channels bytes (pitch 0 = tight rows
            // of this pixel format), which is what tjDecompress2 writes.
            let rc = unsafe {
                (self.decompress)(
                    h,
                    bytes.as_ptr(),
                    len,
                    buf.as_mut_ptr(),
                    w,
                    0,
                    ht,
                    format,
                    TJFLAG_ACCURATEDCT,
                )
            };
            d.check(rc)?;
            let rgb = match channels {
                3 => buf,
                1 => buf.iter().flat_map(|&v| [v, v, v]).collect(),
                _ => buf
                    .chunks_exact(4)
                    .flat_map(|p| cmyk_to_rgb(255 - p[0], 255 - p[1], 255 - p[2], 255 - p[3]))
                    .collect(),
            };
            Ok(RgbImage::from_raw(w as u32, ht as u32, rgb).expect("buffer sized for the image"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmyk_conversion_is_pillows() {
        // no ink: white; full black: black; pure cyan: (0, 255, 255)
        assert_eq!(cmyk_to_rgb(0, 0, 0, 0), [255, 255, 255]);
        assert_eq!(cmyk_to_rgb(0, 0, 0, 255), [0, 0, 0]);
        assert_eq!(cmyk_to_rgb(255, 0, 0, 0), [0, 255, 255]);
        // MULDIV255 rounding: 255 - k = 200, c = 100 -> 200 - round(100 * 200 / 255) = 122
        assert_eq!(cmyk_to_rgb(100, 0, 0, 55)[0], 122);
        assert!(!is_jpeg(b"\x89PNG") && is_jpeg(b"\xff\xd8\xff\xe0"));
    }
}
