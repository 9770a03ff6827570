//! The training error type: what the library's own errors (files, keys, configs, tensors) cannot
//! say. [`Error::NonFinite`] stops a run whose loss or gradient overflowed; the rest passes a
//! [`lion_core::Error`] through unchanged.

/// An error of a training step.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The loss or the gradient is NaN or infinite at optimizer step `step` (1-based); nothing
    /// was updated, the last good checkpoint stays the latest. `what` names the value and where
    /// it was seen, e.g. `loss (NaN) of task 0, micro-batch 1`.
    #[error("non-finite {what} at step {step}; stopping, the last good checkpoint is kept")]
    NonFinite { step: u64, what: String },

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
