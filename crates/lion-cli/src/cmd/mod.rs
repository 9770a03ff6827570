pub mod ask;
pub mod bench;
pub mod convert;
pub mod demo;
pub mod doctor;
pub mod embed;
pub mod eval;
pub mod forward;
pub mod merge;
pub mod model;

pub mod select_captions;
pub mod serve;
pub mod shard;
pub mod tag;
pub mod train;
pub mod train_tag_encoder;
pub mod train_tagger;
pub mod world;

use anyhow::Result;
use candle_core::Device;
use lion_core::device::DeviceSpec;

/// `--device`, shared by every command that runs a model.
#[derive(clap::Args, Debug, Clone, Copy, Default)]
pub struct DeviceArgs {
    /// Compute device: cpu, cuda or cuda:N (CUDA needs a build with `--features cuda`,
    /// see scripts/build-cuda.sh).
    #[arg(long, default_value = "cpu", value_parser = parse_device)]
    pub device: DeviceSpec,
}

/// clap value parser of `--device` ([`lion_core::rules::device`]).
pub fn parse_device(s: &str) -> std::result::Result<DeviceSpec, String> {
    lion_core::rules::device(s).map_err(String::from)
}

impl DeviceArgs {
    /// Opens the device; an absent CUDA device is an error naming it.
    pub fn open(&self) -> Result<Device> {
        let dev = self.device.open()?;
        tracing::info!(device = %self.device, "compute device");
        Ok(dev)
    }
}

/// all-MiniLM-L6-v2 by Hub id, found wherever `lion_core::hub` looks (never relative to the
/// current directory); `scripts/get-minilm.sh` puts it in the Hugging Face cache.
pub const DEFAULT_MINILM: &str = lion_core::hub::DEFAULT_MINILM;

/// clap value parser of a model flag: a folder or a Hub id, resolved by `lion_core::hub`.
pub fn model_dir(spec: &str) -> std::result::Result<std::path::PathBuf, String> {
    lion_core::hub::resolve_model(spec).map_err(|e| e.to_string())
}

/// A progress bar on stderr (hidden when stderr is not a terminal).
pub fn progress(len: u64, what: &str) -> indicatif::ProgressBar {
    let pb = indicatif::ProgressBar::new(len);
    pb.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} [{bar:30}] {pos}/{len} ({per_sec}, eta {eta})",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

/// [`lion_train::triplet_trainer::fine_tune`] with progress bars (caption selection, then
/// training steps with the loss): `lion train-tag-encoder` and the demo's stage 3.
pub fn fine_tune_with_progress(
    job: &lion_train::triplet_trainer::FineTune,
    dev: &candle_core::Device,
) -> anyhow::Result<lion_train::triplet_trainer::TrainOutputs> {
    use lion_train::triplet_trainer::TrainEvent;
    let mut select: Option<indicatif::ProgressBar> = None;
    let mut train: Option<indicatif::ProgressBar> = None;
    let epochs = job.config.epochs;
    let out = lion_train::triplet_trainer::fine_tune(
        job,
        dev,
        &mut |done, total| {
            let pb = select.get_or_insert_with(|| progress(total as u64, "selecting captions"));
            pb.set_position(done as u64);
            if done >= total {
                pb.finish_and_clear();
            }
        },
        |ev| match ev {
            TrainEvent::Start {
                steps_per_epoch, ..
            } => {
                train = Some(progress((*steps_per_epoch * epochs) as u64, "training"));
            }
            TrainEvent::Step { epoch, loss, .. } => {
                if let Some(pb) = &train {
                    pb.set_message(format!("epoch {epoch} loss {loss:.4}"));
                    pb.inc(1);
                }
            }
            TrainEvent::Epoch(_) => {}
        },
    );
    if let Some(pb) = train {
        pb.finish_and_clear();
    }
    Ok(out?)
}

/// [`lion_train::peft::train`] with a progress bar (loss, learning rate, samples/s): `lion
/// train` and the demo's training stages. Returns the output folder.
pub fn train_with_progress(
    cfg: lion_train::peft::PeftConfig,
    resume: bool,
    dev: &candle_core::Device,
) -> anyhow::Result<std::path::PathBuf> {
    use lion_train::peft::TrainEvent;
    let pb = progress(cfg.steps, "train");
    let out = lion_train::peft::train(cfg, resume, dev, &mut |e| match e {
        TrainEvent::Started { step, .. } => pb.set_position(step),
        TrainEvent::Step {
            record,
            samples_per_s,
        } => {
            pb.set_position(record.step);
            pb.set_message(format!(
                "loss {:.4} lr {:.2e} {:.1} samples/s",
                record.loss, record.lr, samples_per_s
            ));
        }
        TrainEvent::Evaluated { .. } => {}
    });
    match out {
        Ok(out) => {
            pb.finish();
            Ok(out)
        }
        Err(e) => {
            pb.abandon();
            // the run-folder errors in the flag's words
            Err(match e {
                lion_train::error::Error::RunExists { .. } => {
                    anyhow::anyhow!("{e} (add --resume to continue it)")
                }
                lion_train::error::Error::Resume { .. } => anyhow::anyhow!("--resume: {e}"),
                e => e.into(),
            })
        }
    }
}

/// A progress callback (done, total) that draws a bar on stderr, created at the first call and
/// cleared when done reaches total.
pub fn progress_fn(label: String) -> std::sync::Arc<dyn Fn(u64, u64) + Send + Sync> {
    let bar = std::sync::Mutex::new(None::<indicatif::ProgressBar>);
    std::sync::Arc::new(move |done: u64, total: u64| {
        let mut bar = bar.lock().unwrap_or_else(|e| e.into_inner());
        let pb = bar.get_or_insert_with(|| progress(total, &label));
        pb.set_position(done);
        if done >= total {
            pb.finish_and_clear();
        }
    })
}
