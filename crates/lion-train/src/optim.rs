//! AdamW that updates each variable's storage in place, in one fused pass.
//!
//! `candle_nn::AdamW` computes each step as about ten tensor ops per variable (every one a new
//! allocation and a full pass over memory) and then copies the results into the `Var`s. This one
//! keeps the moments as plain `f32` buffers and updates parameter, first and second moment in a
//! single pass per variable (rayon-parallel over chunks), writing the parameter in place through
//! a candle [`InplaceOp2`]. Same update rule as `candle_nn::AdamW` and PyTorch `torch.optim.AdamW`
//! (decoupled weight decay, bias correction):
//!
//! `m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;`
//! `theta = theta (1 - lr wd) - lr (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps)`.
//!
//! f32 CPU variables take the fused path; any other variable (dtype, device) falls back to the
//! same rule written with tensor ops. Tested against `candle_nn::AdamW` (tests/optim.rs) and
//! PyTorch's AdamW (same test, fixture values).

use std::sync::Mutex;

use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, DType, InplaceOp2, Layout, Result, Tensor, Var};
use candle_nn::ParamsAdamW;
use rayon::prelude::*;

/// Elements per rayon task.
const CHUNK: usize = 1 << 14;

/// One variable's state: moments as f32 buffers (fused path) or tensors (fallback).
enum Moments {
    Fused {
        m: Mutex<Vec<f32>>,
        v: Mutex<Vec<f32>>,
    },
    Tensors {
        m: Tensor,
        v: Tensor,
    },
}

struct Slot {
    var: Var,
    moments: Moments,
}

/// AdamW with in-place, single-pass updates (see the module docs).
pub struct AdamW {
    slots: Vec<Slot>,
    params: ParamsAdamW,
    step_t: usize,
}

/// The fused update of one contiguous f32 variable: `s1` the parameter (written), `s2` its
/// gradient; the moments are the op's own buffers.
struct Step<'a> {
    m: &'a Mutex<Vec<f32>>,
    v: &'a Mutex<Vec<f32>>,
    lr: f32,
    decay: f32,
    beta1: f32,
    beta2: f32,
    scale_m: f32,
    scale_v: f32,
    eps: f32,
}

impl InplaceOp2 for Step<'_> {
    fn name(&self) -> &'static str {
        "lion-adamw"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<()> {
        let (CpuStorage::F32(theta), CpuStorage::F32(grad)) = (s1, s2) else {
            candle_core::bail!("lion-adamw: parameter and gradient must be f32")
        };
        let (Some((a1, b1)), Some((a2, b2))) = (l1.contiguous_offsets(), l2.contiguous_offsets())
        else {
            candle_core::bail!("lion-adamw: parameter and gradient must be contiguous")
        };
        let theta = &mut theta[a1..b1];
        let grad = &grad[a2..b2];
        let mut m = self.m.lock().expect("poisoned");
        let mut v = self.v.lock().expect("poisoned");
        if theta.len() != grad.len() || m.len() != theta.len() || v.len() != theta.len() {
            candle_core::bail!(
                "lion-adamw: parameter ({}), gradient ({}) and moments ({}) differ in size",
                theta.len(),
                grad.len(),
                m.len()
            )
        }
        let (b1, b2) = (self.beta1, self.beta2);
        let (c1, c2) = (1.0 - b1, 1.0 - b2);
        theta
            .par_chunks_mut(CHUNK)
            .zip(grad.par_chunks(CHUNK))
            .zip(m.par_chunks_mut(CHUNK))
            .zip(v.par_chunks_mut(CHUNK))
            .for_each(|(((t, g), m), v)| {
                for i in 0..t.len() {
                    let gi = g[i];
                    let mi = b1 * m[i] + c1 * gi;
                    let vi = b2 * v[i] + c2 * (gi * gi);
                    m[i] = mi;
                    v[i] = vi;
                    let upd = (mi * self.scale_m) / ((vi * self.scale_v).sqrt() + self.eps);
                    t[i] = t[i] * self.decay - self.lr * upd;
                }
            });
        Ok(())
    }
}

fn fused(var: &Var) -> bool {
    var.dtype() == DType::F32
        && lion_core::kernels::fused(var.device())
        && var.as_tensor().is_contiguous()
}

impl AdamW {
    /// Optimises `vars` with `params` (the moments start at zero).
    pub fn new(vars: Vec<Var>, params: ParamsAdamW) -> Result<Self> {
        let slots = vars
            .into_iter()
            .map(|var| {
                let moments = if fused(&var) {
                    let n = var.elem_count();
                    Moments::Fused {
                        m: Mutex::new(vec![0f32; n]),
                        v: Mutex::new(vec![0f32; n]),
                    }
                } else {
                    let z = var.as_tensor().zeros_like()?;
                    Moments::Tensors { m: z.clone(), v: z }
                };
                Ok(Slot { var, moments })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            slots,
            params,
            step_t: 0,
        })
    }

    pub fn params(&self) -> &ParamsAdamW {
        &self.params
    }

    pub fn set_learning_rate(&mut self, lr: f64) {
        self.params.lr = lr;
    }

    /// Number of steps taken.
    pub fn steps(&self) -> usize {
        self.step_t
    }

    /// One update of every variable that has a gradient in `grads` (others are left alone, and
    /// their moments too, as candle's and PyTorch's AdamW do).
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        self.step_t += 1;
        let p = &self.params;
        let t = self.step_t as i32;
        let scale_m = 1.0 / (1.0 - p.beta1.powi(t));
        let scale_v = 1.0 / (1.0 - p.beta2.powi(t));
        for slot in &mut self.slots {
            let theta = slot.var.as_tensor();
            let Some(g) = grads.get(theta) else {
                continue;
            };
            match &mut slot.moments {
                Moments::Fused { m, v } => {
                    let g = g.to_dtype(DType::F32)?.contiguous()?;
                    let op = Step {
                        m,
                        v,
                        lr: p.lr as f32,
                        decay: (1.0 - p.lr * p.weight_decay) as f32,
                        beta1: p.beta1 as f32,
                        beta2: p.beta2 as f32,
                        scale_m: scale_m as f32,
                        scale_v: scale_v as f32,
                        eps: p.eps as f32,
                    };
                    theta.inplace_op2(&g, &op)?;
                }
                Moments::Tensors { m, v } => {
                    // Detached, so the moments never keep a backward graph alive.
                    let g = &g.detach();
                    let next_m = ((&*m * p.beta1)? + (g * (1.0 - p.beta1))?)?;
                    let next_v = ((&*v * p.beta2)? + (g.sqr()? * (1.0 - p.beta2))?)?;
                    let adj = ((&next_m * scale_m)? / ((&next_v * scale_v)?.sqrt()? + p.eps)?)?;
                    let next = ((theta * (1.0 - p.lr * p.weight_decay))? - (adj * p.lr)?)?;
                    slot.var.set(&next)?;
                    *m = next_m;
                    *v = next_v;
                }
            }
        }
        Ok(())
    }
}
