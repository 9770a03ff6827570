//! `lion merge --out OUT SHARD_FILE...`: joins the shard files of a sharded `lion tag`,
//! `lion caption|vqa|ground` or `lion eval --model` run into the file one unsharded run writes
//! (checked: every shard once, every item once, all of one job; see `lion_data::shard`).

use std::path::PathBuf;

use anyhow::Result;

#[derive(clap::Args)]
pub struct Args {
    /// The merged output (written atomically).
    #[arg(long)]
    out: PathBuf,
    /// The shard files (`*.shard-I-of-N.jsonl`), every shard of the job once, in any order.
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

pub fn run(args: Args) -> Result<()> {
    let m = lion_data::shard::merge(&args.files)?;
    lion_core::util::write_atomic(&args.out, m.text.as_bytes())?;
    if m.failed > 0 {
        tracing::warn!(
            "{} of {} items are failures (records with an error)",
            m.failed,
            m.header.items
        );
    }
    let summary = serde_json::json!({
        "out": args.out, "items": m.header.items, "shards": m.header.count,
        "kind": m.header.kind, "failed": m.failed,
    });
    println!("{summary}");
    Ok(())
}
