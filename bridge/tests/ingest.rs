//! The bridge against real servers: offsets are committed only for durable
//! work, a PostgreSQL outage pauses consumption without losing anything, and
//! concurrent group appends keep every channel in Kafka order.

#![allow(clippy::unwrap_used)]

use serde_json::Value;
use std::time::{Duration, Instant};
mod common;

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

/// Issue 12: a batch spanning many channels is appended in concurrent
/// groups (SWITCHYARD_APPEND_WRITERS); every channel's sequence is still
/// dense and in Kafka order, including events that span two channels (which
/// join their groups), and the groups metric shows batches were split.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_group_appends_keep_every_channel_in_kafka_order() {
    require_servers();
    let s = Stack::start(StackOptions {
        gateways: 0,
        env: vec![
            ("SWITCHYARD_APPEND_WRITERS".into(), "4".into()),
            ("SWITCHYARD_BATCH_MAX".into(), "300".into()),
        ],
        ..Default::default()
    })
    .await
    .unwrap();
    // Events spanning two products pair P0-P1, P2-P3, ...: four groups of
    // channels that can be appended concurrently.
    let products = ["P0", "P1", "P2", "P3", "P4", "P5", "P6", "P7"];
    let total = 3000u64;
    let events: Vec<Value> = (1..=total)
        .map(|n| {
            let p = products[(n % 8) as usize];
            if n % 13 == 0 {
                news(&format!("g{n}"), &[p, products[((n % 8) ^ 1) as usize]], n)
            } else {
                news(&format!("g{n}"), &[p], n)
            }
        })
        .collect();
    // Keyed by topic: one partition, so Kafka order is the order of n.
    s.produce(&events).await.unwrap();
    common::stored(&s, total as i64, Duration::from_secs(60)).await;

    let c = s.db.client().await.unwrap();
    let rows = c
        .query(
            "SELECT ch.key, en.seq, (convert_from(ev.payload, 'UTF8')::jsonb->>'n')::bigint
             FROM entries en
             JOIN channels ch ON ch.id = en.channel_id
             JOIN events ev ON ev.pk = en.event_pk
             ORDER BY ch.key, en.seq",
            &[],
        )
        .await
        .unwrap();
    let mut per_channel: std::collections::BTreeMap<String, Vec<(i64, i64)>> = Default::default();
    for r in &rows {
        per_channel
            .entry(r.get(0))
            .or_default()
            .push((r.get(1), r.get(2)));
    }
    assert_eq!(
        per_channel.len(),
        products.len(),
        "{:?}",
        per_channel.keys()
    );
    for (key, list) in &per_channel {
        let seqs: Vec<i64> = list.iter().map(|x| x.0).collect();
        assert_eq!(
            seqs,
            (1..=list.len() as i64).collect::<Vec<_>>(),
            "{key}: dense"
        );
        assert!(
            list.windows(2).all(|w| w[0].1 < w[1].1),
            "{key}: sequence order is not Kafka order"
        );
    }
    let expected_entries = total + total / 13;
    assert_eq!(rows.len() as u64, expected_entries);
    let sum = common::metric(s.bridge_admin, "switchyard_bridge_append_groups_size_sum").unwrap();
    let count =
        common::metric(s.bridge_admin, "switchyard_bridge_append_groups_size_count").unwrap();
    assert!(
        count > 0.0 && sum > count,
        "batches were not split into concurrent groups: {sum} groups over {count} batches"
    );
}
