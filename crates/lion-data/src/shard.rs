//! Sharded batch jobs: a stable partition of a job's items, resumable per-shard output, and the
//! merge of the shards into exactly what one unsharded run writes.
//!
//! **Partition.** Item `id` (a string: the image path for `lion tag`, the request's `"id"` or line
//! number for request files, the question / image / sentence id for `lion eval`) belongs to shard
//! `fnv1a64(id as UTF-8) mod N` ([`shard_of`]; FNV-1a 64, offset basis 0xcbf29ce484222325, prime
//! 0x100000001b3). The shard of an item depends on its id and N only: not on the order of the
//! inputs, the machine, or the other items.
//!
//! **Shard files** are JSON lines: a header `{"lion_shard": {index, count, items, fingerprint,
//! format, kind}}`, then one `{"index", "id", "record"}` per item of the shard, `index` being the
//! item's position in the whole job. `fingerprint` is FNV-1a 64 over every item id of the job in
//! order, so shards of different inputs cannot be merged. While a run goes, the same lines are
//! appended to `FILE.partial` (flushed per batch); a run of the same command reuses them (a torn
//! last line is dropped; records with an `"error"` are computed again) and a partial file of
//! other inputs is refused.
//!
//! **Merge** ([`merge`]) checks that every shard `0..N` is there exactly once, all of the same
//! job, that each record sits in its own shard, and that every item is present exactly once,
//! then writes the records in item order in the job's format ([`render`]): byte for byte what the
//! unsharded run writes.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::world::formats::fnv1a64;
use crate::{Error, Position, Result};

/// One shard of N: `index` in `0..count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

/// The shard of item `id` among `count` (see the module docs).
pub fn shard_of(id: &str, count: usize) -> usize {
    (fnv1a64(id.as_bytes()) % count.max(1) as u64) as usize
}

impl Shard {
    /// Parses `i/N` (0-based i, 0 <= i < N).
    pub fn parse(s: &str) -> std::result::Result<Self, String> {
        let bad = || format!("shard `{s}`: expected i/N with 0 <= i < N, e.g. 0/4");
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let index: usize = i.trim().parse().map_err(|_| bad())?;
        let count: usize = n.trim().parse().map_err(|_| bad())?;
        Self::new(index, count).map_err(|e| format!("shard `{s}`: {e}"))
    }

    pub fn new(index: usize, count: usize) -> std::result::Result<Self, String> {
        if count == 0 {
            return Err("the shard count must be at least 1".into());
        }
        if index >= count {
            return Err(format!(
                "shard index {index} is not below the count {count}"
            ));
        }
        Ok(Self { index, count })
    }

    /// The shard a job-array task is (None outside one): Slurm's `SLURM_ARRAY_TASK_ID` -
    /// `SLURM_ARRAY_TASK_MIN` of `SLURM_ARRAY_TASK_COUNT`, else a Kubernetes indexed Job's
    /// `JOB_COMPLETION_INDEX` of `LION_SHARD_COUNT`. Returns the shard and where it came from.
    pub fn from_env() -> std::result::Result<Option<(Self, String)>, String> {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    /// [`Shard::from_env`] over any variable source (tests).
    pub fn from_vars(
        var: impl Fn(&str) -> Option<String>,
    ) -> std::result::Result<Option<(Self, String)>, String> {
        let num = |k: &str| -> std::result::Result<Option<usize>, String> {
            match var(k).filter(|v| !v.trim().is_empty()) {
                None => Ok(None),
                Some(v) => v
                    .trim()
                    .parse()
                    .map(Some)
                    .map_err(|_| format!("{k}=`{v}` is not a number")),
            }
        };
        if let (Some(id), Some(count)) =
            (num("SLURM_ARRAY_TASK_ID")?, num("SLURM_ARRAY_TASK_COUNT")?)
        {
            let min = num("SLURM_ARRAY_TASK_MIN")?.unwrap_or(0);
            let index = id
                .checked_sub(min)
                .ok_or("SLURM_ARRAY_TASK_ID below SLURM_ARRAY_TASK_MIN")?;
            let s = Self::new(index, count).map_err(|e| {
                format!("{e} (from SLURM_ARRAY_TASK_ID {id} - MIN {min} of COUNT {count}: use --array=0-{} or pass --shard)", count - 1)
            })?;
            return Ok(Some((
                s,
                format!("SLURM_ARRAY_TASK_ID={id} of SLURM_ARRAY_TASK_COUNT={count}"),
            )));
        }
        if let Some(index) = num("JOB_COMPLETION_INDEX")? {
            let count = num("LION_SHARD_COUNT")?.ok_or(
                "JOB_COMPLETION_INDEX is set but LION_SHARD_COUNT is not: set it to the Job's \
                 completions, or pass --shard $(JOB_COMPLETION_INDEX)/N",
            )?;
            let s =
                Self::new(index, count).map_err(|e| format!("{e} (from JOB_COMPLETION_INDEX)"))?;
            return Ok(Some((
                s,
                format!("JOB_COMPLETION_INDEX={index} of LION_SHARD_COUNT={count}"),
            )));
        }
        Ok(None)
    }

    pub fn owns(&self, id: &str) -> bool {
        shard_of(id, self.count) == self.index
    }

    /// The shard's output beside `out`: `DIR/STEM.shard-I-of-N.jsonl`.
    pub fn file_for(&self, out: &Path) -> PathBuf {
        let stem = out
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "out".into());
        out.with_file_name(format!(
            "{stem}.shard-{}-of-{}.jsonl",
            self.index, self.count
        ))
    }
}

