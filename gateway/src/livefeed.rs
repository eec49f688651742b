//! The node's end of the Redis live feed: the subscription itself is
//! `switchyard_livefeed::subscribe`; this module is the sink it feeds —
//! decoded events go to the fan-out shards and wake long-poll waiters, and
//! every (re)connection resyncs all shards.
//!
//! Invariant: every (re)connection is followed by a resync of all shards
//! from PostgreSQL *after* the subscription is active (the subscriber's
//! order), so whatever was published while the node was not listening is
//! backfilled, never lost.

use crate::fanout::Fanout;
use crate::wakers::ChannelWakers;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use switchyard_cursorlog::LogEvent;
use switchyard_livefeed::{LiveSink, SubscriberConfig};
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
    cfg: SubscriberConfig,
    fanout: Fanout,
    state: Arc<FeedState>,
    wakers: Arc<ChannelWakers>,
    cancel: CancellationToken,
) {
    let sink = NodeSink {
        fanout,
        state,
        wakers,
    };
    switchyard_livefeed::subscribe(cfg, sink, cancel).await;
}

/// Feeds the node: fan-out shards, feed state and long-poll waiters.
struct NodeSink {
    fanout: Fanout,
    state: Arc<FeedState>,
    wakers: Arc<ChannelWakers>,
}

impl LiveSink for NodeSink {
    fn connected(&self, up: bool) {
        self.state.connected.store(up, Ordering::Relaxed);
    }

    async fn resync(&self) {
        self.fanout.resync().await;
    }

    async fn event(&self, mut event: LogEvent) {
        self.state.events.fetch_add(1, Ordering::Relaxed);
        let now = chrono::Utc::now().timestamp_millis();
        if event.live.published_at_ms > 0 {
            let s = (now - event.live.published_at_ms).max(0) as f64 / 1000.0;
            metrics::histogram!(crate::metrics::STAGE_SECONDS, "stage" => "feed").record(s);
        }
        event.live.node_received_at_ms = now;
        let channels: Vec<i64> = event.entries.iter().map(|e| e.channel).collect();
        self.fanout.live(event).await;
        // Only the long-polls waiting on these channels wake.
        self.wakers.wake(channels);
    }
}
