//! A checkpoint file, safetensors or a PyTorch `.pth` (format sniffed from the bytes), read
//! tensor by tensor under canonical key names.
//!
//! Safetensors are validated through candle's memory map when opened, then each tensor is read
//! with a positioned read (`pread`) into its own buffer: pages of a mapping stay in the process's
//! resident set until it is unmapped, so reading a 25 GB file through the map would count the
//! whole file in the peak, beside the converted model.

use std::os::unix::fs::FileExt;

use super::*;

/// Where a safetensors tensor's bytes are: dtype, shape, absolute byte range in the file.
type Extent = (DType, Vec<usize>, u64, usize);

pub(super) enum Store {
    Safetensors {
        st: candle_core::safetensors::MmapedSafetensors,
        file: std::fs::File,
        /// stored key -> extent, for the dtypes read directly (others go through the map)
        extents: HashMap<String, Extent>,
    },
    Pth(candle_core::pickle::PthTensors),
    Memory(HashMap<String, Tensor>),
}

/// One checkpoint file (or an in-memory tensor map), with keys in canonical form.
pub struct Checkpoint {
    name: String,
    store: Store,
    /// canonical key -> (stored key, shape, stored dtype)
    keys: BTreeMap<String, (String, Shape, Option<DType>)>,
}

impl fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Checkpoint")
            .field("name", &self.name)
            .field("tensors", &self.keys.len())
            .finish()
    }
}

/// What a file's first bytes say it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    Safetensors,
    /// `torch.save` zip archive (PyTorch >= 1.6).
    PthZip,
    /// Old `torch.save` pickle stream, not a zip archive.
    PthLegacy,
}

/// Sniffs the format of a weight file from its first bytes.
pub fn sniff_format(path: &Path) -> Result<FileFormat> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let len = f.metadata().map_err(|e| Error::io(path, e))?.len();
    if len == 0 {
        return Err(Error::format(path, "file is empty (0 bytes)"));
    }
    let mut head = [0u8; 9];
    let n = f.read(&mut head).map_err(|e| Error::io(path, e))?;
    let head = &head[..n];
    if head.starts_with(b"PK\x03\x04") {
        return Ok(FileFormat::PthZip);
    }
    if head.first() == Some(&0x80) {
        return Ok(FileFormat::PthLegacy);
    }
    if n >= 9 {
        let header_len = u64::from_le_bytes(head[..8].try_into().expect("8 bytes"));
        if head[8] == b'{' && header_len + 8 <= len {
            return Ok(FileFormat::Safetensors);
        }
        if head[8] == b'{' {
            return Err(Error::format(
                path,
                format!(
                    "safetensors header says {header_len} header bytes but the file has only {len} bytes (truncated?)"
                ),
            ));
        }
    }
    Err(Error::format(
        path,
        "not a weight file: expected safetensors or a PyTorch .pth zip archive",
    ))
}

/// Runs a parser that may panic on malformed input, turning a panic into a format error.
pub(super) fn guarded<T>(
    path: &Path,
    what: &str,
    f: impl FnOnce() -> candle_core::Result<T>,
) -> Result<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(Error::format(path, format!("{what}: {e}"))),
        Err(_) => Err(Error::format(path, format!("{what}: malformed file"))),
    }
}

