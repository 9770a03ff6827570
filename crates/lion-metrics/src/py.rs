//! The Python 3 semantics the reference scorers rely on: `str.isspace()` / `split()`, `re`'s
//! `\d`, `round(x, n)`, and `==` between JSON-loaded values.

use serde_json::Value;

/// Python's `str.isspace()` (what `split()` and `strip()` use): Unicode White_Space plus the
/// four information separators U+001C..U+001F.
pub fn py_space(c: char) -> bool {
    c.is_whitespace() || matches!(c, '\u{1C}'..='\u{1F}')
}

/// Python's `str.split()` without arguments.
pub fn py_split(s: &str) -> impl Iterator<Item = &str> {
    s.split(py_space).filter(|w| !w.is_empty())
}

/// Python's `str.strip()` without arguments.
pub fn py_strip(s: &str) -> &str {
    s.trim_matches(py_space)
}

/// The Unicode decimal digits (general category Nd) of Python 3.11 (Unicode 14.0), as ranges:
/// what `re`'s `\d` matches in a str pattern. Generated with `chr(c).isdecimal()`.
const DECIMAL: &[(u32, u32)] = &[
    (0x30, 0x39),
    (0x660, 0x669),
    (0x6F0, 0x6F9),
    (0x7C0, 0x7C9),
    (0x966, 0x96F),
    (0x9E6, 0x9EF),
    (0xA66, 0xA6F),
    (0xAE6, 0xAEF),
    (0xB66, 0xB6F),
    (0xBE6, 0xBEF),
    (0xC66, 0xC6F),
    (0xCE6, 0xCEF),
    (0xD66, 0xD6F),
    (0xDE6, 0xDEF),
    (0xE50, 0xE59),
    (0xED0, 0xED9),
    (0xF20, 0xF29),
    (0x1040, 0x1049),
    (0x1090, 0x1099),
    (0x17E0, 0x17E9),
    (0x1810, 0x1819),
    (0x1946, 0x194F),
    (0x19D0, 0x19D9),
    (0x1A80, 0x1A89),
    (0x1A90, 0x1A99),
    (0x1B50, 0x1B59),
    (0x1BB0, 0x1BB9),
    (0x1C40, 0x1C49),
    (0x1C50, 0x1C59),
    (0xA620, 0xA629),
    (0xA8D0, 0xA8D9),
    (0xA900, 0xA909),
    (0xA9D0, 0xA9D9),
    (0xA9F0, 0xA9F9),
    (0xAA50, 0xAA59),
    (0xABF0, 0xABF9),
    (0xFF10, 0xFF19),
    (0x104A0, 0x104A9),
    (0x10D30, 0x10D39),
    (0x11066, 0x1106F),
    (0x110F0, 0x110F9),
    (0x11136, 0x1113F),
    (0x111D0, 0x111D9),
    (0x112F0, 0x112F9),
    (0x11450, 0x11459),
    (0x114D0, 0x114D9),
    (0x11650, 0x11659),
    (0x116C0, 0x116C9),
    (0x11730, 0x11739),
    (0x118E0, 0x118E9),
    (0x11950, 0x11959),
    (0x11C50, 0x11C59),
    (0x11D50, 0x11D59),
    (0x11DA0, 0x11DA9),
    (0x16A60, 0x16A69),
    (0x16AC0, 0x16AC9),
    (0x16B50, 0x16B59),
    (0x1D7CE, 0x1D7FF),
    (0x1E140, 0x1E149),
    (0x1E2F0, 0x1E2F9),
    (0x1E950, 0x1E959),
    (0x1FBF0, 0x1FBF9),
];

/// `re`'s `\d` on a str pattern (Python 3): any Unicode decimal digit.
pub fn is_decimal(c: char) -> bool {
    let u = c as u32;
    DECIMAL.iter().any(|&(a, b)| (a..=b).contains(&u))
}

/// Python 3's `round(x, n)` for a float: the decimal with `n` places nearest to the exact binary
/// value (ties, which only exactly representable values can be, to even), read back as a float.
/// Rust's `{:.n}` formatting rounds the same way.
pub fn py_round(x: f64, n: usize) -> f64 {
    if !x.is_finite() {
        return x;
    }
    format!("{x:.n$}").parse().unwrap_or(x)
}

/// Python's `==` between two values as `json.load` builds them: numbers compare by value across
/// int and float (and `true == 1`, `false == 0`), exactly (a float equals an int only when it
/// is that integer); strings, lists and dicts compare structurally.
pub fn py_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Null, Value::Null) => true,
        (Value::String(x), Value::String(y)) => x == y,
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| py_eq(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| py_eq(v, w)))
        }
        _ => match (py_number(a), py_number(b)) {
            (Some(x), Some(y)) => x == y,
            _ => false,
        },
    }
}

/// A JSON number or boolean as Python compares it.
#[derive(Debug, Clone, Copy)]
enum PyNum {
    Int(i128),
    Float(f64),
}

impl PartialEq for PyNum {
    fn eq(&self, other: &Self) -> bool {
        use PyNum::*;
        match (*self, *other) {
            (Int(a), Int(b)) => a == b,
            (Float(a), Float(b)) => a == b,
            (Int(i), Float(f)) | (Float(f), Int(i)) => {
                f.fract() == 0.0 && f.abs() < 1e38 && f as i128 == i
            }
        }
    }
}

fn py_number(v: &Value) -> Option<PyNum> {
    match v {
        Value::Bool(b) => Some(PyNum::Int(i128::from(*b))),
        Value::Number(n) => n
            .as_i64()
            .map(|i| PyNum::Int(i.into()))
            .or_else(|| n.as_u64().map(|u| PyNum::Int(u.into())))
            .or_else(|| n.as_f64().map(PyNum::Float)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn round_like_python3() {
        // exact ties go to even; 2.675 is 2.67499999... in binary
        for (x, want) in [
            (0.125, 0.12),
            (0.375, 0.38),
            (2.675, 2.67),
            (3.125, 3.12),
            (12.345, 12.35),
            (66.66666666666667, 66.67),
            (0.005, 0.01),
        ] {
            assert_eq!(py_round(x, 2), want, "{x}");
        }
    }

    #[test]
    fn equality_like_python() {
        assert!(py_eq(&json!(1), &json!(1.0)));
        assert!(py_eq(&json!(true), &json!(1)));
        assert!(!py_eq(&json!(true), &json!(2)));
        assert!(!py_eq(&json!("1"), &json!(1)));
        assert!(!py_eq(
            &json!(9007199254740993u64),
            &json!(9007199254740992.0)
        ));
        assert!(py_eq(&json!({"a": [1, "x"]}), &json!({"a": [1.0, "x"]})));
        assert!(!py_eq(&json!({"a": 1}), &json!({"a": 1, "b": 2})));
    }

    #[test]
    fn whitespace_and_digits_like_python() {
        assert_eq!(py_split(" a\u{1c}b\u{a0}c\u{2003}d\u{200b}e ").count(), 4);
        assert_eq!(py_strip("\u{85} x \u{1f}"), "x");
        assert!(is_decimal('٣') && is_decimal('１') && is_decimal('9'));
        assert!(!is_decimal('²') && !is_decimal('a') && !is_decimal('Ⅻ'));
    }
}
