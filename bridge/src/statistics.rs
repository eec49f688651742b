//! The Kafka consumer as librdkafka sees it: its statistics
//! (`statistics.interval.ms`, delivered to the consumer context's stats
//! callback while the consumer is polled) become metrics — per-partition
//! lag, assigned partitions, rebalances, brokers up — and the consumer's
//! part of the bridge's readiness ([`ConsumerHealth::verdict`]).
//!
//! Readiness, precisely. With `grace` = `SWITCHYARD_KAFKA_READY_GRACE_MS`,
//! the consumer is unhealthy when, for longer than `grace`:
//! - no statistics arrived (counted from start-up): the consumer is not
//!   being polled, so the pipeline is wedged;
//! - the statistics showed no broker connection UP: the brokers are
//!   unreachable (down, network, TLS/SASL);
//! - it held no partition and was not a steady member of its group (group
//!   state `up`, join state `steady`): it cannot join, or was thrown out.
//!
//! A steady member that holds no partition is a standby (more bridges than
//! partitions) and stays ready: making it unready would stall every rolling
//! update (`maxUnavailable: 0`) of a deployment with spare bridges. That
//! no bridge at all holds a partition is an alert
//! (`SwitchyardBridgeNoPartitions`), not a readiness failure of each one.
//! With statistics disabled (`statistics.interval.ms=0` in
//! `SWITCHYARD_KAFKA_OPTIONS`) Kafka is not checked.
//!
//! Invariant: the stats callback runs on the thread that polls the consumer
//! (the pipeline's reader), so it only parses, sets gauges and updates a
//! few fields under a short lock; it never blocks.

