//! The bridge's configuration, loaded once at start from a
//! [`switchyard_ops::config::Source`].
//!
//! Invariant: every value is validated here, with an error naming the
//! variable; nothing downstream re-parses the environment.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use switchyard_cursorlog::config::StoreConfig;
use switchyard_ops::config::{ConfigError, Source};

/// Typed bridge configuration.
#[derive(Debug, Clone)]
pub struct BridgeConfig {
    pub store: StoreConfig,
    pub topology: PathBuf,
    pub kafka_brokers: String,
    pub kafka_topics: Vec<String>,
    pub kafka_group: String,
    /// Static group membership (`group.instance.id`): a restarted bridge with
    /// the same id takes its partitions back at once instead of waiting for
    /// the dead member's session to expire.
    pub kafka_instance_id: Option<String>,
    /// How long the broker waits for a silent member (a crashed bridge)
    /// before it hands its partitions to the others. Restart latency after
    /// a crash without static membership is about this long.
    pub kafka_session_timeout: Duration,
    /// Heartbeat period; a third of the session timeout or less.
    pub kafka_heartbeat_interval: Duration,
    pub dlq_topic: String,
    /// Extra librdkafka properties (`SWITCHYARD_KAFKA_OPTIONS=k=v,k=v`), e.g. SASL/TLS.
    pub kafka_options: Vec<(String, String)>,
    pub admin_listen: SocketAddr,
    pub batch_max: usize,
    /// How long the reader waits to fill a batch, only while an earlier
    /// batch is still being written (`SWITCHYARD_BATCH_LINGER_MS`).
    pub batch_linger: Duration,
    /// Transactions one batch is appended in at once
    /// (`SWITCHYARD_APPEND_WRITERS`): the batch is split into groups with
    /// disjoint channel sets ([`switchyard_cursorlog::shard`]), each appended
    /// concurrently; 1 (the default) appends every batch in one transaction.
    pub append_writers: usize,
    pub max_event_bytes: usize,
    /// Events resolving to more channels go to the DLQ (`too_many_channels`):
    /// one event must not lock tens of thousands of channel rows.
    pub max_channels_per_event: usize,
    /// Records whose Kafka timestamp is older than this go to the DLQ
    /// (`expired`): their event may already have been swept from the log,
    /// which is where duplicates are detected, so a re-read (e.g.
    /// `auto.offset.reset=earliest` after a lost group) would deliver it
    /// again as new. At most the minimum retention.
    pub max_record_age: Duration,
    /// Largest record the DLQ producer sends (its `message.max.bytes`); a
    /// rejected record whose copy is larger goes to the DLQ as metadata only.
    pub dlq_max_bytes: usize,
    pub sweep_interval: Duration,
    /// librdkafka's `statistics.interval.ms` (5 s unless
    /// `SWITCHYARD_KAFKA_OPTIONS` sets it; zero disables statistics, and
    /// with them the Kafka lag metrics and readiness checks).
    pub kafka_statistics_interval: Duration,
    /// How long the consumer may be without statistics, without a reachable
    /// broker, or outside its group without partitions before `/readyz`
    /// fails (`SWITCHYARD_KAFKA_READY_GRACE_MS`).
    pub kafka_ready_grace: Duration,
}

/// librdkafka's statistics period unless `SWITCHYARD_KAFKA_OPTIONS` says otherwise.
const DEFAULT_STATISTICS_MS: u64 = 5000;

