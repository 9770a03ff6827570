//! `--shard i/N` of the batch commands (`lion tag`, `lion caption|vqa|ground`, `lion eval
//! --model`) and the writing of a finished run; the partition, resume and merge live in
//! `lion_data::shard`.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use lion_data::shard::{Output, Shard};

#[derive(clap::Args, Debug, Clone)]
pub struct ShardArgs {
    /// Run only shard i of N (0-based; items by FNV-1a 64 of their id mod N), writing
    /// OUT.shard-i-of-N.jsonl for `lion merge`. Without it, a run that writes a file takes its
    /// shard from SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT or
    /// JOB_COMPLETION_INDEX/LION_SHARD_COUNT when set.
    #[arg(long, value_name = "i/N", value_parser = Shard::parse)]
    pub shard: Option<Shard>,
}

impl ShardArgs {
    /// The shard to run; `out` names the flag of the output file when the command writes one.
    pub fn resolve(&self, out: Option<&str>) -> Result<Option<Shard>> {
        match (self.shard, out) {
            (Some(_), None) => bail!("--shard needs an output file (the shard's own file, for `lion merge`): add --out FILE"),
            (Some(s), Some(_)) => Ok(Some(s)),
            (None, Some(flag)) => {
                let env = Shard::from_env().map_err(anyhow::Error::msg)?;
                Ok(env.map(|(s, from)| {
                    tracing::info!("shard {}/{} (from {from}); {flag} gets its shard file", s.index, s.count);
                    s
                }))
            }
            (None, None) => Ok(None),
        }
    }
}

/// Writes a finished run's output atomically, then removes its partial file.
pub fn write_output(o: Output) -> Result<PathBuf> {
    lion_core::util::write_atomic(&o.path, o.text.as_bytes())?;
    if o.partial.exists() {
        std::fs::remove_file(&o.partial)
            .with_context(|| format!("cannot remove {}", o.partial.display()))?;
    }
    Ok(o.path)
}

/// What [`run_batches`] did.
pub struct BatchSummary {
    /// Items of this run (this shard's, with a shard).
    pub items: usize,
    /// Records with an `"error"` computed by this run.
    pub failed: usize,
}

/// Runs `compute` (item indices -> one JSON record each, `"error"` in a failed one) over the
/// items `ids` of a job in batches. Without `out`: every item, each record a line on stdout.
/// With `out`: this shard's items, resumable, into `out` (unsharded: JSON lines, as stdout) or
/// the shard file; a summary line on stdout.
pub fn run_batches(
    ids: &[String],
    out: Option<&std::path::Path>,
    shard: Option<Shard>,
    kind: &str,
    batch_size: usize,
    mut compute: impl FnMut(&[usize]) -> Result<Vec<serde_json::Value>>,
) -> Result<BatchSummary> {
    use lion_data::shard::{Entry, Format, Run};
    use std::io::Write;
    let mut failed = 0usize;
    let Some(out) = out else {
        let pb = super::progress(ids.len() as u64, kind);
        let mut stdout = std::io::BufWriter::new(std::io::stdout().lock());
        let all: Vec<usize> = (0..ids.len()).collect();
        for chunk in all.chunks(batch_size.max(1)) {
            for r in compute(chunk)? {
                failed += usize::from(r.get("error").is_some());
                writeln!(stdout, "{r}")?;
            }
            stdout.flush()?;
            pb.inc(chunk.len() as u64);
        }
        pb.finish_and_clear();
        return Ok(BatchSummary {
            items: ids.len(),
            failed,
        });
    };
    let mut run = Run::start(ids, out, shard, Format::JsonLines, kind)?;
    if run.reused() > 0 {
        tracing::info!("resuming: {} of {} items reused", run.reused(), run.owned());
    }
    let pending = run.pending();
    let pb = super::progress(run.owned() as u64, kind);
    pb.set_position(run.reused() as u64);
    for chunk in pending.chunks(batch_size.max(1)) {
        let records = compute(chunk)?;
        let entries = chunk
            .iter()
            .zip(records)
            .map(|(&k, record)| {
                failed += usize::from(record.get("error").is_some());
                Entry::new(k, &ids[k], &record)
            })
            .collect();
        run.record(entries)?;
        pb.inc(chunk.len() as u64);
    }
    pb.finish_and_clear();
    let (items, reused) = (run.owned(), run.reused() - pending.len());
    let o = run.finish().context("a finished run has every item")?;
    let path = write_output(o)?;
    println!(
        "{}",
        serde_json::json!({"out": path, "items": items, "reused": reused,
                           "computed": pending.len(), "failed": failed})
    );
    Ok(BatchSummary { items, failed })
}

/// The items of `all` in `shard` (all without one) and the file the run writes: `out`, or the
/// shard's file beside it.
pub fn select<T: Clone>(
    all: &[T],
    id: impl Fn(&T) -> &str,
    shard: Option<Shard>,
    out: &std::path::Path,
) -> (Vec<T>, PathBuf) {
    match shard {
        None => (all.to_vec(), out.to_path_buf()),
        Some(s) => (
            all.iter().filter(|t| s.owns(id(t))).cloned().collect(),
            s.file_for(out),
        ),
    }
}

/// A finished shard file of a job whose items have `ids` (in order): `records` are the shard's
/// items' records, in item order.
pub fn shard_text(s: Shard, ids: &[&str], records: &[serde_json::Value], kind: &str) -> String {
    use lion_data::shard::{fingerprint, shard_file_text, Entry, Format, Header};
    let header = Header {
        index: s.index,
        count: s.count,
        items: ids.len(),
        fingerprint: fingerprint(ids.iter().copied()),
        format: Format::JsonArray,
        kind: kind.to_string(),
    };
    let owned = (0..ids.len()).filter(|&k| s.owns(ids[k]));
    let entries = owned
        .zip(records)
        .map(|(k, r)| (k, Entry::new(k, ids[k], r)))
        .collect();
    shard_file_text(&header, &entries)
}
