//! The decoded-image memory budget: every image request reserves the bytes its decoding will
//! hold (from the header's width, height and colour type, before any pixel is decoded) and gives
//! them back when its [`Reservation`] is dropped, which is when the job leaves the model queue.
//! With it, memory held by decoded images is bounded by `--max-decoded-bytes` however many
//! requests are queued, instead of by the queue length times the largest image.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::error::{ApiError, ErrorType};
use crate::metrics::Metrics;

/// The shared budget (bytes).
pub struct DecodeBudget {
    total: u64,
    used: AtomicU64,
    metrics: Arc<Metrics>,
}

/// Bytes held from a [`DecodeBudget`]; released on drop.
pub struct Reservation {
    budget: Arc<DecodeBudget>,
    bytes: u64,
}

impl DecodeBudget {
    pub fn new(total: u64, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            total,
            used: AtomicU64::new(0),
            metrics,
        })
    }

    /// Bytes reserved now.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::SeqCst)
    }

    /// Reserves `bytes` for decoding `what` (named in the error): 413 when it can never fit,
    /// 429 when it does not fit now (other requests hold the budget; retry later).
    pub fn reserve(self: &Arc<Self>, bytes: u64, what: &str) -> Result<Reservation, ApiError> {
        if bytes > self.total {
            return Err(ApiError::too_large(format!(
                "{what}: decoding it needs {} bytes, more than the server's decoded-image budget \
                 of {} bytes (--max-decoded-bytes)",
                bytes, self.total
            )));
        }
        let mut cur = self.used.load(Ordering::SeqCst);
        loop {
            if cur + bytes > self.total {
                self.metrics.decode_budget_rejected();
                tracing::warn!(
                    bytes,
                    in_use = cur,
                    budget = self.total,
                    "decoded-image budget exhausted: request refused"
                );
                return Err(ApiError::new(
                    ErrorType::Overloaded,
                    format!(
                        "{what}: decoding it needs {bytes} bytes and only {} of the server's \
                         {} byte decoded-image budget are free (--max-decoded-bytes); retry later",
                        self.total - cur,
                        self.total
                    ),
                ));
            }
            match self.used.compare_exchange_weak(
                cur,
                cur + bytes,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => break,
                Err(now) => cur = now,
            }
        }
        self.metrics.set_decoded_bytes(cur + bytes);
        Ok(Reservation {
            budget: self.clone(),
            bytes,
        })
    }

    fn release(&self, bytes: u64) {
        let left = self.used.fetch_sub(bytes, Ordering::SeqCst) - bytes;
        self.metrics.set_decoded_bytes(left);
    }
}

impl Reservation {
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Gives back what is above `bytes` (the decoder's buffer once only the RGB image is left).
    pub fn shrink_to(&mut self, bytes: u64) {
        if bytes < self.bytes {
            self.budget.release(self.bytes - bytes);
            self.bytes = bytes;
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.release(self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_add_up_shrink_and_release_on_drop() {
        let b = DecodeBudget::new(100, Arc::new(Metrics::new(1)));
        let mut r1 = b.reserve(60, "a").unwrap();
        let e = b.reserve(50, "b").err().unwrap();
        assert_eq!(e.error_type, ErrorType::Overloaded, "{e}");
        assert!(e.error.contains("only 40 of"), "{e}");
        r1.shrink_to(30);
        assert_eq!(b.used(), 30);
        let r2 = b.reserve(50, "b").unwrap();
        assert_eq!(b.used(), 80);
        drop(r1);
        drop(r2);
        assert_eq!(b.used(), 0);
        // More than the whole budget can never fit: 413, not "retry later".
        let e = b.reserve(101, "huge").err().unwrap();
        assert_eq!(e.error_type, ErrorType::PayloadTooLarge, "{e}");
    }
}
