//! Where the log and its live feed are, and how long entries are kept: the
//! configuration both binaries share, read from the same variables. (The
//! live feed itself is `switchyard-livefeed`, which takes `redis_url` and
//! `redis_prefix` from here.)
//!
//! Invariant: both binaries interpret these variables identically; a value
//! that differed between the bridge and the gateways (time zone, retention,
//! Redis prefix) would split their view of the same log.

use crate::log::{CursorLog, LogError, PoolOptions};
use std::time::Duration;
use switchyard_ops::config::{ConfigError, Source};

/// Shared storage configuration.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub postgres_url: String,
    pub pg_pool_size: usize,
    pub redis_url: String,
    /// Prefix of Redis channel names (lets deployments share a Redis).
    pub redis_prefix: String,
    /// Time zone of `CalendarDay` lookback midnights.
    pub lookback_tz: chrono_tz::Tz,
    /// Minimum retention of entries for cursor catch-up.
    pub retention: Duration,
    /// Secret that authenticates live messages on Redis
    /// (`SWITCHYARD_LIVE_KEY`, the same for the bridge and every gateway);
    /// `None`: live messages are not authenticated.
    pub live_key: Option<String>,
}

/// Shortest `SWITCHYARD_LIVE_KEY` accepted.
pub const MIN_LIVE_KEY_BYTES: usize = 32;

/// Why the log could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connecting to PostgreSQL (SWITCHYARD_POSTGRES_URL): {0}")]
    Postgres(#[from] LogError),
}

impl StoreConfig {
    pub fn from_source(s: &Source, default_pool: usize) -> Result<Self, ConfigError> {
        let tz_name = s.string_or("SWITCHYARD_LOOKBACK_TZ", "UTC");
        let lookback_tz = tz_name.parse().map_err(|_| ConfigError::Invalid {
            var: "SWITCHYARD_LOOKBACK_TZ".into(),
            value: tz_name.clone(),
            reason: "expected an IANA time zone such as UTC or Europe/Berlin".into(),
        })?;
        Ok(StoreConfig {
            postgres_url: s.required(
                "SWITCHYARD_POSTGRES_URL",
                "a PostgreSQL URL such as postgres://postgres@127.0.0.1:5432/switchyard",
            )?,
            pg_pool_size: s.parse_or("SWITCHYARD_PG_POOL_SIZE", default_pool)?,
            redis_url: s.required(
                "SWITCHYARD_REDIS_URL",
                "a Redis URL such as redis://127.0.0.1:6379",
            )?,
            redis_prefix: s.string_or("SWITCHYARD_REDIS_PREFIX", "switchyard"),
            lookback_tz,
            retention: Duration::from_secs(
                60 * s.parse_or::<u64>("SWITCHYARD_RETENTION_MINUTES", 1440)?,
            ),
            live_key: match s.get("SWITCHYARD_LIVE_KEY") {
                Some(k) if k.len() < MIN_LIVE_KEY_BYTES => {
                    return Err(ConfigError::Invalid {
                        var: "SWITCHYARD_LIVE_KEY".into(),
                        value: "<hidden>".into(),
                        reason: format!(
                            "use at least {MIN_LIVE_KEY_BYTES} bytes (e.g. `openssl rand -hex 32`), the same for the bridge and every gateway"
                        ),
                    })
                }
                k => k.map(str::to_owned),
            },
        })
    }

    /// Connects to PostgreSQL (applying migrations).
    pub async fn connect(&self) -> Result<CursorLog, ConnectError> {
        let log = CursorLog::connect(
            &self.postgres_url,
            PoolOptions {
                max_size: self.pg_pool_size,
                ..Default::default()
            },
        )
        .await?;
        Ok(log)
    }
}
