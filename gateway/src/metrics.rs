//! Metric names of the gateway, defined once (dashboards in `deploy/grafana`
//! query exactly these). Labels stay low-cardinality: topic, mode, reason,
//! code, result — never user, connection or event ids. The live feed's own
//! (`switchyard_gateway_redis_reconnects_total`,
//! `switchyard_gateway_live_decode_errors_total`) are defined in
//! `switchyard-livefeed`, which runs the subscription.

pub(crate) const CONNECTIONS: &str = "switchyard_gateway_connections";
pub(crate) const CONNECTIONS_TOTAL: &str = "switchyard_gateway_connections_total";
pub(crate) const SUBSCRIPTIONS: &str = "switchyard_gateway_subscriptions";
pub(crate) const DELIVERED: &str = "switchyard_gateway_messages_delivered_total";
pub(crate) const DELIVERY_LAG: &str = "switchyard_gateway_delivery_lag_seconds";
pub(crate) const BACKFILLS: &str = "switchyard_gateway_backfills_total";
pub(crate) const SLOW_CONSUMERS: &str = "switchyard_gateway_slow_consumers_total";
pub(crate) const AUTH_FAILURES: &str = "switchyard_gateway_auth_failures_total";
pub(crate) const CLIENT_ERRORS: &str = "switchyard_gateway_client_errors_total";
pub(crate) const CATCHUP_SECONDS: &str = "switchyard_gateway_catchup_seconds";
pub(crate) const DRAINING: &str = "switchyard_gateway_draining";
pub(crate) const RETRIES: &str = "switchyard_gateway_retries_total";
pub(crate) const STALLED_CLOSES: &str = "switchyard_gateway_stalled_client_closes_total";
pub(crate) const POLL_WAKEUPS: &str = "switchyard_gateway_poll_wakeups_total";
pub(crate) const BACKFILL_FAILURES: &str = "switchyard_gateway_backfill_failures_total";
pub(crate) const API_REQUESTS: &str = "switchyard_gateway_api_requests_total";
pub(crate) const QUOTA_REFUSALS: &str = "switchyard_gateway_quota_refusals_total";
pub(crate) const QUOTA_FAIL_OPEN: &str = "switchyard_gateway_quota_fail_open_total";
pub(crate) const SERVER_DISCONNECTS: &str = "switchyard_gateway_server_disconnects_total";
