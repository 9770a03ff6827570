//! What PEFT trains and how: the trainable selector ([`TrainableSet`], upstream's rule), the AdamW
//! parameter groups (decay, lr scales), global-norm clipping and gradient accumulation.

use super::*;

/// The set of trained weights.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrainableSet {
    /// LION's parameter-efficient set ([`is_trainable`]).
    #[default]
    Peft,
    /// Every weight, the ViT and T5 included, except T5's adapters and routers, which keep their
    /// identity initialisation (zero up-projection), and the Q-Former's last text FFN (no
    /// gradient): the demo's backbone pretraining.
    All,
}

/// Whether a LION key is trained (upstream's set, less the Q-Former's last text FFN, which gets
/// no gradient). `qformer_layers`: the Q-Former's depth.
pub fn is_trainable(key: &str, qformer_layers: usize) -> bool {
    if key.starts_with("visual_encoder.") {
        return false;
    }
    if let Some(rest) = key.strip_prefix("t5_model.") {
        return rest.contains("adapter");
    }
    if key.starts_with("Qformer.") && qformer_layers > 0 {
        let last = format!("Qformer.bert.encoder.layer.{}.", qformer_layers - 1);
        if let Some(rest) = key.strip_prefix(&last) {
            return !(rest.starts_with("intermediate.") || rest.starts_with("output."));
        }
    }
    true
}

/// An AdamW parameter group.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    pub name: String,
    pub lr_scale: f64,
    pub weight_decay: f64,
}

/// Upstream's grouping: decay for >= 2-D weights whose names hold none of "bias", "ln", "bn";
/// lr scale `boost_lr_scale` for `fusion_adapter`, `prompt_lr_scale` for `dynamic_prompt_*`.
pub fn group_of(key: &str, ndim: usize, boost: f64, prompt: f64) -> (String, f64, bool) {
    let decay = ndim >= 2 && !key.contains("bias") && !key.contains("ln") && !key.contains("bn");
    let (part, scale) = if key.contains("fusion_adapter") {
        ("fusion_adapter", boost)
    } else if key.starts_with("dynamic_prompt") {
        ("dynamic_prompt", prompt)
    } else {
        ("base", 1.0)
    };
    let name = format!("{part}/{}", if decay { "decay" } else { "no_decay" });
    (name, scale, decay)
}

/// AdamW (PyTorch semantics: decoupled decay `p -= lr·wd·p`, bias-corrected moments,
/// `eps` added to the corrected second-moment root) over parameter groups.
pub struct GroupedAdamW {
    pub vars: Vec<(String, Var)>,
    /// Group index of each var.
    pub var_group: Vec<usize>,
    pub groups: Vec<Group>,
    pub m: Vec<Tensor>,
    pub v: Vec<Tensor>,
    pub betas: (f64, f64),
    pub eps: f64,
    /// Optimizer steps done.
    pub t: u64,
}

impl GroupedAdamW {
    /// `vars` sorted by name for a stable order.
    pub fn new(
        mut vars: Vec<(String, Var)>,
        weight_decay: f64,
        boost: f64,
        prompt: f64,
        betas: (f64, f64),
        eps: f64,
    ) -> Result<Self> {
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let mut groups: Vec<Group> = vec![];
        let mut var_group = vec![];
        let (mut m, mut v) = (vec![], vec![]);
        for (k, var) in &vars {
            let (name, scale, decay) = group_of(k, var.rank(), boost, prompt);
            let gi = match groups.iter().position(|g| g.name == name) {
                Some(i) => i,
                None => {
                    groups.push(Group {
                        name,
                        lr_scale: scale,
                        weight_decay: if decay { weight_decay } else { 0.0 },
                    });
                    groups.len() - 1
                }
            };
            var_group.push(gi);
            m.push(var.as_tensor().zeros_like()?);
            v.push(var.as_tensor().zeros_like()?);
        }
        Ok(Self {
            vars,
            var_group,
            groups,
            m,
            v,
            betas,
            eps,
            t: 0,
        })
    }

