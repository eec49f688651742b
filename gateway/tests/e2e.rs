//! End-to-end tests of the whole pipeline against real servers: tansu
//! (Kafka protocol), PostgreSQL, Redis, the bridge binary and two gateway
//! binaries. Each test starts its own stack (fresh database, topics, Redis
//! prefix, ports), so they run in parallel and never collide.

#![allow(clippy::unwrap_used)]

use serde_json::{json, Value};
use std::collections::HashSet;
use std::time::Duration;
use switchyard_testkit::{
    default_stack, ids, news, ns, require_servers, token, Client, Stack, StackOptions,
};

const T: Duration = Duration::from_secs(20);

/// Issue 2, case 1: the seed's example reaches exactly the right users, once
/// each, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_example_reaches_exactly_the_entitled_users() {
    let s = default_stack().await;
    let mut a = Client::connect(
        &s.gateway(0).ws_url(),
        &token("user-a", &["CHLT", "Sfc"], &[], 600),
    )
    .await
    .unwrap();
    let mut b = Client::connect(
        &s.gateway(1).ws_url(),
        &token("user-b", &["FullAccess"], &[], 600),
    )
    .await
    .unwrap();
    let mut c = Client::connect(&s.gateway(0).ws_url(), &token("user-c", &["Sfc"], &[], 600))
        .await
        .unwrap();
    for cl in [&mut a, &mut b, &mut c] {
        let r = cl.subscribe("News", None).await.unwrap();
        assert_eq!(r["type"], "subscribed", "{r}");
        assert_eq!(r["recovered"], false);
    }
    s.produce(&[
        news("e1", &["CHLT", "FullAccess"], 1),
        news("e2", &["Sfc"], 2),
        news("e3", &["CHLT", "Sfc"], 3),
        news("e4", &["Other"], 4),
    ])
    .await
    .unwrap();
    assert_eq!(ids(&a.messages(3, T).await.unwrap()), ["e1", "e2", "e3"]);
    assert_eq!(ids(&b.messages(1, T).await.unwrap()), ["e1"]);
    assert_eq!(ids(&c.messages(2, T).await.unwrap()), ["e2", "e3"]);
    for cl in [&mut a, &mut b, &mut c] {
        cl.expect_silence(Duration::from_millis(1500))
            .await
            .unwrap();
    }
    // Operators see it in the metrics. `[Other]` lands in its own wildcard
    // channel (News-Other), stored though nobody here holds that product.
    let (code, gw) = switchyard_testkit::http_get(s.gateway(0).admin, "/metrics").unwrap();
    assert_eq!(code, 200);
    assert!(
        gw.contains("switchyard_gateway_messages_delivered_total"),
        "{gw}"
    );
    // Everything a gateway exports is in its catalog (no bridge metric),
    // with declared label values, and described.
    let problems = switchyard_gateway::metrics::catalog().check_exposition(&gw);
    assert!(problems.is_empty(), "{problems:#?}");
    let (_, br) = switchyard_testkit::http_get(s.bridge_admin, "/metrics").unwrap();
    assert!(
        br.contains("switchyard_bridge_events_appended_total{topic=\"News\"} 4"),
        "{br}"
    );
    assert_eq!(
        switchyard_testkit::http_get(s.gateway(1).admin, "/healthz")
            .unwrap()
            .0,
        200
    );
}

