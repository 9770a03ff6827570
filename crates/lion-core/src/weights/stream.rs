//! Safetensors written tensor by tensor: the header first (every key, dtype and shape is known
//! up front), then each tensor's bytes as they are made, to a temporary file renamed at the end.
//! Memory holds one tensor however big the file is: `lion convert` (a `.pth` into safetensors)
//! and the streamed random weights of `lion bench` both write through it.

use std::io::Write;

use super::*;
use crate::cpu::Quantize;

/// One tensor of a streamed file.
#[derive(Debug, Clone)]
pub struct StreamEntry {
    pub key: String,
    pub dtype: DType,
    pub shape: Shape,
}

/// The safetensors name of a dtype.
pub fn safetensors_dtype(dtype: DType) -> Result<&'static str> {
    Ok(match dtype {
        DType::F32 => "F32",
        DType::F16 => "F16",
        DType::BF16 => "BF16",
        DType::F64 => "F64",
        DType::I64 => "I64",
        DType::U32 => "U32",
        DType::U8 => "U8",
        d => crate::input_err!("no safetensors dtype for {d:?}"),
    })
}

/// A tensor's elements as little-endian bytes (row-major).
pub fn tensor_bytes(t: &Tensor) -> Result<Vec<u8>> {
    let t = t.flatten_all()?;
    fn le<T: Copy, const N: usize>(v: Vec<T>, f: impl Fn(T) -> [u8; N]) -> Vec<u8> {
        v.into_iter().flat_map(f).collect()
    }
    Ok(match t.dtype() {
        DType::F32 => le(t.to_vec1::<f32>()?, f32::to_le_bytes),
        DType::F16 => le(t.to_vec1::<half::f16>()?, half::f16::to_le_bytes),
        DType::BF16 => le(t.to_vec1::<half::bf16>()?, half::bf16::to_le_bytes),
        DType::F64 => le(t.to_vec1::<f64>()?, f64::to_le_bytes),
        DType::I64 => le(t.to_vec1::<i64>()?, i64::to_le_bytes),
        DType::U32 => le(t.to_vec1::<u32>()?, u32::to_le_bytes),
        DType::U8 => t.to_vec1::<u8>()?,
        d => crate::input_err!("no safetensors dtype for {d:?}"),
    })
}

