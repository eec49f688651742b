//! Clients that stop reading, and what the node does about them: they hold
//! no catch-up permit while blocked, they are closed after the stall bound,
//! and long-polls are woken only by their own channels. Every test starts its
//! own stack (fresh database, topics, Redis prefix, ports).

#![allow(clippy::unwrap_used)]

use serde_json::{json, Value};
use std::time::{Duration, Instant};
use switchyard_testkit::attack::{self, Outcome};
use switchyard_testkit::{http_get, news, now_ms, token, Client, Stack, StackOptions};

const T: Duration = Duration::from_secs(20);

/// A news event for product `Sfc` with a payload of about `size` bytes.
fn big_news(id: &str, n: u64, size: usize) -> Value {
    json!({
        "id": id,
        "topic": "News",
        "scopes": [{"type": "Product Codes", "values": ["Sfc"]}],
        "payload": {"n": n, "pad": "x".repeat(size)},
        "created_at_ms": now_ms()
    })
}

async fn stack(env: &[(&str, &str)]) -> Stack {
    switchyard_testkit::require_servers();
    Stack::start(StackOptions {
        gateways: 1,
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    })
    .await
    .unwrap()
}

/// Produces `first` (read by a client to get a cursor), then a backlog of
/// `n` events of `size` bytes, and waits until the log holds them all.
/// Returns the cursor after `first`.
async fn backlog(s: &Stack, n: u64, size: usize) -> String {
    let mut warm = Client::connect(&s.gateway(0).ws_url(), &token("warm", &["Sfc"], &[], 600))
        .await
        .unwrap();
    warm.subscribe("News", None).await.unwrap();
    s.produce(&[news("first", &["Sfc"], 0)]).await.unwrap();
    let first = warm.messages(1, T).await.unwrap();
    let cursor = first[0]["cursor"].as_str().unwrap().to_owned();
    warm.close().await;
    for chunk in (1..=n).collect::<Vec<_>>().chunks(200) {
        let events: Vec<Value> = chunk
            .iter()
            .map(|i| big_news(&format!("b{i}"), *i, size))
            .collect();
        s.produce(&events).await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while s.stored_events().await.unwrap() < n as i64 + 1 {
        assert!(Instant::now() < deadline, "backlog not stored in time");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    cursor
}

fn metric(s: &Stack, name: &str) -> f64 {
    switchyard_testkit::metric_sum(s.gateway(0).admin, name, "")
}

/// 40 clients that subscribe with an old cursor over a large backlog and
/// then stop reading do not delay another client's catch-up: catch-up
/// permits cover only the reads of pages, not the wait for a client's queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_readers_do_not_delay_another_clients_catch_up() {
    let s = stack(&[
        ("SWITCHYARD_CATCHUP_CONCURRENCY", "4"),
        ("SWITCHYARD_REPLAY_PAGE", "50"),
        ("SWITCHYARD_OUTBOUND_QUEUE", "16"),
        // Longer than the test: the stalled clients stay connected.
        ("SWITCHYARD_CLIENT_STALL_MS", "600000"),
    ])
    .await;
    let n = 1500;
    let cursor = backlog(&s, n, 16 * 1024).await;
    let mut stalled = Vec::new();
    for i in 0..40 {
        let mut c = Client::connect(
            &s.gateway(0).ws_url(),
            &token(&format!("stalled{i}"), &["Sfc"], &[], 600),
        )
        .await
        .unwrap();
        let r = c.subscribe("News", Some(&cursor)).await.unwrap();
        assert_eq!(r["recovered"], true, "{r}");
        // Never read again.
        stalled.push(c);
    }
    // Let the stalled clients fill their socket buffers and queues.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let started = Instant::now();
    let mut c = Client::connect(&s.gateway(0).ws_url(), &token("reader", &["Sfc"], &[], 600))
        .await
        .unwrap();
    let r = c.subscribe("News", Some(&cursor)).await.unwrap();
    assert_eq!(r["recovered"], true, "{r}");
    let msgs = c
        .messages(n as usize, Duration::from_secs(60))
        .await
        .unwrap();
    let ns: Vec<u64> = msgs
        .iter()
        .map(|m| m["payload"]["n"].as_u64().unwrap())
        .collect();
    assert_eq!(ns, (1..=n).collect::<Vec<_>>(), "complete and in order");
    let took = started.elapsed();
    eprintln!("catch-up of {n} events beside 40 stalled readers took {took:?}");
    assert!(took < Duration::from_secs(45), "took {took:?}");
    drop(stalled);
}

/// A client that stops reading while its socket and queue are full is
/// closed within the stall bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_closed_within_the_bound() {
    let s = stack(&[
        ("SWITCHYARD_REPLAY_PAGE", "50"),
        ("SWITCHYARD_OUTBOUND_QUEUE", "16"),
        ("SWITCHYARD_CLIENT_STALL_MS", "2000"),
    ])
    .await;
    let n = 1500;
    let cursor = backlog(&s, n, 16 * 1024).await;
    let mut c = Client::connect(&s.gateway(0).ws_url(), &token("stuck", &["Sfc"], &[], 600))
        .await
        .unwrap();
    c.subscribe("News", Some(&cursor)).await.unwrap();
    // Stop reading; the server must give up on us within ~2 s of the queue
    // filling.
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(&s, "switchyard_gateway_stalled_client_closes_total") < 1.0 {
        assert!(
            Instant::now() < deadline,
            "the stalled client was not closed"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Reading now drains what was buffered, then the connection ends.
    let mut got = 0usize;
    loop {
        match c.next_frame(T).await {
            Ok(v) if v["type"] == "message" => got += 1,
            Ok(v) if v["type"] == "__close" => break,
            Ok(_) => {}
            Err(_) => break,
        }
    }
    assert!(
        got < n as usize,
        "the connection ended before the backlog ({got} of {n})"
    );
}

/// A long-poll waiting on one topic is not woken by another topic's events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_is_woken_only_by_its_own_channels() {
    let s = stack(&[]).await;
    let tok = token("poller", &["Sfc"], &[], 600);
    let addr = s.gateway(0).listen;
    // A first poll returns at once with the (empty) position to wait from.
    let (code, body) = http_get(
        addr,
        &format!("/v1/poll?topic=News&timeout_ms=0&access_token={tok}"),
    )
    .unwrap();
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let cursor = v["cursor"].as_str().unwrap().to_owned();
    let path = format!("/v1/poll?topic=News&timeout_ms=4000&access_token={tok}&cursor={cursor}");
    let poll = tokio::task::spawn_blocking(move || http_get(addr, &path).unwrap());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let others: Vec<Value> = (0..20)
        .map(|i| {
            json!({"id": format!("sv{i}"), "topic": "SiteVisits", "scopes": [],
                   "payload": {"n": i}, "created_at_ms": now_ms()})
        })
        .collect();
    s.produce(&others).await.unwrap();
    let (code, body) = poll.await.unwrap();
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["messages"].as_array().unwrap().len(), 0, "{body}");
    assert_eq!(
        metric(&s, "switchyard_gateway_poll_wakeups_total"),
        0.0,
        "SiteVisits events woke a poll on News"
    );
    // Its own topic does wake it.
    let path = format!("/v1/poll?topic=News&timeout_ms=10000&access_token={tok}&cursor={cursor}");
    let poll = tokio::task::spawn_blocking(move || http_get(addr, &path).unwrap());
    tokio::time::sleep(Duration::from_millis(500)).await;
    s.produce(&[news("mine", &["Sfc"], 1)]).await.unwrap();
    let (_, body) = poll.await.unwrap();
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["messages"][0]["id"], "mine", "{body}");
}

