//! The training error type: what the library's own errors (files, keys, configs, tensors) cannot
//! say. [`Error::NonFinite`] stops a run whose loss or gradient overflowed; [`Error::Resume`] and
//! [`Error::RunExists`] are about the run folder (the CLI names its `--resume` flag for them);
//! the rest passes a [`lion_core::Error`] through unchanged.

/// An error of a training step.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The loss or the gradient is NaN or infinite at optimizer step `step` (1-based); nothing
    /// was updated, the last good checkpoint stays the latest. `what` names the value and where
    /// it was seen, e.g. `loss (NaN) of task 0, micro-batch 1`.
    #[error("non-finite {what} at step {step}; stopping, the last good checkpoint is kept")]
    NonFinite { step: u64, what: String },

    /// Resuming was asked for, but the run folder has no checkpoint to continue, or its latest
    /// one cannot be used (`reason`).
    #[error("cannot resume the run in {}: {reason}", dir.display())]
    Resume {
        dir: std::path::PathBuf,
        reason: String,
    },

    /// The output folder already holds a run and resuming was not asked for.
    #[error("{} already holds a run; resume it or choose another output_dir", dir.display())]
    RunExists { dir: std::path::PathBuf },

    /// Anything else: files, keys, configs, tokenizers, tensors.
    #[error(transparent)]
    Core(#[from] lion_core::Error),
}

impl From<candle_core::Error> for Error {
    fn from(e: candle_core::Error) -> Self {
        Error::Core(e.into())
    }
}

/// Result of a training step.
pub type Result<T> = std::result::Result<T, Error>;
