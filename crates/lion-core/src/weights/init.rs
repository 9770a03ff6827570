//! Seeded random initialisation (`--random-weights`): candle's [`Init`] kinds drawn from a
//! SplitMix64 stream per (seed, key).

use super::*;

/// candle's [`Init`] drawn from a generator seeded by (`seed`, `key`) (SplitMix64; normals by
/// Box-Muller), same distributions as `Init::var`.
pub(super) fn seeded_init(
    h: Init,
    shape: &Shape,
    seed: u64,
    key: &str,
) -> candle_core::Result<Tensor> {
    let n = shape.elem_count();
    let state = key.bytes().fold(seed ^ 0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    });
    let mut rng = lion_rng::SplitMix64::new(state);
    let values = draw(&h, shape, n, &mut || rng.next_f64());
    Tensor::from_vec(values, shape.clone(), &Device::Cpu)
}

/// `n` values of `h` (whose fan, for Kaiming, is `shape`'s) from the uniform stream `next`:
/// uniforms as `lo + (up - lo) u`, normals by Box-Muller ([`normal`]).
pub(super) fn draw(h: &Init, shape: &Shape, n: usize, next: &mut impl FnMut() -> f64) -> Vec<f32> {
    use candle_nn::init::NormalOrUniform;
    let mut uniform = |lo: f64, up: f64| -> Vec<f32> {
        (0..n).map(|_| (lo + (up - lo) * next()) as f32).collect()
    };
    match *h {
        Init::Const(c) => vec![c as f32; n],
        Init::Uniform { lo, up } => uniform(lo, up),
        Init::Randn { mean, stdev } => normal(n, mean, stdev, next),
        Init::Kaiming {
            dist,
            fan,
            non_linearity,
        } => {
            let std = non_linearity.gain() / (fan.for_shape(shape) as f64).sqrt();
            match dist {
                NormalOrUniform::Uniform => {
                    let b = 3f64.sqrt() * std;
                    uniform(-b, b)
                }
                NormalOrUniform::Normal => normal(n, 0.0, std, next),
            }
        }
    }
}

pub(super) fn normal(n: usize, mean: f64, std: f64, next: &mut impl FnMut() -> f64) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let u1 = next().max(f64::MIN_POSITIVE);
            let u2 = next();
            let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
            (mean + std * z) as f32
        })
        .collect()
}
