//! Input validation rules, one place per input kind, shared by every entry point (the CLI, the
//! server, the trainer). A rejection is an [`Invalid`]: the field, the value and the rule broken.
//!
//! - Model configs: [`crate::lion::LionConfig::validate`] (every size at least 1, epsilons
//!   finite and positive, dropouts in [0, 1), products that would overflow) and
//!   [`check_memory`] (the parameter count times 4 bytes plus a per-sample activation estimate
//!   against `MemAvailable`).
//! - Generation options: [`GenerationSettings::check`] against [`GenerationLimits`] (the same rules
//!   for `lion caption/vqa/ground` flags and the server's request fields), and [`text`] for
//!   questions, expressions and prompts.
//! - The compute device: [`device`] (`--device cpu|cuda[:N]`, CUDA only in a `cuda` build).

use std::fmt::Display;

use crate::generate::{GenerationConfig, Sampling};

/// A rejected input value: which field, what value, which rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{field}` = {value}: {rule}")]
pub struct Invalid {
    pub field: String,
    pub value: String,
    pub rule: String,
}

impl Invalid {
    pub fn new(field: impl Into<String>, value: impl Display, rule: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            value: value.to_string(),
            rule: rule.into(),
        }
    }

    /// Puts the field under a parent (`num_layers` -> `t5.num_layers`).
    pub fn within(mut self, parent: &str) -> Self {
        self.field = format!("{parent}.{}", self.field);
        self
    }
}

impl From<Invalid> for String {
    fn from(e: Invalid) -> String {
        e.to_string()
    }
}

/// The result of one rule.
pub type Check = std::result::Result<(), Invalid>;

/// `v >= 1`.
pub fn positive(field: &str, v: usize) -> Check {
    if v == 0 {
        return Err(Invalid::new(field, v, "must be at least 1"));
    }
    Ok(())
}

/// Every `(field, value)` is at least 1.
pub fn all_positive(fields: &[(&str, usize)]) -> Check {
    fields.iter().try_for_each(|&(f, v)| positive(f, v))
}

/// A layer-norm epsilon: finite and > 0.
pub fn epsilon(field: &str, v: f64) -> Check {
    if !(v.is_finite() && v > 0.0) {
        return Err(Invalid::new(field, v, "must be a finite number > 0"));
    }
    Ok(())
}

/// A dropout probability: in [0, 1).
pub fn dropout(field: &str, v: f64) -> Check {
    if !(0.0..1.0).contains(&v) {
        return Err(Invalid::new(field, v, "must be in [0, 1)"));
    }
    Ok(())
}

/// `lo <= v <= hi` (NaN fails).
pub fn in_range<T: PartialOrd + Display + Copy>(
    field: &str,
    v: T,
    lo: T,
    hi: T,
) -> Result<T, Invalid> {
    if v >= lo && v <= hi {
        Ok(v)
    } else {
        Err(Invalid::new(
            field,
            v,
            format!("must be between {lo} and {hi}"),
        ))
    }
}

/// `a divides b`, for width / heads style pairs.
pub fn divides(field: &str, v: usize, by_field: &str, by: usize) -> Check {
    positive(by_field, by)?;
    if v % by != 0 {
        return Err(Invalid::new(
            field,
            v,
            format!("must be a multiple of {by_field} ({by})"),
        ));
    }
    Ok(())
}

/// The product of sizes, or the rule broken when it overflows 64 bits.
pub fn product(field: &str, factors: &[usize]) -> Result<u64, Invalid> {
    factors
        .iter()
        .try_fold(1u64, |acc, &f| acc.checked_mul(f as u64))
        .ok_or_else(|| {
            Invalid::new(
                field,
                format!("{factors:?}"),
                "the product of these sizes overflows 64 bits",
            )
        })
}

/// A question, expression or prompt: not blank, at most `max_chars` characters.
pub fn text(field: &str, s: &str, max_chars: usize) -> Check {
    if s.trim().is_empty() {
        return Err(Invalid::new(field, format!("{s:?}"), "must not be empty"));
    }
    let n = s.chars().count();
    if n > max_chars {
        return Err(Invalid::new(
            field,
            format!("{n} characters"),
            format!("must be at most {max_chars} characters"),
        ));
    }
    Ok(())
}

