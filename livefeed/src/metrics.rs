//! Metrics of the live feed, declared once: the publisher's (bridge and
//! gateways both publish) and the subscriber's (gateways only), as catalog
//! parts each binary adds to its own catalog. No labels: the feed's
//! failures are per process, not per topic.
//!
//! The subscriber's names keep their `switchyard_gateway_` prefix: gateways
//! are the only subscribers, and dashboards and alerts query these names.

use switchyard_ops::catalog::Metric;

/// Events whose publish failed (bridge and gateways both publish).
pub(crate) const PUBLISH_ERRORS: &str = "switchyard_live_publish_errors_total";
/// Successful re-subscriptions after the first one.
pub(crate) const REDIS_RECONNECTS: &str = "switchyard_gateway_redis_reconnects_total";
/// Live messages ignored: undecodable, or stamped with another log epoch.
pub(crate) const LIVE_DECODE_ERRORS: &str = "switchyard_gateway_live_decode_errors_total";
/// Live messages dropped because they carry no valid MAC (forged, or a key
/// mismatch between bridge and gateways).
pub(crate) const LIVE_UNAUTHENTICATED: &str = "switchyard_gateway_live_unauthenticated_total";
/// Control messages refused: not authenticated with the live key, or replayed
/// outside the window.
pub(crate) const CONTROL_REFUSED: &str = "switchyard_gateway_control_refused_total";
/// 1 while the pattern subscription is active.
pub(crate) const FEED_UP: &str = "switchyard_gateway_live_feed_up";

/// What a process that publishes exports.
pub const PUBLISHER: &[Metric] = &[Metric::counter(
    PUBLISH_ERRORS,
    "Committed events whose Redis publish failed (gateways find them through head checks and gap backfills).",
    &[],
)];

/// What a process that subscribes (a gateway) exports.
pub const SUBSCRIBER: &[Metric] = &[
    Metric::gauge(
        FEED_UP,
        "1 while the Redis live-feed subscription is active, 0 while it is down (delivery continues from PostgreSQL).",
        &[],
    ),
    Metric::counter(
        REDIS_RECONNECTS,
        "Re-subscriptions to the Redis live feed after the first; each resyncs every subscription from PostgreSQL.",
        &[],
    ),
    Metric::counter(
        LIVE_DECODE_ERRORS,
        "Live-feed messages ignored: undecodable, or from another log epoch.",
        &[],
    ),
    Metric::counter(
        LIVE_UNAUTHENTICATED,
        "Live-feed messages dropped for lack of a valid MAC under SWITCHYARD_LIVE_KEY (forged, or a key mismatch between bridge and gateways).",
        &[],
    ),
    Metric::counter(
        CONTROL_REFUSED,
        "Control messages (server-API disconnects between nodes) refused: not authenticated with SWITCHYARD_LIVE_KEY, or sent outside the 30 s replay window.",
        &[],
    ),
];

#[cfg(test)]
mod tests {
    use switchyard_ops::catalog::Catalog;

    #[test]
    fn the_feed_declares_every_metric_it_emits() {
        let c = Catalog::new(
            "switchyard-livefeed",
            &[super::PUBLISHER, super::SUBSCRIBER],
        );
        assert!(c.problems().is_empty(), "{:?}", c.problems());
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let p = c.scan_sources(&src, &[]);
        assert!(p.is_empty(), "{p:#?}");
    }
}
