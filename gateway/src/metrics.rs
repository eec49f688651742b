//! The gateway's metric catalog: every metric it exports, with its type,
//! HELP text and labels, defined once ([`catalog`]). `deploy/metrics.txt`
//! is rendered from it (`switchyard-gateway --print-metrics`) and a unit
//! test fails when the two differ; the dashboard and the alerts are checked
//! against that file by `deploy/validate.sh`. The live feed's metrics are
//! declared in `switchyard-livefeed` (which runs the subscription), the
//! pool's in `switchyard-cursorlog`.
//!
//! Invariant: labels stay low-cardinality and bounded — topic (of the
//! topology), mode, reason, code, result, op, where — never user,
//! connection or event ids; and a gateway exports no `switchyard_bridge_*`
//! series.

use switchyard_ops::catalog::{Catalog, Label, Metric, BUILD_INFO};

pub(crate) const CONNECTIONS: &str = "switchyard_gateway_connections";
pub(crate) const CONNECTIONS_TOTAL: &str = "switchyard_gateway_connections_total";
pub(crate) const SUBSCRIPTIONS: &str = "switchyard_gateway_subscriptions";
pub(crate) const DELIVERED: &str = "switchyard_gateway_messages_delivered_total";
pub(crate) const DELIVERY_LAG: &str = "switchyard_gateway_delivery_lag_seconds";
pub(crate) const STAGE_SECONDS: &str = "switchyard_gateway_stage_seconds";
pub(crate) const BACKFILLS: &str = "switchyard_gateway_backfills_total";
pub(crate) const SLOW_CONSUMERS: &str = "switchyard_gateway_slow_consumers_total";
pub(crate) const AUTH_FAILURES: &str = "switchyard_gateway_auth_failures_total";
pub(crate) const CLIENT_ERRORS: &str = "switchyard_gateway_client_errors_total";
pub(crate) const CATCHUP_SECONDS: &str = "switchyard_gateway_catchup_seconds";
pub(crate) const CATCHUPS_RUNNING: &str = "switchyard_gateway_catchups_running";
pub(crate) const CATCHUPS_QUEUED: &str = "switchyard_gateway_catchups_queued";
pub(crate) const DRAINING: &str = "switchyard_gateway_draining";
pub(crate) const RETRIES: &str = "switchyard_gateway_retries_total";
pub(crate) const STALLED_CLOSES: &str = "switchyard_gateway_stalled_client_closes_total";
pub(crate) const PING_FLOOD_CLOSES: &str = "switchyard_gateway_ping_flood_closes_total";
pub(crate) const POLL_WAKEUPS: &str = "switchyard_gateway_poll_wakeups_total";
pub(crate) const BACKFILL_FAILURES: &str = "switchyard_gateway_backfill_failures_total";
pub(crate) const API_REQUESTS: &str = "switchyard_gateway_api_requests_total";
pub(crate) const QUOTA_REFUSALS: &str = "switchyard_gateway_quota_refusals_total";
pub(crate) const QUOTA_FAIL_OPEN: &str = "switchyard_gateway_quota_fail_open_total";
pub(crate) const SERVER_DISCONNECTS: &str = "switchyard_gateway_server_disconnects_total";
pub(crate) const JWKS_REFRESHES: &str = "switchyard_gateway_jwks_refreshes_total";
pub(crate) const JWKS_KEYS: &str = "switchyard_gateway_jwks_keys";
pub(crate) const PRESENCE_MEMBERS: &str = "switchyard_gateway_presence_members";
pub(crate) const PRESENCE_EVENTS: &str = "switchyard_gateway_presence_events_total";
pub(crate) const PRESENCE_REDIS_ERRORS: &str = "switchyard_gateway_presence_redis_errors_total";
pub(crate) const PRESENCE_FRAMES_DROPPED: &str = "switchyard_gateway_presence_frames_dropped_total";