/// A tag probability threshold: strictly between 0 and 1 (0 keeps every tag, 1 none; NaN
/// fails). The server's `/v1/tags` applies the same rule to its `threshold` field.
pub fn tag_threshold(field: &str, t: f32) -> Check {
    if !(t > 0.0 && t < 1.0) {
        return Err(Invalid::new(
            field,
            t,
            "must be between 0 and 1 (exclusive)",
        ));
    }
    Ok(())
}

/// `--device`: `cpu`, `cuda` or `cuda:N` ([`crate::device::DeviceSpec::parse`]), and a CUDA
/// device only in a build with the `cuda` feature.
pub fn device(s: &str) -> Result<crate::device::DeviceSpec, Invalid> {
    let spec = crate::device::DeviceSpec::parse(s)?;
    if spec.is_cuda() && !crate::device::CUDA_BUILT {
        return Err(Invalid::new(
            "device",
            format!("{s:?}"),
            crate::device::NO_CUDA_BUILD,
        ));
    }
    Ok(spec)
}

/// The largest generation settings a request may ask for (the server's `--max-new-tokens` etc.;
/// the CLI uses the defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GenerationLimits {
    pub max_new_tokens: usize,
    pub max_num_beams: usize,
    /// Characters of a question, expression or prompt.
    pub max_prompt_chars: usize,
}

impl Default for GenerationLimits {
    fn default() -> Self {
        Self {
            max_new_tokens: 256,
            max_num_beams: 8,
            max_prompt_chars: 1000,
        }
    }
}

/// Generation settings as a request gives them (`min_new_tokens` does not count the decoder
/// start token; [`GenerationConfig::min_length`] does).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GenerationSettings {
    pub num_beams: usize,
    pub max_new_tokens: usize,
    pub min_new_tokens: usize,
    pub repetition_penalty: f32,
    pub length_penalty: f32,
}

impl GenerationSettings {
    /// From a decoder config (`min_length` 0 and 1 both mean no minimum).
    pub fn from_config(c: &GenerationConfig) -> Self {
        Self {
            num_beams: c.num_beams,
            max_new_tokens: c.max_new_tokens,
            min_new_tokens: c.min_length.saturating_sub(1),
            repetition_penalty: c.repetition_penalty,
            length_penalty: c.length_penalty,
        }
    }

    /// The one rule set: beams 1..=limit, new tokens 1..=limit, min_new_tokens 0..=max_new_tokens,
    /// repetition_penalty in [0.01, 10], length_penalty in [-10, 10] (both finite). Checked in
    /// that order; the first broken rule is returned.
    pub fn check(&self, limits: &GenerationLimits) -> Check {
        in_range("num_beams", self.num_beams, 1, limits.max_num_beams)?;
        in_range(
            "max_new_tokens",
            self.max_new_tokens,
            1,
            limits.max_new_tokens,
        )?;
        in_range(
            "min_new_tokens",
            self.min_new_tokens,
            0,
            self.max_new_tokens,
        )?;
        in_range("repetition_penalty", self.repetition_penalty, 0.01, 10.0)?;
        in_range("length_penalty", self.length_penalty, -10.0, 10.0)?;
        Ok(())
    }
}

/// Sampling as CLI flags or request fields give it (HF `do_sample`): `temperature` 0 means no
/// sampling, and `top_p` / `top_k` are then ignored (as HF ignores its warpers without
/// `do_sample`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingSettings {
    pub temperature: f32,
    pub top_p: f32,
    pub top_k: Option<usize>,
    pub seed: u64,
}

impl SamplingSettings {
    /// The one rule set: temperature in [0, 100], top_p in [0, 1]; when sampling (temperature
    /// above 0) top_p above 0 and top_k at least 1. Checked in that order.
    pub fn check(&self) -> Result<Option<Sampling>, Invalid> {
        let temperature = in_range("temperature", self.temperature, 0.0, 100.0)?;
        let top_p = in_range("top_p", self.top_p, 0.0, 1.0)?;
        if temperature == 0.0 {
            return Ok(None);
        }
        if top_p == 0.0 {
            return Err(Invalid::new(
                "top_p",
                top_p,
                "must be more than 0 (1 keeps every token)",
            ));
        }
        if self.top_k == Some(0) {
            return Err(Invalid::new("top_k", 0, "must be at least 1"));
        }
        Ok(Some(Sampling {
            temperature,
            top_p,
            top_k: self.top_k,
            seed: self.seed,
        }))
    }
}

