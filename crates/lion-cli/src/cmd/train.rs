//! `lion train --config CONFIG.json [--resume]`: PEFT training of LION (see
//! `lion_train::peft`). Writes into the config's `output_dir`: `checkpoints/step-N/` (trainable
//! tensors, optimizer and data-order state, config; checksummed manifest), `latest`,
//! `metrics.jsonl` (one line per step and per evaluation) and `loss.png`.

use std::path::PathBuf;

use anyhow::Result;
use lion_train::peft::PeftConfig;

#[derive(clap::Args)]
pub struct Args {
    /// The training config (JSON; see the README section "Training LION").
    #[arg(long)]
    config: PathBuf,
    /// Continue from the output folder's latest checkpoint (refused if it is corrupt).
    #[arg(long)]
    resume: bool,
    #[command(flatten)]
    device: super::DeviceArgs,
}

pub fn run(args: Args) -> Result<()> {
    let cfg = PeftConfig::read(&args.config)?;
    let dev = args.device.open()?;
    let out = lion_train::progress::train_showing(cfg, args.resume, &dev, &super::Terminal)
        .map_err(|e| match e {
            // the run-folder errors in the flag's words
            lion_train::error::Error::RunExists { .. } => {
                anyhow::anyhow!("{e} (add --resume to continue it)")
            }
            lion_train::error::Error::Resume { .. } => anyhow::anyhow!("--resume: {e}"),
            e => e.into(),
        })?;
    println!("{}", out.display());
    Ok(())
}