/// The runtime label set of topics (the topology's).
const TOPICS: &str = "topics";
const TOPIC: Label = Label::runtime("topic", TOPICS, "the topology's topics");

/// Why the node reads from PostgreSQL for its live subscribers.
const BACKFILL_REASON: Label = Label::fixed("reason", &["gap", "resync", "head_check", "catchup"]);

/// `outbound::Path::as_str` values: how a message reached its client.
pub(crate) const DELIVERY_PATHS: &[&str] = &["live", "replay", "backfill", "poll"];

/// `AuthError::reason` values.
pub(crate) const AUTH_REASONS: &[&str] = &[
    "missing",
    "too_long",
    "malformed",
    "algorithm",
    "unknown_key",
    "expired",
    "not_yet_valid",
    "signature",
    "claims",
];

/// `ErrorCode::as_str` values.
pub(crate) const ERROR_CODES: &[&str] = &[
    "bad_request",
    "unauthorized",
    "forbidden",
    "not_publishable",
    "rate_limited",
    "too_large",
    "internal",
];

const GATEWAY: &[Metric] = &[
    Metric::gauge(CONNECTIONS, "Open WebSocket connections.", &[]),
    Metric::counter(
        CONNECTIONS_TOTAL,
        "WebSocket connection attempts, by result.",
        &[Label::fixed("result", &["accepted", "unauthorized", "quota"])],
    ),
    Metric::gauge(SUBSCRIPTIONS, "Active subscriptions on this node.", &[]),
    Metric::counter(
        DELIVERED,
        "Messages queued to clients, by topic and mode (live from Redis, or replay from PostgreSQL).",
        &[TOPIC, Label::fixed("mode", &["live", "replay"])],
    ),
    Metric::histogram(
        DELIVERY_LAG,
        "Time from an event's created_at to the socket write of its message (poll: to its response), by path: live (Redis fan-out), replay (a subscription's catch-up), backfill (a node backfill), poll.",
        &[Label::fixed("path", DELIVERY_PATHS)],
    ),
    Metric::histogram(
        STAGE_SECONDS,
        "Per-stage latency of live events on the gateway, by stage: feed (the bridge's Redis publish to this node's receipt), write (this node's receipt to the socket write).",
        &[Label::fixed("stage", &["feed", "write"])],
    ),
    Metric::counter(
        BACKFILLS,
        "Node backfills from PostgreSQL for live subscribers, by reason (gap: a missed sequence; resync: a Redis reconnect; head_check: the periodic check; catchup: Redis behind a finishing catch-up).",
        &[BACKFILL_REASON],
    ),
    Metric::counter(
        BACKFILL_FAILURES,
        "Backfills that failed (their live subscribers are switched to catch-up), by reason.",
        &[BACKFILL_REASON],
    ),
    Metric::counter(
        SLOW_CONSUMERS,
        "Live subscribers switched back to catch-up because their client's queue was full (not disconnected).",
        &[],
    ),
    Metric::counter(
        STALLED_CLOSES,
        "Connections closed because the client's queue stayed full (queue) or its socket took no bytes (socket) for SWITCHYARD_CLIENT_STALL_MS.",
        &[Label::fixed("where", &["queue", "socket"])],
    ),
    Metric::counter(
        PING_FLOOD_CLOSES,
        "Connections closed with 1008 for pinging faster than SWITCHYARD_PING_RATE/SWITCHYARD_PING_BURST.",
        &[],
    ),
    Metric::counter(
        AUTH_FAILURES,
        "Refused tokens, by reason.",
        &[Label::fixed("reason", AUTH_REASONS)],
    ),
    Metric::counter(
        CLIENT_ERRORS,
        "Error frames and responses sent to clients, by code.",
        &[Label::fixed("code", ERROR_CODES)],
    ),
    Metric::histogram(
        CATCHUP_SECONDS,
        "Time from a subscription's start (or its switch back to catch-up) to live delivery.",
        &[],
    ),
    Metric::gauge(
        CATCHUPS_RUNNING,
        "Catch-up page reads running against PostgreSQL (at most SWITCHYARD_CATCHUP_CONCURRENCY).",
        &[],
    ),
    Metric::gauge(
        CATCHUPS_QUEUED,
        "Catch-ups waiting for a read permit (SWITCHYARD_CATCHUP_CONCURRENCY reads already run).",
        &[],
    ),
    Metric::gauge(
        DRAINING,
        "1 once the node drains (SIGTERM): it refuses new clients and closes its connections.",
        &[],
    ),
    Metric::counter(
        API_REQUESTS,
        "Server API requests, by operation (endpoint) and result.",
        &[
            Label::fixed(
                "op",
                &[
                    "publish",
                    "disconnect",
                    "history",
                    "info",
                    "presence",
                    "presence_stats",
                    "unknown",
                ],
            ),
            Label::fixed("result", &["ok", "unauthorized", "refused", "error"]),
        ],
    ),
    Metric::counter(
        QUOTA_REFUSALS,
        "Connections and publishes refused by a quota, by kind.",
        &[Label::fixed(
            "kind",
            &["user_connections", "tenant_connections", "user_publish_rate"],
        )],
    ),
    Metric::counter(
        QUOTA_FAIL_OPEN,
        "Publishes and connections let through because the fleet-wide quota count (Redis) did not answer.",
        &[Label::fixed("kind", &["user_publish_rate", "connections"])],
    ),
    Metric::counter(
        SERVER_DISCONNECTS,
        "Connections closed on a server API disconnect order (4003).",
        &[],
    ),
    Metric::counter(
        RETRIES,
        "Retried PostgreSQL reads, by operation.",
        &[Label::fixed("op", &["catchup_read", "heads", "backfill_read"])],
    ),
    Metric::counter(
        POLL_WAKEUPS,
        "Long-polls woken by a live event on one of their channels.",
        &[],
    ),
    Metric::counter(
        JWKS_REFRESHES,
        "JWKS reads, by result (a failed one keeps the keys in use).",
        &[Label::fixed("result", &["ok", "error"])],
    ),
    Metric::gauge(JWKS_KEYS, "Keys in use from the JWKS.", &[]),
    Metric::gauge(
        PRESENCE_MEMBERS,
        "This node's presence entries (users per presence channel with a connection here).",
        &[],
    ),
    Metric::counter(
        PRESENCE_EVENTS,
        "Presence changes this node announced to the fleet, by kind (expired: a leave found by a sweep after a node stopped heartbeating).",
        &[Label::fixed("kind", &["join", "leave", "expired"])],
    ),
    Metric::counter(
        PRESENCE_REDIS_ERRORS,
        "Failed or timed-out Redis round trips of presence and the fleet connection counts, by operation (sync and occupancy writes are retried at the next heartbeat).",
        &[Label::fixed(
            "op",
            &["sync", "heartbeat", "sweep", "publish", "read", "occupancy"],
        )],
    ),
    Metric::counter(
        PRESENCE_FRAMES_DROPPED,
        "join/leave frames not queued because the subscriber's outbound queue was full.",
        &[],
    ),
];