/// Beams and returned sequences: sampling takes one beam; without sampling `n` is at most
/// `num_beams` (the `n` best beams), and greedy search returns one sequence.
pub fn check_sequences(num_beams: usize, n: usize, sampling: bool) -> Check {
    if sampling && num_beams != 1 {
        return Err(Invalid::new(
            "num_beams",
            num_beams,
            "must be 1 when sampling (temperature > 0)",
        ));
    }
    if !sampling && n > num_beams {
        return Err(Invalid::new(
            "n",
            n,
            format!("must be at most num_beams ({num_beams}) without sampling"),
        ));
    }
    Ok(())
}

/// Bytes available for new allocations (`MemAvailable` of `/proc/meminfo`); None off Linux or
/// when unreadable.
pub fn mem_available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// Environment switch that skips [`check_memory`] (`LION_NO_MEMORY_CHECK=1`).
pub const NO_MEMORY_CHECK: &str = "LION_NO_MEMORY_CHECK";

/// Refuses work whose estimated memory (`need` bytes, described by `what`) exceeds what the
/// machine has available, before anything is allocated. Off with `LION_NO_MEMORY_CHECK=1`.
pub fn check_memory(what: &str, need: u64) -> Check {
    if std::env::var_os(NO_MEMORY_CHECK).is_some_and(|v| v != "0") {
        return Ok(());
    }
    let Some(avail) = mem_available() else {
        return Ok(());
    };
    if need > avail {
        return Err(Invalid::new(
            what,
            format!("~{:.1} GB", need as f64 / 1e9),
            format!(
                "the estimate exceeds the {:.1} GB of memory available (MemAvailable); set {NO_MEMORY_CHECK}=1 to try anyway",
                avail as f64 / 1e9
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_name_field_value_and_rule() {
        let e = positive("t5.num_layers", 0).unwrap_err();
        assert_eq!(e.to_string(), "`t5.num_layers` = 0: must be at least 1");
        assert!(epsilon("eps", -1e-6).is_err());
        assert!(epsilon("eps", f64::NAN).is_err());
        assert!(dropout("p", 1.0).is_err());
        assert!(product("x", &[1 << 40, 1 << 30]).is_err());
        assert_eq!(product("x", &[3, 4]).unwrap(), 12);
        assert!(in_range("v", f32::NAN, 0.0, 1.0).is_err());
        for t in [2.0, -1.0, f32::NAN, 0.0, 1.0] {
            assert!(tag_threshold("threshold", t).is_err(), "{t}");
        }
        assert!(tag_threshold("threshold", 0.68).is_ok());
        assert!(text("q", " \n", 10).is_err());
        assert!(text("q", "héllo", 4)
            .unwrap_err()
            .value
            .contains("5 characters"));
    }

    #[test]
    fn generation_rules() {
        let l = GenerationLimits::default();
        let mut s = GenerationSettings::from_config(&GenerationConfig::default());
        s.max_new_tokens = 64;
        assert!(s.check(&l).is_ok());
        s.min_new_tokens = 65;
        assert_eq!(s.check(&l).unwrap_err().field, "min_new_tokens");
        s.min_new_tokens = 0;
        s.num_beams = 0;
        assert_eq!(s.check(&l).unwrap_err().field, "num_beams");
    }

    #[test]
    fn sampling_rules() {
        let s = |temperature, top_p, top_k| {
            SamplingSettings {
                temperature,
                top_p,
                top_k,
                seed: 3,
            }
            .check()
        };
        assert_eq!(
            s(0.0, 0.0, Some(0)),
            Ok(None),
            "no sampling: the warpers are ignored"
        );
        let on = s(0.7, 0.9, Some(5)).unwrap().unwrap();
        assert_eq!(
            (on.temperature, on.top_p, on.top_k, on.seed),
            (0.7, 0.9, Some(5), 3)
        );
        for (t, p, k, field) in [
            (-0.1, 1.0, None, "temperature"),
            (f32::NAN, 1.0, None, "temperature"),
            (101.0, 1.0, None, "temperature"),
            (1.0, 1.5, None, "top_p"),
            (1.0, 0.0, None, "top_p"),
            (1.0, 1.0, Some(0), "top_k"),
        ] {
            assert_eq!(s(t, p, k).unwrap_err().field, field, "{t} {p} {k:?}");
        }
        assert_eq!(check_sequences(3, 1, true).unwrap_err().field, "num_beams");
        assert_eq!(check_sequences(2, 3, false).unwrap_err().field, "n");
        assert!(check_sequences(1, 4, true).is_ok() && check_sequences(5, 3, false).is_ok());
    }
}