/// A message split into many fragments is bounded as a whole by the frame
/// limit: the node answers `too_large` and closes with 1009 instead of
/// collecting fragments without end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fragmented_messages_are_bounded_by_the_frame_limit() {
    let s = stack(&[("SWITCHYARD_MAX_FRAME_BYTES", "65536")]).await;
    // Each fragment is well under the limit; together they pass it.
    let outcome = attack::fragment_flood(
        &s.gateway(0).ws_url(),
        &token("frag", &["Sfc"], &[], 600),
        30_000,
        20,
        T,
    )
    .await
    .unwrap();
    assert_eq!(
        outcome,
        Outcome::Closed(1009, vec!["too_large".into()]),
        "no too_large error before close 1009"
    );
}

/// A client that never finishes its request headers is disconnected after
/// the header timeout (slowloris).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_are_cut_off() {
    let s = stack(&[("SWITCHYARD_HEADER_TIMEOUT_MS", "1000")]).await;
    // The server closes (possibly after a 408).
    match attack::slowloris(s.gateway(0).listen, Duration::from_secs(10))
        .await
        .unwrap()
    {
        Outcome::Dropped(after) => assert!(after < Duration::from_secs(5), "{after:?}"),
        other => panic!("the server kept a connection without headers open: {other:?}"),
    }
}