/// Issue 2, case 2: reconnecting to the other node with a cursor yields
/// exactly what was missed, then live, no duplicate; a subscriber without a
/// cursor gets the lookback window with `recovered: false`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_to_the_other_node_resumes_from_the_cursor() {
    let s = default_stack().await;
    let tok = token("user-r", &["CHLT"], &[], 600);
    let mut c = Client::connect(&s.gateway(0).ws_url(), &tok).await.unwrap();
    c.subscribe("News", None).await.unwrap();
    let first: Vec<Value> = (1..=5)
        .map(|n| news(&format!("r{n}"), &["CHLT"], n))
        .collect();
    s.produce(&first).await.unwrap();
    assert_eq!(ns(&c.messages(5, T).await.unwrap()), [1, 2, 3, 4, 5]);
    let cursor = c.cursors["News"].clone();
    c.close().await;

    let missed: Vec<Value> = (6..=10)
        .map(|n| news(&format!("r{n}"), &["CHLT"], n))
        .collect();
    s.produce(&missed).await.unwrap();
    // Wait until the log has them (the client is offline).
    for _ in 0..200 {
        if s.stored_events().await.unwrap() >= 10 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mut c = Client::connect(&s.gateway(1).ws_url(), &tok).await.unwrap();
    let r = c.subscribe("News", Some(&cursor)).await.unwrap();
    assert_eq!(r["recovered"], true, "{r}");
    assert_eq!(ns(&c.messages(5, T).await.unwrap()), [6, 7, 8, 9, 10]);
    s.produce(&[news("r11", &["CHLT"], 11), news("r12", &["CHLT"], 12)])
        .await
        .unwrap();
    assert_eq!(ns(&c.messages(2, T).await.unwrap()), [11, 12]);
    c.expect_silence(Duration::from_millis(1500)).await.unwrap();

    // No cursor: the CalendarDay lookback replays today's messages.
    let mut fresh = Client::connect(&s.gateway(1).ws_url(), &tok).await.unwrap();
    let r = fresh.subscribe("News", None).await.unwrap();
    assert_eq!(r["recovered"], false);
    assert_eq!(
        ns(&fresh.messages(12, T).await.unwrap()),
        (1..=12).collect::<Vec<_>>()
    );
    // A cursor from another log (a restored or reset database) is detected.
    let foreign = switchyard_cursorlog::Cursor::new("0123456789abcdef", vec![(1, 3)]).encode();
    let mut other_log = Client::connect(&s.gateway(0).ws_url(), &tok).await.unwrap();
    let r = other_log.subscribe("News", Some(&foreign)).await.unwrap();
    assert_eq!(
        (r["type"].as_str(), r["recovered"].as_bool()),
        (Some("subscribed"), Some(false)),
        "{r}"
    );
    assert_eq!(other_log.messages(12, T).await.unwrap().len(), 12);
    // A malformed cursor is not an error: lookback replay, recovered false.
    let mut bad = Client::connect(&s.gateway(0).ws_url(), &tok).await.unwrap();
    let r = bad
        .subscribe("News", Some("definitely-not-a-cursor"))
        .await
        .unwrap();
    assert_eq!(r["type"], "subscribed");
    assert_eq!(r["recovered"], false);
    assert_eq!(bad.messages(12, T).await.unwrap().len(), 12);
}

/// Receives until `n_total` distinct messages were seen in total, reconnecting
/// to `urls` in turn with the last cursor whenever the connection drops.
async fn receive_all_with_failover(
    mut c: Client,
    urls: &[String],
    tok: &str,
    n_total: u64,
) -> Vec<u64> {
    let mut got: Vec<u64> = Vec::new();
    let mut url_i = 0;
    while (got.len() as u64) < n_total {
        match c.next_frame(T).await {
            Ok(v) if v["type"] == "message" => got.push(v["payload"]["n"].as_u64().unwrap()),
            Ok(v) if v["type"] == "__close" || v["type"] == "reconnect" => {
                let cursor = c.cursors.get("News").cloned();
                url_i = (url_i + 1) % urls.len();
                c = reconnect(&urls[url_i], tok, cursor.as_deref()).await;
            }
            Ok(_) => {}
            Err(_) => {
                let cursor = c.cursors.get("News").cloned();
                url_i = (url_i + 1) % urls.len();
                c = reconnect(&urls[url_i], tok, cursor.as_deref()).await;
            }
        }
    }
    c.expect_silence(Duration::from_millis(1000)).await.unwrap();
    got
}

