//! The bridge's metric catalog: every metric it exports, with its type,
//! HELP text and labels, defined once ([`catalog`]). `deploy/metrics.txt`
//! is rendered from it (`switchyard-bridge --print-metrics`) and a unit test
//! fails when the two differ; the dashboard and the alerts are checked
//! against that file by `deploy/validate.sh`.
//!
//! Invariant: label values come from bounded, validated sets: a `topic`
//! label is a topic of the topology (records whose topic is not, or that
//! cannot be decoded, count under `unknown`), a DLQ `reason` one of the
//! envelope's rejection reasons, Kafka `topic`/`partition` the configured
//! topics' partitions — never a string a producer chose.

use std::future::Future;
use std::time::Instant;
use switchyard_channels::Topology;
use switchyard_ops::catalog::{Catalog, Label, Metric, BUILD_INFO};

pub(crate) const CONSUMED: &str = "switchyard_bridge_events_consumed_total";
pub(crate) const APPENDED: &str = "switchyard_bridge_events_appended_total";
pub(crate) const DUPLICATE: &str = "switchyard_bridge_events_duplicate_total";
pub(crate) const DLQ: &str = "switchyard_bridge_events_dlq_total";
pub(crate) const UNROUTED: &str = "switchyard_bridge_events_unrouted_total";
pub(crate) const EPHEMERAL: &str = "switchyard_bridge_events_ephemeral_total";
pub(crate) const BATCH_SECONDS: &str = "switchyard_bridge_batch_seconds";
pub(crate) const BATCH_SIZE: &str = "switchyard_bridge_batch_size";
pub(crate) const APPEND_SECONDS: &str = "switchyard_bridge_append_seconds";
pub(crate) const APPEND_GROUPS: &str = "switchyard_bridge_append_groups_size";
pub(crate) const EVENT_LAG: &str = "switchyard_bridge_event_lag_seconds";
pub(crate) const STAGE_SECONDS: &str = "switchyard_bridge_stage_seconds";
pub(crate) const PG_ERRORS: &str = "switchyard_bridge_pg_errors_total";
pub(crate) const DLQ_ERRORS: &str = "switchyard_bridge_dlq_errors_total";
pub(crate) const DLQ_PAYLOAD_OMITTED: &str = "switchyard_bridge_dlq_payload_omitted_total";
pub(crate) const CARRY: &str = "switchyard_bridge_carry_records";
pub(crate) const PAUSED: &str = "switchyard_bridge_consumer_paused";
pub(crate) const SWEPT: &str = "switchyard_bridge_events_expired_total";
pub(crate) const SWEEPS: &str = "switchyard_bridge_retention_sweeps_total";
pub(crate) const LOG_BYTES: &str = "switchyard_bridge_log_bytes";
pub(crate) const LOG_OLDEST_AGE: &str = "switchyard_bridge_log_oldest_event_age_seconds";
pub(crate) const KAFKA_LAG: &str = "switchyard_bridge_kafka_consumer_lag";
pub(crate) const KAFKA_ASSIGNED: &str = "switchyard_bridge_kafka_assigned_partitions";
pub(crate) const KAFKA_REBALANCES: &str = "switchyard_bridge_kafka_rebalances_total";
pub(crate) const KAFKA_BROKERS_UP: &str = "switchyard_bridge_kafka_brokers_up";

/// The `topic` value of records whose topic is not in the topology or that
/// could not be decoded.
pub(crate) const UNKNOWN_TOPIC: &str = "unknown";

/// Runtime label sets ([`catalog`]'s `known` lookup in [`register`]).
const TOPICS: &str = "topics";
const TOPICS_OR_UNKNOWN: &str = "topics_or_unknown";

const TOPIC: Label = Label::runtime("topic", TOPICS, "the topology's topics");
const TOPIC_OR_UNKNOWN: Label = Label::runtime(
    "topic",
    TOPICS_OR_UNKNOWN,
    "the topology's topics, or `unknown` for a record whose topic is not one of them or that could not be decoded",
);

/// Why the bridge rejects a record to the DLQ (`envelope` and storage).
pub(crate) const DLQ_REASONS: &[&str] = &[
    "empty",
    "oversized",
    "decode_error",
    "invalid_payload",
    "missing_id",
    "invalid_id",
    "missing_topic",
    "invalid_field",
    "invalid_scopes",
    "unknown_topic",
    "too_many_channels",
    "expired",
    "storage_rejected",
];

