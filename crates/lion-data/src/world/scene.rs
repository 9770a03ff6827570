//! The world's vocabulary (shapes, colors, sizes, background textures) and scene sampling.

use super::raster;
use super::rng::Rng;

/// The shapes of the world. `name()` is the canonical word (also the tag and COCO category).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Shape {
    Circle,
    Square,
    Triangle,
    Star,
    Hexagon,
    Diamond,
    Cross,
}

impl Shape {
    pub const ALL: [Shape; 7] = [
        Shape::Circle,
        Shape::Square,
        Shape::Triangle,
        Shape::Star,
        Shape::Hexagon,
        Shape::Diamond,
        Shape::Cross,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Shape::Circle => "circle",
            Shape::Square => "square",
            Shape::Triangle => "triangle",
            Shape::Star => "star",
            Shape::Hexagon => "hexagon",
            Shape::Diamond => "diamond",
            Shape::Cross => "cross",
        }
    }

    pub fn plural(self) -> &'static str {
        match self {
            Shape::Circle => "circles",
            Shape::Square => "squares",
            Shape::Triangle => "triangles",
            Shape::Star => "stars",
            Shape::Hexagon => "hexagons",
            Shape::Diamond => "diamonds",
            Shape::Cross => "crosses",
        }
    }

    /// Words a captioner or annotator may use for the shape; the first is `name()`.
    pub fn synonyms(self) -> &'static [&'static str] {
        match self {
            Shape::Circle => &["circle", "disc", "round shape"],
            Shape::Square => &["square", "box", "block"],
            Shape::Triangle => &["triangle"],
            Shape::Star => &["star", "five-pointed star"],
            Shape::Hexagon => &["hexagon", "six-sided shape"],
            Shape::Diamond => &["diamond", "rhombus"],
            Shape::Cross => &["cross", "plus sign"],
        }
    }

    /// COCO category id (1-based, in `ALL` order).
    pub fn category_id(self) -> u32 {
        Shape::ALL.iter().position(|&s| s == self).unwrap_or(0) as u32 + 1
    }
}

/// The object colors: saturated, far from the pale background tones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Color {
    Red,
    Orange,
    Yellow,
    Green,
    Blue,
    Purple,
    Gray,
    Black,
}

impl Color {
    pub const ALL: [Color; 8] = [
        Color::Red,
        Color::Orange,
        Color::Yellow,
        Color::Green,
        Color::Blue,
        Color::Purple,
        Color::Gray,
        Color::Black,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Color::Red => "red",
            Color::Orange => "orange",
            Color::Yellow => "yellow",
            Color::Green => "green",
            Color::Blue => "blue",
            Color::Purple => "purple",
            Color::Gray => "gray",
            Color::Black => "black",
        }
    }

    /// Words for the color; the first is `name()`.
    pub fn synonyms(self) -> &'static [&'static str] {
        match self {
            Color::Red => &["red"],
            Color::Orange => &["orange"],
            Color::Yellow => &["yellow"],
            Color::Green => &["green"],
            Color::Blue => &["blue"],
            Color::Purple => &["purple", "violet"],
            Color::Gray => &["gray", "grey"],
            Color::Black => &["black"],
        }
    }

    /// The nominal sRGB value; each object jitters it by at most [`COLOR_JITTER`] per channel.
    pub fn rgb(self) -> [u8; 3] {
        match self {
            Color::Red => [214, 39, 40],
            Color::Orange => [245, 140, 25],
            Color::Yellow => [240, 210, 30],
            Color::Green => [44, 160, 44],
            Color::Blue => [31, 90, 210],
            Color::Purple => [128, 60, 175],
            Color::Gray => [125, 125, 125],
            Color::Black => [25, 25, 25],
        }
    }
}

/// Per-channel jitter of an object's color around [`Color::rgb`].
pub const COLOR_JITTER: i32 = 10;

/// Two size classes, well apart (radius about 8% vs 14.5% of the image side).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Size {
    Small,
    Large,
}

impl Size {
    pub const ALL: [Size; 2] = [Size::Small, Size::Large];

    pub fn name(self) -> &'static str {
        match self {
            Size::Small => "small",
            Size::Large => "large",
        }
    }

    pub fn synonyms(self) -> &'static [&'static str] {
        match self {
            Size::Small => &["small", "little", "tiny"],
            Size::Large => &["large", "big"],
        }
    }

    /// Radius range as a fraction of the image side.
    fn radius_range(self) -> (f64, f64) {
        match self {
            Size::Small => (0.07, 0.09),
            Size::Large => (0.13, 0.16),
        }
    }
}