/// How a job's records are written: a JSON array (official result files, `lion eval`) or JSON
/// lines (`lion tag`, request files).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    JsonArray,
    JsonLines,
}

/// The records (JSON texts) in the job's format: JSON lines, or `[`, one record a line, `]` (the
/// layout of `lion eval`'s prediction files).
pub fn render<S: AsRef<str>>(format: Format, records: impl IntoIterator<Item = S>) -> String {
    let lines: Vec<S> = records.into_iter().collect();
    let mut text = String::new();
    if format == Format::JsonArray {
        text.push_str("[\n");
    }
    for (i, l) in lines.iter().enumerate() {
        text.push_str(l.as_ref());
        let more = i + 1 < lines.len();
        text.push_str(if format == Format::JsonArray && more {
            ",\n"
        } else {
            "\n"
        });
    }
    if format == Format::JsonArray {
        text.push_str("]\n");
    }
    text
}

/// What a shard file (and its partial file) says about its job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    pub index: usize,
    pub count: usize,
    /// Items of the whole job.
    pub items: usize,
    /// FNV-1a 64 (hex) over the job's item ids in order (each followed by a 0 byte).
    pub fingerprint: String,
    pub format: Format,
    /// The command, e.g. `tag`, `caption`, `eval vqa`.
    pub kind: String,
}

/// The fingerprint of a job's item ids.
pub fn fingerprint<'a>(ids: impl IntoIterator<Item = &'a str>) -> String {
    let mut bytes = Vec::new();
    for id in ids {
        bytes.extend_from_slice(id.as_bytes());
        bytes.push(0);
    }
    format!("{:016x}", fnv1a64(&bytes))
}

/// One item's result. `record` is kept as the JSON text it was first printed as: a parse and
/// re-print of a float can move its last digit (serde_json parses floats fast, not exactly), and
/// the merge must give the bytes of the unsharded run.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// Position in the whole job.
    pub index: usize,
    pub id: String,
    record: String,
}

impl Entry {
    pub fn new(index: usize, id: impl Into<String>, record: &Value) -> Self {
        Self {
            index,
            id: id.into(),
            record: record.to_string(),
        }
    }

    /// The record's JSON text.
    pub fn record(&self) -> &str {
        &self.record
    }

    /// A record with an `"error"` field: the item failed and is computed again on resume.
    pub fn failed(&self) -> bool {
        serde_json::from_str::<Value>(&self.record).is_ok_and(|v| v.get("error").is_some())
    }

    fn prefix(index: usize, id: &str) -> String {
        format!(
            "{{\"index\":{index},\"id\":{},\"record\":",
            Value::String(id.to_string())
        )
    }

