//! AdamW that updates each variable's storage in place, in one fused pass, over parameter groups.
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
//! Variables are named and belong to parameter groups ([`Group`]: PyTorch's `param_groups`), each
//! with its own lr scale and weight decay; [`AdamW::new`] puts unnamed variables (named by their
//! position) in one group. A step takes the gradients from a [`GradStore`] ([`AdamW::step`]) or
//! as one tensor per variable ([`AdamW::step_grads`]). The moments go to and come back from a
//! checkpoint as tensors `exp_avg.{name}` / `exp_avg_sq.{name}` ([`AdamW::state_tensors`],
//! [`AdamW::load_state`]), exactly, so a resumed run continues bit for bit.
//!
//! f32 CPU variables take the fused path; any other variable (dtype, device) falls back to the
//! same rule written with tensor ops. Tested against `candle_nn::AdamW` (tests/optim.rs) and
//! PyTorch's AdamW (same test, fixture values; tests/step_parity.rs with two groups).

use std::collections::HashMap;
use std::sync::Mutex;

use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, DType, InplaceOp2, Layout, Result, Tensor, Var};
use candle_nn::ParamsAdamW;
use rayon::prelude::*;

/// Elements per rayon task.
const CHUNK: usize = 1 << 14;

/// An AdamW parameter group: its variables train at `lr_scale` times the base learning rate,
/// with their own decoupled weight decay.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    pub name: String,
    pub lr_scale: f64,
    pub weight_decay: f64,
}

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

/// AdamW with in-place, single-pass updates over parameter groups (see the module docs).
pub struct AdamW {
    /// The variables by name, in the order of [`Self::step_grads`]'s gradients.
    vars: Vec<(String, Var)>,
    /// Each variable's moments (same order).
    moments: Vec<Moments>,
    /// Each variable's group index (same order).
    var_group: Vec<usize>,
    groups: Vec<Group>,
    /// lr (the base rate), betas and eps; the weight decay is each group's.
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

/// Zero moments for `var`, on the path it takes.
fn zero_moments(var: &Var) -> Result<Moments> {
    Ok(if fused(var) {
        let n = var.elem_count();
        Moments::Fused {
            m: Mutex::new(vec![0f32; n]),
            v: Mutex::new(vec![0f32; n]),
        }
    } else {
        let z = var.as_tensor().zeros_like()?;
        Moments::Tensors { m: z.clone(), v: z }
    })
}

/// The config error of a checkpoint's optimizer state.
fn state_err(msg: String) -> lion_core::Error {
    lion_core::Error::config("checkpoint optimizer state", msg)
}

impl AdamW {
    /// Optimises `vars` with `params`, all in one group (lr scale 1, weight decay
    /// `params.weight_decay`); each var is named by its position (`"0"`, `"1"`, ...). The moments
    /// start at zero.
    pub fn new(vars: Vec<Var>, params: ParamsAdamW) -> Result<Self> {
        let all = Group {
            name: "all".into(),
            lr_scale: 1.0,
            weight_decay: params.weight_decay,
        };
        let named = vars
            .into_iter()
            .enumerate()
            .map(|(i, v)| (i.to_string(), v))
            .collect();
        Self::build(named, params, |_, _| all.clone())
    }

    /// Optimises named `vars`, kept in name order (a stable order whatever the source, e.g. a
    /// `VarMap`), each in the group `group(name, var)` returns; groups are told apart by name (the
    /// first var of a group sets its lr scale and weight decay). `params` gives the base lr, the
    /// betas and eps; its `weight_decay` is not used (each group has its own). The moments start
    /// at zero.
    pub fn grouped(
        mut vars: Vec<(String, Var)>,
        params: ParamsAdamW,
        group: impl FnMut(&str, &Var) -> Group,
    ) -> Result<Self> {
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        Self::build(vars, params, group)
    }

    fn build(
        vars: Vec<(String, Var)>,
        params: ParamsAdamW,
        mut group: impl FnMut(&str, &Var) -> Group,
    ) -> Result<Self> {
        let mut groups: Vec<Group> = vec![];
        let mut var_group = Vec::with_capacity(vars.len());
        let mut moments = Vec::with_capacity(vars.len());
        for (name, var) in &vars {
            let g = group(name, var);
            let gi = match groups.iter().position(|x| x.name == g.name) {
                Some(i) => i,
                None => {
                    groups.push(g);
                    groups.len() - 1
                }
            };
            var_group.push(gi);
            moments.push(zero_moments(var)?);
        }
        Ok(Self {
            vars,
            moments,
            var_group,
            groups,
            params,
            step_t: 0,
        })
    }

    pub fn params(&self) -> &ParamsAdamW {
        &self.params
    }

    /// Sets the base learning rate (each group trains at its `lr_scale` times it).
    pub fn set_learning_rate(&mut self, lr: f64) {
        self.params.lr = lr;
    }

    /// Number of steps taken.
    pub fn steps(&self) -> usize {
        self.step_t
    }

