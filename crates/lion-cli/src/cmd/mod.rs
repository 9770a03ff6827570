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

/// Progress bars on stderr ([`lion_train::progress::Progress`] for the libraries' long work).
pub struct Terminal;

struct TerminalBar(indicatif::ProgressBar);

impl lion_train::progress::Bar for TerminalBar {
    fn set_position(&self, pos: u64) {
        self.0.set_position(pos)
    }
    fn set_message(&self, msg: String) {
        self.0.set_message(msg)
    }
    fn finish(&self) {
        self.0.finish_and_clear()
    }
    fn abandon(&self) {
        self.0.abandon()
    }
}

impl lion_train::progress::Progress for Terminal {
    fn bar(&self, label: &str, total: u64) -> Box<dyn lion_train::progress::Bar> {
        Box::new(TerminalBar(progress(total, label)))
    }
}