const TOPOLOGY: &[Metric] = &[Metric::counter(
    switchyard_channels::RELOADS,
    switchyard_channels::RELOADS_HELP,
    &[Label::fixed("result", &switchyard_channels::RELOAD_RESULTS)],
)];

/// Everything `switchyard-gateway` exports.
pub fn catalog() -> Catalog {
    Catalog::new(
        "switchyard-gateway",
        &[
            GATEWAY,
            switchyard_livefeed::metrics::SUBSCRIBER,
            switchyard_livefeed::metrics::PUBLISHER,
            switchyard_cursorlog::metrics::POOL,
            TOPOLOGY,
            &[BUILD_INFO],
        ],
    )
}

/// Describes every metric and registers it at zero (topic-labelled ones for
/// every topic in `topics`), and sets the build info.
pub(crate) fn register(topics: Vec<String>) {
    catalog().register(&|set| match set {
        TOPICS => Some(topics.clone()),
        "version" => Some(vec![env!("CARGO_PKG_VERSION").to_owned()]),
        _ => None,
    });
    switchyard_ops::telemetry::record_build_info(env!("CARGO_PKG_VERSION"));
}

/// Adds one to a gauge for as long as it lives (cancellation included).
#[derive(Debug)]
pub(crate) struct InFlight(metrics::Gauge);

