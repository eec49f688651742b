//! Subscribing to the live feed: one pattern subscription, reconnected with
//! backoff for as long as the process runs, handing decoded events of this
//! log epoch to a [`LiveSink`].
//!
//! Invariant: after every (re)connection the sink is told to resync *after*
//! the subscription is active and before any event of that connection, so
//! whatever was published while nobody listened is found by the resync
//! (which reads PostgreSQL) and nothing falls between the two.

use crate::metrics as m;
use crate::wire;
use crate::wire::LiveKey;
use crate::FeedError;
use futures::StreamExt as _;
use std::future::Future;
use std::time::Duration;
use switchyard_cursorlog::LogEvent;
use switchyard_ops::backoff::Backoff;
use tokio_util::sync::CancellationToken;

/// How long one connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Where to subscribe.
#[derive(Debug, Clone)]
pub struct SubscriberConfig {
    pub redis_url: String,
    /// The channel pattern, usually [`crate::live_pattern`] of the prefix.
    pub pattern: String,
    /// The epoch of the log this process reads; events stamped with another
    /// are dropped (their sequence numbers belong to another log).
    pub epoch: String,
    /// With a key, messages not authenticated with it are dropped.
    pub key: Option<LiveKey>,
}

/// What the subscriber feeds. Calls come from one task, in order.
pub trait LiveSink: Send + Sync {
    /// The subscription is up (`true`, right before [`LiveSink::resync`]) or
    /// lost (`false`).
    fn connected(&self, up: bool);

    /// Catch up on whatever may have been published while not subscribed:
    /// called after every (re)connection, once the subscription is active,
    /// before the first event of that connection.
    fn resync(&self) -> impl Future<Output = ()> + Send;

    /// A live event of this log epoch.
    fn event(&self, event: LogEvent) -> impl Future<Output = ()> + Send;
}

/// Runs the subscription until `cancel` fires. An invalid Redis URL is
/// logged and ends the feed (the sink never hears of a connection).
pub async fn subscribe(cfg: SubscriberConfig, sink: impl LiveSink, cancel: CancellationToken) {
    let client = match redis::Client::open(cfg.redis_url.as_str()) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "invalid SWITCHYARD_REDIS_URL; live feed disabled");
            return;
        }
    };
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let mut connections = 0u64;
    while !cancel.is_cancelled() {
        let mut pubsub = match connect(&client, &cfg.pattern).await {
            Ok(ps) => ps,
            Err(e) => {
                let delay = backoff.next_delay();
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "redis live feed subscription failed");
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(delay) => continue,
                }
            }
        };
        backoff.reset();
        sink.connected(true);
        metrics::gauge!(m::FEED_UP).set(1.0);
        connections += 1;
        if connections > 1 {
            metrics::counter!(m::REDIS_RECONNECTS).increment(1);
            tracing::info!("redis live feed reconnected; resyncing from PostgreSQL");
        }
        sink.resync().await;
        let mut messages = pubsub.on_message();
        loop {
            let msg = tokio::select! {
                _ = cancel.cancelled() => return,
                msg = messages.next() => msg,
            };
            let Some(msg) = msg else { break };
            match wire::decode_with(msg.get_payload_bytes(), cfg.key.as_ref()) {
                Ok((epoch, event)) if epoch == cfg.epoch => sink.event(event).await,
                Ok((epoch, _)) => {
                    metrics::counter!(m::LIVE_DECODE_ERRORS).increment(1);
                    tracing::error!(expected = %cfg.epoch, got = %epoch, "live event from another log epoch; was the database reset? restart this node");
                }
                Err(FeedError::Unauthenticated) => {
                    metrics::counter!(m::LIVE_UNAUTHENTICATED).increment(1);
                    tracing::warn!("live message without a valid MAC ignored; is SWITCHYARD_LIVE_KEY the same on the bridge and every gateway?");
                }
                Err(e) => {
                    metrics::counter!(m::LIVE_DECODE_ERRORS).increment(1);
                    tracing::warn!(error = %e, "undecodable live event ignored");
                }
            }
        }
        sink.connected(false);
        metrics::gauge!(m::FEED_UP).set(0.0);
        tracing::warn!("redis live feed disconnected; reconnecting");
    }
}

/// One connection with its pattern subscription active.
async fn connect(
    client: &redis::Client,
    pattern: &str,
) -> Result<redis::aio::PubSub, redis::RedisError> {
    let mut pubsub = tokio::time::timeout(CONNECT_TIMEOUT, client.get_async_pubsub())
        .await
        .map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "connecting to Redis timed out",
            )
        })??;
    pubsub.psubscribe(pattern).await?;
    Ok(pubsub)
}