async fn reconnect(url: &str, tok: &str, cursor: Option<&str>) -> Client {
    for _ in 0..50 {
        if let Ok(mut c) = Client::connect(url, tok).await {
            let cursors = c.cursors.clone();
            let r = c.subscribe("News", cursor).await.unwrap();
            assert_eq!(r["type"], "subscribed");
            if cursor.is_some() {
                assert_eq!(r["recovered"], true, "{r}");
            }
            drop(cursors);
            if let Some(cur) = cursor {
                c.cursors.insert("News".into(), cur.to_owned());
            }
            return c;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("cannot reconnect to {url}");
}

/// Issue 2, case 3: a gateway killed with SIGKILL mid-stream; its clients
/// resume on the other node from their cursors, nothing lost or repeated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_sigkill_loses_nothing() {
    let mut s = default_stack().await;
    let tok = token("user-k", &["CHLT"], &[], 600);
    let urls = vec![s.gateway(0).ws_url(), s.gateway(1).ws_url()];
    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut c = Client::connect(&urls[0], &tok).await.unwrap();
        c.subscribe("News", None).await.unwrap();
        clients.push(c);
    }
    let total = 60u64;
    let readers: Vec<_> = clients
        .into_iter()
        .map(|c| {
            let urls = urls.clone();
            let tok = tok.clone();
            tokio::spawn(async move { receive_all_with_failover(c, &urls, &tok, total).await })
        })
        .collect();
    for n in 1..=total {
        s.produce(&[news(&format!("k{n}"), &["CHLT"], n)])
            .await
            .unwrap();
        if n == 20 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            s.gateways[0].proc.kill9();
        }
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    for r in readers {
        let got = tokio::time::timeout(Duration::from_secs(60), r)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, (1..=total).collect::<Vec<_>>());
    }
}

/// Issue 2, case 4: the bridge killed with SIGKILL mid-batch and restarted;
/// every event delivered exactly once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_sigkill_mid_batch_delivers_everything_once() {
    require_servers();
    // Small batches so the kill lands between and inside transactions.
    let mut s = Stack::start(StackOptions {
        env: vec![("SWITCHYARD_BATCH_MAX".into(), "50".into())],
        ..Default::default()
    })
    .await
    .unwrap();
    let tok = token("user-b", &["CHLT"], &[], 600);
    let mut c = Client::connect(&s.gateway(1).ws_url(), &tok).await.unwrap();
    c.subscribe("News", None).await.unwrap();
    let total = 3000u64;
    let events: Vec<Value> = (1..=total)
        .map(|n| news(&format!("b{n}"), &["CHLT"], n))
        .collect();
    s.produce(&events).await.unwrap();
    // Kill while the log is partly written.
    for _ in 0..3000 {
        if s.stored_events().await.unwrap() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    s.bridge.as_mut().unwrap().kill9();
    let stored_at_kill = s.stored_events().await.unwrap();
    assert!(
        stored_at_kill > 0 && stored_at_kill < total as i64,
        "killed mid-stream: {stored_at_kill}"
    );
    s.start_bridge().unwrap();
    let got = ns(&c
        .messages(total as usize, Duration::from_secs(90))
        .await
        .unwrap());
    assert_eq!(
        got,
        (1..=total).collect::<Vec<_>>(),
        "killed at {stored_at_kill} stored"
    );
    c.expect_silence(Duration::from_millis(1500)).await.unwrap();
    assert_eq!(s.stored_events().await.unwrap(), total as i64);
}

/// Issue 2, case 5: the same id produced twice is delivered once; poison
/// events go to the DLQ with a reason and the bridge goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_are_delivered_once_and_poison_goes_to_the_dlq() {
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::message::{Headers, Message};
    let s = default_stack().await;
    let mut c = Client::connect(
        &s.gateway(0).ws_url(),
        &token("user-d", &["CHLT"], &[], 600),
    )
    .await
    .unwrap();
    c.subscribe("News", None).await.unwrap();
    s.produce(&[news("dup", &["CHLT"], 1), news("dup", &["CHLT"], 1)])
        .await
        .unwrap();
    let poison: Vec<(&str, Vec<u8>)> = vec![
        ("News", b"{not json".to_vec()),
        ("News", br#"{"topic":"News","payload":{}}"#.to_vec()),
        ("News", br#"{"id":"x","topic":"NoSuchTopic"}"#.to_vec()),
        (
            "News",
            format!(
                r#"{{"id":"big","topic":"News","payload":"{}"}}"#,
                "x".repeat(300 * 1024)
            )
            .into_bytes(),
        ),
        ("News", vec![0xff, 0x00, 0x13, 0x37]),
    ];
    s.produce_raw(poison.iter().map(|(k, v)| (*k, v.as_slice())))
        .await
        .unwrap();
    s.produce(&[news("dup", &["CHLT"], 1), news("after", &["CHLT"], 2)])
        .await
        .unwrap();
    assert_eq!(ids(&c.messages(2, T).await.unwrap()), ["dup", "after"]);
    c.expect_silence(Duration::from_millis(1500)).await.unwrap();

    let consumer: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &s.broker.addr)
        .set("group.id", "dlq-reader")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[&s.dlq_topic]).unwrap();
    let mut reasons = Vec::new();
    while reasons.len() < 5 {
        let m = tokio::time::timeout(T, consumer.recv())
            .await
            .expect("DLQ record")
            .unwrap();
        let h = m.headers().expect("DLQ headers");
        let reason = h
            .iter()
            .find(|h| h.key == "switchyard-dlq-reason")
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .expect("reason header");
        assert!(h.iter().any(|h| h.key == "switchyard-dlq-detail"));
        reasons.push(reason);
    }
    reasons.sort();
    assert_eq!(
        reasons,
        [
            "decode_error",
            "decode_error",
            "missing_id",
            "oversized",
            "unknown_topic"
        ]
    );
}