impl InFlight {
    pub(crate) fn new(gauge: &'static str) -> InFlight {
        let g = metrics::gauge!(gauge);
        g.increment(1.0);
        InFlight(g)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
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

    #[test]
    fn sources_use_only_declared_metrics_and_values() {
        let src = root().join("gateway/src");
        let problems = catalog().scan_sources(&src, &[]);
        assert!(problems.is_empty(), "{problems:#?}");
    }

    #[test]
    fn a_gateway_exports_no_bridge_metrics() {
        for m in catalog().metrics {
            assert!(!m.name.starts_with("switchyard_bridge_"), "{}", m.name);
        }
    }

    /// Every error code and auth failure reason the code can produce is a
    /// declared label value (a new variant fails to compile here until it
    /// is listed).
    #[test]
    fn codes_and_auth_reasons_are_declared() {
        use crate::auth::AuthError;
        use crate::protocol::ErrorCode;
        let codes = [
            ErrorCode::BadRequest,
            ErrorCode::Unauthorized,
            ErrorCode::Forbidden,
            ErrorCode::NotPublishable,
            ErrorCode::RateLimited,
            ErrorCode::TooLarge,
            ErrorCode::Internal,
        ];
        for c in codes {
            match c {
                ErrorCode::BadRequest
                | ErrorCode::Unauthorized
                | ErrorCode::Forbidden
                | ErrorCode::NotPublishable
                | ErrorCode::RateLimited
                | ErrorCode::TooLarge
                | ErrorCode::Internal => {}
            }
            assert!(ERROR_CODES.contains(&c.as_str()), "{}", c.as_str());
        }
        let reasons = [
            AuthError::Missing,
            AuthError::TooLong,
            AuthError::Malformed(String::new()),
            AuthError::Algorithm(String::new()),
            AuthError::UnknownKey,
            AuthError::Expired,
            AuthError::NotYetValid,
            AuthError::Signature,
            AuthError::Claims(String::new()),
        ];
        for r in &reasons {
            match r {
                AuthError::Missing
                | AuthError::TooLong
                | AuthError::Malformed(_)
                | AuthError::Algorithm(_)
                | AuthError::UnknownKey
                | AuthError::Expired
                | AuthError::NotYetValid
                | AuthError::Signature
                | AuthError::Claims(_) => {}
            }
            assert!(AUTH_REASONS.contains(&r.reason()), "{}", r.reason());
        }
        assert_eq!(codes.len(), ERROR_CODES.len());
        assert_eq!(reasons.len(), AUTH_REASONS.len());
    }

    /// Backfill reasons and retry ops are passed as plain strings; every
    /// one the sources pass is declared.
    #[test]
    fn backfill_reasons_and_retry_ops_are_declared() {
        let c = catalog();
        let fanout = root().join("gateway/src/fanout");
        let mut found = 0;
        for f in std::fs::read_dir(&fanout).unwrap() {
            let text = std::fs::read_to_string(f.unwrap().path()).unwrap();
            for (call, metric, label) in [
                ("request_backfill(\"", BACKFILLS, "reason"),
                ("request(shard, \"", BACKFILLS, "reason"),
                ("retry(\"", RETRIES, "op"),
            ] {
                for part in text.split(call).skip(1) {
                    let value = &part[..part.find('"').unwrap()];
                    assert!(c.allows(metric, label, value), "{label}={value}");
                    found += 1;
                }
            }
        }
        assert!(found >= 5, "found {found}");
    }
}
