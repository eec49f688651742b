//! The live feed: publishing committed events on Redis for the gateway fleet
//! (the bridge, and gateways for client publishes).
//!
//! Invariant: only events already committed to PostgreSQL are published
//! (ephemeral channels excepted, which are best-effort by definition). A
//! failed publish is counted and logged, never retried into a duplicate and
//! never allowed to stall ingestion: gateways detect the missing sequence
//! numbers and backfill from PostgreSQL.

use crate::event::LogEvent;
use redis::aio::ConnectionManager;

/// Counter of failed publishes.
pub const REDIS_PUBLISH_ERRORS: &str = "switchyard_bridge_redis_publish_errors_total";

/// The Redis channel carrying live events of `topic`.
pub fn live_channel(prefix: &str, topic: &str) -> String {
    format!("{prefix}:live:{topic}")
}

/// The pattern matching every live channel under `prefix`.
pub fn live_pattern(prefix: &str) -> String {
    format!("{prefix}:live:*")
}

/// Publishes events on Redis with one pipelined round trip.
#[derive(Clone)]
pub struct Publisher {
    conn: ConnectionManager,
    prefix: String,
    epoch: String,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl Publisher {
    pub async fn connect(url: &str, prefix: &str, epoch: &str) -> redis::RedisResult<Self> {
        let client = redis::Client::open(url)?;
        let cfg = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(std::time::Duration::from_secs(2))
            .set_response_timeout(std::time::Duration::from_secs(2))
            .set_number_of_retries(1);
        let conn = ConnectionManager::new_with_config(client, cfg).await?;
        Ok(Publisher {
            conn,
            prefix: prefix.to_owned(),
            epoch: epoch.to_owned(),
        })
    }

    /// Publishes `events`; failures are counted, not returned.
    pub async fn publish(&self, events: &[LogEvent]) {
        if events.is_empty() {
            return;
        }
        let mut pipe = redis::pipe();
        for ev in events {
            pipe.publish(
                live_channel(&self.prefix, &ev.topic),
                ev.encode_live(&self.epoch),
            )
            .ignore();
        }
        let mut conn = self.conn.clone();
        if let Err(e) = pipe.query_async::<()>(&mut conn).await {
            metrics::counter!(REDIS_PUBLISH_ERRORS).increment(events.len() as u64);
            tracing::warn!(error = %e, events = events.len(), "redis publish failed; gateways will backfill from PostgreSQL");
        }
    }

    pub async fn ping(&self) -> redis::RedisResult<()> {
        let mut conn = self.conn.clone();
        redis::cmd("PING").query_async::<()>(&mut conn).await
    }
}
