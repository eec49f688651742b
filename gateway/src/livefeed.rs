//! The Redis live feed: one pattern subscription per node, reconnected with
//! backoff, feeding decoded events to the fan-out shards.
//!
//! Invariant: every (re)connection is followed by a resync of all shards
//! from PostgreSQL *after* the subscription is active, so whatever was
//! published while the node was not listening is backfilled, never lost.

use crate::fanout::Fanout;
use crate::metrics as m;
use crate::wakers::ChannelWakers;
use futures::StreamExt as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use switchyard_cursorlog::LogEvent;
use tokio_util::sync::CancellationToken;

/// State the rest of the node reads.
#[derive(Debug, Default)]
pub struct FeedState {
    pub connected: AtomicBool,
    /// Live events received.
    pub events: AtomicU64,
}

/// Runs the feed until cancelled.
pub async fn run(
    redis_url: String,
    pattern: String,
    epoch: String,
    fanout: Fanout,
    state: Arc<FeedState>,
    wakers: Arc<ChannelWakers>,
    cancel: CancellationToken,
) {
    let client = match redis::Client::open(redis_url.as_str()) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "invalid SWITCHYARD_REDIS_URL; live feed disabled, head checks still deliver");
            return;
        }
    };
    let mut backoff = Duration::from_millis(100);
    let mut connections = 0u64;
    loop {
        if cancel.is_cancelled() {
            return;
        }
        let ps = tokio::time::timeout(Duration::from_secs(3), client.get_async_pubsub()).await;
        let mut ps = match ps {
            Ok(Ok(ps)) => ps,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "redis connect failed");
                wait(&cancel, backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
            Err(_) => {
                tracing::warn!("redis connect timed out");
                wait(&cancel, backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        if let Err(e) = ps.psubscribe(&pattern).await {
            tracing::warn!(error = %e, "redis psubscribe failed");
            wait(&cancel, backoff).await;
            continue;
        }
        backoff = Duration::from_millis(100);
        state.connected.store(true, Ordering::Relaxed);
        connections += 1;
        if connections > 1 {
            metrics::counter!(m::REDIS_RECONNECTS).increment(1);
            tracing::info!("redis live feed reconnected; backfilling from PostgreSQL");
        }
        fanout.resync().await;
        let mut stream = ps.on_message();
        loop {
            let msg = tokio::select! {
                _ = cancel.cancelled() => return,
                m = stream.next() => m,
            };
            let Some(msg) = msg else { break };
            let payload: &[u8] = msg.get_payload_bytes();
            match LogEvent::decode_live(payload) {
                Ok((ev_epoch, ev)) => {
                    if ev_epoch != epoch {
                        metrics::counter!(m::LIVE_DECODE_ERRORS).increment(1);
                        tracing::error!(expected = %epoch, got = %ev_epoch, "live event from another log epoch; was the database reset? restart this node");
                        continue;
                    }
                    state.events.fetch_add(1, Ordering::Relaxed);
                    let channels: Vec<i64> = ev.entries.iter().map(|e| e.channel).collect();
                    fanout.live(ev).await;
                    wakers.wake(channels);
                }
                Err(e) => {
                    metrics::counter!(m::LIVE_DECODE_ERRORS).increment(1);
                    tracing::warn!(error = %e, "undecodable live event ignored");
                }
            }
        }
        state.connected.store(false, Ordering::Relaxed);
        tracing::warn!("redis live feed disconnected; reconnecting");
    }
}

async fn wait(cancel: &CancellationToken, d: Duration) {
    tokio::select! {
        _ = cancel.cancelled() => {}
        _ = tokio::time::sleep(d) => {}
    }
}