/// Past `SWITCHYARD_MAX_CONNECTIONS` a new connection waits (the node takes
/// it only when another one ends).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_node_cap_wait_for_a_free_slot() {
    let s = stack(&[("SWITCHYARD_MAX_CONNECTIONS", "2")]).await;
    let url = s.gateway(0).ws_url();
    let tok = token("capped", &["Sfc"], &[], 600);
    let a = Client::connect(&url, &tok).await.unwrap();
    let _b = Client::connect(&url, &tok).await.unwrap();
    let third = tokio::spawn({
        let (url, tok) = (url.clone(), tok.clone());
        async move { Client::connect(&url, &tok).await }
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !third.is_finished(),
        "a third connection was served past the cap"
    );
    a.close().await;
    let c = tokio::time::timeout(T, third).await.unwrap().unwrap();
    assert!(
        c.is_ok(),
        "the waiting connection was served once a slot freed"
    );
}

/// Cursors are signed by the fleet: a client that rewrites one (to read from
/// the start of retention, far beyond its lookback) gets `recovered: false`
/// and the lookback replay, not the positions it asked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_cursors_are_not_trusted() {
    let s = stack(&[]).await;
    let mut c = Client::connect(&s.gateway(0).ws_url(), &token("f", &["Sfc"], &[], 600))
        .await
        .unwrap();
    c.subscribe("News", None).await.unwrap();
    s.produce(&[news("f1", &["Sfc"], 1), news("f2", &["Sfc"], 2)])
        .await
        .unwrap();
    let msgs = c.messages(2, T).await.unwrap();
    let genuine = msgs[1]["cursor"].as_str().unwrap().to_owned();
    c.close().await;
    // The genuine cursor resumes.
    let mut c = Client::connect(&s.gateway(0).ws_url(), &token("f", &["Sfc"], &[], 600))
        .await
        .unwrap();
    let r = c.subscribe("News", Some(&genuine)).await.unwrap();
    assert_eq!(r["recovered"], true, "{r}");
    // The same positions moved back to 0, re-encoded without the fleet's key.
    let decoded = switchyard_cursorlog::Cursor::decode(&genuine).unwrap();
    let forged = switchyard_cursorlog::cursor::encode_parts(
        &decoded.epoch,
        decoded.positions.iter().map(|(ch, _)| (*ch, 0)),
    );
    let mut c = Client::connect(
        &s.gateway(1 % s.gateways.len()).ws_url(),
        &token("f", &["Sfc"], &[], 600),
    )
    .await
    .unwrap();
    let r = c.subscribe("News", Some(&forged)).await.unwrap();
    assert_eq!(r["recovered"], false, "a forged cursor was trusted: {r}");
}

/// With `SWITCHYARD_LIVE_KEY`, whoever can publish on Redis but lacks the key
/// can neither inject a message nor suppress a real one by claiming its
/// sequence number.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_live_messages_neither_reach_clients_nor_suppress_real_ones() {
    let key = "live-key-for-tests-0123456789abcdef";
    let s = stack(&[("SWITCHYARD_LIVE_KEY", key)]).await;
    let mut c = Client::connect(&s.gateway(0).ws_url(), &token("l", &["Sfc"], &[], 600))
        .await
        .unwrap();
    c.subscribe("News", None).await.unwrap();
    s.produce(&[news("real1", &["Sfc"], 1)]).await.unwrap();
    let first = c.messages(1, T).await.unwrap();
    let cursor =
        switchyard_cursorlog::Cursor::decode(first[0]["cursor"].as_str().unwrap()).unwrap();
    // The attacker knows the epoch and the next sequence of every channel,
    // and publishes without the key.
    let attacker =
        switchyard_livefeed::Publisher::connect(&s.redis_url, &s.prefix, &cursor.epoch, None)
            .await
            .unwrap();
    let forged = switchyard_cursorlog::LogEvent {
        live: Default::default(),
        event_id: "forged".into(),
        topic: "News".into(),
        tenant: String::new(),
        user_id: None,
        payload: bytes::Bytes::from_static(b"{\"n\":666}"),
        content_type: "application/json".into(),
        created_at_ms: now_ms(),
        entries: cursor
            .positions
            .iter()
            .map(|(ch, seq)| switchyard_cursorlog::Entry {
                channel: *ch,
                seq: seq + 1,
            })
            .collect(),
    };
    attacker.publish(&[forged]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.produce(&[news("real2", &["Sfc"], 2)]).await.unwrap();
    let next = c.messages(1, T).await.unwrap();
    assert_eq!(next[0]["id"], "real2", "{}", next[0]);
    c.expect_silence(Duration::from_millis(800)).await.unwrap();
    assert!(metric(&s, "switchyard_gateway_live_unauthenticated_total") >= 1.0);
}