impl BridgeConfig {
    pub fn from_source(s: &Source) -> Result<Self, ConfigError> {
        let kafka_options = s
            .list_or("SWITCHYARD_KAFKA_OPTIONS", "")
            .into_iter()
            .map(|kv| match kv.split_once('=') {
                Some((k, v)) => Ok((k.trim().to_owned(), v.trim().to_owned())),
                None => Err(ConfigError::Invalid {
                    var: "SWITCHYARD_KAFKA_OPTIONS".into(),
                    value: kv.clone(),
                    reason: "expected comma-separated key=value librdkafka properties".into(),
                }),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let batch_max: usize = s.parse_or("SWITCHYARD_BATCH_MAX", 2000)?;
        if batch_max == 0 {
            return Err(ConfigError::Invalid {
                var: "SWITCHYARD_BATCH_MAX".into(),
                value: "0".into(),
                reason: "must be at least 1".into(),
            });
        }
        let store = StoreConfig::from_source(s, 8)?;
        // One transaction per batch by default: with more, groups commit
        // independently, so a subscription spanning several channels can
        // see (and replay) a later event of one channel before an earlier
        // one of another. Per-channel order holds either way.
        let append_writers: usize = s.parse_or("SWITCHYARD_APPEND_WRITERS", 1)?;
        if append_writers == 0 || append_writers >= store.pg_pool_size {
            return Err(ConfigError::Invalid {
                var: "SWITCHYARD_APPEND_WRITERS".into(),
                value: append_writers.to_string(),
                reason: format!(
                    "must be at least 1 and below SWITCHYARD_PG_POOL_SIZE ({}): the reader and the retention sweep need connections too",
                    store.pg_pool_size
                ),
            });
        }
        let kafka_topics = s.list_or("SWITCHYARD_KAFKA_TOPICS", "switchyard.events");
        if kafka_topics.is_empty() {
            return Err(ConfigError::Invalid {
                var: "SWITCHYARD_KAFKA_TOPICS".into(),
                value: String::new(),
                reason: "name at least one topic".into(),
            });
        }
        let kafka_session_timeout = s.millis_or("SWITCHYARD_KAFKA_SESSION_TIMEOUT_MS", 8000)?;
        let kafka_heartbeat_interval = s.millis_or("SWITCHYARD_KAFKA_HEARTBEAT_MS", 2000)?;
        if kafka_heartbeat_interval.is_zero() || kafka_heartbeat_interval >= kafka_session_timeout {
            return Err(ConfigError::Invalid {
                var: "SWITCHYARD_KAFKA_HEARTBEAT_MS".into(),
                value: kafka_heartbeat_interval.as_millis().to_string(),
                reason: format!(
                    "must be above 0 and below SWITCHYARD_KAFKA_SESSION_TIMEOUT_MS ({} ms), ideally a third of it",
                    kafka_session_timeout.as_millis()
                ),
            });
        }
        let max_channels_per_event: usize =
            s.parse_or("SWITCHYARD_MAX_CHANNELS_PER_EVENT", 1000)?;
        if max_channels_per_event == 0 {
            return Err(ConfigError::Invalid {
                var: "SWITCHYARD_MAX_CHANNELS_PER_EVENT".into(),
                value: "0".into(),
                reason: "must be at least 1".into(),
            });
        }
        let store = StoreConfig::from_source(s, 8)?;
        let retention_minutes = store.retention.as_secs() / 60;
        let max_record_age_minutes: u64 =
            s.parse_or("SWITCHYARD_MAX_RECORD_AGE_MINUTES", retention_minutes)?;
        if max_record_age_minutes == 0 || max_record_age_minutes > retention_minutes {
            return Err(ConfigError::Invalid {
                var: "SWITCHYARD_MAX_RECORD_AGE_MINUTES".into(),
                value: max_record_age_minutes.to_string(),
                reason: format!(
                    "use 1 to SWITCHYARD_RETENTION_MINUTES ({retention_minutes}): an older record's event may already be swept, and with it the record of its id that stops a re-delivery from being stored twice"
                ),
            });
        }
        let dlq_max_bytes = match kafka_options.iter().find(|(k, _)| k == "message.max.bytes") {
            None => crate::dlq::DEFAULT_MESSAGE_MAX_BYTES,
            Some((_, v)) => v.parse().map_err(|_| ConfigError::Invalid {
                var: "SWITCHYARD_KAFKA_OPTIONS".into(),
                value: format!("message.max.bytes={v}"),
                reason: "message.max.bytes must be a number of bytes".into(),
            })?,
        };
        let statistics_ms = match kafka_options
            .iter()
            .rev()
            .find(|(k, _)| k == "statistics.interval.ms")
        {
            None => DEFAULT_STATISTICS_MS,
            Some((_, v)) => v.parse().map_err(|_| ConfigError::Invalid {
                var: "SWITCHYARD_KAFKA_OPTIONS".into(),
                value: format!("statistics.interval.ms={v}"),
                reason: "expected milliseconds (0 disables statistics)".into(),
            })?,
        };
        let kafka_ready_grace = s.millis_or("SWITCHYARD_KAFKA_READY_GRACE_MS", 60_000)?;
        if statistics_ms > 0 && kafka_ready_grace < Duration::from_millis(2 * statistics_ms) {
            return Err(ConfigError::Invalid {
                var: "SWITCHYARD_KAFKA_READY_GRACE_MS".into(),
                value: kafka_ready_grace.as_millis().to_string(),
                reason: format!(
                    "must be at least twice librdkafka's statistics.interval.ms ({statistics_ms} ms)"
                ),
            });
        }
        Ok(BridgeConfig {
            store,
            max_record_age: Duration::from_secs(60 * max_record_age_minutes),
            topology: PathBuf::from(s.required(
                "SWITCHYARD_TOPOLOGY",
                "the path of the topology file (JSON or YAML)",
            )?),
            kafka_brokers: s.required(
                "SWITCHYARD_KAFKA_BROKERS",
                "Kafka bootstrap servers such as 127.0.0.1:9092",
            )?,
            kafka_topics,
            kafka_group: s.string_or("SWITCHYARD_KAFKA_GROUP", "switchyard-bridge"),
            kafka_instance_id: s.get("SWITCHYARD_KAFKA_INSTANCE_ID").map(str::to_owned),
            kafka_session_timeout,
            kafka_heartbeat_interval,
            dlq_topic: s.string_or("SWITCHYARD_KAFKA_DLQ_TOPIC", "switchyard.events.dlq"),
            kafka_options,
            admin_listen: s.socket_addr_or("SWITCHYARD_ADMIN_LISTEN", "0.0.0.0:9090")?,
            batch_max,
            batch_linger: s.millis_or("SWITCHYARD_BATCH_LINGER_MS", 5)?,
            append_writers,
            max_event_bytes: s.parse_or("SWITCHYARD_MAX_EVENT_BYTES", 256 * 1024)?,
            max_channels_per_event,
            dlq_max_bytes,
            sweep_interval: s.millis_or("SWITCHYARD_SWEEP_INTERVAL_MS", 30_000)?,
            kafka_statistics_interval: Duration::from_millis(statistics_ms),
            kafka_ready_grace,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Vec<(&'static str, &'static str)> {
        vec![
            ("SWITCHYARD_POSTGRES_URL", "postgres://x"),
            ("SWITCHYARD_REDIS_URL", "redis://x"),
            ("SWITCHYARD_TOPOLOGY", "/t.json"),
            ("SWITCHYARD_KAFKA_BROKERS", "k:9092"),
        ]
    }

    #[test]
    fn defaults_follow_the_contract() {
        let c = BridgeConfig::from_source(&Source::from_map(base())).unwrap();
        assert_eq!(c.kafka_topics, vec!["switchyard.events"]);
        assert_eq!(c.kafka_group, "switchyard-bridge");
        assert_eq!(c.dlq_topic, "switchyard.events.dlq");
        assert_eq!(c.admin_listen.port(), 9090);
        assert_eq!(c.kafka_session_timeout, Duration::from_secs(8));
        assert_eq!(c.kafka_heartbeat_interval, Duration::from_secs(2));
        assert_eq!(c.max_channels_per_event, 1000);
        assert_eq!(c.dlq_max_bytes, 1_000_000);
        assert_eq!(c.append_writers, 1);
    }

    #[test]
    fn append_writers_leave_pool_connections_for_the_rest() {
        for bad in ["0", "8", "x"] {
            let mut v = base();
            v.push(("SWITCHYARD_APPEND_WRITERS", bad));
            let e = BridgeConfig::from_source(&Source::from_map(v)).unwrap_err();
            assert!(
                e.to_string().contains("SWITCHYARD_APPEND_WRITERS"),
                "{bad}: {e}"
            );
        }
        let mut v = base();
        v.push(("SWITCHYARD_APPEND_WRITERS", "8"));
        v.push(("SWITCHYARD_PG_POOL_SIZE", "12"));
        let c = BridgeConfig::from_source(&Source::from_map(v)).unwrap();
        assert_eq!(c.append_writers, 8);
    }

    #[test]
    fn records_may_not_outlive_the_minimum_retention() {
        let c = BridgeConfig::from_source(&Source::from_map(base())).unwrap();
        assert_eq!(c.max_record_age, Duration::from_secs(1440 * 60));
        let mut v = base();
        v.push(("SWITCHYARD_RETENTION_MINUTES", "60"));
        v.push(("SWITCHYARD_MAX_RECORD_AGE_MINUTES", "30"));
        let c = BridgeConfig::from_source(&Source::from_map(v.clone())).unwrap();
        assert_eq!(c.max_record_age, Duration::from_secs(30 * 60));
        for bad in ["61", "0"] {
            let mut v = v.clone();
            v.push(("SWITCHYARD_MAX_RECORD_AGE_MINUTES", bad));
            let e = BridgeConfig::from_source(&Source::from_map(v)).unwrap_err();
            assert!(
                e.to_string().contains("SWITCHYARD_MAX_RECORD_AGE_MINUTES"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn the_dlq_limit_follows_the_producer_option() {
        let mut v = base();
        v.push(("SWITCHYARD_KAFKA_OPTIONS", "message.max.bytes=5000000"));
        let c = BridgeConfig::from_source(&Source::from_map(v)).unwrap();
        assert_eq!(c.dlq_max_bytes, 5_000_000);
        assert_eq!(c.kafka_statistics_interval, Duration::from_secs(5));
        assert_eq!(c.kafka_ready_grace, Duration::from_secs(60));
    }

    #[test]
    fn the_ready_grace_must_outlast_two_statistics_periods() {
        let mut v = base();
        v.push(("SWITCHYARD_KAFKA_READY_GRACE_MS", "9000"));
        let e = BridgeConfig::from_source(&Source::from_map(v.clone())).unwrap_err();
        assert!(
            e.to_string().contains("SWITCHYARD_KAFKA_READY_GRACE_MS"),
            "{e}"
        );
        v.push(("SWITCHYARD_KAFKA_OPTIONS", "statistics.interval.ms=1000"));
        let c = BridgeConfig::from_source(&Source::from_map(v.clone())).unwrap();
        assert_eq!(c.kafka_statistics_interval, Duration::from_secs(1));
        v.push(("SWITCHYARD_KAFKA_OPTIONS", "statistics.interval.ms=soon"));
        let e = BridgeConfig::from_source(&Source::from_map(v)).unwrap_err();
        assert!(e.to_string().contains("SWITCHYARD_KAFKA_OPTIONS"), "{e}");
    }

    #[test]
    fn errors_name_the_variable() {
        let mut v = base();
        v.retain(|(k, _)| *k != "SWITCHYARD_KAFKA_BROKERS");
        let e = BridgeConfig::from_source(&Source::from_map(v)).unwrap_err();
        assert!(e.to_string().contains("SWITCHYARD_KAFKA_BROKERS"), "{e}");
        let mut v = base();
        v.push(("SWITCHYARD_LOOKBACK_TZ", "Mars/Olympus"));
        let e = BridgeConfig::from_source(&Source::from_map(v)).unwrap_err();
        assert!(e.to_string().contains("SWITCHYARD_LOOKBACK_TZ"), "{e}");
        let mut v = base();
        v.push(("SWITCHYARD_KAFKA_OPTIONS", "security.protocol"));
        let e = BridgeConfig::from_source(&Source::from_map(v)).unwrap_err();
        assert!(e.to_string().contains("SWITCHYARD_KAFKA_OPTIONS"), "{e}");
        let mut v = base();
        v.push(("SWITCHYARD_KAFKA_SESSION_TIMEOUT_MS", "3000"));
        v.push(("SWITCHYARD_KAFKA_HEARTBEAT_MS", "3000"));
        let e = BridgeConfig::from_source(&Source::from_map(v)).unwrap_err();
        assert!(
            e.to_string().contains("SWITCHYARD_KAFKA_HEARTBEAT_MS"),
            "{e}"
        );
        let mut v = base();
        v.push(("SWITCHYARD_MAX_CHANNELS_PER_EVENT", "0"));
        let e = BridgeConfig::from_source(&Source::from_map(v)).unwrap_err();
        assert!(
            e.to_string().contains("SWITCHYARD_MAX_CHANNELS_PER_EVENT"),
            "{e}"
        );
    }
}