    /// The variables by name, in the order [`Self::step_grads`] takes their gradients.
    pub fn vars(&self) -> &[(String, Var)] {
        &self.vars
    }

    /// The parameter groups.
    pub fn groups(&self) -> &[Group] {
        &self.groups
    }

    /// The parameter groups, to change a group's lr scale or weight decay.
    pub fn groups_mut(&mut self) -> &mut [Group] {
        &mut self.groups
    }

    /// One update of every variable that has a gradient in `grads` (others are left alone, and
    /// their moments too, as candle's and PyTorch's AdamW do).
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        self.update(|var| grads.get(var.as_tensor()).cloned())
    }

    /// One update of every variable with `grads`, one per variable in [`Self::vars`]' order.
    pub fn step_grads(&mut self, grads: &[Tensor]) -> Result<()> {
        if grads.len() != self.vars.len() {
            candle_core::bail!(
                "lion-adamw: {} gradients for {} variables",
                grads.len(),
                self.vars.len()
            )
        }
        let mut it = grads.iter();
        self.update(|_| it.next().cloned())
    }

    /// The step itself: `grad_of` is asked once per variable, in order.
    fn update(&mut self, mut grad_of: impl FnMut(&Var) -> Option<Tensor>) -> Result<()> {
        self.step_t += 1;
        let p = &self.params;
        let t = self.step_t as i32;
        let scale_m = 1.0 / (1.0 - p.beta1.powi(t));
        let scale_v = 1.0 / (1.0 - p.beta2.powi(t));
        for (((_, var), moments), &gi) in
            self.vars.iter().zip(&mut self.moments).zip(&self.var_group)
        {
            let Some(g) = grad_of(var) else {
                continue;
            };
            let group = &self.groups[gi];
            let lr = p.lr * group.lr_scale;
            let theta = var.as_tensor();
            match moments {
                Moments::Fused { m, v } => {
                    let g = g.to_dtype(DType::F32)?.contiguous()?;
                    let op = Step {
                        m,
                        v,
                        lr: lr as f32,
                        decay: (1.0 - lr * group.weight_decay) as f32,
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
                    let next = ((theta * (1.0 - lr * group.weight_decay))? - (adj * lr)?)?;
                    var.set(&next)?;
                    *m = next_m;
                    *v = next_v;
                }
            }
        }
        Ok(())
    }

    /// The moments as named tensors (`exp_avg.{name}`, `exp_avg_sq.{name}`, each of its var's
    /// shape) for a checkpoint.
    pub fn state_tensors(&self) -> Result<HashMap<String, Tensor>> {
        let mut out = HashMap::new();
        for ((name, var), moments) in self.vars.iter().zip(&self.moments) {
            let (m, v) = match moments {
                Moments::Fused { m, v } => {
                    let as_tensor = |b: &Mutex<Vec<f32>>| {
                        let b = b.lock().expect("poisoned");
                        Tensor::from_slice(&b, var.shape(), var.device())
                    };
                    (as_tensor(m)?, as_tensor(v)?)
                }
                Moments::Tensors { m, v } => (m.clone(), v.clone()),
            };
            out.insert(format!("exp_avg.{name}"), m);
            out.insert(format!("exp_avg_sq.{name}"), v);
        }
        Ok(out)
    }

    /// Restores the moments of a checkpoint ([`Self::state_tensors`]' form) and the step count
    /// `steps`; every var must have both moments, of its shape.
    pub fn load_state(
        &mut self,
        steps: u64,
        st: &HashMap<String, Tensor>,
    ) -> lion_core::Result<()> {
        let steps = usize::try_from(steps)
            .map_err(|_| state_err(format!("step {steps} does not fit this machine's usize")))?;
        let mut restored = Vec::with_capacity(self.vars.len());
        for ((name, var), moments) in self.vars.iter().zip(&self.moments) {
            let [m, v] = ["exp_avg", "exp_avg_sq"].map(|kind| {
                let key = format!("{kind}.{name}");
                let x = st
                    .get(&key)
                    .ok_or_else(|| state_err(format!("no `{key}`")))?;
                if x.shape() != var.shape() {
                    return Err(state_err(format!(
                        "`{key}` is {:?}, the var is {:?}",
                        x.shape(),
                        var.shape()
                    )));
                }
                Ok(x)
            });
            let (m, v) = (m?, v?);
            restored.push(match moments {
                Moments::Fused { .. } => {
                    let buf = |x: &Tensor| -> lion_core::Result<Mutex<Vec<f32>>> {
                        Ok(Mutex::new(
                            x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?,
                        ))
                    };
                    Moments::Fused {
                        m: buf(m)?,
                        v: buf(v)?,
                    }
                }
                Moments::Tensors { .. } => Moments::Tensors {
                    m: m.clone(),
                    v: v.clone(),
                },
            });
        }
        // All checked: nothing changes on a bad checkpoint.
        self.moments = restored;
        self.step_t = steps;
        Ok(())
    }
}