    /// `{"index":K,"id":ID,"record":RECORD}`, the record's text verbatim.
    pub fn line(&self) -> String {
        format!("{}{}}}", Self::prefix(self.index, &self.id), self.record)
    }

    /// Parses a [`Entry::line`].
    pub fn parse(line: &str) -> std::result::Result<Self, String> {
        let v: Value = serde_json::from_str(line).map_err(|e| e.to_string())?;
        let index = v.get("index").and_then(Value::as_u64).ok_or("no `index`")? as usize;
        let id = v
            .get("id")
            .and_then(Value::as_str)
            .ok_or("no `id`")?
            .to_string();
        let prefix = Self::prefix(index, &id);
        let record = line
            .strip_prefix(prefix.as_str())
            .and_then(|r| r.strip_suffix('}'))
            .filter(|_| v.get("record").is_some() && v.as_object().is_some_and(|o| o.len() == 3))
            .ok_or("not an {\"index\", \"id\", \"record\"} line as lion writes it")?;
        Ok(Self {
            index,
            id,
            record: record.to_string(),
        })
    }
}

#[derive(Serialize, Deserialize)]
struct HeaderLine {
    lion_shard: Header,
}

fn header_line(h: &Header) -> String {
    serde_json::to_string(&HeaderLine {
        lion_shard: h.clone(),
    })
    .expect("a header serialises")
}

/// The text of a finished shard file: the header, then the entries in item order.
pub fn shard_file_text(header: &Header, entries: &BTreeMap<usize, Entry>) -> String {
    let mut text = header_line(header);
    text.push('\n');
    for e in entries.values() {
        text.push_str(&e.line());
        text.push('\n');
    }
    text
}

/// Reads a shard file (or a partial one): its header and entries. `torn_ok`: a last line that
/// does not parse is dropped (a killed run) instead of being an error; the bool says whether one
/// was.
fn read_shard_text(path: &Path, text: &str, torn_ok: bool) -> Result<(Header, Vec<Entry>, bool)> {
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let at = |i: usize, m: String| Error::record(path, Position::Line(i + 1), m);
    let first = lines
        .first()
        .ok_or_else(|| at(0, "empty file, no shard header".into()))?;
    let header = serde_json::from_str::<HeaderLine>(first.trim_end())
        .map_err(|e| {
            at(
                0,
                format!("not a shard header ({e}); is this a `lion ... --shard` output?"),
            )
        })?
        .lion_shard;
    let mut entries = Vec::with_capacity(lines.len());
    let mut torn = false;
    for (i, raw) in lines.iter().enumerate().skip(1) {
        if raw.trim().is_empty() {
            continue;
        }
        let last = i + 1 == lines.len();
        match Entry::parse(raw.trim_end()) {
            Ok(e) if raw.ends_with('\n') || !torn_ok => entries.push(e),
            Ok(e) => {
                entries.push(e);
                torn = true;
            }
            Err(_) if last && torn_ok => torn = true,
            Err(e) => return Err(at(i, format!("bad entry: {e}"))),
        }
    }
    Ok((header, entries, torn))
}

/// The finished output of a run, for the caller to write atomically (and then to remove the
/// partial file).
#[derive(Debug)]
pub struct Output {
    pub path: PathBuf,
    pub text: String,
    pub partial: PathBuf,
}

/// A resumable run over a job's items that writes to a file (see the module docs): unsharded,
/// the job's format to `out`; sharded, the shard file beside it.
pub struct Run {
    header: Header,
    shard: Option<Shard>,
    out: PathBuf,
    partial: PathBuf,
    owned: Vec<usize>,
    done: BTreeMap<usize, Entry>,
    file: Option<std::fs::File>,
}

