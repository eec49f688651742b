//! The bridge against real servers: offsets are committed only for durable
//! work, and a PostgreSQL outage pauses consumption without losing anything.

#![allow(clippy::unwrap_used)]

use serde_json::Value;
use std::time::{Duration, Instant};
use switchyard_testkit::{
    http_get, news, ns, require_servers, token, Client, PgServer, Stack, StackOptions,
};

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_are_committed_after_the_log_commit() {
    require_servers();
    let s = Stack::start(StackOptions {
        gateways: 0,
        ..Default::default()
    })
    .await
    .unwrap();
    let events: Vec<Value> = (1..=25)
        .map(|n| news(&format!("o{n}"), &["CHLT"], n))
        .collect();
    s.produce(&events).await.unwrap();
    // Poison and unrouted records are covered by the offsets too.
    s.produce_raw([("News", b"garbage".as_slice())].into_iter())
        .await
        .unwrap();
    s.produce(&[news("unrouted", &[], 99)]).await.unwrap();
    let deadline = Instant::now() + T;
    loop {
        let committed = s.committed_offsets().unwrap();
        if committed == 27 {
            break;
        }
        assert!(Instant::now() < deadline, "committed {committed} of 27");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(s.stored_events().await.unwrap(), 25);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_outage_pauses_ingest_and_loses_nothing() {
    require_servers();
    let dir = switchyard_testkit::scratch_dir("pg");
    let pg = PgServer::start(&dir).unwrap();
    let s = Stack::start(StackOptions {
        gateways: 1,
        pg_base: Some(pg.base_url()),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut c = Client::connect(&s.gateway(0).ws_url(), &token("u", &["CHLT"], &[], 600))
        .await
        .unwrap();
    c.subscribe("News", None).await.unwrap();
    s.produce(
        &(1..=5)
            .map(|n| news(&format!("p{n}"), &["CHLT"], n))
            .collect::<Vec<_>>(),
    )
    .await
    .unwrap();
    assert_eq!(ns(&c.messages(5, T).await.unwrap()), [1, 2, 3, 4, 5]);

    pg.stop();
    s.produce(
        &(6..=30)
            .map(|n| news(&format!("p{n}"), &["CHLT"], n))
            .collect::<Vec<_>>(),
    )
    .await
    .unwrap();
    let admin = s.bridge_admin;
    eventually("the bridge to report not ready", T, || {
        matches!(http_get(admin, "/readyz"), Ok((503, _)))
    })
    .await;
    eventually("the paused gauge", T, || {
        http_get(admin, "/metrics")
            .map(|(_, body)| body.contains("switchyard_bridge_consumer_paused 1"))
            .unwrap_or(false)
    })
    .await;
    let committed_during_outage = s.committed_offsets().unwrap();
    assert!(
        committed_during_outage <= 5,
        "nothing past the outage is committed: {committed_during_outage}"
    );

    pg.resume().unwrap();
    assert_eq!(
        ns(&c.messages(25, Duration::from_secs(60)).await.unwrap()),
        (6..=30).collect::<Vec<_>>()
    );
    c.expect_silence(Duration::from_millis(1000)).await.unwrap();
    eventually("the bridge to be ready again", T, || {
        matches!(http_get(admin, "/readyz"), Ok((200, _)))
    })
    .await;
}
