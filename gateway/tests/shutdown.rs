//! Shutdown owns every task: a node started in this process, with a client
//! connected and subscribed (session, reader, writer, catch-up, shards,
//! ticker, live feed, topology watcher, admin endpoint, readiness, JWKS),
//! leaves no task of its own running once `shutdown` returns.

#![allow(clippy::unwrap_used)]

use std::time::Duration;
use switchyard_gateway::config::GatewayConfig;
use switchyard_ops::config::Source;
use switchyard_testkit::{news, scratch_dir, seed_topology, token, Client, Database, SECRET};

fn alive() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

/// Waits until at most `n` tasks are alive (tasks end asynchronously after
/// the handles that owned them are dropped); returns the last count.
async fn settle_to(n: usize) -> usize {
    let mut now = alive();
    for _ in 0..100 {
        if now <= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        now = alive();
    }
    now
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_cancels_and_awaits_every_task() {
    let db = Database::create().await.unwrap();
    let dir = scratch_dir("shutdown");
    let topology = dir.join("topology.json");
    std::fs::write(&topology, seed_topology().to_string()).unwrap();
    let prefix = format!("sy_shutdown_{}", std::process::id());
    let cfg = GatewayConfig::from_source(&Source::from_map(vec![
        ("SWITCHYARD_POSTGRES_URL", db.url.as_str()),
        ("SWITCHYARD_REDIS_URL", "redis://127.0.0.1:6379"),
        ("SWITCHYARD_REDIS_PREFIX", prefix.as_str()),
        ("SWITCHYARD_TOPOLOGY", topology.to_str().unwrap()),
        ("SWITCHYARD_JWT_HS256_SECRET", SECRET),
        ("SWITCHYARD_LISTEN", "127.0.0.1:0"),
        ("SWITCHYARD_ADMIN_LISTEN", "127.0.0.1:0"),
        ("SWITCHYARD_DRAIN_SECONDS", "1"),
    ]))
    .unwrap();
    // Whatever the test harness itself runs (database set-up).
    let baseline = settle_to(0).await;

    let running = switchyard_gateway::start(cfg).await.unwrap();
    let url = format!("ws://{}/v1/ws", running.listen);
    let mut c = Client::connect(&url, &token("u", &["Sfc"], &[], 600))
        .await
        .unwrap();
    let r = c.subscribe("News", None).await.unwrap();
    assert_eq!(r["type"], "subscribed", "{r}");
    let _ = news("unused", &["Sfc"], 0);
    assert!(
        alive() > baseline + 5,
        "the node runs its tasks on this runtime ({} alive)",
        alive()
    );

    let report = running.shutdown(Duration::from_secs(10)).await;
    assert_eq!(report.connections_left, 0, "{report:?}");
    assert_eq!(report.tasks_left, 0, "{report:?}");
    // The client saw the drain: a reconnect hint and a 1001 close.
    let mut saw_close = false;
    for _ in 0..5 {
        match c.next_frame(Duration::from_secs(5)).await {
            Ok(v) if v["type"] == "__close" => {
                assert_eq!(v["code"], 1001, "{v}");
                saw_close = true;
                break;
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    assert!(saw_close, "the client got no close frame");
    drop(c);
    // Connection-pool drivers end once the pools are dropped with the node.
    let left = settle_to(baseline).await;
    assert!(
        left <= baseline,
        "{} tasks still alive after shutdown (baseline {baseline})",
        left
    );
}