impl Run {
    /// Starts (or resumes) a run over items `ids` (the whole job, in order).
    pub fn start(
        ids: &[String],
        out: &Path,
        shard: Option<Shard>,
        format: Format,
        kind: &str,
    ) -> Result<Self> {
        let s = shard.unwrap_or(Shard { index: 0, count: 1 });
        let header = Header {
            index: s.index,
            count: s.count,
            items: ids.len(),
            fingerprint: fingerprint(ids.iter().map(String::as_str)),
            format,
            kind: kind.to_string(),
        };
        let out = match shard {
            Some(s) => s.file_for(out),
            None => out.to_path_buf(),
        };
        let mut name = out.file_name().unwrap_or_default().to_os_string();
        name.push(".partial");
        let partial = out.with_file_name(name);
        let owned: Vec<usize> = (0..ids.len()).filter(|&k| s.owns(&ids[k])).collect();
        let mut done = BTreeMap::new();
        match std::fs::read_to_string(&partial) {
            Ok(text) => {
                let (h, entries, torn) = read_shard_text(&partial, &text, true)?;
                if h != header {
                    return Err(Error::record(
                        &partial,
                        Position::Line(1),
                        format!(
                            "written for other inputs or another shard ({h:?}, now {header:?}); \
                             delete it to start over"
                        ),
                    ));
                }
                for e in entries {
                    if e.index >= ids.len() || ids[e.index] != e.id {
                        return Err(Error::record(
                            &partial,
                            Position::Index(e.index.to_string()),
                            format!("item `{}` is not item {} of this job", e.id, e.index),
                        ));
                    }
                    done.insert(e.index, e); // later lines win (a failed item retried)
                }
                done.retain(|_, e: &mut Entry| !e.failed());
                if torn {
                    let text = shard_file_text(&header, &done);
                    std::fs::write(&partial, text).map_err(|e| Error::io(&partial, e))?;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(&partial, e)),
        }
        Ok(Self {
            header,
            shard,
            out,
            partial,
            owned,
            done,
            file: None,
        })
    }

    /// Items of this shard still to compute, in item order.
    pub fn pending(&self) -> Vec<usize> {
        self.owned
            .iter()
            .copied()
            .filter(|k| !self.done.contains_key(k))
            .collect()
    }

    /// Items of this shard.
    pub fn owned(&self) -> usize {
        self.owned.len()
    }

    /// Items reused from the partial file.
    pub fn reused(&self) -> usize {
        self.done.len()
    }

    /// Records finished items: appended to the partial file and flushed.
    pub fn record(&mut self, entries: Vec<Entry>) -> Result<()> {
        if self.file.is_none() {
            let new = !self.partial.exists();
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.partial)
                .map_err(|e| Error::io(&self.partial, e))?;
            if new {
                writeln!(f, "{}", header_line(&self.header))
                    .map_err(|e| Error::io(&self.partial, e))?;
            }
            self.file = Some(f);
        }
        let mut text = String::new();
        for e in &entries {
            text.push_str(&e.line());
            text.push('\n');
        }
        let f = self.file.as_mut().expect("opened above");
        f.write_all(text.as_bytes())
            .and_then(|_| f.flush())
            .and_then(|_| f.sync_data())
            .map_err(|e| Error::io(&self.partial, e))?;
        for e in entries {
            self.done.insert(e.index, e);
        }
        Ok(())
    }

    /// The output once every item of the shard is done (None before).
    pub fn finish(self) -> Option<Output> {
        if self.owned.iter().any(|k| !self.done.contains_key(k)) {
            return None;
        }
        let text = match self.shard {
            Some(_) => shard_file_text(&self.header, &self.done),
            None => render(self.header.format, self.done.values().map(|e| e.record())),
        };
        Some(Output {
            path: self.out,
            text,
            partial: self.partial,
        })
    }
}

/// What [`merge`] found.
#[derive(Debug)]
pub struct Merged {
    pub header: Header,
    /// The job's output, byte for byte as the unsharded run writes it.
    pub text: String,
    /// Items whose record has an `"error"` field.
    pub failed: usize,
}

