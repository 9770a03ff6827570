//! `lion caption`, `lion vqa`, `lion ground`: one image (and text) from the command line, or a
//! JSONL file of requests (`{"image": PATH, "question" | "expression": TEXT, "tags": [...]}`),
//! answered in batches; one JSON line out per request, in order. A bad line (malformed JSON,
//! missing field, unreadable image) gets an `"error"` line; the others are still answered.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use image::RgbImage;
use lion_core::pipeline::{Answer, LionPipeline, Request};
use lion_core::preprocess::load_image;
use lion_core::prompt::Task;
use serde_json::{json, Value};

use super::model::{GenArgs, ModelArgs};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    gen: GenArgs,
    /// JSONL requests instead of positional arguments.
    #[arg(long)]
    requests: Option<PathBuf>,
    /// Requests per batch.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// Tags for the positional image, `tag:score,tag:score` (RAM's output format).
    #[arg(long)]
    tags: Option<String>,
    /// `ground` only: draw the box on the image and save it here (PNG).
    #[arg(long)]
    draw: Option<PathBuf>,
    /// The image, then (vqa / ground) the question or expression. `caption` takes several images.
    args: Vec<String>,
}

/// One line of work: where it came from, and either a request or an error.
struct Item {
    line: Option<usize>,
    image_path: String,
    text: String,
    parsed: Result<(RgbImage, Request), String>,
}

pub(crate) fn parse_tags(s: &str) -> Result<Vec<(String, f32)>, String> {
    s.split(',')
        .filter(|t| !t.trim().is_empty())
        .map(|t| {
            let (name, score) = t
                .rsplit_once(':')
                .ok_or(format!("tag `{t}` is not tag:score"))?;
            let score: f32 = score
                .trim()
                .parse()
                .map_err(|_| format!("tag `{t}`: bad score"))?;
            Ok((name.trim().to_string(), score))
        })
        .collect()
}

pub(crate) fn tags_from_json(v: Option<&Value>) -> Result<Vec<(String, f32)>, String> {
    let Some(v) = v else { return Ok(vec![]) };
    let arr = v.as_array().ok_or("`tags` must be a list")?;
    arr.iter()
        .map(|t| match t {
            Value::String(s) => parse_tags(s).and_then(|mut v| v.pop().ok_or("empty tag".into())),
            Value::Object(o) => {
                let tag = o
                    .get("tag")
                    .and_then(Value::as_str)
                    .ok_or("tag object without `tag`")?;
                let score = o.get("score").and_then(Value::as_f64).unwrap_or(1.0) as f32;
                Ok((tag.to_string(), score))
            }
            Value::Array(a) if a.len() == 2 => Ok((
                a[0].as_str().ok_or("tag pair needs a name")?.to_string(),
                a[1].as_f64().ok_or("tag pair needs a score")? as f32,
            )),
            _ => Err("each tag is \"tag:score\", {\"tag\",\"score\"} or [tag, score]".into()),
        })
        .collect()
}

fn load(path: &str, base: &Path) -> Result<RgbImage, String> {
    let p = base.join(path);
    load_image(&p).map_err(|e| e.to_string())
}

fn text_field(task: Task) -> Option<&'static str> {
    match task {
        Task::Caption => None,
        Task::Vqa => Some("question"),
        Task::Rec => Some("expression"),
    }
}

/// Longest request line read (a line with a base64 image would not fit; lines name files).
const MAX_LINE: usize = 1 << 20;

/// The fields a request line may have.
fn known_fields(task: Task) -> Vec<&'static str> {
    let mut v = vec!["image", "tags"];
    v.extend(text_field(task));
    v
}

