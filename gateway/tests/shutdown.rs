//! Shutdown owns every task: a node started in this process, with a client
//! connected and subscribed (session, reader, writer, catch-up, shards,
//! ticker, live feed, topology watcher, admin endpoint, readiness, JWKS),
//! leaves no task of its own running once `shutdown` returns.
//!
//! And the drain under load: 1,000 WebSocket clients on gateway A while
//! events flow; SIGTERM A; the closes (1001) arrive spread over
//! `SWITCHYARD_DRAIN_SECONDS`, and every client resumes on gateway B from
//! its last cursor and ends with every event exactly once, in order.

#![allow(clippy::unwrap_used)]

use std::time::Duration;
use switchyard_gateway::config::GatewayConfig;
use switchyard_ops::config::Source;
use switchyard_testkit::{
    ids, news, require_servers, scratch_dir, seed_topology, token, Client, Database, Stack,
    StackOptions, SECRET,
};

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

/// What one drained client saw.
#[derive(Debug)]
struct Drained {
    /// Message ids, from A then from B, in arrival order.
    ids: Vec<String>,
    /// When A's close arrived, after the SIGTERM.
    closed_after: Duration,
    close_code: u64,
    /// A `reconnect` hint came before the close.
    hinted: bool,
}

const CLIENTS: usize = 1000;
const EVENTS: usize = 40;
const DRAIN_SECONDS: u64 = 5;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_clients_drain_progressively_and_resume_on_the_other_node() {
    use futures::StreamExt as _;
    use std::sync::Arc;
    require_servers();
    let mut s = Stack::start(StackOptions {
        gateways: 2,
        env: vec![("SWITCHYARD_DRAIN_SECONDS".into(), DRAIN_SECONDS.to_string())],
        ..StackOptions::default()
    })
    .await
    .unwrap();
    let a = s.gateway(0).ws_url();
    let b = s.gateway(1).ws_url();

    // 1,000 clients on A, each subscribed (50 handshakes at a time).
    let clients: Vec<Client> = futures::stream::iter(0..CLIENTS)
        .map(|i| {
            let a = a.clone();
            async move {
                let tok = token(&format!("drain-{i}"), &["CHLT"], &[], 600);
                let mut c = Client::connect(&a, &tok).await.unwrap();
                let r = c.subscribe("News", None).await.unwrap();
                assert_eq!(r["type"], "subscribed", "{r}");
                (c, tok)
            }
        })
        .buffer_unordered(50)
        .map(|(c, _)| c)
        .collect()
        .await;
    assert_eq!(clients.len(), CLIENTS);
    eprintln!("{CLIENTS} clients subscribed on A");

    // Events flow from before the SIGTERM to past the drain window.
    let produced: Vec<String> = (0..EVENTS).map(|i| format!("d{i:03}")).collect();
    let sigterm_at = Arc::new(std::sync::OnceLock::<tokio::time::Instant>::new());
    let clients_done = {
        let b = b.clone();
        let sigterm_at = sigterm_at.clone();
        clients
            .into_iter()
            .enumerate()
            .map(|(i, c)| {
                let b = b.clone();
                let sigterm_at = sigterm_at.clone();
                tokio::spawn(async move { drain_client(i, c, &b, &sigterm_at).await })
            })
            .collect::<Vec<_>>()
    };
    let events = produced.clone();
    let period = Duration::from_millis((DRAIN_SECONDS * 1000 + 3000) / EVENTS as u64);
    let mut next = tokio::time::Instant::now();
    for (n, id) in events.iter().enumerate() {
        if n == EVENTS / 8 {
            // A few events in: SIGTERM A.
            sigterm_at.set(tokio::time::Instant::now()).unwrap();
            s.gateways[0].proc.term();
        }
        s.produce(&[news(id, &["CHLT"], n as u64)]).await.unwrap();
        next += period;
        tokio::time::sleep_until(next).await;
    }

    let mut drained = Vec::new();
    for h in clients_done {
        drained.push(h.await.unwrap());
    }
    // A exits once its last connection is closed.
    assert_eq!(
        s.gateways[0].proc.wait_exit(Duration::from_secs(15)),
        Some(0)
    );

    // Every client: a reconnect hint, then close 1001 within the window.
    let window = Duration::from_secs(DRAIN_SECONDS);
    for (i, d) in drained.iter().enumerate() {
        assert_eq!(d.close_code, 1001, "client {i}: {d:?}");
        assert!(d.hinted, "client {i} got no reconnect frame: {d:?}");
        assert!(
            d.closed_after <= window + Duration::from_secs(2),
            "client {i} closed {:?} after SIGTERM",
            d.closed_after
        );
    }
    // Spread over the window, not all at once: the middle 80% of the closes
    // span over 40% of it, and no second of it holds half of them. (Exact
    // shares per second depend on how loaded the machine is.)
    let mut at: Vec<Duration> = drained.iter().map(|d| d.closed_after).collect();
    at.sort();
    let (p10, p90) = (at[CLIENTS / 10], at[CLIENTS * 9 / 10]);
    let mut per_second = [0usize; DRAIN_SECONDS as usize + 3];
    for t in &at {
        let s = (t.as_secs() as usize).min(per_second.len() - 1);
        per_second[s] += 1;
    }
    eprintln!("closes per second after SIGTERM: {per_second:?} (p10 {p10:?}, p90 {p90:?})");
    assert!(
        p90 - p10 >= window * 2 / 5,
        "closes bunched: p10 {p10:?}, p90 {p90:?}, per second {per_second:?}"
    );
    assert!(
        per_second.iter().all(|n| *n <= CLIENTS / 2),
        "half the closes in one second: {per_second:?}"
    );
    // And nothing lost, nothing twice, in order, across the two nodes.
    for (i, d) in drained.iter().enumerate() {
        assert_eq!(d.ids, produced, "client {i}");
    }
}