/// Issue 2, case 6: Redis restarted while clients are connected: nobody
/// misses a message (gateways heal from PostgreSQL).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_loses_nothing() {
    require_servers();
    let dir = switchyard_testkit::scratch_dir("redis");
    let port = switchyard_testkit::free_port();
    let mut redis = switchyard_testkit::RedisServer::start(&dir, port).unwrap();
    let s = Stack::start(StackOptions {
        redis_url: Some(redis.url()),
        ..Default::default()
    })
    .await
    .unwrap();
    let tok = token("user-x", &["CHLT", "Sfc"], &[], 600);
    let mut a = Client::connect(&s.gateway(0).ws_url(), &tok).await.unwrap();
    let mut b = Client::connect(&s.gateway(1).ws_url(), &tok).await.unwrap();
    a.subscribe("News", None).await.unwrap();
    b.subscribe("News", None).await.unwrap();
    let total = 40u64;
    for n in 1..=total {
        let scope: &[&str] = if n % 2 == 0 {
            &["CHLT"]
        } else {
            &["CHLT", "Sfc"]
        };
        s.produce(&[news(&format!("x{n}"), scope, n)])
            .await
            .unwrap();
        if n == 10 {
            redis.proc.kill9();
        }
        if n == 25 {
            redis = switchyard_testkit::RedisServer::start(&dir, port).unwrap();
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    for cl in [&mut a, &mut b] {
        let got = ns(&cl
            .messages(total as usize, Duration::from_secs(60))
            .await
            .unwrap());
        assert_eq!(got, (1..=total).collect::<Vec<_>>());
        cl.expect_silence(Duration::from_millis(1500))
            .await
            .unwrap();
    }
    drop(redis);
}

/// Issue 2, case 7: bad input gets the contract's clear error and harms
/// nobody else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_clear_errors() {
    use switchyard_testkit::Connect;
    let s = default_stack().await;
    let url = s.gateway(0).ws_url();
    // A bystander keeps receiving throughout.
    let mut by = Client::connect(&url, &token("bystander", &["CHLT"], &[], 600))
        .await
        .unwrap();
    by.subscribe("News", None).await.unwrap();

    // Tokens: missing, expired, forged, alg none, garbage.
    let expired = token("u", &["CHLT"], &[], -120);
    let forged = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub":"u","exp": switchyard_testkit::now_ms() / 1000 + 600}),
        &jsonwebtoken::EncodingKey::from_secret(b"not-the-secret-at-all-0123456789"),
    )
    .unwrap();
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let none = format!(
        "{}.{}.",
        b64.encode(br#"{"alg":"none","typ":"JWT"}"#),
        b64.encode(format!(
            r#"{{"sub":"u","exp":{}}}"#,
            switchyard_testkit::now_ms() / 1000 + 600
        ))
    );
    for (what, url) in [
        ("missing", url.clone()),
        ("expired", format!("{url}?access_token={expired}")),
        ("forged", format!("{url}?access_token={forged}")),
        ("alg none", format!("{url}?access_token={none}")),
        ("garbage", format!("{url}?access_token=abc.def")),
    ] {
        match Client::try_connect(&url, None).await.unwrap() {
            Connect::Refused(code, body) => {
                assert_eq!(code, 401, "{what}");
                let v: Value = serde_json::from_str(&body).unwrap();
                assert_eq!(v["code"], "unauthorized", "{what}: {body}");
            }
            Connect::Open(_) => panic!("{what} token was accepted"),
        }
    }
    // The bearer header works too.
    let ok = token("u", &["CHLT"], &[], 600);
    assert!(matches!(
        Client::try_connect(&url, Some(&ok)).await.unwrap(),
        Connect::Open(_)
    ));

    let mut c = Client::connect(&url, &ok).await.unwrap();
    use tokio_tungstenite::tungstenite::Message;
    c.send_raw(Message::Text("not json".into())).await.unwrap();
    let e = c.next_frame(T).await.unwrap();
    assert_eq!(
        (e["type"].as_str(), e["code"].as_str()),
        (Some("error"), Some("bad_request")),
        "{e}"
    );
    let id = c.request(json!({"type": "frobnicate"})).await.unwrap();
    let e = c.reply(id, T).await.unwrap();
    assert_eq!(e["code"], "bad_request");
    let e = c.subscribe("NoSuchTopic", None).await.unwrap();
    assert_eq!(
        (e["type"].as_str(), e["code"].as_str()),
        (Some("error"), Some("bad_request")),
        "{e}"
    );
    let id = c.request(json!({"type": "subscribe"})).await.unwrap();
    assert_eq!(c.reply(id, T).await.unwrap()["code"], "bad_request");
    // Not entitled to any News channel.
    let mut nobody = Client::connect(&url, &token("nobody", &[], &[], 600))
        .await
        .unwrap();
    let e = nobody.subscribe("News", None).await.unwrap();
    assert_eq!(e["code"], "forbidden", "{e}");
    // Publishing where the topology forbids it.
    let id = c
        .request(json!({"type": "publish", "topic": "News", "payload": {}}))
        .await
        .unwrap();
    assert_eq!(c.reply(id, T).await.unwrap()["code"], "not_publishable");
    // The connection still works.
    let id = c.request(json!({"type": "ping"})).await.unwrap();
    assert_eq!(c.reply(id, T).await.unwrap()["type"], "pong");
    // An oversized frame: too_large, then close 1009.
    c.send_raw(Message::Text("x".repeat(200 * 1024).into()))
        .await
        .unwrap();
    let e = c.next_frame(T).await.unwrap();
    assert_eq!(e["code"], "too_large", "{e}");
    let close = c.next_frame(T).await.unwrap();
    assert_eq!(close["code"], 1009, "{close}");

    s.produce(&[news("still", &["CHLT"], 1)]).await.unwrap();
    assert_eq!(ids(&by.messages(1, T).await.unwrap()), ["still"]);
    let mut seen = HashSet::new();
    seen.insert("still");
}

