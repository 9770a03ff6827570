//! `lion forward [MODEL] IMAGE --dump out.safetensors`: one request through the model, writing
//! the intermediate tensors for debugging ports (compare them with a PyTorch run):
//!
//! | name | shape | what |
//! |---|---|---|
//! | `pixel_values` | (1, 3, img, img) | the LION eval transform of the image |
//! | `vit.block{i}` | (1, n, width) | output of ViT block i (0-based; `--layers`, default the model's) |
//! | `qformer` | (1, queries, d_model) | `t5_proj(Q-Former(ln_vision(x_last)))[:, :queries]` |
//! | `aggregator` | (1, n, d_model) | `adapter_proj(ln_adapter(fusion_adapter(...)))` |
//! | `visual` | (1, queries + n, d_model) | the visual tokens (`encode_img`) |
//! | `prompt_ids` | (1, t) i64 | the T5 encoder text tokens |
//! | `encoder_input`, `encoder_mask` | (1, n_vis + t, d_model), (1, n_vis + t) i64 | T5 encoder input |
//! | `labels` | (1, s) i64 | `--target` tokens with `</s>` (just `</s>` without a target) |
//! | `logits`, `loss` | (1, s, vocab), (1,) | decoder logits for the target (teacher forcing) |
//!
//! `qformer` / `aggregator` are left out when the model has no such path. The file is written
//! atomically.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Tensor};
use lion_core::pipeline::Request;
use lion_core::preprocess::load_image;
use lion_core::prompt::Task;
use lion_core::weights::save_safetensors;

use super::model::ModelArgs;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// The image.
    image: PathBuf,
    /// Which task's prompt and router route: caption, vqa or rec.
    #[arg(long, default_value = "caption", value_parser = task_parser())]
    task: Task,
    /// The question (vqa) or expression (rec).
    #[arg(long, default_value = "")]
    text: String,
    /// Tags, `tag:score,tag:score` (RAM's output format).
    #[arg(long)]
    tags: Option<String>,
    /// Target text whose logits and loss are dumped (teacher forcing).
    #[arg(long, default_value = "")]
    target: String,
    /// ViT blocks to dump, 0-based, comma-separated (default: the blocks the model reads).
    #[arg(long, value_delimiter = ',')]
    layers: Option<Vec<usize>>,
    /// Where to write the tensors (safetensors).
    #[arg(long)]
    dump: PathBuf,
}

/// `--task`: one of `lion_core::Task`'s names (listed in `--help`).
fn task_parser() -> impl clap::builder::TypedValueParser<Value = Task> {
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(Task::ALL.map(Task::name))
        .try_map(|s| s.parse::<Task>())
}

fn i64s(t: &Tensor) -> Result<Tensor> {
    Ok(t.to_dtype(DType::I64)?)
}

pub fn run(args: Args) -> Result<()> {
    let task = args.task;
    if task != Task::Caption && args.text.trim().is_empty() {
        bail!("--task {:?} needs --text", args.task);
    }
    let tags = match &args.tags {
        Some(t) => lion_core::tags::parse_list(t).map_err(anyhow::Error::msg)?,
        None => vec![],
    };
    let img = load_image(&args.image)
        .with_context(|| format!("cannot read the image {}", args.image.display()))?;
    // the dump is compared against the reference in f32 unless asked otherwise
    let mut model = args.model.clone();
    model.dtype.get_or_insert(lion_core::cpu::WeightDtype::F32);
    let p = model.load()?;
    let cfg = p.config().clone();
    let layers = args.layers.clone().unwrap_or_else(|| cfg.vit_layers());
    let req = Request {
        task,
        text: args.text.clone(),
        tags,
    };
    let batch = p.prepare(&[img], &[req])?;
    let model = p.model();
    let mut out: HashMap<String, Tensor> = HashMap::new();
    out.insert("pixel_values".into(), batch.pixel_values.clone());
    for (l, t) in layers
        .iter()
        .zip(model.vit_blocks(&batch.pixel_values, &layers)?)
    {
        out.insert(format!("vit.block{l}"), t);
    }
    let visual = model.encode_image(&batch.pixel_values, batch.qformer_text.as_ref(), false)?;
    let nq = cfg.qformer.as_ref().map_or(0, |q| q.num_query_token);
    if nq > 0 {
        out.insert("qformer".into(), visual.narrow(1, 0, nq)?);
    }
    if cfg.aggregator.is_some() {
        let n = visual.dim(1)? - nq;
        out.insert("aggregator".into(), visual.narrow(1, nq, n)?);
    }
    let (embeds, mask) =
        model.encoder_input(&visual, &batch.prompt, batch.tag_embedding.as_ref())?;
    out.insert("prompt_ids".into(), i64s(&batch.prompt.input_ids)?);
    out.insert("encoder_input".into(), embeds);
    out.insert("encoder_mask".into(), i64s(&mask)?);
    let labels = p.labels(&[args.target.as_str()])?;
    let o = model.forward_from_visual(&visual, &batch, &labels, false)?;
    out.insert("visual".into(), visual);
    out.insert("labels".into(), labels);
    out.insert("logits".into(), o.logits);
    out.insert("loss".into(), o.loss.reshape(1)?);
    save_safetensors(&out, &args.dump)
        .with_context(|| format!("cannot write {}", args.dump.display()))?;
    let mut names: Vec<_> = out.iter().collect();
    names.sort_by(|a, b| a.0.cmp(b.0));
    for (name, t) in names {
        println!("{name}\t{:?}", t.dims());
    }
    Ok(())
}
