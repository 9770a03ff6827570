//! Random weights written straight to a safetensors file, tensor by tensor: what a model asks
//! for is recorded without allocating ([`record_keys`]), then each tensor is drawn in parallel
//! chunks from a seeded stream, converted to the stored dtype and appended to the file
//! ([`write_random_safetensors`]). Peak memory is one tensor, however big the model: this is how
//! `lion bench` makes LION-4B/12B checkpoints.

use candle_nn::var_builder::SimpleBackend;
use rayon::prelude::*;

use super::*;

/// One tensor a model asks for: its key, shape and initialisation.
#[derive(Debug, Clone)]
pub struct KeySpec {
    pub key: String,
    pub shape: Shape,
    pub init: Init,
}

/// A [`SimpleBackend`] that records every request and hands out a broadcast zero (no storage).
/// Clones share the record.
#[derive(Default, Clone)]
struct Recorder {
    keys: Arc<Mutex<Vec<KeySpec>>>,
}

impl SimpleBackend for Recorder {
    fn get(
        &self,
        s: Shape,
        name: &str,
        h: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let mut keys = self.keys.lock().expect("poisoned");
        if !keys.iter().any(|k| k.key == name) {
            keys.push(KeySpec {
                key: name.to_string(),
                shape: s.clone(),
                init: h,
            });
        }
        Tensor::zeros((), dtype, dev)?.broadcast_as(s)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("recording keys: `{name}` has no shape to record")
    }

    fn contains_tensor(&self, _: &str) -> bool {
        false
    }
}

/// The tensors `build` asks its `VarBuilder` for (as a random-weights model would), in request
/// order, without allocating them.
pub fn record_keys(
    build: impl FnOnce(VarBuilder<'static>) -> candle_core::Result<()>,
) -> Result<Vec<KeySpec>> {
    let rec = Recorder::default();
    build(VarBuilder::from_backend(
        Box::new(rec.clone()),
        DType::F32,
        Device::Cpu,
    ))?;
    let keys = std::mem::take(&mut *rec.keys.lock().expect("poisoned"));
    Ok(keys)
}

/// Elements per independently seeded chunk of a tensor's stream.
const CHUNK: usize = 1 << 20;

/// Draws chunk `c` (elements `c * CHUNK ..`) of `spec`'s values. `Const(0)` (biases, zero-init
/// projections) becomes N(0, 0.02) so that every weight is exercised.
fn draw_chunk(spec: &KeySpec, seed: u64, c: usize) -> Vec<f32> {
    let len = CHUNK.min(spec.shape.elem_count() - c * CHUNK);
    let state = spec.key.bytes().fold(seed ^ 0x9e37_79b9_7f4a_7c15, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    }) ^ (c as u64).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    let mut rng = lion_rng::SplitMix64::new(state);
    let init = match spec.init {
        Init::Const(0.0) => Init::Randn {
            mean: 0.0,
            stdev: 0.02,
        },
        h => h,
    };
    draw(&init, &spec.shape, len, &mut || rng.next_f64())
}

/// Writes `keys` as a safetensors file of seeded random values in `dtype` (f32, bf16 or f16),
/// streamed ([`write_safetensors_streamed`]): each tensor drawn in parallel chunks when its turn
/// comes, so memory holds one tensor at a time. `progress(done, total)` follows each tensor.
pub fn write_random_safetensors(
    path: &Path,
    keys: &[KeySpec],
    dtype: DType,
    seed: u64,
    progress: impl FnMut(usize, usize),
) -> Result<()> {
    if !matches!(dtype, DType::F32 | DType::BF16 | DType::F16) {
        crate::input_err!("random weights are written as f32, bf16 or f16, not {dtype:?}")
    }
    let entries: Vec<StreamEntry> = keys
        .iter()
        .map(|k| StreamEntry {
            key: k.key.clone(),
            dtype,
            shape: k.shape.clone(),
        })
        .collect();
    let draw = |i: usize| -> Result<Vec<u8>> {
        let k = &keys[i];
        let chunks: Vec<Vec<u8>> = (0..k.shape.elem_count().div_ceil(CHUNK))
            .into_par_iter()
            .map(|c| {
                let v = draw_chunk(k, seed, c);
                match dtype {
                    DType::BF16 => v
                        .iter()
                        .flat_map(|x| half::bf16::from_f32(*x).to_le_bytes())
                        .collect(),
                    DType::F16 => v
                        .iter()
                        .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
                        .collect(),
                    _ => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                }
            })
            .collect();
        Ok(chunks.concat())
    };
    write_safetensors_streamed(path, &entries, draw, progress)
}
