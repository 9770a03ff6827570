//! `lion eval --shard i/N` with a model: this shard's items of the split predicted and written
//! to the shard's own file, for `lion merge` (scoring waits for the merged file).

use anyhow::{Context, Result};
use lion_data::shard::Shard;
use lion_eval::items::{partial_path, split_items};
use lion_eval::{predict_split, PredictOptions};

use super::Args;

/// Runs the model over the shard's items and writes its file (never scored here).
pub(super) fn predict_shard(args: &Args, shard: Shard) -> Result<()> {
    let job = args.job();
    let out = args.pred_out()?;
    let root = job
        .images
        .as_ref()
        .context("with a model, give --images ROOT (the folder of the split's images)")?;
    let all = split_items(&job, root)?;
    let (items, target) = crate::cmd::shard::select(&all, |it| it.id.as_str(), Some(shard), out);
    let partial = partial_path(&target);
    let gen = args.gen.checked_config()?;
    let pipe = args.model.load()?;
    pipe.config().check_batch_memory(args.batch_size.max(1))?;
    let opts = PredictOptions {
        partial: Some(partial.clone()),
        ..args.predict_options(gen, items.len())
    };
    let preds = predict_split(&pipe, &items, &opts)?;
    let done = preds.items.iter().flatten().count();
    if !preds.is_complete() {
        super::print_stopped(preds.computed, done, items.len(), preds.reused, &partial);
        return Ok(());
    }
    let records = preds.records();
    let ids: Vec<&str> = all.iter().map(|it| it.id.as_str()).collect();
    let text =
        crate::cmd::shard::shard_text(shard, &ids, &records, &format!("eval {:?}", job.benchmark));
    crate::cmd::shard::write_output(lion_data::shard::Output {
        path: target.clone(),
        text,
        partial,
    })?;
    println!(
        "shard {}/{}: {} of {} items ({} reused, {} computed, {} failed) -> {}; \
         join the shards with `lion merge --out {} FILES...`",
        shard.index,
        shard.count,
        items.len(),
        all.len(),
        preds.reused,
        preds.computed,
        preds.failed,
        target.display(),
        out.display()
    );
    Ok(())
}