/// Writes `entries` to `path` as safetensors; `bytes_of(i)` makes entry `i`'s bytes when its
/// turn comes (checked against its dtype and shape), `progress(done, total)` follows each one.
pub fn write_safetensors_streamed(
    path: &Path,
    entries: &[StreamEntry],
    mut bytes_of: impl FnMut(usize) -> Result<Vec<u8>>,
    mut progress: impl FnMut(usize, usize),
) -> Result<()> {
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    let mut sizes = Vec::with_capacity(entries.len());
    for e in entries {
        if header.contains_key(&e.key) {
            crate::input_err!("{}: key `{}` is given twice", path.display(), e.key)
        }
        let bytes = e.shape.elem_count() * e.dtype.size_in_bytes();
        header.insert(
            e.key.clone(),
            serde_json::json!({
                "dtype": safetensors_dtype(e.dtype)
                    .map_err(|err| Error::format(path, format!("`{}`: {err}", e.key)))?,
                "shape": e.shape.dims(),
                "data_offsets": [offset, offset + bytes],
            }),
        );
        sizes.push(bytes);
        offset += bytes;
    }
    let mut json = serde_json::to_vec(&header).map_err(|e| Error::format(path, e.to_string()))?;
    while json.len() % 8 != 0 {
        json.push(b' ');
    }
    let tmp = crate::util::temp_path(path);
    let result = (|| {
        let io = |e| Error::io(&tmp, e);
        let file = std::fs::File::create(&tmp).map_err(io)?;
        let mut out = std::io::BufWriter::with_capacity(1 << 22, file);
        out.write_all(&(json.len() as u64).to_le_bytes())
            .map_err(io)?;
        out.write_all(&json).map_err(io)?;
        for (i, e) in entries.iter().enumerate() {
            let bytes = bytes_of(i)?;
            if bytes.len() != sizes[i] {
                crate::input_err!(
                    "`{}`: {} bytes made for {:?} {:?} ({} expected)",
                    e.key,
                    bytes.len(),
                    e.dtype,
                    e.shape.dims(),
                    sizes[i]
                )
            }
            out.write_all(&bytes).map_err(io)?;
            progress(i + 1, entries.len());
        }
        let file = out.into_inner().map_err(|e| io(e.into_error()))?;
        file.sync_all().map_err(io)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// Weights to store quantized: by key (as the checkpoint names it), each weight's format and
/// (n, k).
pub struct QuantizeKeys<'a> {
    /// Per weight key: its format and (n, k).
    pub keys: &'a HashMap<String, (Quantize, usize, usize)>,
}

/// Rewrites `checkpoints` (later ones win where keys repeat) as one safetensors file at `path`,
/// tensor by tensor: floating-point tensors in `dtype` (None: as stored), the others as stored;
/// canonical key names. With `quantize`, each listed weight is written quantized instead, as
/// its two tensors ([`crate::linear::quantized_names`]). Returns the number of weights written.
pub fn convert_to_safetensors(
    checkpoints: &[Checkpoint],
    path: &Path,
    dtype: Option<DType>,
    quantize: Option<QuantizeKeys>,
    progress: impl FnMut(usize, usize),
) -> Result<usize> {
    let mut owner: BTreeMap<String, usize> = BTreeMap::new();
    for (i, c) in checkpoints.iter().enumerate() {
        for k in c.keys() {
            owner.insert(k.to_string(), i);
        }
    }
    let float = |d: DType| matches!(d, DType::F32 | DType::F16 | DType::BF16 | DType::F64);
    /// What an entry of the file holds.
    enum Part {
        Whole,
        Quants(Quantize),
        Scales,
    }
    let mut entries = Vec::with_capacity(owner.len());
    let mut order = Vec::with_capacity(owner.len());
    for (k, &i) in &owner {
        let c = &checkpoints[i];
        let stored = c.dtype(k).ok_or_else(|| {
            Error::format(
                c.name(),
                format!("`{k}`: no dtype recorded for this tensor"),
            )
        })?;
        let shape = c.shape(k).cloned().unwrap_or_else(|| Shape::from(()));
        let q = quantize.as_ref().and_then(|q| {
            let &(format, n, kk) = q.keys.get(k)?;
            (shape.dims() == [n, kk] && float(stored) && format.fits(kk)).then_some((format, n, kk))
        });
        match q {
            Some((format, n, kk)) => {
                let (qs, scales) = crate::linear::quantized_names(k, format);
                entries.push(StreamEntry {
                    key: qs,
                    dtype: DType::U8,
                    shape: Shape::from((n, format.row_bytes(kk))),
                });
                order.push((i, k.clone(), Part::Quants(format)));
                entries.push(StreamEntry {
                    key: scales,
                    dtype: DType::F32,
                    shape: Shape::from((n, kk / crate::quant::BLOCK)),
                });
                order.push((i, k.clone(), Part::Scales));
            }
            None => {
                let out = match dtype {
                    Some(d) if float(stored) => d,
                    _ => stored,
                };
                entries.push(StreamEntry {
                    key: k.clone(),
                    dtype: out,
                    shape,
                });
                order.push((i, k.clone(), Part::Whole));
            }
        }
    }
    // a weight's scales come right after its quants: kept from one to the next
    let mut scales: Option<Vec<f32>> = None;
    write_safetensors_streamed(
        path,
        &entries,
        |i| {
            let e = &entries[i];
            let (ci, key, part) = &order[i];
            let c = &checkpoints[*ci];
            let named = |err: Error| Error::format(c.name(), format!("`{key}`: {err}"));
            match part {
                Part::Whole => {
                    let t = c.get(key, &Device::Cpu)?;
                    tensor_bytes(&t.to_dtype(e.dtype)?).map_err(named)
                }
                Part::Quants(format) => {
                    let t = c.get(key, &Device::Cpu)?.to_dtype(DType::F32)?;
                    let (n, k) = t.dims2()?;
                    let values = t.flatten_all()?.to_vec1::<f32>()?;
                    let w = crate::quant::QWeight::quantize(&values, n, k, *format);
                    scales = Some(w.scales().to_vec());
                    Ok(w.quants().to_vec())
                }
                Part::Scales => {
                    let s = scales.take().expect("the quants come first");
                    Ok(s.iter().flat_map(|v| v.to_le_bytes()).collect())
                }
            }
        },
        progress,
    )?;
    Ok(order
        .iter()
        .filter(|(_, _, p)| !matches!(p, Part::Scales))
        .count())
}