/// The long-poll fallback honours cursors like the WebSocket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_follows_the_cursor() {
    let s = default_stack().await;
    let tok = token("poller", &["Sfc"], &[], 600);
    s.produce(&[news("p1", &["Sfc"], 1), news("p2", &["Sfc"], 2)])
        .await
        .unwrap();
    let admin = s.gateway(0).listen;
    let mut got = Vec::new();
    let mut cursor = String::new();
    for _ in 0..50 {
        let path =
            format!("/v1/poll?topic=News&timeout_ms=2000&access_token={tok}&cursor={cursor}");
        let (code, body) = switchyard_testkit::http_get(admin, &path).unwrap();
        assert_eq!(code, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        cursor = v["cursor"].as_str().unwrap().to_owned();
        for m in v["messages"].as_array().unwrap() {
            got.push(m["payload"]["n"].as_u64().unwrap());
        }
        if got.len() >= 2 {
            break;
        }
    }
    assert_eq!(got, [1, 2]);
    // Long-poll wakes on a live event.
    let path = format!("/v1/poll?topic=News&timeout_ms=10000&access_token={tok}&cursor={cursor}");
    let poll =
        tokio::task::spawn_blocking(move || switchyard_testkit::http_get(admin, &path).unwrap());
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.produce(&[news("p3", &["Sfc"], 3)]).await.unwrap();
    let (code, body) = poll.await.unwrap();
    assert_eq!(code, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["recovered"], true, "{body}");
    assert_eq!(v["messages"][0]["id"], "p3");
    let (code, _) = switchyard_testkit::http_get(admin, "/v1/poll?topic=News").unwrap();
    assert_eq!(code, 401);
}