/// Background textures, drawn in two pale tones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Texture {
    Plain,
    Stripes,
    Checks,
    Dots,
    Noise,
}

impl Texture {
    pub const ALL: [Texture; 5] = [
        Texture::Plain,
        Texture::Stripes,
        Texture::Checks,
        Texture::Dots,
        Texture::Noise,
    ];

    /// Canonical word (the tag and the majority VQA answer).
    pub fn name(self) -> &'static str {
        match self {
            Texture::Plain => "plain",
            Texture::Stripes => "stripes",
            Texture::Checks => "checks",
            Texture::Dots => "dots",
            Texture::Noise => "noise",
        }
    }

    /// Answers an annotator may give to "what pattern is on the background?"; first = `name()`.
    pub fn answer_synonyms(self) -> &'static [&'static str] {
        match self {
            Texture::Plain => &["plain", "solid", "blank"],
            Texture::Stripes => &["stripes", "striped", "lines"],
            Texture::Checks => &["checks", "checkered", "checkerboard"],
            Texture::Dots => &["dots", "polka dots", "dotted"],
            Texture::Noise => &["noise", "speckled", "noisy"],
        }
    }

    /// Caption phrases for the background ("on a striped background", ...).
    pub fn phrases(self) -> &'static [&'static str] {
        match self {
            Texture::Plain => &[
                "on a plain background",
                "on a blank background",
                "against a plain backdrop",
            ],
            Texture::Stripes => &[
                "on a striped background",
                "over stripes",
                "against a striped backdrop",
            ],
            Texture::Checks => &[
                "on a checkered background",
                "on a checkerboard",
                "over a checked pattern",
            ],
            Texture::Dots => &[
                "on a polka dot background",
                "on a dotted background",
                "over a pattern of dots",
            ],
            Texture::Noise => &[
                "on a noisy background",
                "on a speckled background",
                "over grainy noise",
            ],
        }
    }

    /// Adjective form used in "a striped background with ...".
    pub fn adjective(self) -> &'static str {
        match self {
            Texture::Plain => "plain",
            Texture::Stripes => "striped",
            Texture::Checks => "checkered",
            Texture::Dots => "dotted",
            Texture::Noise => "speckled",
        }
    }
}

/// Count words used as tags and in captions, for 1..=4 objects.
pub const COUNT_WORDS: [&str; 5] = ["zero", "one", "two", "three", "four"];

/// Where a point lies in the 3x3 grid of the image, as a word ("top left", "center", ...).
pub fn position_word(col: usize, row: usize) -> &'static str {
    const WORDS: [[&str; 3]; 3] = [
        ["top left", "top", "top right"],
        ["left", "center", "right"],
        ["bottom left", "bottom", "bottom right"],
    ];
    WORDS[row.min(2)][col.min(2)]
}

/// Background drawing parameters.
#[derive(Debug, Clone)]
pub struct Background {
    pub texture: Texture,
    /// Main pale tone.
    pub base: [u8; 3],
    /// Second tone (stripes, checks, dots).
    pub alt: [u8; 3],
    /// Stripe/check period or dot spacing in pixels.
    pub period: f64,
    /// Stripes: 0 horizontal, 1 vertical, 2 diagonal, 3 anti-diagonal.
    pub orientation: u8,
    /// Seed for per-pixel noise.
    pub noise_seed: u64,
}

/// One shape in a scene.
#[derive(Debug, Clone)]
pub struct Object {
    pub shape: Shape,
    pub color: Color,
    pub size: Size,
    /// Centre in pixels.
    pub cx: f64,
    pub cy: f64,
    /// Size parameter in pixels (circumradius-like; see `raster::inside`).
    pub radius: f64,
    /// Rotation in radians (small jitter).
    pub rotation: f64,
    /// Drawn color (nominal + jitter).
    pub rgb: [u8; 3],
    /// Visible-pixel box `[x1, y1, x2, y2]` in pixels, x2/y2 exclusive (filled by rendering).
    pub bbox: [u32; 4],
    /// Visible pixels (coverage >= 1/2 and on top).
    pub area: u32,
    /// Pixels of the object hidden under later objects.
    pub occluded: u32,
}

impl Object {
    /// Box centre (of the visible box), in pixels.
    pub fn center(&self) -> (f64, f64) {
        let b = self.bbox;
        ((b[0] + b[2]) as f64 / 2.0, (b[1] + b[3]) as f64 / 2.0)
    }
}

