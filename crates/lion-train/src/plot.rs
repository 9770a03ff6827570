//! PNG line charts of training curves. plotters draws into an RGB buffer with an embedded
//! DejaVu Sans (ab_glyph; no system fonts or fontconfig needed); `png` encodes it; the file is
//! written atomically.

use std::path::Path;
use std::sync::Once;

use lion_core::{Error, Result};
use plotters::prelude::*;

/// One curve: a name for the legend and its (x, y) points (non-finite ys are skipped).
pub struct Series<'a> {
    pub name: &'a str,
    pub points: Vec<(f64, f64)>,
}

/// One chart: title, axis labels, curves.
pub struct Panel<'a> {
    pub title: &'a str,
    pub x_label: &'a str,
    pub y_label: &'a str,
    pub series: Vec<Series<'a>>,
}

const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The bytes are a valid TTF shipped by the `dejavu` crate; a failure here would be a
        // packaging bug, and text then simply does not render.
        let _ = plotters::style::register_font(
            "sans-serif",
            FontStyle::Normal,
            dejavu::sans::regular(),
        );
    });
}

fn range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values.filter(|v| v.is_finite()) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.08).max(1e-3);
    (lo - pad, hi + pad)
}

fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    panel: &Panel,
) -> std::result::Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let pts = || panel.series.iter().flat_map(|s| s.points.iter());
    let (x0, x1) = range(pts().map(|p| p.0));
    let (y0, y1) = range(pts().map(|p| p.1));
    let mut chart = ChartBuilder::on(area)
        .caption(panel.title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(x0..x1, y0..y1)?;
    chart
        .configure_mesh()
        .x_desc(panel.x_label)
        // epochs are whole numbers: leave fractional ticks unlabelled
        .x_label_formatter(&|x| {
            if (x - x.round()).abs() < 1e-9 {
                format!("{x:.0}")
            } else {
                String::new()
            }
        })
        .y_desc(panel.y_label)
        .label_style(("sans-serif", 13))
        .draw()?;
    for (i, s) in panel.series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let points: Vec<(f64, f64)> = s
            .points
            .iter()
            .copied()
            .filter(|p| p.0.is_finite() && p.1.is_finite())
            .collect();
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
            .label(s.name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
        chart.draw_series(
            points
                .into_iter()
                .map(|p| Circle::new(p, 3, color.filled())),
        )?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 13))
        .draw()?;
    Ok(())
}

/// Draws the panels side by side, each `panel_size` pixels, and writes a PNG to `path`.
pub fn draw_png(path: impl AsRef<Path>, panels: &[Panel], panel_size: (u32, u32)) -> Result<()> {
    let path = path.as_ref();
    register_font();
    let (w, h) = (panel_size.0 * panels.len().max(1) as u32, panel_size.1);
    let mut buf = vec![255u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        let err = |e: String| Error::format(path, format!("cannot draw the plot: {e}"));
        root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
        let areas = root.split_evenly((1, panels.len().max(1)));
        for (area, panel) in areas.iter().zip(panels) {
            draw_panel(area, panel).map_err(|e| err(e.to_string()))?;
        }
        root.present().map_err(|e| err(e.to_string()))?;
    }
    let mut png_bytes = vec![];
    {
        let mut enc = png::Encoder::new(&mut png_bytes, w, h);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut wr = enc
            .write_header()
            .map_err(|e| Error::format(path, format!("cannot encode PNG: {e}")))?;
        wr.write_image_data(&buf)
            .map_err(|e| Error::format(path, format!("cannot encode PNG: {e}")))?;
    }
    lion_core::util::write_atomic(path, &png_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_png_with_text_and_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.png");
        let panels = [Panel {
            title: "loss",
            x_label: "epoch",
            y_label: "loss",
            series: vec![
                Series {
                    name: "train",
                    points: vec![(1.0, 0.9), (2.0, 0.5), (3.0, 0.4)],
                },
                Series {
                    name: "val",
                    points: vec![(0.0, 1.0), (1.0, f64::NAN), (3.0, 0.6)],
                },
            ],
        }];
        draw_png(&p, &panels, (400, 300)).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"));
        let dec = png::Decoder::new(std::io::Cursor::new(bytes));
        let mut reader = dec.read_info().unwrap();
        let mut img = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut img).unwrap();
        assert_eq!((info.width, info.height), (400, 300));
        // Some pixels are the first series' colour (lines), some dark grey/black (text, axes).
        let px: Vec<&[u8]> = img.chunks(3).collect();
        assert!(px.iter().filter(|p| *p == &[31, 119, 180]).count() > 100);
        assert!(px.iter().filter(|p| p.iter().all(|c| *c < 80)).count() > 200);
        // The title's glyphs: dark pixels in the top 30 rows, away from the axes.
        let title_dark = (0..30 * 400)
            .filter(|i| px[*i].iter().all(|c| *c < 128))
            .count();
        assert!(
            title_dark > 20,
            "no title text drawn ({title_dark} dark pixels)"
        );
    }
}