/// Past `SWITCHYARD_MAX_POLLS` waiting long-polls, the next one is refused
/// at once (503 `rate_limited`) instead of queueing on PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_polls_past_the_node_cap_are_refused() {
    let s = stack(&[("SWITCHYARD_MAX_POLLS", "1")]).await;
    let tok = token("p", &["Sfc"], &[], 600);
    let addr = s.gateway(0).listen;
    let path = format!("/v1/poll?topic=News&timeout_ms=4000&access_token={tok}");
    let first = tokio::task::spawn_blocking({
        let path = path.clone();
        move || http_get(addr, &path).unwrap()
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (code, body) = http_get(addr, &path).unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("rate_limited"), "{body}");
    let (code, _) = first.await.unwrap();
    assert_eq!(code, 200);
    // The slot is free again.
    let (code, _) = http_get(
        addr,
        &format!("/v1/poll?topic=News&timeout_ms=0&access_token={tok}"),
    )
    .unwrap();
    assert_eq!(code, 200);
}

/// Pings are answered within `SWITCHYARD_PING_RATE`/`SWITCHYARD_PING_BURST`;
/// a client flooding pings is closed with 1008 instead of making the node
/// write a pong per ping.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ping_flood_is_closed_with_policy_violation() {
    use tokio_tungstenite::tungstenite::Message;
    let s = stack(&[
        ("SWITCHYARD_PING_RATE", "2"),
        ("SWITCHYARD_PING_BURST", "5"),
    ])
    .await;
    let mut c = Client::connect(&s.gateway(0).ws_url(), &token("pinger", &["Sfc"], &[], 600))
        .await
        .unwrap();
    // Within the burst: every ping is answered and the connection stays.
    for _ in 0..3 {
        c.send_raw(Message::Ping(b"hi".to_vec().into()))
            .await
            .unwrap();
    }
    let r = c.subscribe("News", None).await.unwrap();
    assert_eq!(r["type"], "subscribed", "{r}");
    assert_eq!(c.pongs, 3, "pings within the limit were not all answered");
    // A flood: closed with 1008, having written far fewer pongs than pings.
    let flood = 500;
    for _ in 0..flood {
        if c.send_raw(Message::Ping(b"flood".to_vec().into()))
            .await
            .is_err()
        {
            break;
        }
    }
    let close = loop {
        let v = c.next_frame(T).await.unwrap();
        if v["type"] == "__close" {
            break v;
        }
    };
    assert_eq!(close["code"], 1008, "{close}");
    assert!(c.pongs < 3 + 10, "{} pongs for {flood} pings", c.pongs);
    assert!(metric(&s, "switchyard_gateway_ping_flood_closes_total") >= 1.0);
}

/// A replay page is bounded in bytes, not only rows: with 100 KiB payloads
/// and a 250 KB budget, a long-poll answers a few messages at a time (the
/// first always), and polling on with the returned cursors gets every event
/// once and in order. A WebSocket catch-up over the same backlog completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_pages_are_bounded_in_bytes() {
    let s = stack(&[("SWITCHYARD_REPLAY_PAGE_BYTES", "250000")]).await;
    let n = 12;
    let cursor = backlog(&s, n, 100 * 1024).await;
    let tok = token("bytes", &["Sfc"], &[], 600);
    let addr = s.gateway(0).listen;
    let mut cursor_now = cursor.clone();
    let mut got: Vec<u64> = Vec::new();
    let mut polls = 0;
    while got.len() < n as usize {
        polls += 1;
        assert!(polls <= 2 * n, "no progress: {got:?}");
        let (code, body) = http_get(
            addr,
            &format!("/v1/poll?topic=News&timeout_ms=0&access_token={tok}&cursor={cursor_now}"),
        )
        .unwrap();
        assert_eq!(code, 200, "{body}");
        assert!(body.len() < 600_000, "a poll answered {} bytes", body.len());
        let v: Value = serde_json::from_str(&body).unwrap();
        let msgs = v["messages"].as_array().unwrap();
        assert!(!msgs.is_empty(), "an empty answer with a backlog waiting");
        assert!(
            msgs.len() <= 3,
            "{} messages of 100 KiB in one answer",
            msgs.len()
        );
        got.extend(msgs.iter().map(|m| m["payload"]["n"].as_u64().unwrap()));
        cursor_now = v["cursor"].as_str().unwrap().to_owned();
    }
    assert_eq!(got, (1..=n).collect::<Vec<_>>());
    assert!(polls >= 4, "{polls} polls");
    let mut c = Client::connect(&s.gateway(0).ws_url(), &tok).await.unwrap();
    let r = c.subscribe("News", Some(&cursor)).await.unwrap();
    assert_eq!(r["recovered"], true, "{r}");
    let msgs = c.messages(n as usize, T).await.unwrap();
    let ns: Vec<u64> = msgs
        .iter()
        .map(|m| m["payload"]["n"].as_u64().unwrap())
        .collect();
    assert_eq!(ns, (1..=n).collect::<Vec<_>>());
}