impl Checkpoint {
    /// Opens a safetensors or `.pth` file. A `.pth` may hold a bare state dict or
    /// `{"model": state_dict}` (or `{"state_dict": ...}`).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        match sniff_format(path)? {
            FileFormat::Safetensors => Self::open_safetensors(path),
            FileFormat::PthZip => Self::open_pth(path),
            FileFormat::PthLegacy => Err(Error::format(
                path,
                "legacy (non-zip) torch.save format is not supported; re-save it with a PyTorch >= 1.6 `torch.save`",
            )),
        }
    }

    fn open_safetensors(path: &Path) -> Result<Self> {
        crate::weight_checks::unique_safetensors_keys(path)?;
        // SAFETY: the file is mapped read-only; like every mmap reader we rely on it not being
        // truncated by another process while we hold it.
        let st = guarded(path, "cannot read safetensors", || unsafe {
            candle_core::safetensors::MmapedSafetensors::new(path)
        })?;
        let mut keys = BTreeMap::new();
        for (name, view) in st.tensors() {
            let shape = Shape::from(view.shape().to_vec());
            let dtype = DType::try_from(view.dtype()).ok();
            keys.insert(canonical_key(&name), (name, shape, dtype));
        }
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let extents = safetensors_extents(&file)
            .map_err(|m| Error::format(path, format!("cannot read safetensors header: {m}")))?;
        Ok(Self {
            name: path.display().to_string(),
            store: Store::Safetensors { st, file, extents },
            keys,
        })
    }

    fn open_pth(path: &Path) -> Result<Self> {
        let mut last_err = None;
        for key in [None, Some("model"), Some("state_dict")] {
            match guarded(path, "cannot read .pth", || {
                candle_core::pickle::PthTensors::new(path, key)
            }) {
                Ok(pth) if !pth.tensor_infos().is_empty() => {
                    let mut keys = BTreeMap::new();
                    for (name, info) in pth.tensor_infos() {
                        keys.insert(
                            canonical_key(name),
                            (name.clone(), info.layout.shape().clone(), Some(info.dtype)),
                        );
                    }
                    return Ok(Self {
                        name: path.display().to_string(),
                        store: Store::Pth(pth),
                        keys,
                    });
                }
                Ok(_) => {}
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| {
            Error::format(
                path,
                "no tensors found: expected a state dict, {\"model\": state_dict} or {\"state_dict\": ...}",
            )
        }))
    }

    /// An in-memory checkpoint (tests, converted weights). Keys go through [`KEY_RENAMES`] too.
    pub fn from_tensors(name: impl Into<String>, tensors: HashMap<String, Tensor>) -> Self {
        let keys = tensors
            .iter()
            .map(|(k, t)| {
                let v = (k.clone(), t.shape().clone(), Some(t.dtype()));
                (canonical_key(k), v)
            })
            .collect();
        Self {
            name: name.into(),
            store: Store::Memory(tensors),
            keys,
        }
    }

    /// Puts every key under `prefix` (e.g. an `eva_vit_g.pth` read as `visual_encoder.*`, a
    /// Flan-T5 folder as `t5_model.*`), so component files fit the assembled model's key tree.
    pub fn with_prefix(mut self, prefix: &str) -> Self {
        self.keys = std::mem::take(&mut self.keys)
            .into_iter()
            .map(|(k, v)| (format!("{prefix}{k}"), v))
            .collect();
        self
    }

    /// The file name (or given name) of this checkpoint, for messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the checkpoint holds the canonical key `key`.
    pub fn has_key(&self, key: &str) -> bool {
        self.keys.contains_key(key)
    }

    /// Canonical keys, sorted.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(|k| k.as_str())
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn shape(&self, key: &str) -> Option<&Shape> {
        self.keys.get(key).map(|(_, s, _)| s)
    }

    /// The stored dtype of `key` (None when the file's dtype has no candle equivalent).
    pub fn dtype(&self, key: &str) -> Option<DType> {
        self.keys.get(key).and_then(|(_, _, d)| *d)
    }

    /// Loads one tensor by canonical key, in its stored dtype, on `dev`.
    pub fn get(&self, key: &str, dev: &Device) -> Result<Tensor> {
        let (stored, _, _) = self.keys.get(key).ok_or_else(|| {
            Error::format(&self.name, format!("no tensor named `{key}` in checkpoint"))
        })?;
        let path = PathBuf::from(&self.name);
        let what = format!("cannot read tensor `{stored}`");
        let t = match &self.store {
            Store::Safetensors { st, file, extents } => match extents.get(stored) {
                Some((dtype, shape, start, len)) => {
                    read_tensor(file, *start, *len, *dtype, shape, dev)
                        .map_err(|e| Error::io(&path, e))??
                }
                None => guarded(&path, &what, || st.load(stored, dev))?,
            },
            Store::Pth(pth) => {
                let t = guarded(&path, &what, || pth.get(stored))?
                    .ok_or_else(|| Error::format(&path, format!("{what}: missing")))?;
                t.to_device(dev)?
            }
            Store::Memory(m) => m[stored].to_device(dev)?,
        };
        crate::weight_checks::check_finite(&self.name, stored, &t)?;
        Ok(t)
    }

    /// Loads every tensor (small checkpoints, tests).
    pub fn load_all(&self, dev: &Device) -> Result<HashMap<String, Tensor>> {
        self.keys()
            .map(|k| Ok((k.to_string(), self.get(k, dev)?)))
            .collect()
    }
}

