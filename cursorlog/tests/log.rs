//! The cursor log against a real PostgreSQL: dense per-channel sequences
//! under concurrent writers, idempotency, replay order, retention, and
//! migrations racing at start-up.

#![allow(clippy::unwrap_used)]

use bytes::Bytes;
use std::collections::{BTreeMap, HashSet};
use switchyard_cursorlog::{CursorLog, NewEvent, PageLimit, PoolOptions};
use switchyard_testkit::Database;

fn event(id: &str, channels: Vec<i64>, expires_in_secs: i64) -> NewEvent {
    NewEvent {
        event_id: id.to_owned(),
        topic: "News".into(),
        tenant: String::new(),
        user_id: None,
        payload: Bytes::from_static(b"{}"),
        content_type: "application/json".into(),
        created_at_ms: 0,
        expires_at: chrono::Utc::now() + chrono::Duration::seconds(expires_in_secs),
        channels,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_keep_sequences_dense_and_ids_unique() {
    let db = Database::create().await.unwrap();
    // Several processes starting at once all migrate safely.
    let logs = futures::future::join_all(
        (0..4).map(|_| CursorLog::connect(&db.url, PoolOptions::default())),
    )
    .await
    .into_iter()
    .collect::<Result<Vec<_>, _>>()
    .unwrap();
    assert!(logs.windows(2).all(|w| w[0].epoch() == w[1].epoch()));
    let keys: Vec<String> = (0..3).map(|i| format!("Content/News-{i}")).collect();
    let ids = logs[0].channel_ids(&keys).await.unwrap();
    assert_eq!(
        ids,
        logs[1].channel_ids(&keys).await.unwrap(),
        "ids are stable"
    );

    let writers = logs.iter().enumerate().map(|(w, log)| {
        let ids = ids.clone();
        async move {
            for b in 0..25 {
                let batch: Vec<NewEvent> = (0..8)
                    .map(|i| {
                        // Overlapping channel sets, and ids shared between writers.
                        let chans = match (w + i) % 3 {
                            0 => vec![ids[0], ids[1]],
                            1 => vec![ids[1], ids[2]],
                            _ => vec![ids[0], ids[2]],
                        };
                        event(&format!("ev-{b}-{i}-{}", w % 2), chans, 3600)
                    })
                    .collect();
                loop {
                    match log.append_batch(&batch).await {
                        Ok(_) => break,
                        Err(e) if e.is_transient() => continue,
                        Err(e) => panic!("{e}"),
                    }
                }
            }
        }
    });
    futures::future::join_all(writers).await;

    let client = db.client().await.unwrap();
    let n_events: i64 = client
        .query_one("SELECT count(*) FROM events", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n_events, 2 * 25 * 8, "each id stored once");
    for &ch in &ids {
        let seqs: Vec<i64> = client
            .query(
                "SELECT seq FROM entries WHERE channel_id = $1 ORDER BY seq",
                &[&ch],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(
            seqs,
            (1..=seqs.len() as i64).collect::<Vec<_>>(),
            "dense on channel {ch}"
        );
        let head = logs[0].heads(&[ch]).await.unwrap()[0].head;
        assert_eq!(head, seqs.len() as i64);
    }
    // Every event's own (channel, seq) list matches the entries table.
    let mismatched: i64 = client
        .query_one(
            "SELECT count(*) FROM events e, unnest(e.channel_ids, e.seqs) u(ch, s)
             WHERE NOT EXISTS (SELECT 1 FROM entries x WHERE x.channel_id = u.ch AND x.seq = u.s AND x.event_pk = e.pk)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(mismatched, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_reads_follow_channel_order_and_dedupe_input() {
    let db = Database::create().await.unwrap();
    let log = CursorLog::connect(&db.url, PoolOptions::default())
        .await
        .unwrap();
    let ids = log
        .channel_ids(&["H/A".to_owned(), "H/B".to_owned()])
        .await
        .unwrap();
    let (a, b) = (ids[0], ids[1]);
    let out = log
        .append_batch(&[
            event("1", vec![a], 3600),
            event("2", vec![a, b], 3600),
            event("2", vec![a, b], 3600),
            event("3", vec![b], 3600),
        ])
        .await
        .unwrap();
    assert_eq!(out.duplicates, vec!["2".to_owned()]);
    assert_eq!(out.appended.len(), 3);
    let again = log
        .append_batch(&[event("3", vec![b], 3600)])
        .await
        .unwrap();
    assert!(again.appended.is_empty() && again.duplicates == ["3"]);

    let page = log
        .read_after(&[(a, 0), (b, 0)], None, PageLimit::rows(100))
        .await
        .unwrap();
    let rows: Vec<(i64, i64, String)> = page
        .rows
        .iter()
        .map(|(c, s, e)| (*c, *s, e.event_id.clone()))
        .collect();
    // Per channel in sequence order; events in append order across channels.
    let mut per: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    for (c, s, _) in &rows {
        per.entry(*c).or_default().push(*s);
    }
    assert_eq!(per[&a], [1, 2]);
    assert_eq!(per[&b], [1, 2]);
    let order: Vec<&str> = rows.iter().map(|r| r.2.as_str()).collect();
    assert_eq!(order, ["1", "2", "2", "3"]);
    let two = &page.rows.iter().find(|r| r.2.event_id == "2").unwrap().2;
    assert_eq!(two.seq_in(a), Some(2));
    assert_eq!(two.seq_in(b), Some(1));
    // Paging.
    let p1 = log
        .read_after(&[(a, 0)], None, PageLimit::rows(1))
        .await
        .unwrap();
    assert!(p1.more);
    let p2 = log
        .read_after(&[(a, 1)], Some(&[1]), PageLimit::rows(10))
        .await
        .unwrap();
    assert!(p2.rows.is_empty(), "upto bounds the read");
}

/// A page stops at its byte budget (in append order, each channel keeping
/// a prefix of its entries), always returns at least one row however large,
/// and says more is waiting; paging on from the new positions reads
/// everything exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_is_bounded_in_bytes() {
    let db = Database::create().await.unwrap();
    let log = CursorLog::connect(&db.url, PoolOptions::default())
        .await
        .unwrap();
    let ids = log
        .channel_ids(&["B/1".to_owned(), "B/2".to_owned()])
        .await
        .unwrap();
    let (a, b) = (ids[0], ids[1]);
    // 20 events of 100 KiB, alternating between a, b and both.
    let big = |i: usize| {
        let chans = match i % 3 {
            0 => vec![a],
            1 => vec![b],
            _ => vec![a, b],
        };
        NewEvent {
            payload: Bytes::from(vec![b'x'; 100 * 1024]),
            ..event(&format!("big{i}"), chans, 3600)
        }
    };
    let events: Vec<NewEvent> = (0..20).map(big).collect();
    log.append_batch(&events).await.unwrap();
    let limit = PageLimit {
        rows: 1000,
        bytes: 300 * 1024,
    };
    let mut pos = vec![(a, 0i64), (b, 0i64)];
    let mut seen: Vec<String> = Vec::new();
    let mut pages = 0;
    loop {
        let page = log.read_after(&pos, None, limit).await.unwrap();
        if page.rows.is_empty() {
            break;
        }
        pages += 1;
        let mut distinct: Vec<&str> = page.rows.iter().map(|r| r.2.event_id.as_str()).collect();
        distinct.dedup();
        // 300 KiB of budget: at most 3 payloads started before the cut, and
        // the row that crosses it (an event in both channels counts twice).
        let bytes: usize = page.rows.iter().map(|r| r.2.payload.len()).sum();
        assert!(bytes <= 400 * 1024, "page of {bytes} bytes");
        if pages == 1 {
            assert!(page.more, "a cut page says more is waiting");
        }
        for (ch, seq, ev) in &page.rows {
            let p = pos.iter_mut().find(|p| p.0 == *ch).unwrap();
            assert_eq!(*seq, p.1 + 1, "each channel keeps a prefix");
            p.1 = *seq;
            if seen.last().map(String::as_str) != Some(ev.event_id.as_str()) {
                seen.push(ev.event_id.clone());
            }
        }
        assert!(pages < 40);
    }
    assert!(pages >= 6, "{pages} pages");
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 20, "{seen:?}");
    // One row larger than the whole budget still comes, alone.
    let tiny = PageLimit {
        rows: 1000,
        bytes: 1,
    };
    let page = log.read_after(&[(a, 0)], None, tiny).await.unwrap();
    assert_eq!(page.rows.len(), 1);
    assert!(page.more);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_removes_events_with_their_entries() {
    let db = Database::create().await.unwrap();
    let log = CursorLog::connect(&db.url, PoolOptions::default())
        .await
        .unwrap();
    let ch = log.channel_ids(&["H/R".to_owned()]).await.unwrap()[0];
    log.append_batch(&[
        event("old1", vec![ch], -10),
        event("old2", vec![ch], -5),
        event("new", vec![ch], 3600),
    ])
    .await
    .unwrap();
    assert_eq!(log.sweep_expired(100).await.unwrap(), 2);
    let h = log.heads(&[ch]).await.unwrap()[0];
    assert_eq!((h.head, h.floor), (3, Some(3)));
    let page = log
        .read_after(&[(ch, 0)], None, PageLimit::rows(100))
        .await
        .unwrap();
    let ids: HashSet<_> = page.rows.iter().map(|r| r.2.event_id.clone()).collect();
    assert_eq!(ids, HashSet::from(["new".to_owned()]));
}

/// Append throughput of the log alone (no Kafka, no Redis). Not a pass/fail
/// test; run it for figures:
/// `cargo test --release -p switchyard-cursorlog --test log -- --ignored --nocapture append_throughput`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn append_throughput() {
    let db = Database::create().await.unwrap();
    let log = CursorLog::connect(&db.url, PoolOptions::default())
        .await
        .unwrap();
    let keys: Vec<String> = (0..20).map(|i| format!("H/News-P{i}")).collect();
    let ids = log.channel_ids(&keys).await.unwrap();
    for batch in [500usize, 2000, 5000] {
        let total = 50_000;
        let started = std::time::Instant::now();
        append_all(&log, &format!("t{batch}"), total, batch, |k| {
            vec![ids[k % 20], ids[(k + 7) % 20]]
        })
        .await;
        let secs = started.elapsed().as_secs_f64();
        println!(
            "batch {batch}: {:.0} events/s ({:.1} ms per batch)",
            total as f64 / secs,
            secs * 1000.0 / (total / batch) as f64
        );
    }
    // Concurrent writers on disjoint channels (what one writer per Kafka
    // partition would do), batches of 2000, one channel per event.
    for writers in [1usize, 2, 3] {
        let per_writer = 60_000 / writers;
        let started = std::time::Instant::now();
        let tasks: Vec<_> = (0..writers)
            .map(|w| {
                let log = log.clone();
                let mine: Vec<i64> = ids.iter().copied().skip(w).step_by(writers).collect();
                tokio::spawn(async move {
                    let tag = format!("w{writers}-{w}");
                    append_all(&log, &tag, per_writer, 2000, |k| vec![mine[k % mine.len()]]).await;
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let secs = started.elapsed().as_secs_f64();
        println!(
            "{writers} concurrent writer(s), one channel per event: {:.0} events/s",
            (per_writer * writers) as f64 / secs
        );
    }
}

/// Appends `total` events named `<tag>-<k>` in batches of `batch`, event `k`
/// in the channels `channels(k)`.
async fn append_all(
    log: &CursorLog,
    tag: &str,
    total: usize,
    batch: usize,
    channels: impl Fn(usize) -> Vec<i64>,
) {
    let mut n = 0;
    while n < total {
        let events: Vec<NewEvent> = (n..n + batch)
            .map(|k| event(&format!("{tag}-{k}"), channels(k), 3600))
            .collect();
        log.append_batch(&events).await.unwrap();
        n += batch;
    }
}
