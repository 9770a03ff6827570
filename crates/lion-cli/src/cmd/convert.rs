//! `lion convert`: weight files rewritten once as safetensors, streamed, optionally in another
//! dtype or with the linear weights quantized (`lion_core::convert`,
//! `lion_core::weights::convert_to_safetensors`).

use std::path::PathBuf;

use anyhow::{Context, Result};
use candle_core::DType;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A model folder (`lion.json`): every weight entry becomes one safetensors file in --out,
    /// with a new lion.json beside them.
    #[arg(long, conflicts_with = "weights", required_unless_present = "weights")]
    model: Option<PathBuf>,
    /// One weight file (`.pth` or safetensors) or a folder of safetensors shards, written as the
    /// single safetensors file --out.
    #[arg(long)]
    weights: Option<PathBuf>,
    /// The new model folder (--model; must not hold a lion.json) or safetensors file (--weights).
    #[arg(long)]
    out: PathBuf,
    /// Floating-point tensors in this dtype: bf16, f16 or f32 (default: as stored).
    #[arg(long, value_parser = parse_float_dtype)]
    dtype: Option<DType>,
    /// With --model: store the ViT's and T5's linear weights quantized (q8_0, q4_0 or q4k, as
    /// `--quantize` would at every load); the folder then loads them as stored. CPU only.
    #[arg(long, requires = "model", value_parser = super::model::parse_quantize)]
    quantize: Option<lion_core::cpu::Quantize>,
}

fn parse_float_dtype(s: &str) -> std::result::Result<DType, String> {
    match s {
        "bf16" => Ok(DType::BF16),
        "f16" => Ok(DType::F16),
        "f32" => Ok(DType::F32),
        _ => Err(format!("`{s}`: expected bf16, f16 or f32")),
    }
}

pub fn run(args: Args) -> Result<()> {
    let mut bar: Option<(PathBuf, indicatif::ProgressBar)> = None;
    let mut progress = |file: &std::path::Path, done: usize, total: usize| {
        if bar.as_ref().is_none_or(|(f, _)| f != file) {
            let name = file.file_name().unwrap_or_default().to_string_lossy();
            bar = Some((file.to_path_buf(), super::progress(total as u64, &name)));
        }
        if let Some((_, pb)) = &bar {
            pb.set_position(done as u64);
            if done == total {
                pb.finish();
            }
        }
    };
    match (&args.model, &args.weights) {
        (Some(src), _) => {
            let out = lion_core::convert::convert_model_folder(
                src,
                &args.out,
                args.dtype,
                args.quantize,
                |f, d, t| progress(f, d, t),
            )
            .with_context(|| format!("converting the model folder {}", src.display()))?;
            for (f, n) in &out.files {
                println!("{}\t{n} tensors", f.display());
            }
            println!("{}", out.manifest.display());
        }
        (None, Some(src)) => {
            let checkpoints = lion_core::pipeline::open_weights(src, "")?;
            let n = lion_core::weights::convert_to_safetensors(
                &checkpoints,
                &args.out,
                args.dtype,
                None,
                |d, t| progress(&args.out, d, t),
            )
            .with_context(|| format!("converting {}", src.display()))?;
            println!("{}\t{n} tensors", args.out.display());
        }
        (None, None) => anyhow::bail!("give --model DIR or --weights FILE"),
    }
    Ok(())
}
