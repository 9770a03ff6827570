//! `lion bench`: per-stage timing with random weights (the `lion-bench` crate), and the files
//! `scripts/bench_torch.py` reads to run the same workloads in PyTorch.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args as ClapArgs;
use lion_bench::{self as bench, BenchSetup};

#[derive(ClapArgs)]
pub struct Args {
    /// Model size: `base` (flan-t5-base + LION adapters), `tiny`, or a published size,
    /// `lion-4b` (EVA ViT-g + flan-t5-xl) or `lion-12b` (+ flan-t5-xxl): their random weights are
    /// written once, streamed in bf16 (8 and 25 GB on disk), and only the one-caption inference
    /// stages run.
    #[arg(long, default_value = "base")]
    preset: String,
    /// Folder for the random checkpoint, inputs and setup.json (reused when it exists).
    #[arg(long, default_value = "target/bench")]
    dir: PathBuf,
    /// Write a fresh checkpoint and inputs even when the folder has them.
    #[arg(long)]
    fresh: bool,
    /// Only write the folder (for the PyTorch side), do not time anything.
    #[arg(long)]
    prepare_only: bool,
    /// Timed runs per stage, after one warm-up.
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Rows of the throughput stage.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Rows of the training step.
    #[arg(long, default_value_t = 2)]
    train_batch: usize,
    /// Tag-encoder model, a folder or a Hub id (the tag-encoder stage is skipped when it is not
    /// found).
    #[arg(long, default_value = crate::cmd::DEFAULT_MINILM)]
    tagenc: String,
    /// Only these stages (comma-separated): gemm, t5_encoder, decode_token, caption_beam5,
    /// caption_batch, train_step, tagenc_triplet, vit, qformer, aggregator, caption_e2e,
    /// caption_e2e_batch, tagger.
    #[arg(long, value_delimiter = ',')]
    stages: Vec<String>,
    /// Also write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Linear weights of the inference stages and the gemm stage: f32, bf16 or auto (bf16 where
    /// the CPU has native bf16 dot products). Training stages run f32 either way.
    #[arg(long, default_value = "f32", value_parser = crate::cmd::model::parse_dtype)]
    dtype: lion_core::cpu::WeightDtype,
    /// Weight-only quantisation of the ViT's and T5's linear layers in the inference stages:
    /// q8_0, q4_0 or q4k (as `lion caption --quantize`).
    #[arg(long, value_parser = crate::cmd::model::parse_quantize)]
    quantize: Option<lion_core::cpu::Quantize>,
    /// Where the timed stages run (the random weights and inputs are written on the CPU).
    #[command(flatten)]
    device: crate::cmd::DeviceArgs,
}

pub fn run(args: Args) -> Result<()> {
    // candle's element-wise ops run on a spin-waiting thread pool sized by CANDLE_NUM_THREADS
    // (default: all cores). On a loaded machine the spinning costs more than it gains (measured:
    // T5 encoder 0.5-0.8 s with 1 vs 1.1 s with 2 on 2 shared cores); the fused kernels and the
    // GEMMs use rayon either way. Unless the user chose, the bench runs with 1.
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        // SAFETY: set before any candle call or thread start in this command.
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    // the device first: a `--device cuda` that cannot run fails before minutes of preparation
    let dev = args.device.open()?;
    let setup_path = args.dir.join("setup.json");
    let mut setup = BenchSetup::new(&args.preset)?;
    setup.repeats = args.repeats;
    setup.batch = args.batch;
    setup.train_batch = args.train_batch;
    setup.tagenc_dir = Some(
        lion_core::hub::resolve_model(&args.tagenc).unwrap_or_else(|_| PathBuf::from(&args.tagenc)),
    );
    if !args.stages.is_empty() {
        setup.stages = args.stages.clone();
    }
    setup.dtype = args.dtype;
    setup.quantize = args.quantize;
    if setup.quantize.is_some() && args.device.device.is_cuda() {
        anyhow::bail!("--quantize runs on the CPU only");
    }
    setup.validate()?;
    let reusable = !args.fresh
        && args.dir.join("t5.safetensors").exists()
        && args.dir.join("inputs.safetensors").exists()
        && (setup.lion.is_none() || args.dir.join("vision.safetensors").exists())
        && (setup.tagger.is_none() || args.dir.join("tagger.safetensors").exists())
        && lion_core::util::read_json::<BenchSetup>(&setup_path)
            .map(|old| {
                old.t5 == setup.t5
                    && old.tagger == setup.tagger
                    && old.lion == setup.lion
                    && (old.lion.is_none() || old.batch >= setup.batch)
                    && old.text_tokens == setup.text_tokens
                    && old.seq_len() == setup.seq_len()
                    && old.batch.max(old.train_batch) >= setup.batch.max(setup.train_batch)
                    && old.train_batch == setup.train_batch
                    && old.train_target == setup.train_target
            })
            .unwrap_or(false);
    if reusable {
        // keep the weights and inputs, update the settings
        let json = serde_json::to_vec_pretty(&setup)?;
        lion_core::util::write_atomic(&setup_path, &json)?;
    } else {
        tracing::info!(
            "writing random weights and inputs to {}",
            args.dir.display()
        );
        bench::prepare(&setup, &args.dir)
            .with_context(|| format!("preparing {}", args.dir.display()))?;
    }
    if args.prepare_only {
        return Ok(());
    }
    let report = bench::run_on(&args.dir, &dev)?;
    print!("{}", bench::table(&report));
    if let Some(path) = &args.json {
        let json = serde_json::to_vec_pretty(&report)?;
        lion_core::util::write_atomic(path, &json)?;
    }
    Ok(())
}
