//! Retention: deletes events whose `expires_at` (the longest of their
//! channels' lookback, retention and the default retention) has passed, and
//! reports the log's size and the age of its oldest event after each sweep
//! (and once at start), so a sweep that stops working shows as a log that
//! only grows and gets older.
//!
//! Invariant: deletion is by expiry only and removes an event together with
//! all its entries in one statement, so a reader never sees an entry whose
//! event is gone; cursors older than what remains get `recovered: false`.

use crate::metrics as m;
use std::time::Duration;
use switchyard_cursorlog::CursorLog;
use tokio_util::sync::CancellationToken;

const SWEEP_BATCH: i64 = 5000;

/// Sweeps every `interval` until cancelled.
pub async fn run(log: CursorLog, interval: Duration, cancel: CancellationToken) {
    report(&log).await;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        let result = loop {
            match log.sweep_expired(SWEEP_BATCH).await {
                Ok(n) => {
                    metrics::counter!(m::SWEPT).increment(n);
                    if (n as i64) < SWEEP_BATCH || cancel.is_cancelled() {
                        break "ok";
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "retention sweep failed; will retry");
                    break "error";
                }
            }
        };
        metrics::counter!(m::SWEEPS, "result" => result).increment(1);
        report(&log).await;
    }
}

/// Sets the log size and oldest-event gauges.
async fn report(log: &CursorLog) {
    match log.stats().await {
        Ok(s) => {
            metrics::gauge!(m::LOG_BYTES).set(s.bytes as f64);
            metrics::gauge!(m::LOG_OLDEST_AGE).set(s.oldest_age.map_or(0.0, |a| a.as_secs_f64()));
        }
        Err(e) => tracing::debug!(error = %e, "cannot measure the log"),
    }
}
