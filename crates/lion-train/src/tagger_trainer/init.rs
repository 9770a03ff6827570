//! Seeded initialisation of every tagger variable ([`SeededInit`]): the same weights on every
//! machine for the same seed.

use super::*;

/// A `VarBuilder` backend that creates every requested tensor as a trainable `Var` in a
/// [`VarMap`], initialised from its init hint with a seeded generator (candle's CPU generator
/// cannot be seeded). Construction order fixes the draws, so the same seed gives the same model.
pub struct SeededInit {
    varmap: VarMap,
    rng: Mutex<SplitMix64>,
    /// Replaces the model's init hint for the variables where it returns `Some`.
    init_override: Option<InitOverride>,
}

/// `(variable name, shape) -> Some(init)` to replace a variable's init hint.
pub type InitOverride = fn(&str, &Shape) -> Option<Init>;

impl SeededInit {
    pub fn new(varmap: VarMap, seed: u64) -> Self {
        Self {
            varmap,
            rng: Mutex::new(SplitMix64::new(seed)),
            init_override: None,
        }
    }

    pub fn with_override(mut self, f: InitOverride) -> Self {
        self.init_override = Some(f);
        self
    }

    /// A `VarBuilder` over a fresh `SeededInit`.
    pub fn var_builder(varmap: VarMap, seed: u64, dev: &Device) -> VarBuilder<'static> {
        Self::new(varmap, seed).into_var_builder(dev)
    }

    pub fn into_var_builder(self, dev: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(self), DType::F32, dev.clone())
    }
}

/// The world tagger's init: every matrix outside the Swin (`image_proj`, `wordvec_proj`, the
/// tagging head, `fc`) is drawn from N(0, 1 / fan_in) instead of BERT's N(0, 0.02), so that the
/// logits depend on the image from the first step (at 0.02 their spread across images is ~1e-3
/// and training first collapses the image features while it fits the tag priors).
pub fn world_tagger_init(name: &str, shape: &Shape) -> Option<Init> {
    let dims = shape.dims();
    if dims.len() == 2 && name.ends_with(".weight") && !name.starts_with("visual_encoder.") {
        Some(Init::Randn {
            mean: 0.,
            stdev: 1.0 / (dims[1] as f64).sqrt(),
        })
    } else {
        None
    }
}

pub(super) fn unit(rng: &mut SplitMix64) -> f64 {
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

pub(super) fn normal(rng: &mut SplitMix64, n: usize, mean: f64, std: f64) -> Vec<f32> {
    let mut out = Vec::with_capacity(n + 1);
    while out.len() < n {
        // Box-Muller, u1 in (0, 1]
        let u1 = 1.0 - unit(rng);
        let u2 = unit(rng);
        let r = (-2.0 * u1.ln()).sqrt();
        let a = 2.0 * std::f64::consts::PI * u2;
        out.push((mean + std * r * a.cos()) as f32);
        out.push((mean + std * r * a.sin()) as f32);
    }
    out.truncate(n);
    out
}

pub(super) fn uniform(rng: &mut SplitMix64, n: usize, lo: f64, up: f64) -> Vec<f32> {
    (0..n)
        .map(|_| (lo + (up - lo) * unit(rng)) as f32)
        .collect()
}

impl SimpleBackend for SeededInit {
    fn get(
        &self,
        s: Shape,
        name: &str,
        h: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let n = s.elem_count();
        let h = self.init_override.and_then(|f| f(name, &s)).unwrap_or(h);
        let data = {
            let mut rng = self.rng.lock().expect("poisoned");
            match h {
                Init::Const(c) => vec![c as f32; n],
                Init::Randn { mean, stdev } => normal(&mut rng, n, mean, stdev),
                Init::Uniform { lo, up } => uniform(&mut rng, n, lo, up),
                Init::Kaiming {
                    dist,
                    fan,
                    non_linearity,
                } => {
                    let std = non_linearity.gain() / (fan.for_shape(&s) as f64).sqrt();
                    match dist {
                        candle_nn::init::NormalOrUniform::Normal => normal(&mut rng, n, 0.0, std),
                        candle_nn::init::NormalOrUniform::Uniform => {
                            let b = 3f64.sqrt() * std;
                            uniform(&mut rng, n, -b, b)
                        }
                    }
                }
            }
        };
        let t = Tensor::from_vec(data, s, dev)?.to_dtype(dtype)?;
        let var = Var::from_tensor(&t)?;
        let mut vars = self.varmap.data().lock().expect("poisoned");
        if vars.contains_key(name) {
            candle_core::bail!("variable {name} requested twice")
        }
        vars.insert(name.to_string(), var.clone());
        Ok(var.as_tensor().clone())
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("seeded init: {name} requested without a shape")
    }

    fn contains_tensor(&self, _name: &str) -> bool {
        false
    }
}
