//! Presence and the fleet-wide connection quotas, as clients and backends
//! see them, on two gateways: joins and leaves across nodes, member lists
//! with connection counts and the cap, a SIGKILLed node's members gone
//! within the TTL (with their leave delivered), no presence across scopes
//! or tenants, the per-user limit across nodes, and the server API's
//! presence and stats. Every test starts its own stack.

#![allow(clippy::unwrap_used)]

use serde_json::{json, Value};
use std::time::{Duration, Instant};
use switchyard_testkit::{api_request, token_with, Client, Connect, Stack, StackOptions, API_KEY};

const T: Duration = Duration::from_secs(10);
/// The presence TTL of these stacks (heartbeat every second).
const TTL_SECS: u64 = 3;

fn topology() -> Value {
    json!({
        "Hubs": [{
            "Name": "Content",
            "Channels": [
                {"Name": "Room-[ScopeValue]", "Topic": "Rooms", "Presence": true,
                 "Filters": [{"Type": "Product Codes", "Values": ["*"]}]},
                {"Name": "Lobby", "Topic": "Lobby", "Presence": true, "Filters": []},
                {"Name": "News-[ScopeValue]", "Topic": "News",
                 "Filters": [{"Type": "Product Codes", "Values": ["*"]}]}
            ]
        }]
    })
}

async fn stack(env: &[(&str, &str)]) -> Stack {
    switchyard_testkit::require_servers();
    let mut env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    env.push((
        "SWITCHYARD_PRESENCE_TTL_SECONDS".into(),
        TTL_SECS.to_string(),
    ));
    Stack::start(StackOptions {
        gateways: 2,
        topology: topology(),
        env,
        ..Default::default()
    })
    .await
    .unwrap()
}

fn tok(sub: &str, products: &[&str], extra: Value) -> String {
    let mut claims = json!({"sub": sub, "products": products});
    if let Value::Object(m) = extra {
        for (k, v) in m {
            claims[k] = v;
        }
    }
    token_with(claims, 600)
}

async fn connect(s: &Stack, node: usize, token: &str) -> Client {
    Client::connect(&s.gateway(node).ws_url(), token)
        .await
        .unwrap()
}

async fn subscribe(c: &mut Client, topic: &str, presence: bool) -> Value {
    let id = c
        .request(json!({"type": "subscribe", "topic": topic, "presence": presence}))
        .await
        .unwrap();
    c.reply(id, T).await.unwrap()
}

async fn presence(c: &mut Client, topic: &str) -> Value {
    let id = c
        .request(json!({"type": "presence", "topic": topic}))
        .await
        .unwrap();
    c.reply(id, T).await.unwrap()
}

/// The next frame of `kind` (`join`/`leave`) for `user`, skipping others.
async fn presence_frame(c: &mut Client, kind: &str, user: &str, timeout: Duration) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let f = c
            .next_frame(left)
            .await
            .unwrap_or_else(|e| panic!("no {kind} of {user} within {timeout:?}: {e}"));
        if f["type"] == kind && f["user"] == user {
            return f;
        }
    }
}

/// Collects every presence frame arriving within `quiet`.
async fn presence_frames(c: &mut Client, quiet: Duration) -> Vec<Value> {
    let deadline = Instant::now() + quiet;
    let mut out = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return out;
        }
        match c.next_frame(left).await {
            Ok(f) if f["type"] == "join" || f["type"] == "leave" => out.push(f),
            Ok(_) => {}
            Err(_) => return out,
        }
    }
}

