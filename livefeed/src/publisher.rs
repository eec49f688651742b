//! Publishing events on the live feed, for the gateway fleet: the bridge
//! publishes what it committed, gateways publish their clients' publishes.
//!
//! Invariant: only events already committed to PostgreSQL are published
//! (ephemeral channels excepted, which are best-effort by definition). A
//! failed publish is counted and logged, never retried into a duplicate and
//! never allowed to stall its caller: gateways detect the missing sequence
//! numbers and backfill from PostgreSQL.

use crate::metrics as m;
use crate::naming::live_channel;
use crate::wire::LiveKey;
use crate::{wire, FeedError};
use redis::aio::ConnectionManager;
use std::time::Duration;
use switchyard_cursorlog::LogEvent;

/// Publishes events on Redis with one pipelined round trip per call.
#[derive(Clone)]
pub struct Publisher {
    pub(crate) conn: ConnectionManager,
    pub(crate) prefix: String,
    epoch: String,
    pub(crate) key: Option<LiveKey>,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl Publisher {
    /// Connects to `redis_url`; events go to channels under `prefix`,
    /// stamped with the log `epoch` and authenticated with `key` when given.
    pub async fn connect(
        redis_url: &str,
        prefix: &str,
        epoch: &str,
        key: Option<LiveKey>,
    ) -> Result<Self, FeedError> {
        let client = redis::Client::open(redis_url)?;
        let cfg = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Duration::from_secs(2))
            .set_response_timeout(Duration::from_secs(2))
            .set_number_of_retries(1);
        let conn = ConnectionManager::new_with_config(client, cfg).await?;
        Ok(Publisher {
            conn,
            prefix: prefix.to_owned(),
            epoch: epoch.to_owned(),
            key,
        })
    }

    /// Publishes `events`; failures are counted, not returned.
    pub async fn publish(&self, events: &[LogEvent]) {
        if events.is_empty() {
            return;
        }
        let mut pipe = redis::pipe();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        for ev in events {
            pipe.publish(
                live_channel(&self.prefix, &ev.topic),
                wire::encode_with_at(ev, &self.epoch, self.key.as_ref(), now),
            )
            .ignore();
        }
        let mut conn = self.conn.clone();
        if let Err(e) = pipe.query_async::<()>(&mut conn).await {
            metrics::counter!(m::PUBLISH_ERRORS).increment(events.len() as u64);
            tracing::warn!(error = %e, events = events.len(), "redis publish failed; gateways will backfill from PostgreSQL");
        }
    }

    /// Whether Redis answers (readiness checks).
    pub async fn ping(&self) -> redis::RedisResult<()> {
        let mut conn = self.conn.clone();
        redis::cmd("PING").query_async::<()>(&mut conn).await
    }
}
