//! Our own rasteriser: textured backgrounds, anti-aliased shapes (4x4 supersampling), visibility
//! bookkeeping (which object owns each pixel) and PNG encoding. Integer blending only, so the
//! pixels are exactly reproducible.

use super::rng::splitmix64;
use super::scene::{Background, Object, Scene, Shape, Texture};

/// Subsamples per pixel side (coverage is counted out of `SS * SS`).
const SS: usize = 4;
const FULL: u8 = (SS * SS) as u8;

/// Coverage counts (0..=16) of one object over its clipped bounding rectangle.
#[derive(Debug, Clone)]
pub struct Coverage {
    pub x0: usize,
    pub y0: usize,
    pub w: usize,
    pub h: usize,
    pub counts: Vec<u8>,
}

/// The outline of a polygonal shape (pixels), or `None` for a circle.
fn outline(o: &Object) -> Option<Vec<(f64, f64)>> {
    let r = o.radius;
    let polar = |n: usize, start_deg: f64, radii: &[f64]| -> Vec<(f64, f64)> {
        (0..n)
            .map(|k| {
                let a = (start_deg + 360.0 * k as f64 / n as f64).to_radians();
                let rr = radii[k % radii.len()];
                (rr * a.cos(), rr * a.sin())
            })
            .collect()
    };
    let pts: Vec<(f64, f64)> = match o.shape {
        Shape::Circle => return None,
        Shape::Square => polar(4, 45.0, &[r * 1.15]),
        Shape::Triangle => polar(3, -90.0, &[r * 1.2])
            .into_iter()
            .map(|(x, y)| (x, y + 0.15 * r))
            .collect(),
        Shape::Hexagon => polar(6, 0.0, &[r * 1.05]),
        Shape::Star => polar(10, -90.0, &[r * 1.2, r * 0.5]),
        Shape::Diamond => vec![
            (0.0, -1.15 * r),
            (0.8 * r, 0.0),
            (0.0, 1.15 * r),
            (-0.8 * r, 0.0),
        ],
        Shape::Cross => {
            let (a, e) = (0.36 * r, 1.05 * r);
            vec![
                (a, -e),
                (a, -a),
                (e, -a),
                (e, a),
                (a, a),
                (a, e),
                (-a, e),
                (-a, a),
                (-e, a),
                (-e, -a),
                (-a, -a),
                (-a, -e),
            ]
        }
    };
    let (s, c) = o.rotation.sin_cos();
    Some(
        pts.into_iter()
            .map(|(x, y)| (o.cx + x * c - y * s, o.cy + x * s + y * c))
            .collect(),
    )
}

/// Even-odd point-in-polygon test.
fn in_polygon(pts: &[(f64, f64)], x: f64, y: f64) -> bool {
    let mut inside = false;
    let mut j = pts.len() - 1;
    for i in 0..pts.len() {
        let (xi, yi) = pts[i];
        let (xj, yj) = pts[j];
        if (yi > y) != (yj > y) && x < (xj - xi) * (y - yi) / (yj - yi) + xi {
            inside = !inside;
        }
        j = i;
    }
    inside
}

/// Coverage of one object, clipped to the image.
pub fn coverage(o: &Object, width: u32, height: u32) -> Coverage {
    let poly = outline(o);
    let reach = match &poly {
        Some(p) => p
            .iter()
            .map(|(x, y)| (x - o.cx).abs().max((y - o.cy).abs()))
            .fold(0.0, f64::max),
        None => o.radius,
    };
    let x0 = (o.cx - reach - 1.0).floor().max(0.0) as usize;
    let y0 = (o.cy - reach - 1.0).floor().max(0.0) as usize;
    let x1 = ((o.cx + reach + 1.0).ceil() as usize).min(width as usize);
    let y1 = ((o.cy + reach + 1.0).ceil() as usize).min(height as usize);
    let (w, h) = (x1.saturating_sub(x0), y1.saturating_sub(y0));
    let mut counts = vec![0u8; w * h];
    let r2 = o.radius * o.radius;
    for py in 0..h {
        for px in 0..w {
            let mut n = 0u8;
            for sy in 0..SS {
                let y = (y0 + py) as f64 + (sy as f64 + 0.5) / SS as f64;
                for sx in 0..SS {
                    let x = (x0 + px) as f64 + (sx as f64 + 0.5) / SS as f64;
                    let hit = match &poly {
                        Some(p) => in_polygon(p, x, y),
                        None => (x - o.cx).powi(2) + (y - o.cy).powi(2) <= r2,
                    };
                    n += hit as u8;
                }
            }
            counts[py * w + px] = n;
        }
    }
    Coverage {
        x0,
        y0,
        w,
        h,
        counts,
    }
}

/// Coverage of every object of the scene, in drawing order.
pub fn coverages(scene: &Scene) -> Vec<Coverage> {
    scene
        .objects
        .iter()
        .map(|o| coverage(o, scene.width, scene.height))
        .collect()
}

