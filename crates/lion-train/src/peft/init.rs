//! The random initial weights of a preset run (`init.safetensors`) and the from-scratch ViT's
//! positional embedding (trunc-normal plus half a 2-D sin-cos code).

use super::*;

/// Builds the preset with random weights once and saves every tensor, so that every process of
/// a run (first start and resumes) sees the same frozen weights.
pub(super) fn save_random_init(
    cfg: &lion_core::lion::LionConfig,
    path: &Path,
    seed: u64,
    dev: &Device,
) -> Result<()> {
    let varmap = VarMap::new();
    let loader = WeightLoader::random()
        .with_init_seed(seed)
        .with_trainable(varmap.clone(), |_| true);
    let vb = loader.var_builder(DType::F32, dev);
    let _ = lion_core::lion::LionModel::new(cfg, 32099.min(cfg.t5.vocab_size as u32 - 1), vb)?;
    add_sincos_positions(&varmap, cfg)?;
    let tensors: HashMap<String, Tensor> = lion_core::weights::varmap_tensors(&varmap);
    lion_core::weights::save_safetensors(&tensors, path)
}

/// How much of the 2-D sin-cos code is added to a from-scratch ViT's `pos_embed`: half (codes of
/// norm `0.5 * sqrt(d / 2)`, 2.8 at d 64, against trunc-normal positions of norm ~0.16 and patch
/// projections of norm ~12, measured on the ShapesWorld backbone at step 4000). The value the
/// shipped backbone was trained with; not tuned.
pub(super) const SINCOS_POS_SCALE: f64 = 0.5;

/// A from-scratch ViT's `pos_embed` (trunc-normal) plus [`SINCOS_POS_SCALE`] x the 2-D sin-cos
/// code on the patch rows (the class token's row unchanged): without it a small ViT trained from
/// random weights learns almost no position signal and never learns to localise.
pub(super) fn add_sincos_positions(
    varmap: &VarMap,
    cfg: &lion_core::lion::LionConfig,
) -> Result<()> {
    let data = varmap.data().lock().expect("poisoned");
    let Some(var) = data.get("visual_encoder.pos_embed") else {
        return Ok(());
    };
    let pos = var.as_tensor();
    let (_, n, d) = pos.dims3()?;
    let grid = cfg.vit.grid();
    if n != 1 + grid * grid || d % 4 != 0 {
        tracing::warn!(
            shape = ?pos.dims(),
            grid,
            "pos_embed does not fit a square grid of a width divisible by 4: no sin-cos code added"
        );
        return Ok(());
    }
    let code = lion_core::eva_vit::sincos_pos_embed(grid, d, pos.device())?;
    let code = (code * SINCOS_POS_SCALE)?.unsqueeze(0)?;
    let patches = (pos.narrow(1, 1, n - 1)? + code)?;
    var.set(&Tensor::cat(&[&pos.narrow(1, 0, 1)?, &patches], 1)?)?;
    Ok(())
}
