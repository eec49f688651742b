//! Retention: deletes events whose `expires_at` (the longest of their
//! channels' lookback, retention and the default retention) has passed.
//!
//! Invariant: deletion is by expiry only and removes an event together with
//! all its entries in one statement, so a reader never sees an entry whose
//! event is gone; cursors older than what remains get `recovered: false`.

use std::time::Duration;
use switchyard_cursorlog::CursorLog;
use tokio_util::sync::CancellationToken;

const SWEEP_BATCH: i64 = 5000;

/// Sweeps every `interval` until cancelled.
pub async fn run(log: CursorLog, interval: Duration, cancel: CancellationToken) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        loop {
            match log.sweep_expired(SWEEP_BATCH).await {
                Ok(n) => {
                    metrics::counter!(crate::metrics::SWEPT).increment(n);
                    if (n as i64) < SWEEP_BATCH || cancel.is_cancelled() {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "retention sweep failed; will retry");
                    break;
                }
            }
        }
    }
}