/// Past `SWITCHYARD_MAX_POLLS_PER_USER` waiting long-polls of one user, the
/// next one of that user is refused at once (429 `rate_limited`); another
/// user still polls, and the user polls again once one of theirs ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_polls_past_the_user_cap_are_refused() {
    let s = stack(&[("SWITCHYARD_MAX_POLLS_PER_USER", "2")]).await;
    let addr = s.gateway(0).listen;
    let tok = token("greedy", &["Sfc"], &[], 600);
    let path = format!("/v1/poll?topic=News&timeout_ms=4000&access_token={tok}");
    let waiting: Vec<_> = (0..2)
        .map(|_| {
            let path = path.clone();
            tokio::task::spawn_blocking(move || http_get(addr, &path).unwrap())
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let (code, body) = http_get(addr, &path).unwrap();
    assert_eq!(code, 429, "{body}");
    assert!(body.contains("rate_limited"), "{body}");
    let other = token("modest", &["Sfc"], &[], 600);
    let (code, body) = http_get(
        addr,
        &format!("/v1/poll?topic=News&timeout_ms=0&access_token={other}"),
    )
    .unwrap();
    assert_eq!(code, 200, "another user is not limited: {body}");
    for w in waiting {
        assert_eq!(w.await.unwrap().0, 200);
    }
    let (code, body) = http_get(
        addr,
        &format!("/v1/poll?topic=News&timeout_ms=0&access_token={tok}"),
    )
    .unwrap();
    assert_eq!(code, 200, "the user's slots are free again: {body}");
}

/// A flood of long-polls that all read a large backlog does not take every
/// PostgreSQL connection: polls read under their own share of the pool
/// (`SWITCHYARD_POLL_READ_CONCURRENCY`, below `SWITCHYARD_PG_POOL_SIZE`), so
/// a WebSocket client's catch-up over the same backlog completes quickly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poll_flood_does_not_stop_a_websocket_catch_up() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    let s = stack(&[
        ("SWITCHYARD_PG_POOL_SIZE", "4"),
        ("SWITCHYARD_POLL_READ_CONCURRENCY", "1"),
        ("SWITCHYARD_REPLAY_PAGE", "50"),
    ])
    .await;
    let n = 800;
    let cursor = backlog(&s, n, 8 * 1024).await;
    let addr = s.gateway(0).listen;
    let stop = Arc::new(AtomicBool::new(false));
    let polls = Arc::new(AtomicUsize::new(0));
    let flood: Vec<_> = (0..40)
        .map(|i| {
            let tok = token(&format!("flood{i}"), &["Sfc"], &[], 600);
            let path =
                format!("/v1/poll?topic=News&timeout_ms=0&access_token={tok}&cursor={cursor}");
            let (stop, polls) = (stop.clone(), polls.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if http_get(addr, &path).is_ok() {
                        polls.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    // Let the flood build up.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let started = Instant::now();
    let mut c = Client::connect(&s.gateway(0).ws_url(), &token("reader", &["Sfc"], &[], 600))
        .await
        .unwrap();
    let r = c.subscribe("News", Some(&cursor)).await.unwrap();
    assert_eq!(r["recovered"], true, "{r}");
    let msgs = c
        .messages(n as usize, Duration::from_secs(60))
        .await
        .unwrap();
    let took = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let ns: Vec<u64> = msgs
        .iter()
        .map(|m| m["payload"]["n"].as_u64().unwrap())
        .collect();
    assert_eq!(ns, (1..=n).collect::<Vec<_>>(), "complete and in order");
    for t in flood {
        t.join().unwrap();
    }
    let polls = polls.load(Ordering::Relaxed);
    eprintln!("catch-up of {n} events beside a flood of 40 pollers ({polls} polls) took {took:?}");
    assert!(polls > 40, "the flood did not run ({polls} polls)");
    assert!(took < Duration::from_secs(10), "catch-up took {took:?}");
}
