//! The server API and the quotas, as backends and clients see them: an API
//! publish delivered live, stored and in history; keys and bad requests
//! refused; a user disconnected on every node; each quota refusal. Every
//! test starts its own stack (fresh database, topics, Redis prefix, ports).

#![allow(clippy::unwrap_used)]

use serde_json::{json, Value};
use std::time::Duration;
use switchyard_testkit::{
    api_request, http_get, token, token_with, Client, Connect, Stack, StackOptions, API_KEY,
};

const T: Duration = Duration::from_secs(15);

async fn stack(gateways: usize, env: &[(&str, &str)]) -> Stack {
    switchyard_testkit::require_servers();
    Stack::start(StackOptions {
        gateways,
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    })
    .await
    .unwrap()
}

async fn api(
    s: &Stack,
    node: usize,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    api_request(
        s.gateway(node).api,
        method,
        path,
        Some(API_KEY),
        body.as_ref(),
    )
    .await
    .unwrap()
}

fn metric(s: &Stack, node: usize, name: &str, label: &str) -> f64 {
    switchyard_testkit::metric_sum(s.gateway(node).admin, name, label)
}

/// A backend publishes through one node's API; a client on the other node
/// gets it live, the log holds it, history returns it for the same
/// entitlements only, and a repeated id stores nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_publish_is_delivered_live_stored_and_in_history() {
    let s = stack(2, &[]).await;
    let mut c = Client::connect(&s.gateway(1).ws_url(), &token("u1", &["Sfc"], &[], 600))
        .await
        .unwrap();
    assert_eq!(
        c.subscribe("News", None).await.unwrap()["type"],
        "subscribed"
    );

    let event = json!({
        "id": "api-1",
        "topic": "News",
        "scopes": [{"type": "Product Codes", "values": ["Sfc"]}],
        "payload": {"headline": "from a backend"}
    });
    let (status, body) = api(&s, 0, "POST", "/v1/publish", Some(event.clone())).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["event_id"], "api-1");
    assert_eq!(body["duplicate"], false);
    assert_eq!(body["entries"][0]["channel"], "Content/News-Sfc", "{body}");
    assert_eq!(body["entries"][0]["seq"], 1, "{body}");

    let got = c.messages(1, T).await.unwrap();
    assert_eq!(got[0]["id"], "api-1");
    assert_eq!(got[0]["payload"]["headline"], "from a backend");
    assert_eq!(s.stored_events().await.unwrap(), 1);

    // The same id again: acknowledged as a duplicate, not delivered again.
    let (status, body) = api(&s, 1, "POST", "/v1/publish", Some(event)).await;
    assert_eq!((status, &body["duplicate"]), (200, &json!(true)), "{body}");
    c.expect_silence(Duration::from_millis(800)).await.unwrap();
    assert_eq!(s.stored_events().await.unwrap(), 1);

    // History on the other node, with the same entitlements...
    let (status, page) = api(&s, 1, "GET", "/v1/history?topic=News&products=Sfc", None).await;
    assert_eq!(status, 200, "{page}");
    let msgs = page["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 1, "{page}");
    assert_eq!(msgs[0]["id"], "api-1");
    assert_eq!(page["more"], false);
    // ...continued from its cursor: nothing newer.
    let cursor = page["cursor"].as_str().unwrap();
    let (_, next) = api(
        &s,
        1,
        "GET",
        &format!("/v1/history?topic=News&products=Sfc&cursor={cursor}"),
        None,
    )
    .await;
    assert_eq!(next["messages"], json!([]), "{next}");
    assert_eq!(next["recovered"], true);
    // Other entitlements see none of it.
    let (_, other) = api(&s, 0, "GET", "/v1/history?topic=News&products=CHLT", None).await;
    assert_eq!(other["messages"], json!([]), "{other}");

    // A second event is paged after the first.
    let (status, _) = api(
        &s,
        0,
        "POST",
        "/v1/publish",
        Some(json!({"topic": "News", "scopes": [{"type": "Product Codes", "values": ["Sfc"]}], "payload": 2})),
    )
    .await;
    assert_eq!(status, 200);
    let (_, one) = api(
        &s,
        0,
        "GET",
        "/v1/history?topic=News&products=Sfc&limit=1",
        None,
    )
    .await;
    assert_eq!(one["messages"].as_array().unwrap().len(), 1);
    assert_eq!(one["more"], true, "{one}");
    let cursor = one["cursor"].as_str().unwrap();
    let (_, two) = api(
        &s,
        0,
        "GET",
        &format!("/v1/history?topic=News&products=Sfc&limit=1&cursor={cursor}"),
        None,
    )
    .await;
    assert_eq!(two["messages"][0]["payload"], 2, "{two}");
}