/// SIGTERM drains: clients get `reconnect` and a 1001 close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_with_reconnect_frames() {
    let mut s = default_stack().await;
    let mut c = Client::connect(&s.gateway(0).ws_url(), &token("d", &["CHLT"], &[], 600))
        .await
        .unwrap();
    c.subscribe("News", None).await.unwrap();
    s.gateways[0].proc.term();
    let r = c.next_frame(T).await.unwrap();
    assert_eq!(r["type"], "reconnect", "{r}");
    assert!(r["after_ms"].as_u64().unwrap() < 2000);
    let close = c.next_frame(T).await.unwrap();
    assert_eq!(close["code"], 1001, "{close}");
    assert_eq!(
        s.gateways[0].proc.wait_exit(Duration::from_secs(15)),
        Some(0)
    );
}

type TestWs =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn next_pb(ws: &mut TestWs) -> switchyard_proto::v1::ServerFrame {
    use futures::StreamExt as _;
    use prost::Message as _;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        match tokio::time::timeout(T, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            Message::Binary(b) => return switchyard_proto::v1::ServerFrame::decode(b).unwrap(),
            Message::Text(t) => panic!("text frame on the proto subprotocol: {t}"),
            _ => continue,
        }
    }
}

/// The protobuf subprotocol carries the same conversation in binary frames.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protobuf_subprotocol_round_trip() {
    use futures::SinkExt as _;
    use prost::Message as _;
    use switchyard_proto::v1 as pb;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
    use tokio_tungstenite::tungstenite::Message;
    let s = default_stack().await;
    let tok = token("proto-user", &["CHLT"], &[], 600);
    let mut req = format!("{}?access_token={tok}", s.gateway(0).ws_url())
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "sec-websocket-protocol",
        "switchyard.v1.proto".parse().unwrap(),
    );
    let (mut ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(
        resp.headers()["sec-websocket-protocol"],
        "switchyard.v1.proto"
    );
    assert!(matches!(
        next_pb(&mut ws).await.kind,
        Some(pb::server_frame::Kind::Welcome(_))
    ));
    let sub = pb::ClientFrame {
        id: 7,
        kind: Some(pb::client_frame::Kind::Subscribe(pb::Subscribe {
            topic: "News".into(),
            cursor: None,
            presence: false,
        })),
    };
    ws.send(Message::Binary(sub.encode_to_vec().into()))
        .await
        .unwrap();
    let r = next_pb(&mut ws).await;
    assert_eq!(r.id, 7);
    assert!(matches!(r.kind, Some(pb::server_frame::Kind::Subscribed(ref x)) if x.topic == "News"));
    s.produce(&[news("pb1", &["CHLT"], 1)]).await.unwrap();
    match next_pb(&mut ws).await.kind {
        Some(pb::server_frame::Kind::Message(m)) => {
            assert_eq!(m.event_id, "pb1");
            assert_eq!(m.content_type, "application/json");
            assert_eq!(serde_json::from_slice::<Value>(&m.payload).unwrap()["n"], 1);
            assert!(!m.cursor.is_empty());
        }
        other => panic!("expected a message, got {other:?}"),
    }
    ws.send(Message::Binary(vec![0xff, 0xff, 0xff].into()))
        .await
        .unwrap();
    match next_pb(&mut ws).await.kind {
        Some(pb::server_frame::Kind::Error(e)) => assert_eq!(e.code, "bad_request"),
        other => panic!("expected an error, got {other:?}"),
    }
}

/// A token that expires unrefreshed closes the connection with 4001.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_closes_with_4001() {
    let s = default_stack().await;
    let mut c = Client::connect(&s.gateway(0).ws_url(), &token("short", &["CHLT"], &[], 2))
        .await
        .unwrap();
    c.subscribe("News", None).await.unwrap();
    let deadline = tokio::time::Instant::now() + T;
    loop {
        assert!(tokio::time::Instant::now() < deadline, "no close");
        let f = c.next_frame(T).await.unwrap();
        if f["type"] == "__close" {
            assert_eq!(f["code"], 4001, "{f}");
            break;
        }
    }
}