const BRIDGE: &[Metric] = &[
    Metric::counter(
        CONSUMED,
        "Kafka records read, by the event's topic.",
        &[TOPIC_OR_UNKNOWN],
    ),
    Metric::counter(
        APPENDED,
        "Events committed to the PostgreSQL cursor log, by topic.",
        &[TOPIC],
    ),
    Metric::counter(
        DUPLICATE,
        "Events whose id was already in the log (redelivery; stored once).",
        &[],
    ),
    Metric::counter(
        DLQ,
        "Records written to the DLQ topic, by rejection reason.",
        &[Label::fixed("reason", DLQ_REASONS)],
    ),
    Metric::counter(
        UNROUTED,
        "Events that resolved to no channel (counted, not stored), by topic.",
        &[TOPIC],
    ),
    Metric::counter(
        EPHEMERAL,
        "Events whose channels are all ephemeral (published live, not stored), by topic.",
        &[TOPIC],
    ),
    Metric::histogram(
        BATCH_SECONDS,
        "Time from gathering a Kafka batch to storing its offsets (decode, resolve, append, DLQ).",
        &[],
    ),
    Metric::histogram(BATCH_SIZE, "Kafka records per batch.", &[]),
    Metric::histogram(
        APPEND_SECONDS,
        "Duration of one PostgreSQL append transaction (successful or not).",
        &[],
    ),
    Metric::histogram(
        APPEND_GROUPS,
        "Concurrent append transactions per batch: groups with disjoint channel sets (at most SWITCHYARD_APPEND_WRITERS).",
        &[],
    ),
    Metric::histogram(
        EVENT_LAG,
        "Time from the producer's created_at to the PostgreSQL commit, per event.",
        &[],
    ),
    Metric::histogram(
        STAGE_SECONDS,
        "Per-stage latency of logged events on the bridge, by stage: receive (the Kafka record's timestamp to the bridge's read), commit (the read to the PostgreSQL commit), publish (the commit to the Redis publish).",
        &[Label::fixed("stage", &["receive", "commit", "publish"])],
    ),
    Metric::counter(
        PG_ERRORS,
        "Failed PostgreSQL operations of the pipeline (channel ids, appends); each pauses consumption until a retry succeeds.",
        &[],
    ),
    Metric::counter(
        DLQ_ERRORS,
        "Failed writes to the DLQ topic; each pauses consumption until a retry succeeds.",
        &[],
    ),
    Metric::counter(
        DLQ_PAYLOAD_OMITTED,
        "DLQ records written as metadata only because the record is larger than the producer's message.max.bytes.",
        &[],
    ),
    Metric::gauge(
        CARRY,
        "Records read before consumption paused, held for the next batch (bounded).",
        &[],
    ),
    Metric::gauge(
        PAUSED,
        "1 while the Kafka consumer is paused because PostgreSQL or the DLQ topic keeps failing.",
        &[],
    ),
    Metric::counter(
        SWEPT,
        "Events deleted by the retention sweep after they expired.",
        &[],
    ),
    Metric::counter(
        SWEEPS,
        "Retention sweep runs, by result.",
        &[Label::fixed("result", &["ok", "error"])],
    ),
    Metric::gauge(
        LOG_BYTES,
        "Size of the cursor log in PostgreSQL (events and entries, with indexes and TOAST), measured after each sweep.",
        &[],
    ),
    Metric::gauge(
        LOG_OLDEST_AGE,
        "Age of the oldest event in the cursor log, measured after each sweep (0 when empty).",
        &[],
    ),
    Metric::gauge(
        KAFKA_LAG,
        "Records of a partition not yet durable: its end offset minus the offset stored after the PostgreSQL commit (librdkafka statistics; 0 on partitions this bridge does not hold).",
        &[
            Label::runtime(
                "topic",
                "kafka_topics",
                "the Kafka topics of SWITCHYARD_KAFKA_TOPICS",
            ),
            Label::runtime(
                "partition",
                "kafka_partitions",
                "those topics' partition numbers (a series appears once librdkafka knows the partition)",
            ),
        ],
    ),
    Metric::gauge(
        KAFKA_ASSIGNED,
        "Kafka partitions assigned to this bridge by its consumer group (0: a standby).",
        &[],
    ),
    Metric::counter(
        KAFKA_REBALANCES,
        "Consumer group rebalances this bridge took part in.",
        &[],
    ),
    Metric::gauge(
        KAFKA_BROKERS_UP,
        "Kafka broker connections in state UP.",
        &[],
    ),
];

