//! LION's box text, both ways: the one codec of `[x1,y1,x2,y2]` boxes normalised to the image.
//!
//! LION answers a referring expression with text such as `"Answer: [0.440,0.060,0.650,0.367]"`:
//! corners in the order `[x1, y1, x2, y2]`, each divided by the original image's width or height,
//! 3 decimals, no spaces. [`format`] writes that text (training targets, the demo's data) and
//! [`parse`] reads it back; `lion ground`/`lion ask`, the server's `/v1/ground` and its OpenAI
//! route, `lion eval --task rec` and the trainer's own REC score all read boxes through [`parse`],
//! so they give the same answer for the same text.
//!
//! Rules of [`parse`]:
//! - the box is the **last** bracketed group of exactly four comma-separated numbers (an `Answer:`
//!   prefix, spaces around numbers and words around the bracket are tolerated; as Dynamic LION's
//!   RefCOCO evaluation, the last bracket wins). A number is written with digits, `.`, `+` and `-`
//!   only (no exponents, no `nan`/`inf`); a group with anything else is skipped;
//! - each coordinate must be finite and in [0, [`MAX_COORD`]]; values in (1, 1.05] are clamped to
//!   1 (rounding), anything outside rejects the box: no box, not a clamped one;
//! - an inverted box (`x2 < x1` or `y2 < y1`) is rejected; a degenerate one (zero width or
//!   height) is kept (its IoU is 0 under `lion_metrics::rec`'s rules);
//! - no box is "no answer": the evaluator counts it as a miss, the server returns `null`.
//!
//! Upstream's playground parses with `\[([0-9., ]+)\]` and scales without any check; the rules
//! above are ours and are the ones `lion eval --task rec` has always scored with.

/// The largest coordinate accepted (then clamped to 1): 3-decimal rounding slack.
pub const MAX_COORD: f64 = 1.05;

/// A box normalised by the image's width and height, `[x1, y1, x2, y2]`, each in [0, 1].
pub type NormBox = [f64; 4];

/// LION's box text for a box in pixels of an image of `width` x `height`: `[x1,y1,x2,y2]`
/// normalised, clamped to [0, 1], 3 decimals, no spaces. A zero size counts as 1.
pub fn format(bbox: [f32; 4], width: u32, height: u32) -> String {
    let (w, h) = (width.max(1) as f32, height.max(1) as f32);
    let n = [bbox[0] / w, bbox[1] / h, bbox[2] / w, bbox[3] / h].map(|v| v.clamp(0.0, 1.0));
    format!("[{:.3},{:.3},{:.3},{:.3}]", n[0], n[1], n[2], n[3])
}

/// The normalised box LION's text holds under the module's rules; `None` when it holds none.
pub fn parse_normalized(text: &str) -> Option<NormBox> {
    let nums = last_bracket_numbers(text)?;
    if nums
        .iter()
        .any(|v| !v.is_finite() || *v < 0.0 || *v > MAX_COORD)
    {
        return None;
    }
    let n = nums.map(|v| v.clamp(0.0, 1.0));
    (n[2] >= n[0] && n[3] >= n[1]).then_some(n)
}

/// A normalised box in pixels of an image of `width` x `height`.
pub fn to_pixels(n: NormBox, width: f64, height: f64) -> [f64; 4] {
    [n[0] * width, n[1] * height, n[2] * width, n[3] * height]
}

/// The box LION's text holds, in pixels of the original image (`width` x `height`); `None` when
/// the text holds no box under the module's rules.
pub fn parse(text: &str, width: f64, height: f64) -> Option<[f64; 4]> {
    parse_normalized(text).map(|n| to_pixels(n, width, height))
}

/// The four numbers of the last bracketed group that holds exactly four numbers.
fn last_bracket_numbers(text: &str) -> Option<[f64; 4]> {
    let mut found = None;
    let mut rest = text;
    while let Some(open) = rest.find('[') {
        let after = &rest[open + 1..];
        let Some(close) = after.find(']') else { break };
        let inner = &after[..close];
        let parts: Vec<&str> = inner.split(',').map(str::trim).collect();
        if parts.len() == 4 {
            let vals: Option<Vec<f64>> = parts
                .iter()
                .map(|p| {
                    let ok = !p.is_empty()
                        && p.chars()
                            .all(|c| c.is_ascii_digit() || c == '.' || c == '-' || c == '+');
                    if ok {
                        p.parse::<f64>().ok()
                    } else {
                        None
                    }
                })
                .collect();
            if let Some(v) = vals {
                found = Some([v[0], v[1], v[2], v[3]]);
            }
        }
        rest = &after[close + 1..];
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lion_box_text() {
        let b = parse("Answer: [0.440,0.060,0.650,0.367]", 100.0, 200.0).unwrap();
        assert!((b[0] - 44.0).abs() < 1e-9 && (b[3] - 73.4).abs() < 1e-9);
        assert!(parse("Answer:[0.533,0.120,0.804,1.0]", 10.0, 10.0).is_some());
        assert!(parse("[0.1, 0.2, 0.3]", 10.0, 10.0).is_none());
        assert!(parse("[0.5,0.5,0.2,0.9]", 10.0, 10.0).is_none());
        assert!(parse("no box", 10.0, 10.0).is_none());
        assert!(parse("[a,b,c,d]", 10.0, 10.0).is_none());
        let last = parse("[0,0,0.1,0.1] or [0.2,0.2,0.4,0.4]", 10.0, 10.0).unwrap();
        assert!((last[0] - 2.0).abs() < 1e-9);
    }

    #[test]
    fn clamps_rounding_slack_and_rejects_the_rest() {
        assert_eq!(
            parse_normalized("[0.1,0.2,1.05,1.01]"),
            Some([0.1, 0.2, 1.0, 1.0])
        );
        for t in [
            "[0.1,0.2,1.051,0.4]",
            "[-0.1,0.2,0.3,0.4]",
            "[0.1,0.2,0.3,1e-3]",
            "[nan,0.2,0.3,0.4]",
            "[0.1,0.2,inf,0.4]",
            "[0.3,0.2,0.1,0.4]",
            "[0.1,0.5,0.3,0.4]",
            "[0.1,0.2,0.3,0.4",
        ] {
            assert_eq!(parse_normalized(t), None, "{t}");
        }
        // The last four-number bracket is the answer even when it is out of range.
        assert_eq!(parse_normalized("[0.1,0.2,0.3,0.4] then [2,2,3,3]"), None);
        // A bracket that is not four numbers is skipped.
        assert_eq!(
            parse_normalized("[0.1,0.2,0.3,0.4] [x]"),
            Some([0.1, 0.2, 0.3, 0.4])
        );
    }

    #[test]
    fn format_and_parse_are_a_pair() {
        let text = format([281.6, 28.8, 416.0, 176.16], 640, 480);
        assert_eq!(text, "[0.440,0.060,0.650,0.367]");
        let b = parse(&text, 640.0, 480.0).unwrap();
        for (a, w) in b.iter().zip([281.6, 28.8, 416.0, 176.16]) {
            assert!((a - w).abs() < 1e-9, "{b:?}");
        }
        // Out-of-image pixels are clamped when written, so what is written always parses.
        let text = format([-5., 0., 250., 50.], 200, 100);
        assert_eq!(text, "[0.000,0.000,1.000,0.500]");
        assert!(parse_normalized(&text).is_some());
    }
}