fn items_from_file(task: Task, file: &Path) -> Result<Vec<Item>> {
    let f = std::fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?;
    let base = file.parent().unwrap_or(Path::new(".")).to_path_buf();
    let limits = lion_core::rules::GenerationLimits::default();
    let known = known_fields(task);
    let mut items = vec![];
    for next in lion_core::util::BoundedLines::new(std::io::BufReader::new(f), MAX_LINE) {
        let (n, line) = next.with_context(|| format!("reading {}", file.display()))?;
        let mut item = Item {
            line: Some(n),
            image_path: String::new(),
            text: String::new(),
            parsed: Err(String::new()),
        };
        item.parsed = (|| {
            let line = line?;
            if line.trim().is_empty() {
                return Err(String::new());
            }
            let v: Value = serde_json::from_str(&line).map_err(|e| format!("bad JSON: {e}"))?;
            let obj = v.as_object().ok_or("a request line is a JSON object")?;
            if let Some(k) = obj.keys().find(|k| !known.contains(&k.as_str())) {
                return Err(format!(
                    "unknown field `{k}` (a {} request has: {})",
                    task_name(task),
                    known.join(", ")
                ));
            }
            let image = v
                .get("image")
                .and_then(Value::as_str)
                .ok_or("missing `image` (a path)")?;
            item.image_path = image.to_string();
            let text = match text_field(task) {
                Some(f) => {
                    let t = v
                        .get(f)
                        .and_then(Value::as_str)
                        .ok_or(format!("missing `{f}`"))?;
                    lion_core::rules::text(f, t, limits.max_prompt_chars)
                        .map_err(|e| e.to_string())?;
                    t.to_string()
                }
                None => String::new(),
            };
            item.text = text.clone();
            let tags = tags_from_json(v.get("tags"))?;
            let img = load(image, &base)?;
            Ok((img, Request { task, text, tags }))
        })();
        // Blank lines are skipped, not answered.
        if item.parsed.as_ref().is_err_and(|e| e.is_empty()) {
            continue;
        }
        items.push(item);
    }
    Ok(items)
}

fn items_from_args(task: Task, args: &Args) -> Result<Vec<Item>> {
    let tags = match &args.tags {
        Some(t) => parse_tags(t).map_err(anyhow::Error::msg)?,
        None => vec![],
    };
    let pairs: Vec<(String, String)> = match task {
        Task::Caption => {
            if args.args.is_empty() {
                bail!("give one or more images, or --requests FILE");
            }
            args.args
                .iter()
                .map(|a| (a.clone(), String::new()))
                .collect()
        }
        _ => {
            if args.args.len() != 2 {
                bail!(
                    "give IMAGE and {} (quote it), or --requests FILE",
                    text_field(task).unwrap_or("TEXT").to_uppercase()
                );
            }
            let field = text_field(task).unwrap_or("text");
            let limits = lion_core::rules::GenerationLimits::default();
            lion_core::rules::text(field, &args.args[1], limits.max_prompt_chars)
                .map_err(|e| anyhow::anyhow!("the {}: {e}", field))?;
            vec![(args.args[0].clone(), args.args[1].clone())]
        }
    };
    Ok(pairs
        .into_iter()
        .map(|(image, text)| Item {
            line: None,
            parsed: load(&image, Path::new(".")).map(|img| {
                (
                    img,
                    Request {
                        task,
                        text: text.clone(),
                        tags: tags.clone(),
                    },
                )
            }),
            image_path: image,
            text,
        })
        .collect())
}

fn output(task: Task, item: &Item, answer: Result<&Answer, &str>) -> Value {
    let mut v = json!({ "image": item.image_path });
    if let Some(l) = item.line {
        v["line"] = json!(l);
    }
    if let Some(f) = text_field(task) {
        v[f] = json!(item.text);
    }
    match answer {
        Ok(a) => {
            let key = match task {
                Task::Caption => "caption",
                Task::Vqa => "answer",
                Task::Rec => "text",
            };
            v[key] = json!(a.text);
            if task == Task::Rec {
                v["box"] = json!(a.bbox);
            }
        }
        Err(e) => v["error"] = json!(e),
    }
    v
}

/// Answers a chunk; if the batch fails, retries one by one so one bad request cannot sink the
/// others.
pub(crate) fn answer_chunk(
    pipe: &LionPipeline,
    imgs: &[RgbImage],
    reqs: &[Request],
    gen: &lion_core::generate::GenerationConfig,
) -> Vec<Result<Answer, String>> {
    match pipe.answer(imgs, reqs, gen) {
        Ok(a) => a.into_iter().map(Ok).collect(),
        Err(e) if reqs.len() == 1 => vec![Err(e.to_string())],
        Err(e) => {
            tracing::warn!("batch failed ({e}); answering its requests one by one");
            imgs.iter()
                .zip(reqs)
                .map(|(i, r)| {
                    pipe.answer(std::slice::from_ref(i), std::slice::from_ref(r), gen)
                        .map(|mut a| a.remove(0))
                        .map_err(|e| e.to_string())
                })
                .collect()
        }
    }
}