/// Merges shard files (see the module docs); every problem is an error naming the file.
pub fn merge(files: &[PathBuf]) -> Result<Merged> {
    let mut first: Option<(PathBuf, Header)> = None;
    let mut shards: BTreeMap<usize, PathBuf> = BTreeMap::new();
    let mut all: BTreeMap<usize, (Entry, PathBuf)> = BTreeMap::new();
    for f in files {
        let text = std::fs::read_to_string(f).map_err(|e| Error::io(f, e))?;
        let (h, entries, _) = read_shard_text(f, &text, false)?;
        if let Some((p, h0)) = &first {
            let same_job = (h.count, h.items, &h.fingerprint, h.format, &h.kind)
                == (h0.count, h0.items, &h0.fingerprint, h0.format, &h0.kind);
            if !same_job {
                return Err(Error::record(
                    f,
                    Position::Line(1),
                    format!("another job than {} ({h:?} vs {h0:?})", p.display()),
                ));
            }
        } else {
            first = Some((f.clone(), h.clone()));
        }
        if let Some(p) = shards.insert(h.index, f.clone()) {
            return Err(Error::record(
                f,
                Position::Line(1),
                format!("shard {} of {} is also {}", h.index, h.count, p.display()),
            ));
        }
        for (i, e) in entries.into_iter().enumerate() {
            let pos = Position::Line(i + 2);
            if e.index >= h.items {
                return Err(Error::record(
                    f,
                    pos,
                    format!("item {} of a job of {}", e.index, h.items),
                ));
            }
            let own = shard_of(&e.id, h.count);
            if own != h.index {
                return Err(Error::record(
                    f,
                    pos,
                    format!("item `{}` belongs to shard {own}, not {}", e.id, h.index),
                ));
            }
            if let Some((prev, p)) = all.get(&e.index) {
                return Err(Error::record(
                    f,
                    pos,
                    format!(
                        "item {} (`{}`) is also in {}",
                        e.index,
                        prev.id,
                        p.display()
                    ),
                ));
            }
            all.insert(e.index, (e, f.clone()));
        }
    }
    let Some((_, header)) = first else {
        return Err(Error::record(
            Path::new("(no files)"),
            Position::Line(0),
            "no shard files to merge",
        ));
    };
    let missing_shards: Vec<usize> = (0..header.count)
        .filter(|i| !shards.contains_key(i))
        .collect();
    if !missing_shards.is_empty() {
        return Err(Error::record(
            &shards[shards.keys().next().expect("one file read")],
            Position::Line(1),
            format!("shards {missing_shards:?} of {} are missing", header.count),
        ));
    }
    let present: BTreeSet<usize> = all.keys().copied().collect();
    let missing: Vec<usize> = (0..header.items).filter(|k| !present.contains(k)).collect();
    if !missing.is_empty() {
        let (some, more) = (
            missing.iter().take(10).collect::<Vec<_>>(),
            missing.len().saturating_sub(10),
        );
        return Err(Error::record(
            &shards[&0],
            Position::Line(1),
            format!(
                "{} of {} items are in no shard file (a shard run did not finish?): items {some:?}{}",
                missing.len(),
                header.items,
                if more > 0 { format!(" and {more} more") } else { String::new() }
            ),
        ));
    }
    let failed = all.values().filter(|(e, _)| e.failed()).count();
    let text = render(header.format, all.values().map(|(e, _)| e.record()));
    Ok(Merged {
        header,
        text,
        failed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_parse_and_validate() {
        assert_eq!(Shard::parse("2/3").unwrap(), Shard { index: 2, count: 3 });
        for bad in ["3/3", "0/0", "1", "a/2", "-1/2"] {
            assert!(Shard::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn env_fallbacks() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        let s = Shard::from_vars(vars(&[
            ("SLURM_ARRAY_TASK_ID", "4"),
            ("SLURM_ARRAY_TASK_COUNT", "4"),
            ("SLURM_ARRAY_TASK_MIN", "1"),
        ]));
        assert_eq!(s.unwrap().unwrap().0, Shard { index: 3, count: 4 });
        let s = Shard::from_vars(vars(&[
            ("JOB_COMPLETION_INDEX", "1"),
            ("LION_SHARD_COUNT", "3"),
        ]));
        assert_eq!(s.unwrap().unwrap().0, Shard { index: 1, count: 3 });
        assert!(Shard::from_vars(vars(&[("JOB_COMPLETION_INDEX", "1")])).is_err());
        assert!(Shard::from_vars(vars(&[
            ("SLURM_ARRAY_TASK_ID", "3"),
            ("SLURM_ARRAY_TASK_COUNT", "3")
        ]))
        .is_err());
        assert_eq!(Shard::from_vars(vars(&[])).unwrap(), None);
    }

    #[test]
    fn the_partition_is_fnv1a_mod_n_and_covers_every_item_once() {
        // FNV-1a 64 of "a" is 0xaf63dc4c8601ec8c (the published test vector).
        assert_eq!(
            shard_of("a", 1 << 20),
            (0xaf63dc4c8601ec8c_u64 % (1 << 20)) as usize
        );
        let ids: Vec<String> = (0..100).map(|i| format!("img{i}.png")).collect();
        let mut counts = [0usize; 3];
        for id in &ids {
            let owners: Vec<usize> = (0..3)
                .filter(|&i| Shard { index: i, count: 3 }.owns(id))
                .collect();
            assert_eq!(owners.len(), 1);
            counts[owners[0]] += 1;
        }
        assert!(counts.iter().all(|&c| c > 20), "{counts:?}");
        assert_eq!(
            Shard { index: 1, count: 3 }.file_for(Path::new("d/preds.json")),
            Path::new("d/preds.shard-1-of-3.jsonl")
        );
    }

    #[test]
    fn entries_keep_the_record_text() {
        let e = Entry::new(
            3,
            "a \"b\" \"record\":",
            &serde_json::json!({"x": 0.47081834077835083f64, "error": null}),
        );
        let back = Entry::parse(&e.line()).unwrap();
        assert_eq!(back, e);
        assert!(back.record().contains("0.47081834077835083"));
        assert!(back.failed());
        assert!(Entry::parse(r#"{"index":1,"id":"a","record":{},"more":1}"#).is_err());
    }

    #[test]
    fn runs_resume_and_merge_equals_the_unsharded_output() {
        let dir = tempfile::tempdir().unwrap();
        let ids: Vec<String> = (0..20).map(|i| format!("item-{i}")).collect();
        let rec = |k: usize| serde_json::json!({"id": ids[k], "value": k * k});
        let out = dir.path().join("all.json");
        // unsharded
        let mut run = Run::start(&ids, &out, None, Format::JsonArray, "test").unwrap();
        let all: Vec<Entry> = run
            .pending()
            .into_iter()
            .map(|k| Entry::new(k, &ids[k], &rec(k)))
            .collect();
        run.record(all).unwrap();
        let whole = run.finish().unwrap();
        // 3 shards, the first interrupted after 2 items and resumed
        let mut files = vec![];
        for i in 0..3 {
            let s = Some(Shard { index: i, count: 3 });
            let mut run = Run::start(&ids, &out, s, Format::JsonArray, "test").unwrap();
            let pending = run.pending();
            let cut = if i == 0 { 2 } else { pending.len() };
            let e = |k: usize| Entry::new(k, &ids[k], &rec(k));
            run.record(pending[..cut].iter().map(|&k| e(k)).collect())
                .unwrap();
            let run = if i == 0 {
                assert!(run.finish().is_none());
                let mut again = Run::start(&ids, &out, s, Format::JsonArray, "test").unwrap();
                assert_eq!(again.reused(), 2);
                let rest = again.pending();
                assert_eq!(rest.len(), pending.len() - 2);
                again.record(rest.into_iter().map(e).collect()).unwrap();
                again
            } else {
                run
            };
            let o = run.finish().unwrap();
            std::fs::write(&o.path, &o.text).unwrap();
            files.push(o.path);
        }
        let merged = merge(&files).unwrap();
        assert_eq!(merged.text, whole.text);
        // a missing shard, a duplicated one, and other inputs are refused
        assert!(merge(&files[..2])
            .unwrap_err()
            .to_string()
            .contains("shards [2] of 3 are missing"));
        let dup = vec![
            files[0].clone(),
            files[0].clone(),
            files[1].clone(),
            files[2].clone(),
        ];
        assert!(merge(&dup).unwrap_err().to_string().contains("is also"));
        let other: Vec<String> = ids.iter().rev().cloned().collect();
        let e = Run::start(
            &other,
            &out,
            Some(Shard { index: 0, count: 3 }),
            Format::JsonArray,
            "test",
        );
        assert!(e
            .err()
            .unwrap()
            .to_string()
            .contains("delete it to start over"));
    }
}