/// A whole scene: background plus objects in drawing order (later on top).
#[derive(Debug, Clone)]
pub struct Scene {
    pub width: u32,
    pub height: u32,
    pub background: Background,
    pub objects: Vec<Object>,
}

impl Scene {
    /// 3x3 grid cell of an object's centre, or `None` when it lies within `margin` (fraction of
    /// the side) of a cell border, where annotators would disagree too much.
    pub fn grid_cell(&self, o: &Object, margin: f64) -> Option<(usize, usize)> {
        let (cx, cy) = o.center();
        let cell = |v: f64, side: f64| -> Option<usize> {
            let t = v / side;
            for edge in [1.0 / 3.0, 2.0 / 3.0] {
                if (t - edge).abs() < margin {
                    return None;
                }
            }
            Some(((t * 3.0) as usize).min(2))
        };
        Some((cell(cx, self.width as f64)?, cell(cy, self.height as f64)?))
    }

    /// True when some object hides part of another.
    pub fn has_overlap(&self) -> bool {
        self.objects.iter().any(|o| o.occluded > 0)
    }
}

const PALE: [[u8; 3]; 6] = [
    [246, 241, 226],
    [228, 228, 228],
    [216, 230, 246],
    [222, 240, 222],
    [246, 226, 232],
    [240, 236, 210],
];

/// Samples a scene of 1..=4 objects where each object keeps at least `MIN_VISIBLE` of its pixels.
/// Rendering fills `bbox`, `area` and `occluded`.
pub fn sample_scene(rng: &mut Rng, width: u32, height: u32) -> (Scene, Vec<raster::Coverage>) {
    const MIN_VISIBLE: f64 = 0.55;
    let side = width.min(height) as f64;
    let texture = *rng.pick(&Texture::ALL);
    let base = *rng.pick(&PALE);
    let dark = rng.range(22.0, 38.0);
    let alt = base.map(|c| (c as f64 - dark).round().clamp(0.0, 255.0) as u8);
    let background = Background {
        texture,
        base,
        alt,
        period: side * rng.range(0.04, 0.09),
        orientation: rng.below(4) as u8,
        noise_seed: rng.next_u64(),
    };
    let n = 1 + rng.below(4);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut objects: Vec<Object> = Vec::with_capacity(n);
        for _ in 0..n {
            let shape = *rng.pick(&Shape::ALL);
            let color = *rng.pick(&Color::ALL);
            let size = *rng.pick(&Size::ALL);
            let (lo, hi) = size.radius_range();
            let radius = side * rng.range(lo, hi);
            let rotation = rng.range(-0.15, 0.15);
            let rgb = color.rgb().map(|c| {
                (c as i32 + rng.below(2 * COLOR_JITTER as usize + 1) as i32 - COLOR_JITTER)
                    .clamp(0, 255) as u8
            });
            let margin = radius * 1.25 + 2.0;
            // Try positions with limited overlap: centres at least 0.8 * (r_i + r_j) apart.
            let mut pos = None;
            for _ in 0..40 {
                let cx = rng.range(margin, width as f64 - margin);
                let cy = rng.range(margin, height as f64 - margin);
                let ok = objects.iter().all(|o| {
                    let d = ((o.cx - cx).powi(2) + (o.cy - cy).powi(2)).sqrt();
                    d >= 0.8 * (o.radius + radius)
                });
                if ok {
                    pos = Some((cx, cy));
                    break;
                }
            }
            let Some((cx, cy)) = pos else { continue };
            objects.push(Object {
                shape,
                color,
                size,
                cx,
                cy,
                radius,
                rotation,
                rgb,
                bbox: [0; 4],
                area: 0,
                occluded: 0,
            });
        }
        let mut scene = Scene {
            width,
            height,
            background: background.clone(),
            objects,
        };
        let covs = raster::coverages(&scene);
        raster::measure(&mut scene, &covs);
        let visible_ok = scene.objects.iter().all(|o| {
            let full = (o.area + o.occluded) as f64;
            o.area > 0 && o.area as f64 >= MIN_VISIBLE * full
        });
        // After many tries accept a scene whose objects are at least partly visible.
        let fallback = attempt >= 50 && scene.objects.iter().all(|o| o.area > 0);
        if !scene.objects.is_empty() && (visible_ok || fallback) {
            return (scene, covs);
        }
    }
}
