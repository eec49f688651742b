//! Metric names of the live feed, defined once (`deploy/metrics.txt` lists
//! the ones dashboards and alerts query). No labels: the feed's failures are
//! per process, not per topic.
//!
//! The subscriber's names keep their `switchyard_gateway_` prefix: gateways
//! are the only subscribers, and dashboards and alerts query these names.

/// Events whose publish failed (bridge and gateways both publish).
pub(crate) const PUBLISH_ERRORS: &str = "switchyard_live_publish_errors_total";
/// Successful re-subscriptions after the first one.
pub(crate) const REDIS_RECONNECTS: &str = "switchyard_gateway_redis_reconnects_total";
/// Live messages ignored: undecodable, or stamped with another log epoch.
pub(crate) const LIVE_DECODE_ERRORS: &str = "switchyard_gateway_live_decode_errors_total";
/// Live messages dropped because they carry no valid MAC (forged, or a key
/// mismatch between bridge and gateways).
pub(crate) const LIVE_UNAUTHENTICATED: &str = "switchyard_gateway_live_unauthenticated_total";
