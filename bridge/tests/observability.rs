//! What an operator sees of a running bridge: `/metrics` carries exactly
//! the catalog (every metric described, failure counters at zero before the
//! first failure), librdkafka statistics become Kafka metrics, and
//! `/readyz` follows the consumer's state.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};
use switchyard_testkit::{http_get, news, require_servers, Stack, StackOptions};

const T: Duration = Duration::from_secs(30);

async fn eventually<F: FnMut() -> bool>(what: &str, timeout: Duration, mut f: F) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

/// Fast statistics and a short grace, so the test sees state changes.
fn options() -> StackOptions {
    StackOptions {
        gateways: 0,
        env: vec![
            (
                "SWITCHYARD_KAFKA_OPTIONS".into(),
                "statistics.interval.ms=300".into(),
            ),
            ("SWITCHYARD_KAFKA_READY_GRACE_MS".into(), "2000".into()),
        ],
        ..Default::default()
    }
}

/// The value of the series that is exactly `series` (name and labels).
fn value(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_the_catalog_and_kafka_state_is_visible() {
    require_servers();
    let s = Stack::start(options()).await.unwrap();
    let admin = s.bridge_admin;
    let events: Vec<_> = (1..=12)
        .map(|n| news(&format!("m{n}"), &["CHLT"], n))
        .collect();
    s.produce(&events).await.unwrap();

    let topic = &s.events_topic;
    let lag = |p: u32| {
        format!("switchyard_bridge_kafka_consumer_lag{{topic=\"{topic}\",partition=\"{p}\"}}")
    };
    eventually(
        "every partition assigned, the events durable and no lag",
        T,
        || {
            let Ok((200, body)) = http_get(admin, "/metrics") else {
                return false;
            };
            value(&body, "switchyard_bridge_kafka_assigned_partitions") == Some(3.0)
                && value(
                    &body,
                    "switchyard_bridge_events_appended_total{topic=\"News\"}",
                ) == Some(12.0)
                && (0..3).all(|p| value(&body, &lag(p)) == Some(0.0))
        },
    )
    .await;
    let (_, body) = http_get(admin, "/metrics").unwrap();
    assert!(
        value(&body, "switchyard_bridge_kafka_brokers_up").unwrap() >= 1.0,
        "{body}"
    );
    assert!(
        value(&body, "switchyard_bridge_kafka_rebalances_total").unwrap() >= 1.0,
        "{body}"
    );

    // Failure counters exist at zero before any failure, for every value.
    for series in [
        "switchyard_bridge_pg_errors_total",
        "switchyard_bridge_dlq_errors_total",
        "switchyard_live_publish_errors_total",
        "switchyard_bridge_events_dlq_total{reason=\"oversized\"}",
        "switchyard_bridge_events_consumed_total{topic=\"unknown\"}",
        "switchyard_bridge_retention_sweeps_total{result=\"error\"}",
        "switchyard_topology_reloads_total{result=\"error\"}",
        "switchyard_bridge_events_unrouted_total{topic=\"Chat\"}",
    ] {
        assert_eq!(value(&body, series), Some(0.0), "{series}\n{body}");
    }
    assert_eq!(
        value(
            &body,
            &format!(
                "switchyard_build_info{{version=\"{}\"}}",
                env!("CARGO_PKG_VERSION")
            )
        ),
        Some(1.0)
    );
    assert_eq!(value(&body, "switchyard_pg_pool_size"), Some(8.0), "{body}");
    assert!(
        value(&body, "switchyard_bridge_log_bytes").unwrap() > 0.0,
        "{body}"
    );

    // Everything exported is in the catalog, with declared label values,
    // and everything is described.
    let catalog = switchyard_bridge::metrics::catalog();
    let problems = catalog.check_exposition(&body);
    assert!(problems.is_empty(), "{problems:#?}");
    // Once the partitions are known, every metric of the catalog is there.
    for m in &catalog.metrics {
        assert!(
            body.contains(&format!("# HELP {} ", m.name)),
            "{} missing",
            m.name
        );
    }

    let (code, ready) = http_get(admin, "/readyz").unwrap();
    assert_eq!(code, 200, "{ready}");
    assert!(ready.contains("kafka: 3 partitions assigned"), "{ready}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_broker_makes_the_bridge_unready_after_the_grace() {
    require_servers();
    let mut s = Stack::start(options()).await.unwrap();
    let admin = s.bridge_admin;
    eventually("partitions assigned", T, || {
        matches!(http_get(admin, "/readyz"), Ok((200, body)) if body.contains("partitions assigned"))
    })
    .await;
    s.broker.proc.kill9();
    let killed = Instant::now();
    eventually("the bridge to report the broker unreachable", T, || {
        matches!(http_get(admin, "/readyz"), Ok((503, body)) if body.contains("kafka: no broker reachable"))
    })
    .await;
    // Not before the grace period.
    assert!(
        killed.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        killed.elapsed()
    );
    let (_, body) = http_get(admin, "/metrics").unwrap();
    assert_eq!(
        value(&body, "switchyard_bridge_kafka_brokers_up"),
        Some(0.0),
        "{body}"
    );
}