/// Reads `c` on A until its close, then resumes on `b` with its last
/// cursor and reads until it has every event.
async fn drain_client(
    i: usize,
    mut c: Client,
    b: &str,
    sigterm_at: &std::sync::OnceLock<tokio::time::Instant>,
) -> Drained {
    let limit = Duration::from_secs(40);
    let started = tokio::time::Instant::now();
    let mut got: Vec<String> = Vec::new();
    let mut hinted = false;
    let (closed_after, close_code) = loop {
        let v = c
            .next_frame(limit.saturating_sub(started.elapsed()))
            .await
            .unwrap_or_else(|e| panic!("client {i} on A: {e}"));
        match v["type"].as_str() {
            Some("message") => got.push(v["id"].as_str().unwrap().to_owned()),
            Some("reconnect") => hinted = true,
            Some("__close") => {
                let at = sigterm_at.get().expect("closed before the SIGTERM");
                break (at.elapsed(), v["code"].as_u64().unwrap_or(0));
            }
            _ => {}
        }
    };
    let cursor = c.cursors.get("News").cloned();
    drop(c);
    let tok = token(&format!("drain-{i}"), &["CHLT"], &[], 600);
    let mut c = Client::connect(b, &tok)
        .await
        .unwrap_or_else(|e| panic!("client {i} on B: {e}"));
    let r = c.subscribe("News", cursor.as_deref()).await.unwrap();
    assert_eq!(r["type"], "subscribed", "client {i}: {r}");
    while got.len() < EVENTS {
        let left = limit.saturating_sub(started.elapsed());
        let more = c
            .messages(1, left)
            .await
            .unwrap_or_else(|e| panic!("client {i} on B after {got:?}: {e}"));
        got.extend(ids(&more));
    }
    // Nothing more than the events produced.
    c.expect_silence(Duration::from_millis(300)).await.unwrap();
    Drained {
        ids: got,
        closed_after,
        close_code,
        hinted,
    }
}
