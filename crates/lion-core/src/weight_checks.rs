//! Checks on checkpoint contents made while loading: no duplicate tensor names in a safetensors
//! header (a JSON object whose repeated key would silently win), and only finite values in every
//! tensor loaded (NaN or infinite weights caption garbage).
//!
//! The finite scan reads each tensor once in its stored dtype (f32/f64 compare bits, f16/bf16
//! test the exponent bits), a vectorisable pass; `LION_SKIP_FINITE_CHECK=1` turns it off.

use std::collections::HashSet;
use std::io::Read;
use std::path::Path;

use candle_core::{CpuStorage, Storage, Tensor};
use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};

use crate::{Error, Result};

/// Environment switch that skips [`check_finite`].
pub const SKIP_FINITE_CHECK: &str = "LION_SKIP_FINITE_CHECK";

/// The keys of a JSON object, in order, repeats kept.
struct Keys(Vec<String>);

impl<'de> serde::Deserialize<'de> for Keys {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Keys;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> std::result::Result<Keys, A::Error> {
                let mut keys = vec![];
                while let Some((k, IgnoredAny)) = m.next_entry::<String, IgnoredAny>()? {
                    keys.push(k);
                }
                Ok(Keys(keys))
            }
        }
        d.deserialize_map(V)
    }
}

/// Refuses a safetensors file whose header names a tensor twice. Headers the safetensors reader
/// will refuse anyway (too large, not JSON) pass here and are reported by it.
pub fn unique_safetensors_keys(path: &Path) -> Result<()> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len).map_err(|e| Error::io(path, e))?;
    let n = u64::from_le_bytes(len);
    // The safetensors crate's own header limit.
    if n > 100_000_000 {
        return Ok(());
    }
    let mut header = Vec::with_capacity(n as usize);
    f.take(n)
        .read_to_end(&mut header)
        .map_err(|e| Error::io(path, e))?;
    let Ok(Keys(keys)) = serde_json::from_slice::<Keys>(&header) else {
        return Ok(());
    };
    let mut seen = HashSet::with_capacity(keys.len());
    for k in &keys {
        if !seen.insert(k.as_str()) {
            return Err(Error::format(
                path,
                format!("safetensors header names tensor `{k}` twice"),
            ));
        }
    }
    Ok(())
}

/// Whether the finite scan is on (`LION_SKIP_FINITE_CHECK` unset or `0`).
pub fn finite_check_enabled() -> bool {
    std::env::var_os(SKIP_FINITE_CHECK).is_none_or(|v| v == "0")
}

/// How many elements of a contiguous CPU tensor are NaN or infinite (None: not on the CPU, or
/// an integer dtype).
pub fn non_finite_count(t: &Tensor) -> Option<usize> {
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        return None;
    };
    let (a, b) = layout.contiguous_offsets()?;
    // Exponent all ones = NaN or infinity, for every IEEE width.
    fn count<T: Copy>(v: &[T], bad: impl Fn(T) -> bool) -> usize {
        v.chunks(256)
            .map(|c| c.iter().map(|&x| bad(x) as usize).sum::<usize>())
            .sum()
    }
    Some(match cpu {
        CpuStorage::F32(v) => count(&v[a..b], |x: f32| x.to_bits() & 0x7f80_0000 == 0x7f80_0000),
        CpuStorage::F64(v) => count(&v[a..b], |x: f64| {
            x.to_bits() & 0x7ff0_0000_0000_0000 == 0x7ff0_0000_0000_0000
        }),
        CpuStorage::F16(v) => count(&v[a..b], |x: half::f16| x.to_bits() & 0x7c00 == 0x7c00),
        CpuStorage::BF16(v) => count(&v[a..b], |x: half::bf16| x.to_bits() & 0x7f80 == 0x7f80),
        _ => return None,
    })
}

/// Refuses a tensor holding NaN or infinite values, naming the checkpoint and the key.
pub fn check_finite(source: &str, key: &str, t: &Tensor) -> Result<()> {
    if !finite_check_enabled() {
        return Ok(());
    }
    match non_finite_count(t) {
        Some(0) | None => Ok(()),
        Some(n) => Err(Error::format(
            source,
            format!(
                "tensor `{key}` holds {n} NaN or infinite value(s) of {}; set {SKIP_FINITE_CHECK}=1 to load it anyway",
                t.elem_count()
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn non_finite_values_are_counted_in_every_float_dtype() {
        let v = [
            1.0f32,
            f32::NAN,
            f32::INFINITY,
            -0.0,
            f32::NEG_INFINITY,
            3e38,
        ];
        let t = Tensor::new(&v, &Device::Cpu).unwrap();
        for dt in [DType::F32, DType::F64, DType::F16, DType::BF16] {
            let t = t.to_dtype(dt).unwrap();
            // 3e38 overflows to infinity in f16.
            let want = if dt == DType::F16 { 4 } else { 3 };
            assert_eq!(non_finite_count(&t), Some(want), "{dt:?}");
        }
        assert_eq!(non_finite_count(&t.to_dtype(DType::U8).unwrap()), None);
        let e = check_finite("w.safetensors", "a.weight", &t).unwrap_err();
        assert!(e.to_string().contains("`a.weight` holds 3 NaN"), "{e}");
    }

    #[test]
    fn duplicate_header_keys_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("dup.safetensors");
        let header = br#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header);
        bytes.extend_from_slice(&1f32.to_le_bytes());
        std::fs::write(&p, &bytes).unwrap();
        let e = unique_safetensors_keys(&p).unwrap_err().to_string();
        assert!(e.contains("`a` twice"), "{e}");
    }
}
