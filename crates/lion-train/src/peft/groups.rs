//! What PEFT trains and how: the trainable selector ([`TrainableSet`], upstream's rule), the AdamW
//! parameter groups (decay, lr scales), global-norm clipping and gradient accumulation.

use candle_nn::ParamsAdamW;

use super::*;
use crate::optim::{AdamW, Group};

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

/// The PEFT optimizer over the trainable `vars`: AdamW with `cfg`'s betas and eps, grouped by
/// [`group_of`] (weight decay `cfg.weight_decay` in the decaying groups, none in the others); the
/// vars in key order.
pub fn peft_adamw(vars: Vec<(String, Var)>, cfg: &PeftConfig) -> candle_core::Result<AdamW> {
    let params = ParamsAdamW {
        // the schedule's rate is set before every step
        lr: 0.0,
        beta1: cfg.betas.0,
        beta2: cfg.betas.1,
        eps: cfg.eps,
        weight_decay: cfg.weight_decay,
    };
    AdamW::grouped(vars, params, |key, var| {
        let (name, lr_scale, decay) =
            group_of(key, var.rank(), cfg.boost_lr_scale, cfg.prompt_lr_scale);
        Group {
            name,
            lr_scale,
            weight_decay: if decay { cfg.weight_decay } else { 0.0 },
        }
    })
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
