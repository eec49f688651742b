//! Metric names of the bridge, defined once (dashboards in `deploy/grafana`
//! query exactly these). Labels stay low-cardinality: topic, reason.

pub(crate) const CONSUMED: &str = "switchyard_bridge_events_consumed_total";
pub(crate) const APPENDED: &str = "switchyard_bridge_events_appended_total";
pub(crate) const DUPLICATE: &str = "switchyard_bridge_events_duplicate_total";
pub(crate) const DLQ: &str = "switchyard_bridge_events_dlq_total";
pub(crate) const UNROUTED: &str = "switchyard_bridge_events_unrouted_total";
pub(crate) const BATCH_SECONDS: &str = "switchyard_bridge_batch_seconds";
pub(crate) const BATCH_SIZE: &str = "switchyard_bridge_batch_size";
pub(crate) const PG_ERRORS: &str = "switchyard_bridge_pg_errors_total";
pub(crate) const PAUSED: &str = "switchyard_bridge_consumer_paused";
pub(crate) const EVENT_LAG: &str = "switchyard_bridge_event_lag_seconds";
pub(crate) const EPHEMERAL: &str = "switchyard_bridge_events_ephemeral_total";
pub(crate) const SWEPT: &str = "switchyard_bridge_events_expired_total";
pub(crate) const DLQ_ERRORS: &str = "switchyard_bridge_dlq_errors_total";
pub(crate) const DLQ_PAYLOAD_OMITTED: &str = "switchyard_bridge_dlq_payload_omitted_total";
pub(crate) const CARRY: &str = "switchyard_bridge_carry_records";