use crate::metrics as m;
use serde::Deserialize;
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The part of librdkafka's statistics JSON the bridge reads; every field
/// defaults, so a broker or librdkafka version that omits one does not
/// lose the rest.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct Stats {
    brokers: HashMap<String, Broker>,
    topics: HashMap<String, Topic>,
    cgrp: Option<Group>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Broker {
    state: String,
    source: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Topic {
    partitions: HashMap<String, Partition>,
}

#[derive(Debug, Deserialize)]
#[serde(default)]
struct Partition {
    partition: i32,
    fetch_state: String,
    consumer_lag: i64,
    consumer_lag_stored: i64,
    hi_offset: i64,
    lo_offset: i64,
}

impl Default for Partition {
    fn default() -> Self {
        Partition {
            partition: -1,
            fetch_state: String::new(),
            consumer_lag: -1,
            consumer_lag_stored: -1,
            hi_offset: -1,
            lo_offset: -1,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Group {
    state: String,
    join_state: String,
    rebalance_cnt: i64,
    assignment_size: i32,
}

impl Partition {
    /// Held by this consumer: librdkafka fetches (or is about to fetch) it.
    fn held(&self) -> bool {
        !matches!(
            self.fetch_state.as_str(),
            "" | "none" | "stopping" | "stopped"
        )
    }

    /// Records not yet durable: the end offset minus the stored offset
    /// (stored after the PostgreSQL commit); before anything was stored
    /// since the assignment, minus the committed offset; when the group
    /// never committed on the partition, its whole retained range (the
    /// bridge starts from the earliest offset).
    fn lag(&self) -> Option<i64> {
        let never_committed =
            (self.hi_offset >= 0 && self.lo_offset >= 0).then(|| self.hi_offset - self.lo_offset);
        [
            Some(self.consumer_lag_stored),
            Some(self.consumer_lag),
            never_committed,
        ]
        .into_iter()
        .flatten()
        .find(|l| *l >= 0)
    }
}

/// What the statistics said last, and since when things were fine.
#[derive(Debug)]
struct State {
    started: Instant,
    last_stats: Option<Instant>,
    last_broker_up: Instant,
    last_in_group: Instant,
    brokers_up: usize,
    assigned: i32,
    group_state: String,
    join_state: String,
}

/// The consumer's health, fed by the stats callback, read by `/readyz`.
#[derive(Debug)]
pub struct ConsumerHealth {
    topics: HashSet<String>,
    group: String,
    grace: Duration,
    /// False when statistics are disabled: nothing to judge by.
    enabled: bool,
    state: Mutex<State>,
}

impl Default for ConsumerHealth {
    fn default() -> Self {
        ConsumerHealth::new(&[], "", Duration::from_secs(60), false)
    }
}

impl ConsumerHealth {
    /// `topics` are the configured Kafka topics (only their partitions are
    /// reported), `enabled` whether librdkafka emits statistics.
    pub fn new(topics: &[String], group: &str, grace: Duration, enabled: bool) -> Self {
        let now = Instant::now();
        ConsumerHealth {
            topics: topics.iter().cloned().collect(),
            group: group.to_owned(),
            grace,
            enabled,
            state: Mutex::new(State {
                started: now,
                last_stats: None,
                last_broker_up: now,
                last_in_group: now,
                brokers_up: 0,
                assigned: 0,
                group_state: String::new(),
                join_state: String::new(),
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes one statistics document (the raw JSON of the callback).
    pub fn record_json(&self, json: &[u8]) {
        match serde_json::from_slice::<Stats>(json) {
            Ok(stats) => self.record(&stats, Instant::now()),
            Err(e) => tracing::warn!(error = %e, "unreadable librdkafka statistics"),
        }
    }

    pub(crate) fn record(&self, stats: &Stats, now: Instant) {
        let brokers_up = stats
            .brokers
            .values()
            .filter(|b| b.state == "UP" && b.source != "internal")
            .count();
        let (group_state, join_state, assigned, rebalances) = match &stats.cgrp {
            Some(g) => (
                g.state.as_str(),
                g.join_state.as_str(),
                g.assignment_size,
                g.rebalance_cnt,
            ),
            None => ("", "", 0, 0),
        };
        let steady = group_state == "up" && join_state == "steady";
        metrics::gauge!(m::KAFKA_BROKERS_UP).set(brokers_up as f64);
        metrics::gauge!(m::KAFKA_ASSIGNED).set(f64::from(assigned.max(0)));
        metrics::counter!(m::KAFKA_REBALANCES).absolute(rebalances.max(0) as u64);
        for (topic, t) in &stats.topics {
            if !self.topics.contains(topic) {
                continue;
            }
            for p in t.partitions.values().filter(|p| p.partition >= 0) {
                let lag = if p.held() { p.lag() } else { Some(0) };
                if let Some(lag) = lag {
                    metrics::gauge!(m::KAFKA_LAG, "topic" => topic.clone(), "partition" => p.partition.to_string())
                        .set(lag as f64);
                }
            }
        }
        let mut s = self.state();
        s.last_stats = Some(now);
        if brokers_up > 0 {
            s.last_broker_up = now;
        }
        if assigned > 0 || steady {
            s.last_in_group = now;
        }
        s.brokers_up = brokers_up;
        s.assigned = assigned;
        s.group_state = group_state.to_owned();
        s.join_state = join_state.to_owned();
    }

    /// The consumer's readiness at `now`: `Ok` with a short state, or
    /// `Err` saying what has been wrong for longer than the grace period.
    pub fn verdict(&self, now: Instant) -> Result<String, String> {
        if !self.enabled {
            return Ok("kafka not checked (statistics.interval.ms=0)".into());
        }
        let s = self.state();
        let since = |t: Instant| now.saturating_duration_since(t);
        let stats_age = since(s.last_stats.unwrap_or(s.started));
        if stats_age > self.grace {
            return Err(format!(
                "kafka: no consumer statistics for {}s (the consumer is not being polled)",
                stats_age.as_secs()
            ));
        }
        if since(s.last_broker_up) > self.grace {
            return Err(format!(
                "kafka: no broker reachable for {}s",
                since(s.last_broker_up).as_secs()
            ));
        }
        if since(s.last_in_group) > self.grace {
            return Err(format!(
                "kafka: no partitions and not a member of group {} for {}s (group state {:?}, join state {:?})",
                self.group,
                since(s.last_in_group).as_secs(),
                s.group_state,
                s.join_state
            ));
        }
        Ok(match (s.last_stats, s.assigned) {
            (None, _) => "kafka: starting".into(),
            (Some(_), 0) => format!(
                "kafka: standby in group {}, no partitions assigned",
                self.group
            ),
            (Some(_), n) => format!("kafka: {n} partitions assigned"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(json: &str) -> Stats {
        serde_json::from_str(json).unwrap()
    }

    const HEALTHY: &str = r#"{
        "name": "switchyard-bridge#consumer-1", "type": "consumer",
        "brokers": {
            "127.0.0.1:9092/1": {"name": "127.0.0.1:9092/1", "nodeid": 1, "source": "learned", "state": "UP"},
            "GroupCoordinator": {"name": "GroupCoordinator", "nodeid": -1, "source": "logical", "state": "UP"}
        },
        "topics": {
            "events": {"topic": "events", "partitions": {
                "0": {"partition": 0, "fetch_state": "active", "consumer_lag": 7, "consumer_lag_stored": 3},
                "1": {"partition": 1, "fetch_state": "active", "consumer_lag": 5, "consumer_lag_stored": -1},
                "2": {"partition": 2, "fetch_state": "none", "consumer_lag": -1, "consumer_lag_stored": -1},
                "3": {"partition": 3, "fetch_state": "active", "consumer_lag": -1, "consumer_lag_stored": -1, "hi_offset": 9, "lo_offset": 4},
                "-1": {"partition": -1, "fetch_state": "none", "consumer_lag": -1, "consumer_lag_stored": -1}
            }},
            "other": {"topic": "other", "partitions": {
                "0": {"partition": 0, "fetch_state": "active", "consumer_lag": 1, "consumer_lag_stored": 1}
            }}
        },
        "cgrp": {"state": "up", "join_state": "steady", "rebalance_cnt": 2, "assignment_size": 2}
    }"#;

    fn health() -> ConsumerHealth {
        ConsumerHealth::new(&["events".into()], "g", Duration::from_secs(60), true)
    }

    #[test]
    fn lag_prefers_the_stored_offset_and_reports_zero_for_partitions_not_held() {
        let s = stats(HEALTHY);
        let events = &s.topics["events"].partitions;
        assert_eq!(events["0"].lag(), Some(3));
        assert_eq!(events["1"].lag(), Some(5));
        assert!(!events["2"].held());
        assert_eq!(events["3"].lag(), Some(5));
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || health().record(&s, Instant::now()));
        let text = handle.render();
        for line in [
            "switchyard_bridge_kafka_consumer_lag{topic=\"events\",partition=\"0\"} 3",
            "switchyard_bridge_kafka_consumer_lag{topic=\"events\",partition=\"1\"} 5",
            "switchyard_bridge_kafka_consumer_lag{topic=\"events\",partition=\"2\"} 0",
            "switchyard_bridge_kafka_assigned_partitions 2",
            "switchyard_bridge_kafka_rebalances_total 2",
            "switchyard_bridge_kafka_brokers_up 2",
        ] {
            assert!(text.contains(line), "{line}\n{text}");
        }
        // Neither the unassigned-partition pseudo partition nor an
        // unconfigured topic becomes a series.
        assert!(!text.contains("partition=\"-1\""), "{text}");
        assert!(!text.contains("topic=\"other\""), "{text}");
    }

    #[test]
    fn healthy_member_and_standby_are_ready() {
        let h = health();
        let t0 = Instant::now();
        assert_eq!(h.verdict(t0).unwrap(), "kafka: starting");
        h.record(&stats(HEALTHY), t0);
        assert_eq!(h.verdict(t0).unwrap(), "kafka: 2 partitions assigned");
        let standby = HEALTHY.replace("\"assignment_size\": 2", "\"assignment_size\": 0");
        h.record(&stats(&standby), t0 + Duration::from_secs(100));
        let v = h.verdict(t0 + Duration::from_secs(130)).unwrap();
        assert!(v.contains("standby"), "{v}");
    }

    #[test]
    fn unreachable_brokers_fail_only_after_the_grace_period() {
        let h = health();
        let t0 = Instant::now();
        h.record(&stats(HEALTHY), t0);
        let down = HEALTHY.replace("\"UP\"", "\"DOWN\"");
        for s in 1..=90 {
            h.record(&stats(&down), t0 + Duration::from_secs(s));
        }
        assert!(h.verdict(t0 + Duration::from_secs(59)).is_ok());
        let e = h.verdict(t0 + Duration::from_secs(90)).unwrap_err();
        assert!(e.contains("no broker reachable for 90s"), "{e}");
        h.record(&stats(HEALTHY), t0 + Duration::from_secs(91));
        assert!(h.verdict(t0 + Duration::from_secs(91)).is_ok());
    }

    #[test]
    fn outside_the_group_without_partitions_fails_after_the_grace_period() {
        let h = health();
        let t0 = Instant::now();
        let out = HEALTHY
            .replace("\"assignment_size\": 2", "\"assignment_size\": 0")
            .replace("\"steady\"", "\"wait-join\"");
        for s in 0..=70 {
            h.record(&stats(&out), t0 + Duration::from_secs(s));
        }
        let e = h.verdict(t0 + Duration::from_secs(70)).unwrap_err();
        assert!(e.contains("not a member of group g"), "{e}");
        // Holding partitions mid-rebalance is fine.
        let rebalancing = HEALTHY.replace("\"steady\"", "\"wait-sync\"");
        h.record(&stats(&rebalancing), t0 + Duration::from_secs(71));
        assert!(h.verdict(t0 + Duration::from_secs(71)).is_ok());
    }

    #[test]
    fn silence_means_the_consumer_is_not_polled() {
        let h = health();
        let t0 = Instant::now();
        h.record(&stats(HEALTHY), t0);
        assert!(h.verdict(t0 + Duration::from_secs(60)).is_ok());
        let e = h.verdict(t0 + Duration::from_secs(61)).unwrap_err();
        assert!(e.contains("no consumer statistics for 61s"), "{e}");
        let off = ConsumerHealth::new(&[], "g", Duration::from_secs(1), false);
        assert!(off.verdict(t0 + Duration::from_secs(600)).is_ok());
    }

    #[test]
    fn partial_or_odd_statistics_still_parse() {
        let s = stats(r#"{"brokers": {}, "topics": {"events": {"partitions": {"0": {}}}}}"#);
        assert!(s.cgrp.is_none());
        assert_eq!(s.topics["events"].partitions["0"].lag(), None);
        let h = health();
        h.record_json(b"not json");
        assert_eq!(h.verdict(Instant::now()).unwrap(), "kafka: starting");
    }
}