/// Fills each object's visible box, visible area and occluded area. A pixel belongs to the object
/// that contributes at least half of its color after blending: its coverage times what the objects
/// drawn above it leave visible.
pub fn measure(scene: &mut Scene, covs: &[Coverage]) {
    let w = scene.width as usize;
    let mut owner = vec![0u8; w * scene.height as usize];
    // Fraction of each pixel still visible through the objects above (exact in f64: products
    // of multiples of 1/16).
    let mut visible = vec![1.0f64; owner.len()];
    let mut full = vec![0u32; covs.len()];
    for (k, c) in covs.iter().enumerate().rev() {
        for py in 0..c.h {
            for px in 0..c.w {
                let n = c.counts[py * c.w + px];
                if n == 0 {
                    continue;
                }
                let i = (c.y0 + py) * w + c.x0 + px;
                let alpha = n as f64 / FULL as f64;
                if alpha >= 0.5 {
                    full[k] += 1;
                }
                if owner[i] == 0 && alpha * visible[i] >= 0.5 {
                    owner[i] = k as u8 + 1;
                }
                visible[i] *= 1.0 - alpha;
            }
        }
    }
    for (k, o) in scene.objects.iter_mut().enumerate() {
        let c = &covs[k];
        let (mut bx0, mut by0, mut bx1, mut by1, mut area) = (u32::MAX, u32::MAX, 0, 0, 0);
        for py in 0..c.h {
            for px in 0..c.w {
                let (x, y) = (c.x0 + px, c.y0 + py);
                if owner[y * w + x] == k as u8 + 1 {
                    area += 1;
                    bx0 = bx0.min(x as u32);
                    by0 = by0.min(y as u32);
                    bx1 = bx1.max(x as u32 + 1);
                    by1 = by1.max(y as u32 + 1);
                }
            }
        }
        o.area = area;
        o.occluded = full[k] - area;
        o.bbox = if area > 0 {
            [bx0, by0, bx1, by1]
        } else {
            [0; 4]
        };
    }
}

/// The background color of one pixel.
fn background_px(bg: &Background, x: usize, y: usize, width: usize) -> [u8; 3] {
    let (fx, fy) = (x as f64 + 0.5, y as f64 + 0.5);
    let p = bg.period;
    let alt = match bg.texture {
        Texture::Plain => false,
        Texture::Stripes => {
            let t = match bg.orientation {
                0 => fy,
                1 => fx,
                2 => (fx + fy) * std::f64::consts::FRAC_1_SQRT_2,
                _ => (fx - fy) * std::f64::consts::FRAC_1_SQRT_2 + 1000.0,
            };
            ((t / (p / 2.0)).floor() as i64) % 2 == 0
        }
        Texture::Checks => (((fx / p).floor() + (fy / p).floor()) as i64) % 2 == 0,
        Texture::Dots => {
            let s = p * 1.4;
            let dx = fx - ((fx / s).floor() + 0.5) * s;
            let dy = fy - ((fy / s).floor() + 0.5) * s;
            dx * dx + dy * dy < (0.28 * s).powi(2)
        }
        Texture::Noise => {
            let r = splitmix64(bg.noise_seed ^ (y * width + x) as u64);
            let d = (r % 41) as i32 - 20;
            return bg.base.map(|c| (c as i32 + d).clamp(0, 255) as u8);
        }
    };
    if alt {
        bg.alt
    } else {
        bg.base
    }
}

/// Renders the scene to tightly packed RGB8 pixels (row-major, `width * height * 3` bytes).
pub fn render(scene: &Scene, covs: &[Coverage]) -> Vec<u8> {
    let (w, h) = (scene.width as usize, scene.height as usize);
    let mut px = vec![0u8; w * h * 3];
    for y in 0..h {
        for x in 0..w {
            let c = background_px(&scene.background, x, y, w);
            px[(y * w + x) * 3..(y * w + x) * 3 + 3].copy_from_slice(&c);
        }
    }
    for (o, c) in scene.objects.iter().zip(covs) {
        for py in 0..c.h {
            for qx in 0..c.w {
                let n = c.counts[py * c.w + qx] as u32;
                if n == 0 {
                    continue;
                }
                let i = ((c.y0 + py) * w + c.x0 + qx) * 3;
                for ch in 0..3 {
                    let v = (o.rgb[ch] as u32 * n + px[i + ch] as u32 * (FULL as u32 - n) + 8) / 16;
                    px[i + ch] = v as u8;
                }
            }
        }
    }
    px
}

/// Encodes RGB8 pixels as PNG. Deterministic: fixed compression and filter, no time chunk.
pub fn encode_png(width: u32, height: u32, rgb: &[u8]) -> Result<Vec<u8>, png::EncodingError> {
    let mut out = Vec::with_capacity(rgb.len() / 2);
    {
        let mut enc = png::Encoder::new(&mut out, width, height);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        enc.set_compression(png::Compression::Fast);
        let mut writer = enc.write_header()?;
        writer.write_image_data(rgb)?;
        writer.finish()?;
    }
    Ok(out)
}

/// Decodes an 8-bit RGB PNG (as written by [`encode_png`]) into (width, height, pixels).
pub fn decode_png(bytes: &[u8]) -> Result<(u32, u32, Vec<u8>), String> {
    let dec = png::Decoder::new(std::io::Cursor::new(bytes));
    let mut reader = dec.read_info().map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; reader.output_buffer_size().ok_or("PNG too large")?];
    let info = reader.next_frame(&mut buf).map_err(|e| e.to_string())?;
    if info.color_type != png::ColorType::Rgb || info.bit_depth != png::BitDepth::Eight {
        return Err(format!(
            "expected 8-bit RGB, got {:?} {:?}",
            info.color_type, info.bit_depth
        ));
    }
    buf.truncate(info.buffer_size());
    Ok((info.width, info.height, buf))
}