/// The byte extents of a (validated) safetensors file's tensors in the dtypes read directly.
fn safetensors_extents(
    file: &std::fs::File,
) -> std::result::Result<HashMap<String, Extent>, String> {
    let mut len = [0u8; 8];
    file.read_exact_at(&mut len, 0).map_err(|e| e.to_string())?;
    let n = u64::from_le_bytes(len);
    let mut header = vec![0u8; usize::try_from(n).map_err(|e| e.to_string())?];
    file.read_exact_at(&mut header, 8)
        .map_err(|e| e.to_string())?;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&header).map_err(|e| e.to_string())?;
    let mut out = HashMap::new();
    for (key, v) in header {
        if key == "__metadata__" {
            continue;
        }
        let dtype = match v["dtype"].as_str() {
            Some("F32") => DType::F32,
            Some("F16") => DType::F16,
            Some("BF16") => DType::BF16,
            Some("F64") => DType::F64,
            Some("I64") => DType::I64,
            Some("U32") => DType::U32,
            Some("U8") => DType::U8,
            _ => continue,
        };
        let shape: Vec<usize> =
            serde_json::from_value(v["shape"].clone()).map_err(|e| e.to_string())?;
        let offsets: [u64; 2] =
            serde_json::from_value(v["data_offsets"].clone()).map_err(|e| e.to_string())?;
        let bytes = shape.iter().product::<usize>() * dtype.size_in_bytes();
        if offsets[1].checked_sub(offsets[0]) != Some(bytes as u64) {
            return Err(format!(
                "`{key}`: data_offsets {offsets:?} do not hold {shape:?} {dtype:?}"
            ));
        }
        out.insert(key, (dtype, shape, 8 + n + offsets[0], bytes));
    }
    Ok(out)
}

/// Reads `len` bytes at `start` straight into a typed buffer (one allocation, no byte copy) and
/// makes the tensor; little-endian, as safetensors stores it. The outer error is the read's.
fn read_tensor(
    file: &std::fs::File,
    start: u64,
    len: usize,
    dtype: DType,
    shape: &[usize],
    dev: &Device,
) -> std::io::Result<Result<Tensor>> {
    fn read<T: Copy + Default + candle_core::WithDType>(
        file: &std::fs::File,
        start: u64,
        len: usize,
        shape: &[usize],
        dev: &Device,
    ) -> std::io::Result<Result<Tensor>> {
        let n = len / std::mem::size_of::<T>();
        let mut v = vec![T::default(); n];
        // SAFETY: `v` is `n` initialised values of a plain numeric type (every bit pattern is a
        // valid value), viewed as its `len` bytes for the read.
        let bytes = unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr() as *mut u8, len) };
        file.read_exact_at(bytes, start)?;
        Ok(Tensor::from_vec(v, shape, dev).map_err(Error::from))
    }
    match dtype {
        DType::F32 => read::<f32>(file, start, len, shape, dev),
        DType::F16 => read::<half::f16>(file, start, len, shape, dev),
        DType::BF16 => read::<half::bf16>(file, start, len, shape, dev),
        DType::F64 => read::<f64>(file, start, len, shape, dev),
        DType::I64 => read::<i64>(file, start, len, shape, dev),
        DType::U32 => read::<u32>(file, start, len, shape, dev),
        _ => read::<u8>(file, start, len, shape, dev),
    }
}