    /// One update with the given gradients (one per var, same order) at base lr `lr`.
    pub fn step(&mut self, grads: &[Tensor], lr: f64) -> Result<()> {
        self.t += 1;
        let (b1, b2) = self.betas;
        let bc1 = 1.0 - b1.powi(self.t as i32);
        let bc2 = 1.0 - b2.powi(self.t as i32);
        for (i, ((_, var), g)) in self.vars.iter().zip(grads).enumerate() {
            let grp = &self.groups[self.var_group[i]];
            let lr = lr * grp.lr_scale;
            let m = ((&self.m[i] * b1)? + (g * (1.0 - b1))?)?;
            let v = ((&self.v[i] * b2)? + (g.sqr()? * (1.0 - b2))?)?;
            let p = var.as_tensor();
            let p = (p * (1.0 - lr * grp.weight_decay))?;
            let denom = ((&v / bc2)?.sqrt()? + self.eps)?;
            let upd = ((&m / bc1)? / denom)?;
            var.set(&(p - (upd * lr)?)?)?;
            self.m[i] = m;
            self.v[i] = v;
        }
        Ok(())
    }

    /// Moments as named tensors (`exp_avg.{key}`, `exp_avg_sq.{key}`) for a checkpoint.
    pub fn state_tensors(&self) -> HashMap<String, Tensor> {
        let mut out = HashMap::new();
        for (i, (k, _)) in self.vars.iter().enumerate() {
            out.insert(format!("exp_avg.{k}"), self.m[i].clone());
            out.insert(format!("exp_avg_sq.{k}"), self.v[i].clone());
        }
        out
    }

    /// Restores the moments of a checkpoint; every var must have both.
    pub fn load_state(&mut self, t: u64, st: &HashMap<String, Tensor>) -> Result<()> {
        for (i, (k, var)) in self.vars.iter().enumerate() {
            for (name, slot) in [("exp_avg", &mut self.m[i]), ("exp_avg_sq", &mut self.v[i])] {
                let key = format!("{name}.{k}");
                let x = st.get(&key).ok_or_else(|| {
                    Error::config("checkpoint optimizer state", format!("no `{key}`"))
                })?;
                if x.shape() != var.shape() {
                    return Err(Error::config(
                        "checkpoint optimizer state",
                        format!("`{key}` is {:?}, the var is {:?}", x.shape(), var.shape()),
                    ));
                }
                *slot = x.clone();
            }
        }
        self.t = t;
        Ok(())
    }
}

/// Clips gradients to a global L2 norm as `torch.nn.utils.clip_grad_norm_`; returns the norm
/// before clipping.
pub fn clip_global_norm(grads: &mut [Tensor], max_norm: Option<f64>) -> Result<f64> {
    let mut sq = 0f64;
    for g in grads.iter() {
        sq += g
            .sqr()?
            .sum_all()?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()?;
    }
    let norm = sq.sqrt();
    if let Some(max) = max_norm {
        let coef = max / (norm + 1e-6);
        if coef < 1.0 {
            for g in grads.iter_mut() {
                *g = (&*g * coef)?;
            }
        }
    }
    Ok(norm)
}

/// Adds a backward pass's gradients to `acc` (one tensor per var, same order; a var without a
/// gradient adds nothing).
pub fn accumulate(
    acc: &mut [Tensor],
    grads: &candle_core::backprop::GradStore,
    vars: &[(String, Var)],
) -> Result<()> {
    for (g, (_, v)) in acc.iter_mut().zip(vars) {
        if let Some(x) = grads.get(v.as_tensor()) {
            // Detached: a gradient computed through trainable activations carries its backward
            // graph, which the optimizer moments would otherwise keep alive step after step.
            *g = (&*g + x.detach())?;
        }
    }
    Ok(())
}