/// Without a configured key nothing but the description is served; bad
/// requests get a JSON error naming the problem.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_refuses_bad_keys_and_bad_requests() {
    let s = stack(1, &[]).await;
    let addr = s.gateway(0).api;
    let publish = json!({"topic": "News", "payload": 1});
    for key in [None, Some("wrong-key-0123456789abcdef"), Some("")] {
        let (status, body) = api_request(addr, "POST", "/v1/publish", key, Some(&publish))
            .await
            .unwrap();
        assert_eq!(status, 401, "{key:?}: {body}");
        assert_eq!(body["code"], "unauthorized");
    }
    let (status, _) = api_request(addr, "GET", "/v1/info", None, None)
        .await
        .unwrap();
    assert_eq!(status, 401);
    assert_eq!(s.stored_events().await.unwrap(), 0);
    assert!(
        metric(
            &s,
            0,
            "switchyard_gateway_api_requests_total",
            "unauthorized"
        ) >= 4.0
    );

    let (status, body) = api(&s, 0, "POST", "/v1/publish", Some(json!({"topic": "Nope"}))).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("bad_request")),
        "{body}"
    );
    assert!(body["message"].as_str().unwrap().contains("Nope"), "{body}");
    let (status, body) = api(
        &s,
        0,
        "POST",
        "/v1/publish",
        Some(json!({"topic": "News", "colour": 1})),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        body["message"].as_str().unwrap().contains("colour"),
        "{body}"
    );
    let (status, _) = api(&s, 0, "GET", "/v1/publish", None).await;
    assert_eq!(status, 405);
    let (status, body) = api(&s, 0, "GET", "/v1/history?products=Sfc", None).await;
    assert_eq!(status, 400);
    assert!(
        body["message"].as_str().unwrap().contains("topic"),
        "{body}"
    );
    let (status, body) = api(&s, 0, "POST", "/v1/disconnect", Some(json!({"user": ""}))).await;
    assert_eq!(status, 400, "{body}");

    let (status, text) = http_get(addr, "/v1/openapi.yaml").unwrap();
    assert_eq!(status, 200);
    assert!(text.contains("/v1/publish") && text.contains("openapi: 3"));
}

/// `disconnect` closes the user's connections on both nodes with 4003 and
/// leaves everyone else connected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_disconnect_closes_the_user_on_every_node() {
    let s = stack(2, &[]).await;
    let mut a0 = Client::connect(&s.gateway(0).ws_url(), &token("alice", &["Sfc"], &[], 600))
        .await
        .unwrap();
    let mut a1 = Client::connect(&s.gateway(1).ws_url(), &token("alice", &["Sfc"], &[], 600))
        .await
        .unwrap();
    let mut b1 = Client::connect(&s.gateway(1).ws_url(), &token("bob", &["Sfc"], &[], 600))
        .await
        .unwrap();
    b1.subscribe("News", None).await.unwrap();
    // The counts are a snapshot, updated right after each request.
    wait_info(&s, 1, |i| {
        (&i["connections"], &i["users"], &i["subscriptions"]) == (&json!(2), &json!(2), &json!(1))
    })
    .await;

    let (status, body) = api(
        &s,
        0,
        "POST",
        "/v1/disconnect",
        Some(json!({"user": "alice"})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["closed_here"], 1);
    for c in [&mut a0, &mut a1] {
        let f = c.next_frame(T).await.unwrap();
        assert_eq!(f["type"], "__close", "{f}");
        assert_eq!(f["code"], 4003, "{f}");
        assert_eq!(f["reason"], "disconnected by the server");
    }
    // Bob is still served.
    let id = b1.request(json!({"type": "ping"})).await.unwrap();
    assert_eq!(b1.reply(id, T).await.unwrap()["type"], "pong");
    wait_info(&s, 1, |i| i["connections"] == 1).await;
}

