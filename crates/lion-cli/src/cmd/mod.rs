pub mod ask;
pub mod bench;
pub mod demo;
pub mod doctor;
pub mod embed;
pub mod eval;
pub mod forward;
pub mod merge;
pub mod model;
pub mod predict;
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

/// The compute device: CPU (the only one this build supports).
pub fn device() -> Result<Device> {
    Ok(Device::Cpu)
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