/// Members of `channel` in a presence reply: user → connections.
fn members(reply: &Value, channel: &str) -> Vec<(String, u64)> {
    let ch = reply["channels"]
        .as_array()
        .unwrap_or_else(|| panic!("no channels in {reply}"))
        .iter()
        .find(|c| c["channel"] == channel)
        .unwrap_or_else(|| panic!("no {channel} in {reply}"));
    ch["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["user"].as_str().unwrap().to_owned(),
                m["connections"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// Polls a presence request until `check` holds (presence converges
/// within a heartbeat or two).
async fn presence_until(
    c: &mut Client,
    topic: &str,
    timeout: Duration,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let r = presence(c, topic).await;
        if check(&r) {
            return r;
        }
        if Instant::now() > deadline {
            panic!("presence did not converge within {timeout:?}: {r}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A user on node 0 watching presence sees a user join on node 1, once for
/// two tabs, and leave only when the last tab closes; client info from the
/// token's `info` claim comes with the join.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_and_leaves_cross_nodes_per_user_not_per_tab() {
    let s = stack(&[]).await;
    let mut alice = connect(&s, 0, &tok("alice", &["CHLT"], json!({}))).await;
    assert_eq!(
        subscribe(&mut alice, "Lobby", true).await["type"],
        "subscribed"
    );
    // Alice sees her own join.
    presence_frame(&mut alice, "join", "alice", T).await;

    let bob_token = tok("bob", &["CHLT"], json!({"info": {"name": "Bob"}}));
    let mut bob1 = connect(&s, 1, &bob_token).await;
    assert_eq!(
        subscribe(&mut bob1, "Lobby", false).await["type"],
        "subscribed"
    );
    let join = presence_frame(&mut alice, "join", "bob", T).await;
    assert_eq!(join["topic"], "Lobby");
    assert_eq!(join["channel"], "Lobby");
    assert_eq!(join["info"]["name"], "Bob", "{join}");

    // A second tab of bob on node 0: no second join.
    let mut bob2 = connect(&s, 0, &bob_token).await;
    assert_eq!(
        subscribe(&mut bob2, "Lobby", false).await["type"],
        "subscribed"
    );
    let r = presence_until(&mut alice, "Lobby", T, |r| {
        members(r, "Lobby").contains(&("bob".into(), 2))
    })
    .await;
    assert_eq!(r["channels"][0]["users"], 2, "{r}");
    assert_eq!(r["channels"][0]["connections"], 3, "{r}");
    // Closing one tab is no leave.
    bob1.close().await;
    presence_until(&mut alice, "Lobby", T, |r| {
        members(r, "Lobby").contains(&("bob".into(), 1))
    })
    .await;
    let frames = presence_frames(&mut alice, Duration::from_millis(500)).await;
    assert!(frames.iter().all(|f| f["user"] != "bob"), "{frames:?}");
    // Closing the last one is.
    bob2.close().await;
    let leave = presence_frame(&mut alice, "leave", "bob", T).await;
    assert_eq!(leave["channel"], "Lobby");
    assert!(leave.get("expired").is_none(), "{leave}");
    // No duplicate of that leave.
    let frames = presence_frames(&mut alice, Duration::from_millis(1500)).await;
    assert!(frames.iter().all(|f| f["user"] != "bob"), "{frames:?}");

    // Presence asked of a topic without it: a clear error frame.
    let r = subscribe(&mut alice, "News", true).await;
    assert_eq!(r["type"], "error", "{r}");
    assert_eq!(r["code"], "bad_request");
    assert!(
        r["message"].as_str().unwrap().contains("no presence"),
        "{r}"
    );
    let r = presence(&mut alice, "News").await;
    assert_eq!(
        (r["type"].as_str(), r["code"].as_str()),
        (Some("error"), Some("bad_request")),
        "{r}"
    );
    // Without presence the same topic subscribes as always.
    assert_eq!(
        subscribe(&mut alice, "News", false).await["type"],
        "subscribed"
    );
}

/// The member list holds both nodes' members with their connection counts,
/// capped at SWITCHYARD_PRESENCE_MAX_MEMBERS while the counts go beyond.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_lists_span_nodes_and_are_capped() {
    let s = stack(&[("SWITCHYARD_PRESENCE_MAX_MEMBERS", "3")]).await;
    let mut clients = Vec::new();
    for (i, user) in ["u1", "u2", "u3", "u4", "u5"].iter().enumerate() {
        let tabs = if *user == "u2" { 2 } else { 1 };
        for t in 0..tabs {
            let mut c = connect(&s, (i + t) % 2, &tok(user, &["CHLT"], json!({}))).await;
            assert_eq!(
                subscribe(&mut c, "Rooms", false).await["type"],
                "subscribed"
            );
            clients.push(c);
        }
    }
    let mut watcher = connect(&s, 0, &tok("w", &["CHLT"], json!({}))).await;
    let r = presence_until(&mut watcher, "Rooms", T, |r| r["channels"][0]["users"] == 5).await;
    let ch = &r["channels"][0];
    assert_eq!(ch["channel"], "Room-CHLT", "{r}");
    assert_eq!(ch["connections"], 6, "{r}");
    assert_eq!(ch["truncated"], true, "{r}");
    let listed = members(&r, "Room-CHLT");
    assert_eq!(listed.len(), 3, "{r}");
    // Which three are listed is not specified; each with its count, once.
    let all: Vec<(String, u64)> = ["u1", "u2", "u3", "u4", "u5"]
        .iter()
        .map(|u| (u.to_string(), if *u == "u2" { 2 } else { 1 }))
        .collect();
    assert!(listed.iter().all(|m| all.contains(m)), "{r}");
    assert!(listed.windows(2).all(|w| w[0].0 < w[1].0), "{r}");
}

/// A gateway killed with SIGKILL leaves no members once the TTL has
/// passed, and the survivors' presence subscribers get their leave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nodes_members_expire_and_leave() {
    let mut s = stack(&[]).await;
    let mut alice = connect(&s, 0, &tok("alice", &["CHLT"], json!({}))).await;
    assert_eq!(
        subscribe(&mut alice, "Rooms", true).await["type"],
        "subscribed"
    );
    let mut zed = connect(&s, 1, &tok("zed", &["CHLT"], json!({}))).await;
    assert_eq!(
        subscribe(&mut zed, "Rooms", false).await["type"],
        "subscribed"
    );
    presence_frame(&mut alice, "join", "zed", T).await;

    s.gateways[1].proc.kill9();
    let killed = Instant::now();
    let leave = presence_frame(
        &mut alice,
        "leave",
        "zed",
        Duration::from_secs(TTL_SECS * 3),
    )
    .await;
    let took = killed.elapsed();
    assert_eq!(leave["expired"], true, "{leave}");
    assert_eq!(leave["channel"], "Room-CHLT");
    // Within the TTL plus one sweep period (TTL/3) and some slack.
    assert!(took < Duration::from_secs(TTL_SECS * 2), "took {took:?}");
    let r = presence(&mut alice, "Rooms").await;
    assert_eq!(members(&r, "Room-CHLT"), vec![("alice".into(), 1)], "{r}");
    assert_eq!(r["channels"][0]["connections"], 1, "{r}");
    // Announced once.
    let frames = presence_frames(&mut alice, Duration::from_secs(2)).await;
    assert!(frames.iter().all(|f| f["user"] != "zed"), "{frames:?}");
}

/// A user in Room-CHLT sees neither Room-Sfc's members and changes nor
/// another tenant's Room-CHLT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_never_crosses_scopes_or_tenants() {
    let s = stack(&[]).await;
    let mut chlt = connect(&s, 0, &tok("c1", &["CHLT"], json!({"tenant": "acme"}))).await;
    assert_eq!(
        subscribe(&mut chlt, "Rooms", true).await["type"],
        "subscribed"
    );
    presence_frame(&mut chlt, "join", "c1", T).await;

    let mut sfc = connect(&s, 1, &tok("s1", &["Sfc"], json!({"tenant": "acme"}))).await;
    assert_eq!(
        subscribe(&mut sfc, "Rooms", true).await["type"],
        "subscribed"
    );
    let mut other = connect(&s, 1, &tok("o1", &["CHLT"], json!({"tenant": "globex"}))).await;
    assert_eq!(
        subscribe(&mut other, "Rooms", true).await["type"],
        "subscribed"
    );
    // Someone who joins CHLT in acme is seen: the feed works.
    let mut c2 = connect(&s, 1, &tok("c2", &["CHLT"], json!({"tenant": "acme"}))).await;
    assert_eq!(
        subscribe(&mut c2, "Rooms", false).await["type"],
        "subscribed"
    );
    presence_frame(&mut chlt, "join", "c2", T).await;
    let frames = presence_frames(&mut chlt, Duration::from_millis(1500)).await;
    assert!(
        frames
            .iter()
            .all(|f| f["user"] != "s1" && f["user"] != "o1"),
        "{frames:?}"
    );
    let r = presence(&mut chlt, "Rooms").await;
    assert_eq!(r["channels"].as_array().unwrap().len(), 1, "{r}");
    assert_eq!(
        members(&r, "Room-CHLT"),
        vec![("c1".into(), 1), ("c2".into(), 1)],
        "{r}"
    );
    let r = presence(&mut other, "Rooms").await;
    assert_eq!(members(&r, "Room-CHLT"), vec![("o1".into(), 1)], "{r}");
    let r = presence(&mut sfc, "Rooms").await;
    assert_eq!(members(&r, "Room-Sfc"), vec![("s1".into(), 1)], "{r}");
    // The other tenant's and scope's watchers saw nothing of acme CHLT.
    for c in [&mut sfc, &mut other] {
        let frames = presence_frames(c, Duration::from_millis(300)).await;
        assert!(
            frames
                .iter()
                .all(|f| f["user"] != "c1" && f["user"] != "c2"),
            "{frames:?}"
        );
    }
}

fn metric(s: &Stack, node: usize, name: &str, label: &str) -> f64 {
    switchyard_testkit::metric_sum(s.gateway(node).admin, name, label)
}

/// SWITCHYARD_MAX_USER_CONNECTIONS holds across the fleet: connections
/// split over two nodes are refused past it (429), and a place freed on one
/// node can be taken on the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_user_limit_holds_across_nodes() {
    let s = stack(&[("SWITCHYARD_MAX_USER_CONNECTIONS", "3")]).await;
    let t = tok("heavy", &["CHLT"], json!({}));
    let url = |node: usize| format!("{}?access_token={t}", s.gateway(node).ws_url());
    let mut open = Vec::new();
    for node in [0, 1, 0] {
        match Client::try_connect(&url(node), None).await.unwrap() {
            Connect::Open(c) => open.push(c),
            Connect::Refused(code, body) => panic!("refused early: {code} {body}"),
        }
    }
    for node in [1, 0] {
        match Client::try_connect(&url(node), None).await.unwrap() {
            Connect::Refused(429, body) => assert!(body.contains("user"), "{body}"),
            other => panic!("expected 429 on node {node}, got {other:?}"),
        }
    }
    assert!(
        metric(
            &s,
            1,
            "switchyard_gateway_quota_refusals_total",
            "user_connections"
        ) >= 1.0
    );
    // Another user is not affected.
    Client::connect(&s.gateway(1).ws_url(), &tok("light", &["CHLT"], json!({})))
        .await
        .unwrap();
    // A place freed on node 0 is free on node 1.
    let first = open.remove(0);
    (*first).close().await;
    let deadline = Instant::now() + T;
    loop {
        match Client::try_connect(&url(1), None).await.unwrap() {
            Connect::Open(_) => break,
            Connect::Refused(429, _) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            other => panic!("the freed place was not given back: {other:?}"),
        }
    }
}

async fn api_get(s: &Stack, node: usize, path: &str) -> (u16, Value) {
    api_request(s.gateway(node).api, "GET", path, Some(API_KEY), None)
        .await
        .unwrap()
}

/// The server API answers presence (members, counts, the cap) and stats
/// (counts only) for given entitlements, and refuses bad requests clearly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_api_presence_and_stats() {
    let s = stack(&[]).await;
    let mut a = connect(&s, 0, &tok("a", &["CHLT"], json!({"info": {"n": 1}}))).await;
    assert_eq!(
        subscribe(&mut a, "Rooms", false).await["type"],
        "subscribed"
    );
    let mut b = connect(&s, 1, &tok("b", &["CHLT", "Sfc"], json!({}))).await;
    assert_eq!(
        subscribe(&mut b, "Rooms", false).await["type"],
        "subscribed"
    );
    let deadline = Instant::now() + T;
    let body = loop {
        let (status, body) = api_get(&s, 1, "/v1/presence?topic=Rooms&products=CHLT").await;
        assert_eq!(status, 200, "{body}");
        if body["channels"][0]["users"] == 2 || Instant::now() > deadline {
            break body;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        members(&body, "Room-CHLT"),
        vec![("a".into(), 1), ("b".into(), 1)],
        "{body}"
    );
    assert_eq!(body["channels"][0]["members"][0]["info"]["n"], 1, "{body}");
    let (status, stats) = api_get(&s, 0, "/v1/presence/stats?topic=Rooms&products=CHLT,Sfc").await;
    assert_eq!(status, 200, "{stats}");
    let counts: Vec<(String, u64, u64)> = stats["channels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            assert!(c.get("members").is_none(), "{stats}");
            (
                c["channel"].as_str().unwrap().to_owned(),
                c["users"].as_u64().unwrap(),
                c["connections"].as_u64().unwrap(),
            )
        })
        .collect();
    assert!(counts.contains(&("Room-CHLT".into(), 2, 2)), "{stats}");
    assert!(counts.contains(&("Room-Sfc".into(), 1, 1)), "{stats}");
    // Another tenant's Room-CHLT is empty.
    let (_, other) = api_get(
        &s,
        0,
        "/v1/presence/stats?topic=Rooms&products=CHLT&tenant=globex",
    )
    .await;
    assert_eq!(other["channels"][0]["users"], 0, "{other}");
    for (path, status) in [
        ("/v1/presence", 400),
        ("/v1/presence?topic=News&products=CHLT", 400),
        ("/v1/presence?topic=Nope", 400),
        ("/v1/presence?topic=Rooms", 403),
    ] {
        let (got, body) = api_get(&s, 0, path).await;
        assert_eq!(got, status, "{path}: {body}");
        assert_eq!(body["type"], "error", "{body}");
    }
    let (status, _) = api_request(
        s.gateway(0).api,
        "GET",
        "/v1/presence?topic=Rooms&products=CHLT",
        None,
        None,
    )
    .await
    .unwrap();
    assert_eq!(status, 401);
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

fn redis_commands(port: u16) -> u64 {
    let out = std::process::Command::new("redis-cli")
        .args(["-p", &port.to_string(), "info", "stats"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("total_commands_processed:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap()
}

/// A measurement, not a check (ignored by default): the gateway's memory
/// per idle connection and Redis commands per connection per minute, with
/// every connection subscribed to a presence topic (each its own user, in
/// one channel, and in one channel per user) and, for comparison, to a
/// topic without presence. Run with
/// `PRESENCE_MEASURE_CONNECTIONS=2000 cargo test --release -p switchyard-gateway --test presence measure_idle_presence -- --ignored --nocapture`
/// (on a private redis-server, so other users of the machine's Redis do
/// not count).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn measure_idle_presence() {
    let n: usize = std::env::var("PRESENCE_MEASURE_CONNECTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let window = Duration::from_secs(60);
    for (label, topic, per_user_channel) in [
        ("no presence (News)", "News", false),
        ("presence, one shared channel (Lobby)", "Lobby", false),
        ("presence, one channel per user (Rooms)", "Rooms", true),
    ] {
        // Default TTL (30 s): heartbeats every 10 s.
        switchyard_testkit::require_servers();
        let port = switchyard_testkit::free_port();
        let redis = switchyard_testkit::RedisServer::start(
            &switchyard_testkit::scratch_dir("presence-measure"),
            port,
        )
        .unwrap();
        let mut s = Stack::start(StackOptions {
            gateways: 1,
            topology: topology(),
            redis_url: Some(redis.url()),
            ..Default::default()
        })
        .await
        .unwrap();
        let pid = s.gateways[0].proc.pid().unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let before = rss_kib(pid);
        let mut clients = Vec::with_capacity(n);
        for i in 0..n {
            let user = format!("user-{i}");
            let product = if per_user_channel {
                format!("P{i}")
            } else {
                "CHLT".into()
            };
            let mut c = connect(&s, 0, &tok(&user, &[&product], json!({}))).await;
            assert_eq!(subscribe(&mut c, topic, false).await["type"], "subscribed");
            clients.push(c);
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        let commands_before = redis_commands(port);
        let started = Instant::now();
        tokio::time::sleep(window).await;
        let commands = redis_commands(port) - commands_before;
        let minutes = started.elapsed().as_secs_f64() / 60.0;
        let after = rss_kib(pid);
        println!(
            "{label}: {n} connections, gateway RSS {before} KiB -> {after} KiB = {:.1} KiB per connection; Redis {commands} commands in {:.1} min = {:.2} per connection per minute",
            (after.saturating_sub(before)) as f64 / n as f64,
            minutes,
            commands as f64 / n as f64 / minutes,
        );
        drop(clients);
        s.gateways[0].proc.kill9();
    }
}