async fn wait_info(s: &Stack, node: usize, done: impl Fn(&Value) -> bool) {
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let (_, info) = api(s, node, "GET", "/v1/info", None).await;
        if done(&info) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{info}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Per-user and per-tenant connection quotas refuse the new connection with
/// 429; the per-user publish rate holds across nodes; each is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_refuse_connections_and_publishes() {
    let s = stack(
        2,
        &[
            ("SWITCHYARD_MAX_USER_CONNECTIONS", "2"),
            ("SWITCHYARD_MAX_TENANT_CONNECTIONS", "3"),
            ("SWITCHYARD_PUBLISH_RATE_PER_USER", "3"),
            ("SWITCHYARD_PUBLISH_RATE_WINDOW_SECONDS", "120"),
        ],
    )
    .await;
    let url = s.gateway(0).ws_url();
    let tok = |user: &str| token_with(json!({"sub": user, "tenant": "acme"}), 600);
    let connect = |user: &str| {
        let url = format!("{url}?access_token={}", tok(user));
        async move { Client::try_connect(&url, None).await.unwrap() }
    };
    let mut held = Vec::new();
    for user in ["u", "u"] {
        match connect(user).await {
            Connect::Open(c) => held.push(c),
            Connect::Refused(code, body) => panic!("refused {code} {body}"),
        }
    }
    match connect("u").await {
        Connect::Refused(429, body) => {
            assert!(
                body.contains("rate_limited") && body.contains("this user"),
                "{body}"
            )
        }
        other => panic!("expected a user quota refusal, got {other:?}"),
    }
    match connect("w").await {
        Connect::Open(c) => held.push(c),
        Connect::Refused(code, body) => panic!("refused {code} {body}"),
    }
    match connect("x").await {
        Connect::Refused(429, body) => assert!(body.contains("tenant"), "{body}"),
        other => panic!("expected a tenant quota refusal, got {other:?}"),
    }
    // A place comes back when its connection ends.
    held.pop().unwrap().close().await;
    let deadline = tokio::time::Instant::now() + T;
    loop {
        match connect("x").await {
            Connect::Open(_) => break,
            Connect::Refused(..) => {
                assert!(tokio::time::Instant::now() < deadline, "place not released");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    assert_eq!(
        metric(
            &s,
            0,
            "switchyard_gateway_quota_refusals_total",
            "user_connections"
        ),
        1.0
    );
    assert!(
        metric(
            &s,
            0,
            "switchyard_gateway_quota_refusals_total",
            "tenant_connections"
        ) >= 1.0
    );

    // Publishes: 3 per user per window, counted across both nodes.
    let mut p0 = Client::connect(&s.gateway(0).ws_url(), &token("p", &[], &[], 600))
        .await
        .unwrap();
    let mut p1 = Client::connect(&s.gateway(1).ws_url(), &token("p", &[], &[], 600))
        .await
        .unwrap();
    let mut replies = Vec::new();
    for i in 0..4 {
        let c = if i % 2 == 0 { &mut p0 } else { &mut p1 };
        let id = c
            .request(json!({"type": "publish", "topic": "Chat", "payload": {"n": i}}))
            .await
            .unwrap();
        replies.push(c.reply(id, T).await.unwrap());
    }
    let types: Vec<&str> = replies
        .iter()
        .map(|r| r["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        ["published", "published", "published", "error"],
        "{replies:?}"
    );
    assert_eq!(replies[3]["code"], "rate_limited");
    assert_eq!(s.stored_events().await.unwrap(), 3);
    assert_eq!(
        metric(
            &s,
            1,
            "switchyard_gateway_quota_refusals_total",
            "user_publish_rate"
        ),
        1.0
    );
}

/// With `SWITCHYARD_LIVE_KEY`, the control channel between nodes is
/// authenticated too: a `disconnect` forged on Redis (by whoever can publish
/// there without the key) disconnects no one, while the server API's own
/// disconnect still closes the user on the other node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_disconnect_on_redis_disconnects_no_one() {
    let s = stack(
        2,
        &[("SWITCHYARD_LIVE_KEY", "live-key-for-tests-0123456789abcdef")],
    )
    .await;
    let mut a1 = Client::connect(&s.gateway(1).ws_url(), &token("alice", &["Sfc"], &[], 600))
        .await
        .unwrap();
    // The attacker publishes on the fleet's control channel without the key.
    let attacker = switchyard_livefeed::Publisher::connect(&s.redis_url, &s.prefix, "any", None)
        .await
        .unwrap();
    let forged = switchyard_livefeed::Control::Disconnect {
        user: "alice".into(),
    };
    attacker.publish_control(&forged).await.unwrap();
    a1.expect_silence(Duration::from_millis(1500))
        .await
        .unwrap();
    let id = a1.request(json!({"type": "ping"})).await.unwrap();
    assert_eq!(a1.reply(id, T).await.unwrap()["type"], "pong");
    let (_, text) = http_get(s.gateway(1).admin, "/metrics").unwrap();
    assert!(
        text.lines().any(
            |l| l.starts_with("switchyard_gateway_control_refused_total") && !l.ends_with(" 0")
        ),
        "the forged order was not counted"
    );
    // The server API, on the other node, still reaches alice on node 1.
    let (status, body) = api(
        &s,
        0,
        "POST",
        "/v1/disconnect",
        Some(json!({"user": "alice"})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let f = a1.next_frame(T).await.unwrap();
    assert_eq!(
        (f["type"].as_str(), f["code"].as_u64()),
        (Some("__close"), Some(4003)),
        "{f}"
    );
}