const TOPOLOGY: &[Metric] = &[Metric::counter(
    switchyard_channels::RELOADS,
    switchyard_channels::RELOADS_HELP,
    &[Label::fixed("result", &switchyard_channels::RELOAD_RESULTS)],
)];

/// Everything `switchyard-bridge` exports.
pub fn catalog() -> Catalog {
    Catalog::new(
        "switchyard-bridge",
        &[
            BRIDGE,
            switchyard_livefeed::metrics::PUBLISHER,
            switchyard_cursorlog::metrics::POOL,
            TOPOLOGY,
            &[BUILD_INFO],
        ],
    )
}

/// Describes every metric and registers it at zero (topic-labelled ones for
/// every topic of `topology`), and sets the build info.
pub(crate) fn register(topology: &Topology) {
    let topics = topology.topics();
    catalog().register(&|set| match set {
        TOPICS => Some(topics.clone()),
        TOPICS_OR_UNKNOWN => {
            let mut t = topics.clone();
            t.push(UNKNOWN_TOPIC.to_owned());
            Some(t)
        }
        "version" => Some(vec![env!("CARGO_PKG_VERSION").to_owned()]),
        _ => None,
    });
    switchyard_ops::telemetry::record_build_info(env!("CARGO_PKG_VERSION"));
}

/// Counts a record read from Kafka under its topic when the topology has
/// it, else (or when it could not be decoded) under [`UNKNOWN_TOPIC`].
pub(crate) fn consumed(topology: &Topology, topic: Option<&str>) {
    let label = match topic {
        Some(t) if topology.has_topic(t) => t.to_owned(),
        _ => UNKNOWN_TOPIC.to_owned(),
    };
    metrics::counter!(CONSUMED, "topic" => label).increment(1);
}

/// Counts records written to the DLQ (once each, after the broker's ack).
pub(crate) fn dlq_written(reasons: impl Iterator<Item = &'static str>) {
    for reason in reasons {
        metrics::counter!(DLQ, "reason" => reason).increment(1);
    }
}

/// Records `seconds` of `stage` in [`STAGE_SECONDS`] (negative clock
/// differences count as 0).
pub(crate) fn stage(stage: &'static str, from_ms: i64, to_ms: i64) {
    if from_ms > 0 && to_ms > 0 {
        let s = (to_ms - from_ms).max(0) as f64 / 1000.0;
        metrics::histogram!(STAGE_SECONDS, "stage" => stage).record(s);
    }
}

/// Runs `f`, recording its duration in histogram `name`.
pub(crate) async fn timed<F: Future>(name: &'static str, f: F) -> F::Output {
    let started = Instant::now();
    let out = f.await;
    metrics::histogram!(name).record(started.elapsed().as_secs_f64());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn root() -> &'static Path {
        Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
    }

    #[test]
    fn catalog_is_well_formed() {
        let c = catalog();
        assert!(c.problems().is_empty(), "{:#?}", c.problems());
    }

    /// `deploy/metrics.txt` is what the dashboard and the alerts are
    /// checked against; it must be exactly the catalog.
    #[test]
    fn catalog_matches_deploy_metrics_txt() {
        if let Err(e) = catalog().check_file(&root().join("deploy/metrics.txt")) {
            panic!("{e}");
        }
    }

    /// Every metric name and literal label value in the bridge's sources is
    /// declared, and the DLQ reasons are the envelope's.
    #[test]
    fn sources_use_only_declared_metrics_and_values() {
        let src = root().join("bridge/src");
        let problems = catalog().scan_sources(&src, &[]);
        assert!(problems.is_empty(), "{problems:#?}");
        let mut found = 0;
        for f in ["envelope.rs", "pipeline.rs"] {
            let text = std::fs::read_to_string(src.join(f)).unwrap();
            for part in text.split("Rejection::new(").skip(1) {
                let reason = part.trim_start().trim_start_matches('"');
                let reason = &reason[..reason.find('"').unwrap()];
                assert!(DLQ_REASONS.contains(&reason), "{f}: reason {reason}");
                found += 1;
            }
        }
        assert!(found >= 10, "found only {found} rejection reasons");
    }

    #[test]
    fn the_bridge_exports_no_gateway_metrics() {
        for m in catalog().metrics {
            assert!(!m.name.starts_with("switchyard_gateway_"), "{}", m.name);
        }
    }
}
