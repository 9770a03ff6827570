//! `lion convert`: a model folder's weight files (`.pth`, safetensors, folders of shards)
//! rewritten once as one safetensors file per `lion.json` entry, streamed tensor by tensor
//! ([`crate::weights::convert_to_safetensors`]), optionally in another floating-point dtype
//! (EVA's fp16 `eva_vit_g.pth` and an f32 Flan-T5 both into bf16). Later loads read the
//! safetensors directly (no pickle parsing, no zip), and a bf16 folder is half the size.
//!
//! With a quantisation format (`--quantize q8_0|q4_0|q4k`) the ViT's and T5's linear weights (the
//! layers `--quantize` would quantize at load, found by building the model's key list) are
//! written quantized, each as two tensors ([`crate::linear::quantized_names`]), and the manifest
//! records the format: later loads read them as stored, with no dense copy and no quantisation
//! pass.

use std::path::{Path, PathBuf};

use std::collections::HashMap;

use candle_core::DType;

use crate::cpu::Quantize;
use crate::lion::LionModel;
use crate::pipeline::{open_weights, Manifest, WeightEntry};
use crate::weights::{convert_to_safetensors, QuantizeKeys};
use crate::{Error, Result};

/// What [`convert_model_folder`] wrote.
#[derive(Debug, Clone)]
pub struct Converted {
    /// Per weight entry: the file written and its tensor count.
    pub files: Vec<(PathBuf, usize)>,
    pub manifest: PathBuf,
}

/// Converts the model folder `src` (its `lion.json`) into `dst`: every weight entry becomes
/// `dst/<entry stem>.safetensors` (canonical keys, the entry's prefix kept in the manifest),
/// floating-point tensors in `dtype` (None: as stored). Tokenizer and tag-encoder paths that
/// are local to `src` are written as absolute paths, Hub ids as they are. `dst` must not hold a
/// `lion.json` yet (nothing is overwritten); each file is written to a temporary name and
/// renamed, and the manifest last. `progress(entry, done, total)` follows each tensor.
pub fn convert_model_folder(
    src: &Path,
    dst: &Path,
    dtype: Option<DType>,
    quantize: Option<Quantize>,
    mut progress: impl FnMut(&Path, usize, usize),
) -> Result<Converted> {
    let manifest_path = src.join("lion.json");
    let mut m = Manifest::read(&manifest_path)?;
    let cfg = m.lion_config()?;
    if let (Some(stored), Some(q)) = (m.quantize, quantize) {
        if stored != q {
            crate::input_err!(
                "{} is stored in {} already: convert from the dense folder to get {}",
                src.display(),
                stored.name(),
                q.name()
            )
        }
    }
    // every quantizable weight by its full key, with the format its role gives it
    let quantizable: HashMap<String, (Quantize, usize, usize)> = match quantize {
        None => HashMap::new(),
        Some(q) => {
            let (built, keys) = crate::linear::record_quantizable(|| {
                crate::weights::record_keys(|vb| {
                    LionModel::new(&cfg, 0, vb)
                        .map(|_| ())
                        .map_err(|e| candle_core::Error::Msg(e.to_string()))
                })
            });
            built?;
            keys.into_iter()
                .filter_map(|k| Some((k.key, (k.role.format(q)?, k.n, k.k))))
                .collect()
        }
    };
    if m.weights.is_empty() {
        return Err(Error::config(
            manifest_path.display(),
            "`weights` is empty: nothing to convert",
        ));
    }
    if dst.join("lion.json").exists() {
        crate::input_err!(
            "{} already holds a lion.json: convert into a new folder",
            dst.display()
        )
    }
    std::fs::create_dir_all(dst).map_err(|e| Error::io(dst, e))?;
    let mut files = vec![];
    let mut entries = vec![];
    for (i, w) in m.weights.iter().enumerate() {
        let checkpoints = open_weights(&src.join(&w.file), "")?;
        let stem = w
            .file
            .file_stem()
            .and_then(|s| s.to_str())
            .filter(|s| !s.is_empty())
            .unwrap_or("weights");
        let mut name = format!("{stem}.safetensors");
        if entries
            .iter()
            .any(|e: &WeightEntry| e.file == Path::new(&name))
        {
            name = format!("{stem}-{i}.safetensors");
        }
        let out = dst.join(&name);
        // the entry's keys are the model's less the entry's prefix
        let keys: HashMap<String, (Quantize, usize, usize)> = quantizable
            .iter()
            .filter_map(|(k, &v)| Some((k.strip_prefix(&w.prefix)?.to_string(), v)))
            .collect();
        let q = quantize.map(|_| QuantizeKeys { keys: &keys });
        let n = convert_to_safetensors(&checkpoints, &out, dtype, q, |d, t| progress(&out, d, t))?;
        files.push((out, n));
        entries.push(WeightEntry {
            file: PathBuf::from(name),
            prefix: w.prefix.clone(),
        });
    }
    m.weights = entries;
    if quantize.is_some() {
        m.quantize = quantize;
    }
    let local = |p: &Path| -> Result<PathBuf> {
        let full = src.join(p);
        match full.exists() {
            true => full.canonicalize().map_err(|e| Error::io(&full, e)),
            false => Ok(p.to_path_buf()),
        }
    };
    m.t5_tokenizer = local(&m.t5_tokenizer)?;
    m.qformer_tokenizer = m.qformer_tokenizer.as_deref().map(local).transpose()?;
    m.tag_encoder = m.tag_encoder.as_deref().map(local).transpose()?;
    let json = serde_json::to_vec_pretty(&m).map_err(|e| Error::format(dst, e.to_string()))?;
    let manifest = dst.join("lion.json");
    crate::util::write_atomic(&manifest, &json)?;
    Ok(Converted { files, manifest })
}
