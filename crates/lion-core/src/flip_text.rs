//! Text under a horizontal flip: when an augmentation mirrors an image, "the leftmost star"
//! becomes "the rightmost star". [`mirror_spatial_words`] swaps every left/right word of a text
//! (referring expression, question, answer, caption) so that the words keep describing the
//! mirrored picture; [`TrainTransform`](crate::preprocess::TrainTransform) mirrors the pixels and
//! boxes, the training data pipeline calls this on the text of the samples it flipped.
//!
//! Rules:
//! - A word is a maximal run of alphanumeric characters; everything else (spaces, punctuation,
//!   hyphens, apostrophes, digits' neighbours) is kept as it is. So "left-most", "left-hand",
//!   "left's", "(left)" and "left," swap through their "left" part, and "bright", "upright",
//!   "leftover", "copyright", "alright" are other words and stay.
//! - Swapped pairs: left/right, leftmost/rightmost, lefthand/righthand, leftside/rightside,
//!   leftward(s)/rightward(s), leftest/rightest and lefter/righter (the last two are RefCOCO
//!   annotators' forms). Multi-word relations follow from their words: "to the left of",
//!   "on the right", "top left", "left side", "second from left".
//! - Case is kept: "Left" -> "Right", "LEFT" -> "RIGHT", "left" -> "right".
//! - Words are read spatially: "right" meaning "correct" and "left" as the past of "leave" are
//!   swapped too. ShapesWorld never uses either; in RefCOCO the spatial reading is the rule, and
//!   a rare wrong swap costs less than every flipped spatial sample teaching the opposite.
//!
//! Tested with ShapesWorld's generated text and RefCOCO-style phrases in
//! `crates/lion-train/tests/flip_text.rs`.

/// The mirrored form of a lowercase word, if it is a horizontal-direction word.
fn mirror_word(lower: &str) -> Option<&'static str> {
    const PAIRS: [(&str, &str); 8] = [
        ("left", "right"),
        ("leftmost", "rightmost"),
        ("lefthand", "righthand"),
        ("leftside", "rightside"),
        ("leftward", "rightward"),
        ("leftwards", "rightwards"),
        ("leftest", "rightest"),
        ("lefter", "righter"),
    ];
    PAIRS.iter().find_map(|&(l, r)| {
        if lower == l {
            Some(r)
        } else if lower == r {
            Some(l)
        } else {
            None
        }
    })
}

/// `to` written in the case pattern of `like` (all upper, capitalised, or lower).
fn same_case(like: &str, to: &str) -> String {
    let mut chars = like.chars();
    let first_upper = chars.next().is_some_and(char::is_uppercase);
    let rest_upper = like.chars().skip(1).all(char::is_uppercase);
    if first_upper && rest_upper && like.chars().count() > 1 {
        to.to_uppercase()
    } else if first_upper {
        let mut t = to.chars();
        t.next()
            .map(|c| c.to_uppercase().chain(t).collect())
            .unwrap_or_default()
    } else {
        to.to_string()
    }
}

/// `text` with every left/right word swapped (see the module docs); other text is unchanged.
pub fn mirror_spatial_words(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    let mut word_start: Option<usize> = None;
    let flush = |out: &mut String, word: &str| match mirror_word(&word.to_lowercase()) {
        Some(m) => out.push_str(&same_case(word, m)),
        None => out.push_str(word),
    };
    for (i, c) in text.char_indices() {
        if c.is_alphanumeric() {
            word_start.get_or_insert(i);
        } else {
            if let Some(s) = word_start.take() {
                flush(&mut out, &text[s..i]);
            }
            out.push(c);
        }
    }
    if let Some(s) = word_start {
        flush(&mut out, &text[s..]);
    }
    out
}

/// True when `text` holds a word that [`mirror_spatial_words`] swaps.
pub fn has_horizontal_words(text: &str) -> bool {
    text.split(|c: char| !c.is_alphanumeric())
        .any(|w| mirror_word(&w.to_lowercase()).is_some())
}
