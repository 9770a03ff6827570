//! `lion caption`, `lion vqa`, `lion ground`: one image (and text) from the command line, or a
//! JSONL file of requests (`{"image": PATH, "question" | "expression": TEXT, "tags": [...]}`),
//! answered in batches; one JSON line out per request, in order. A bad line (malformed JSON,
//! missing field, unreadable image) gets an `"error"` line; the others are still answered.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use image::RgbImage;
use lion_core::image_files::collect_images;
use lion_core::pipeline::{Answer, LionPipeline, Request};
use lion_core::preprocess::load_image;
use lion_core::prompt::Task;
use lion_core::tagger::Tagger;
use serde_json::{json, Value};

use super::model::{GenArgs, ModelArgs, RamArgs};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    gen: GenArgs,
    #[command(flatten)]
    ram: RamArgs,
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
    /// Write the JSON lines to this file (atomically, resumable through FILE.partial) instead
    /// of stdout; with --shard, FILE's shard file (`lion merge` joins them).
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(flatten)]
    shard: super::shard::ShardArgs,
    /// The image, then (vqa / ground) the question or expression. `caption` takes several
    /// images and folders of images.
    args: Vec<String>,
}

/// One line of work: where it came from, and either a request or an error. Images are read per
/// batch, when the item is answered.
struct Item {
    line: Option<usize>,
    /// The item's id for --shard: the request's `"id"`, else its line number, else the image.
    id: String,
    image_path: String,
    file: PathBuf,
    text: String,
    /// The request, and whether its tags were given (given tags win over the tagger's).
    parsed: Result<(Request, bool), String>,
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
    let mut v = vec!["id", "image", "tags"];
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
            id: n.to_string(),
            image_path: String::new(),
            file: PathBuf::new(),
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
            match v.get("id") {
                Some(Value::String(s)) => item.id = s.clone(),
                Some(Value::Number(n)) => item.id = n.to_string(),
                _ => {}
            }
            let image = v
                .get("image")
                .and_then(Value::as_str)
                .ok_or("missing `image` (a path)")?;
            item.image_path = image.to_string();
            item.file = base.join(image);
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
            let tags = lion_core::tags::from_json(v.get("tags"))?;
            Ok((Request { task, text, tags }, v.get("tags").is_some()))
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
        Some(t) => lion_core::tags::parse_list(t).map_err(anyhow::Error::msg)?,
        None => vec![],
    };
    let pairs: Vec<(String, String)> = match task {
        Task::Caption => {
            if args.args.is_empty() {
                bail!("give one or more images or folders, or --requests FILE");
            }
            let inputs: Vec<PathBuf> = args.args.iter().map(PathBuf::from).collect();
            let images = collect_images(&inputs, None)?;
            if images.is_empty() {
                bail!("no images in {}", args.args.join(", "));
            }
            images
                .into_iter()
                .map(|p| (p.display().to_string(), String::new()))
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
            id: image.clone(),
            file: PathBuf::from(&image),
            parsed: Ok((
                Request {
                    task,
                    text: text.clone(),
                    tags: tags.clone(),
                },
                args.tags.is_some(),
            )),
            image_path: image,
            text,
        })
        .collect())
}

fn output(
    task: Task,
    item: &Item,
    tagged: Option<&[(String, f32)]>,
    answer: Result<&Answer, &str>,
) -> Value {
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
            if let Some(tags) = tagged {
                v["tags"] = tags
                    .iter()
                    .map(|(tag, score)| json!({"tag": tag, "score": score}))
                    .collect();
            }
        }
        Err(e) => v["error"] = json!(e),
    }
    v
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
    let shard = args.shard.resolve(args.out.as_ref().map(|_| "--out"))?;
    let gen = args.gen.checked_config()?;
    lion_core::rules::positive("--batch-size", args.batch_size)?;
    let pipe = args.model.load()?;
    pipe.config().check_batch_memory(args.batch_size)?;
    let tagger = args.ram.load(pipe.device())?;
    let ids: Vec<String> = items.iter().map(|i| i.id.clone()).collect();
    let started = std::time::Instant::now();
    let summary = super::shard::run_batches(
        &ids,
        args.out.as_deref(),
        shard,
        task_name(task),
        args.batch_size,
        |chunk| {
            let chunk: Vec<&Item> = chunk.iter().map(|&k| &items[k]).collect();
            answer_items(
                task,
                &chunk,
                &pipe,
                tagger.as_ref(),
                &gen,
                args.draw.as_deref(),
            )
        },
    )?;
    // after the model is loaded: preprocessing, tagging and generation of every request
    tracing::info!(
        requests = ids.len(),
        seconds = format!("{:.3}", started.elapsed().as_secs_f64()),
        "answered"
    );
    if summary.failed > 0 {
        tracing::warn!(
            "{} of {} requests failed (see their error lines)",
            summary.failed,
            summary.items
        );
    }
    if summary.failed == summary.items && summary.items > 0 {
        bail!("no request could be answered");
    }
    Ok(())
}

/// Answers a batch of items: reads their images, tags those without given tags when a tagger is
/// loaded, generates; one output record per item, in order.
fn answer_items(
    task: Task,
    chunk: &[&Item],
    pipe: &LionPipeline,
    tagger: Option<&Tagger>,
    gen: &lion_core::generate::GenerationConfig,
    draw: Option<&Path>,
) -> Result<Vec<Value>> {
    let mut ready: Vec<(usize, RgbImage, Request, bool)> = vec![];
    let mut out: Vec<Option<Value>> = vec![None; chunk.len()];
    for (j, item) in chunk.iter().enumerate() {
        let loaded = item.parsed.clone().and_then(|(req, given)| {
            load_image(&item.file)
                .map(|img| (img, req, given))
                .map_err(|e| e.to_string())
        });
        match loaded {
            Ok((img, req, given)) => ready.push((j, img, req, given)),
            Err(e) => {
                tracing::warn!(image = %item.image_path, line = ?item.line, "{e}");
                out[j] = Some(output(task, item, None, Err(e.as_str())));
            }
        }
    }
    let mut tagged = vec![false; ready.len()];
    if let Some(t) = tagger {
        let todo: Vec<usize> = (0..ready.len()).filter(|&r| !ready[r].3).collect();
        let imgs: Vec<RgbImage> = todo.iter().map(|&r| ready[r].1.clone()).collect();
        for (&r, tags) in todo.iter().zip(t.tag_images(&imgs)?) {
            ready[r].2.tags = tags;
            tagged[r] = true;
        }
    }
    let imgs: Vec<RgbImage> = ready.iter().map(|r| r.1.clone()).collect();
    let reqs: Vec<Request> = ready.iter().map(|r| r.2.clone()).collect();
    let answers = if reqs.is_empty() {
        vec![]
    } else {
        pipe.answer_each(&imgs, &reqs, gen)
    };
    for ((r, (j, img, req, _)), a) in ready.iter().enumerate().zip(answers) {
        let tags = tagged[r].then_some(req.tags.as_slice());
        out[*j] = Some(match a {
            Ok(a) => {
                if let (Some(path), Some(b)) = (draw, a.bbox) {
                    draw_box(img, b, path)?;
                }
                output(task, chunk[*j], tags, Ok(&a))
            }
            Err(e) => output(task, chunk[*j], tags, Err(&e.to_string())),
        });
    }
    Ok(out
        .into_iter()
        .map(|v| v.expect("one record per item"))
        .collect())
}

fn task_name(task: Task) -> &'static str {
    match task {
        Task::Caption => "caption",
        Task::Vqa => "vqa",
        Task::Rec => "ground",
    }
}
