//! Smart-channel features end to end (issue 3): publishing by users through
//! the `IsPublishableByUser` gate, user-targeted events kept for offline
//! users, token refresh gaining and losing entitlements mid-connection, and
//! hot reload of the topology with connections open.

#![allow(clippy::unwrap_used)]

use serde_json::{json, Value};
use std::time::Duration;
use switchyard_testkit::{default_stack, ids, news, now_ms, token, Client};

const T: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_publish_only_where_the_topology_allows() {
    let s = default_stack().await;
    let mut alice = Client::connect(&s.gateway(0).ws_url(), &token("alice", &["CHLT"], &[], 600))
        .await
        .unwrap();
    let mut bob = Client::connect(&s.gateway(1).ws_url(), &token("bob", &["Sfc"], &[], 600))
        .await
        .unwrap();
    bob.subscribe("Chat", None).await.unwrap();
    let id = alice
        .request(json!({"type": "publish", "topic": "Chat", "payload": {"text": "hi"}}))
        .await
        .unwrap();
    assert_eq!(alice.reply(id, T).await.unwrap()["type"], "published");
    let m = bob.messages(1, T).await.unwrap();
    assert_eq!(m[0]["payload"]["text"], "hi");
    // Durable: a late subscriber with bob's old cursor position replays it.
    let cursor = bob.cursors["Chat"].clone();
    let id = alice
        .request(json!({"type": "publish", "topic": "Chat", "payload": {"text": "second"}}))
        .await
        .unwrap();
    alice.reply(id, T).await.unwrap();
    bob.messages(1, T).await.unwrap();
    let mut late = Client::connect(&s.gateway(0).ws_url(), &token("bob", &["Sfc"], &[], 600))
        .await
        .unwrap();
    let r = late.subscribe("Chat", Some(&cursor)).await.unwrap();
    assert_eq!(r["recovered"], true);
    assert_eq!(
        late.messages(1, T).await.unwrap()[0]["payload"]["text"],
        "second"
    );
    // News is not publishable by users; unknown topics and bad payloads are refused.
    let id = alice
        .request(json!({"type": "publish", "topic": "News", "payload": {}}))
        .await
        .unwrap();
    assert_eq!(alice.reply(id, T).await.unwrap()["code"], "not_publishable");
    let id = alice
        .request(json!({"type": "publish", "topic": "Nope", "payload": {}}))
        .await
        .unwrap();
    assert_eq!(alice.reply(id, T).await.unwrap()["code"], "bad_request");
    let big = "x".repeat(40 * 1024);
    let id = alice
        .request(json!({"type": "publish", "topic": "Chat", "payload": big}))
        .await
        .unwrap();
    assert_eq!(alice.reply(id, T).await.unwrap()["code"], "too_large");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_targeted_events_wait_for_their_user() {
    let s = default_stack().await;
    let mut other = Client::connect(
        &s.gateway(0).ws_url(),
        &token("someone-else", &[], &[], 600),
    )
    .await
    .unwrap();
    other.subscribe("Notifications", None).await.unwrap();
    let note = |id: &str, user: &str| json!({"id": id, "topic": "Notifications", "user_id": user, "payload": {"for": user}, "created_at_ms": now_ms()});
    // u-42 is offline when these are produced.
    s.produce(&[note("n1", "u-42"), note("n2", "u-7"), note("n3", "u-42")])
        .await
        .unwrap();
    let got = other.messages(0, T).await.unwrap();
    assert!(got.is_empty());
    other
        .expect_silence(Duration::from_millis(1500))
        .await
        .unwrap();
    // On connect, the lookback window brings u-42 exactly its own messages.
    let mut u42 = Client::connect(&s.gateway(1).ws_url(), &token("u-42", &[], &[], 600))
        .await
        .unwrap();
    u42.subscribe("Notifications", None).await.unwrap();
    assert_eq!(ids(&u42.messages(2, T).await.unwrap()), ["n1", "n3"]);
    u42.expect_silence(Duration::from_millis(1000))
        .await
        .unwrap();
    // Live, too.
    s.produce(&[note("n4", "u-42"), note("n5", "u-7")])
        .await
        .unwrap();
    assert_eq!(ids(&u42.messages(1, T).await.unwrap()), ["n4"]);
    u42.expect_silence(Duration::from_millis(1000))
        .await
        .unwrap();
    other
        .expect_silence(Duration::from_millis(100))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_refresh_gains_and_loses_entitlements() {
    let s = default_stack().await;
    let mut c = Client::connect(&s.gateway(0).ws_url(), &token("r", &["CHLT"], &[], 600))
        .await
        .unwrap();
    c.subscribe("News", None).await.unwrap();
    s.produce(&[news("a1", &["CHLT"], 1), news("a2", &["Sfc"], 2)])
        .await
        .unwrap();
    assert_eq!(ids(&c.messages(1, T).await.unwrap()), ["a1"]);
    c.expect_silence(Duration::from_millis(800)).await.unwrap();

    // Gain Sfc: its channel joins with catch-up (lookback), CHLT goes on.
    let id = c
        .request(json!({"type": "refresh", "token": token("r", &["CHLT", "Sfc"], &[], 600)}))
        .await
        .unwrap();
    assert_eq!(c.reply(id, T).await.unwrap()["type"], "refreshed");
    assert_eq!(ids(&c.messages(1, T).await.unwrap()), ["a2"]);
    s.produce(&[news("a3", &["Sfc"], 3), news("a4", &["CHLT"], 4)])
        .await
        .unwrap();
    assert_eq!(ids(&c.messages(2, T).await.unwrap()), ["a3", "a4"]);

    // Lose CHLT: it stops at once.
    let id = c
        .request(json!({"type": "refresh", "token": token("r", &["Sfc"], &[], 600)}))
        .await
        .unwrap();
    assert_eq!(c.reply(id, T).await.unwrap()["type"], "refreshed");
    s.produce(&[news("a5", &["CHLT"], 5), news("a6", &["Sfc"], 6)])
        .await
        .unwrap();
    assert_eq!(ids(&c.messages(1, T).await.unwrap()), ["a6"]);
    c.expect_silence(Duration::from_millis(800)).await.unwrap();

    // A token for another user, or an invalid one, is refused; the connection stays.
    let id = c
        .request(json!({"type": "refresh", "token": token("mallory", &["Sfc"], &[], 600)}))
        .await
        .unwrap();
    assert_eq!(c.reply(id, T).await.unwrap()["code"], "forbidden");
    let id = c
        .request(json!({"type": "refresh", "token": "junk"}))
        .await
        .unwrap();
    assert_eq!(c.reply(id, T).await.unwrap()["code"], "unauthorized");
    let id = c.request(json!({"type": "ping"})).await.unwrap();
    assert_eq!(c.reply(id, T).await.unwrap()["type"], "pong");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_reload_swaps_the_topology_without_dropping_connections() {
    let s = default_stack().await;
    let mut c = Client::connect(
        &s.gateway(0).ws_url(),
        &token("h", &["CHLT"], &["Beta"], 600),
    )
    .await
    .unwrap();
    c.subscribe("News", None).await.unwrap();
    // A new topic appears.
    let mut topo: Value = switchyard_testkit::seed_topology();
    topo["Hubs"][0]["Channels"].as_array_mut().unwrap().push(
        json!({"Name": "Beta-[ScopeValue]", "Topic": "BetaNews", "IsPublishableByUser": false,
                     "Filters": [{"Type": "Feature Names", "Values": ["Beta"]}]}),
    );
    std::fs::write(&s.topology_path, serde_json::to_vec_pretty(&topo).unwrap()).unwrap();
    let mut ok = false;
    for _ in 0..50 {
        let r = c.subscribe("BetaNews", None).await.unwrap();
        if r["type"] == "subscribed" {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(ok, "gateway picked up the new topology");
    // The bridge reloaded too: events of the new topic flow.
    let mut delivered = false;
    for i in 0..30 {
        s.produce(&[json!({"id": format!("beta{i}"), "topic": "BetaNews",
            "scopes": [{"type": "Feature Names", "values": ["Beta"]}], "payload": {}})])
            .await
            .unwrap();
        if c.messages(1, Duration::from_millis(700)).await.is_ok() {
            delivered = true;
            break;
        }
    }
    assert!(delivered, "bridge picked up the new topology");
    // Drain late BetaNews messages of the probing loop.
    while c.messages(1, Duration::from_millis(1500)).await.is_ok() {}
    // An invalid file is refused and the old topology stays.
    std::fs::write(&s.topology_path, b"{ this is not a topology").unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    s.produce(&[news("still-news", &["CHLT"], 1)])
        .await
        .unwrap();
    let m = c.messages(1, T).await.unwrap();
    assert_eq!(ids(&m), ["still-news"]);
    let r = c.subscribe("BetaNews", None).await.unwrap();
    assert_eq!(r["type"], "subscribed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ephemeral_channels_deliver_live_and_store_nothing() {
    let s = default_stack().await;
    let mut live = Client::connect(&s.gateway(0).ws_url(), &token("p1", &[], &[], 600))
        .await
        .unwrap();
    live.subscribe("Presence", None).await.unwrap();
    s.produce(&[json!({"id": "here-1", "topic": "Presence", "payload": {"online": 1}})])
        .await
        .unwrap();
    assert_eq!(ids(&live.messages(1, T).await.unwrap()), ["here-1"]);
    // Users may publish there too (IsPublishableByUser), still best-effort.
    let mut other = Client::connect(&s.gateway(1).ws_url(), &token("p2", &[], &[], 600))
        .await
        .unwrap();
    let id = other
        .request(json!({"type": "publish", "topic": "Presence", "payload": {"online": 2}}))
        .await
        .unwrap();
    assert_eq!(other.reply(id, T).await.unwrap()["type"], "published");
    assert_eq!(
        live.messages(1, T).await.unwrap()[0]["payload"]["online"],
        2
    );
    // Nothing was written to the cursor log, so nothing replays.
    assert_eq!(s.stored_events().await.unwrap(), 0);
    let mut late = Client::connect(&s.gateway(1).ws_url(), &token("p3", &[], &[], 600))
        .await
        .unwrap();
    late.subscribe("Presence", None).await.unwrap();
    late.expect_silence(Duration::from_millis(1000))
        .await
        .unwrap();
}

/// Finding 9: a token refresh while PostgreSQL is down (the new
/// entitlements need a channel id the node has not resolved) keeps the
/// subscription running as it was, and the node re-resolves once the
/// database is back: the gained channel joins and the old one never stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_during_a_database_outage_keeps_the_subscription_and_retries() {
    switchyard_testkit::require_servers();
    let dir = switchyard_testkit::scratch_dir("pg-refresh");
    let pg = switchyard_testkit::PgServer::start(&dir).unwrap();
    let s = switchyard_testkit::Stack::start(switchyard_testkit::StackOptions {
        gateways: 1,
        pg_base: Some(pg.base_url()),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut c = Client::connect(&s.gateway(0).ws_url(), &token("blip", &["CHLT"], &[], 600))
        .await
        .unwrap();
    c.subscribe("News", None).await.unwrap();
    s.produce(&[news("b1", &["CHLT"], 1)]).await.unwrap();
    assert_eq!(ids(&c.messages(1, T).await.unwrap()), ["b1"]);

    pg.stop();
    let id = c
        .request(json!({"type": "refresh", "token": token("blip", &["CHLT", "Sfc"], &[], 600)}))
        .await
        .unwrap();
    let reply = c.reply(id, T).await.unwrap();
    assert_eq!(reply["type"], "refreshed", "{reply}");
    // Nothing ends the subscription while the database is away.
    c.expect_silence(Duration::from_secs(3)).await.unwrap();

    pg.resume().unwrap();
    // The retried re-resolution adds Sfc (its lookback brings b2 once it is
    // stored); CHLT goes on.
    s.produce(&[news("b2", &["Sfc"], 2)]).await.unwrap();
    let got = c.messages(1, Duration::from_secs(60)).await.unwrap();
    assert_eq!(ids(&got), ["b2"], "the gained channel did not join");
    s.produce(&[news("b3", &["CHLT"], 3), news("b4", &["Sfc"], 4)])
        .await
        .unwrap();
    assert_eq!(ids(&c.messages(2, T).await.unwrap()), ["b3", "b4"]);
    c.expect_silence(Duration::from_millis(800)).await.unwrap();
}