/// Draws a 3-pixel red rectangle and writes a PNG atomically.
fn draw_box(img: &RgbImage, b: [f32; 4], out: &Path) -> Result<()> {
    let mut img = img.clone();
    let (w, h) = (img.width() as i64, img.height() as i64);
    let clamp = |v: f32, hi: i64| (v.round() as i64).clamp(0, hi - 1);
    let (x1, y1, x2, y2) = (
        clamp(b[0], w),
        clamp(b[1], h),
        clamp(b[2], w),
        clamp(b[3], h),
    );
    for t in 0..3i64 {
        for x in x1..=x2 {
            for y in [y1 + t, y2 - t] {
                if (0..h).contains(&y) {
                    img.put_pixel(x as u32, y as u32, image::Rgb([255, 0, 0]));
                }
            }
        }
        for y in y1..=y2 {
            for x in [x1 + t, x2 - t] {
                if (0..w).contains(&x) {
                    img.put_pixel(x as u32, y as u32, image::Rgb([255, 0, 0]));
                }
            }
        }
    }
    let mut bytes = std::io::Cursor::new(Vec::new());
    img.write_to(&mut bytes, image::ImageFormat::Png)?;
    lion_core::util::write_atomic(out, bytes.get_ref())?;
    Ok(())
}

pub fn run(task: Task, args: Args) -> Result<()> {
    let items = match &args.requests {
        Some(f) => items_from_file(task, f)?,
        None => items_from_args(task, &args)?,
    };
    if args.draw.is_some() && (task != Task::Rec || items.len() != 1) {
        bail!("--draw works with `lion ground IMAGE EXPRESSION` (one request)");
    }
    let gen = args.gen.checked_config()?;
    lion_core::rules::positive("--batch-size", args.batch_size)?;
    let pipe = args.model.load()?;
    pipe.config().check_memory(args.batch_size, false)?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let pb = super::progress(items.len() as u64, task_name(task));
    let mut failed = 0usize;
    for chunk in items.chunks(args.batch_size) {
        let ok: Vec<&Item> = chunk.iter().filter(|i| i.parsed.is_ok()).collect();
        let imgs: Vec<RgbImage> = ok
            .iter()
            .map(|i| i.parsed.as_ref().unwrap().0.clone())
            .collect();
        let reqs: Vec<Request> = ok
            .iter()
            .map(|i| i.parsed.as_ref().unwrap().1.clone())
            .collect();
        let mut answers = if reqs.is_empty() {
            vec![]
        } else {
            answer_chunk(&pipe, &imgs, &reqs, &gen)
        }
        .into_iter();
        for item in chunk {
            let line = match &item.parsed {
                Err(e) => {
                    failed += 1;
                    tracing::warn!(image = %item.image_path, line = ?item.line, "{e}");
                    output(task, item, Err(e.as_str()))
                }
                Ok((img, _)) => match answers.next().expect("one answer per request") {
                    Ok(a) => {
                        if let (Some(path), Some(b)) = (&args.draw, a.bbox) {
                            draw_box(img, b, path)?;
                        }
                        output(task, item, Ok(&a))
                    }
                    Err(e) => {
                        failed += 1;
                        output(task, item, Err(e.as_str()))
                    }
                },
            };
            writeln!(out, "{line}")?;
        }
        out.flush()?;
        pb.inc(chunk.len() as u64);
    }
    pb.finish_and_clear();
    if failed > 0 {
        tracing::warn!(
            "{failed} of {} requests failed (see their error lines)",
            items.len()
        );
    }
    if failed == items.len() {
        bail!("no request could be answered");
    }
    Ok(())
}

fn task_name(task: Task) -> &'static str {
    match task {
        Task::Caption => "caption",
        Task::Vqa => "vqa",
        Task::Rec => "ground",
    }
}
