//! The PostgreSQL connection pool's gauges, shared by both binaries (each
//! has its own pool; the `job` label tells them apart). They are sampled,
//! not updated where connections are taken: each binary calls
//! [`record_pool`] from its metrics upkeep.
//!
//! Invariant: these names carry no binary prefix, so a gateway never
//! exports a `switchyard_bridge_*` series for its pool.

use crate::CursorLog;
use switchyard_ops::catalog::Metric;

const POOL_SIZE: &str = "switchyard_pg_pool_size";
const POOL_IN_USE: &str = "switchyard_pg_pool_in_use";
const POOL_WAITING: &str = "switchyard_pg_pool_waiting";

/// The pool's metrics.
pub const POOL: &[Metric] = &[
    Metric::gauge(
        POOL_SIZE,
        "PostgreSQL connections the pool may open (SWITCHYARD_PG_POOL_SIZE).",
        &[],
    ),
    Metric::gauge(
        POOL_IN_USE,
        "PostgreSQL connections lent out of the pool right now.",
        &[],
    ),
    Metric::gauge(
        POOL_WAITING,
        "Tasks waiting for a PostgreSQL connection because the pool is exhausted.",
        &[],
    ),
];

/// Sets the pool gauges from the pool's status.
pub fn record_pool(log: &CursorLog) {
    let s = log.pool_status();
    metrics::gauge!(POOL_SIZE).set(s.max_size as f64);
    metrics::gauge!(POOL_IN_USE).set(s.size.saturating_sub(s.available) as f64);
    metrics::gauge!(POOL_WAITING).set(s.waiting as f64);
}

#[cfg(test)]
mod tests {
    use switchyard_ops::catalog::Catalog;

    #[test]
    fn the_pool_declares_every_metric_it_emits() {
        let c = Catalog::new("switchyard-cursorlog", &[super::POOL]);
        assert!(c.problems().is_empty(), "{:?}", c.problems());
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let p = c.scan_sources(&src, &[]);
        assert!(p.is_empty(), "{p:#?}");
    }
}
