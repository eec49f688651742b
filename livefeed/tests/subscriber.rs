//! The live feed against the machine's Redis: what a subscriber's sink sees.

#![allow(clippy::unwrap_used)]

use bytes::Bytes;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use switchyard_cursorlog::{Entry, LogEvent};
use switchyard_livefeed::{live_pattern, subscribe, LiveSink, Publisher, SubscriberConfig};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Call {
    Connected(bool),
    Resync,
    Event(String),
}

struct Recorder {
    calls: Arc<Mutex<Vec<Call>>>,
    publisher: Publisher,
    seen: Arc<tokio::sync::Notify>,
}

impl LiveSink for Recorder {
    fn connected(&self, up: bool) {
        self.calls.lock().unwrap().push(Call::Connected(up));
    }

    async fn resync(&self) {
        self.calls.lock().unwrap().push(Call::Resync);
        // Published during the resync: it arrives only if the subscription
        // was already active when the resync began.
        self.publisher.publish(&[event("during-resync")]).await;
    }

    async fn event(&self, event: LogEvent) {
        self.calls.lock().unwrap().push(Call::Event(event.event_id));
        self.seen.notify_one();
    }
}

fn event(id: &str) -> LogEvent {
    LogEvent {
        live: Default::default(),
        event_id: id.into(),
        topic: "News".into(),
        tenant: String::new(),
        user_id: None,
        payload: Bytes::from_static(b"{}"),
        content_type: "application/json".into(),
        created_at_ms: 1,
        entries: vec![Entry { channel: 1, seq: 1 }],
    }
}

#[tokio::test]
async fn resync_follows_an_active_subscription_and_other_epochs_are_dropped() {
    let url = switchyard_testkit::redis_base();
    let prefix = format!("livefeed-test-{}", uuid::Uuid::new_v4().simple());
    let publisher = Publisher::connect(&url, &prefix, "ep", None).await.unwrap();
    let foreign = Publisher::connect(&url, &prefix, "other", None)
        .await
        .unwrap();
    let calls = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::new(tokio::sync::Notify::new());
    let cancel = CancellationToken::new();
    let feed = tokio::spawn(subscribe(
        SubscriberConfig {
            redis_url: url,
            pattern: live_pattern(&prefix),
            epoch: "ep".into(),
            key: None,
        },
        Recorder {
            calls: calls.clone(),
            publisher: publisher.clone(),
            seen: seen.clone(),
        },
        cancel.clone(),
    ));

    let received = |id: &str| calls.lock().unwrap().contains(&Call::Event(id.into()));
    tokio::time::timeout(Duration::from_secs(10), async {
        while !received("during-resync") {
            seen.notified().await;
        }
    })
    .await
    .expect("the event published during the resync arrives");
    foreign.publish(&[event("other-epoch")]).await;
    publisher.publish(&[event("after")]).await;
    tokio::time::timeout(Duration::from_secs(10), async {
        while !received("after") {
            seen.notified().await;
        }
    })
    .await
    .expect("a live event arrives");

    cancel.cancel();
    feed.await.unwrap();
    assert_eq!(
        *calls.lock().unwrap(),
        vec![
            Call::Connected(true),
            Call::Resync,
            Call::Event("during-resync".into()),
            Call::Event("after".into()),
        ]
    );
}

/// `rediss://` URLs are taken (TLS to Redis), and one pointing at a Redis
/// without TLS fails with an error naming the setting instead of hanging or
/// falling back to plain text.
#[tokio::test]
async fn a_rediss_url_against_a_server_without_tls_fails_clearly() {
    let plain = switchyard_testkit::redis_base();
    let tls = plain.replacen("redis://", "rediss://", 1);
    assert!(tls.starts_with("rediss://"), "{tls}");
    let r = tokio::time::timeout(
        Duration::from_secs(15),
        Publisher::connect(&tls, "rediss-test", "ep", None),
    )
    .await
    .expect("connecting with TLS to a plain Redis hung");
    let e = r.expect_err("a TLS connection to a plain Redis succeeded");
    let text = e.to_string();
    assert!(text.contains("SWITCHYARD_REDIS_URL"), "{text}");
    eprintln!("rediss:// against plain Redis: {text}");
    // The same server over plain text works.
    Publisher::connect(&plain, "rediss-test", "ep", None)
        .await
        .unwrap();
}

/// A Redis that speaks only TLS, reached with `rediss://`: events published
/// over TLS reach a subscriber over TLS, the server's certificate checked
/// against the CA certificates (here a test CA, given the way the system's
/// are: `SSL_CERT_FILE`).
#[tokio::test]
async fn events_flow_over_tls_to_redis() {
    let dir = switchyard_testkit::scratch_dir("redis-tls");
    let (ca, crt, key) = switchyard_testkit::test_certificates(&dir, "DNS:localhost,IP:127.0.0.1");
    // The other tests of this binary use plain Redis: the variable does not
    // concern them.
    std::env::set_var("SSL_CERT_FILE", &ca);
    let port = switchyard_testkit::free_port();
    let _redis = switchyard_testkit::RedisServer::start_tls(&dir, port, &crt, &key).unwrap();
    let url = format!("rediss://127.0.0.1:{port}");
    // Plain text to the TLS port is refused.
    let plain = tokio::time::timeout(
        Duration::from_secs(15),
        Publisher::connect(&format!("redis://127.0.0.1:{port}"), "tls", "ep", None),
    )
    .await;
    assert!(
        !matches!(plain, Ok(Ok(_))),
        "plain text reached a TLS-only Redis"
    );

    let prefix = format!("livefeed-tls-{}", uuid::Uuid::new_v4().simple());
    let publisher = Publisher::connect(&url, &prefix, "ep", None).await.unwrap();
    let calls = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::new(tokio::sync::Notify::new());
    let sink = Recorder {
        calls: calls.clone(),
        publisher: publisher.clone(),
        seen: seen.clone(),
    };
    let cancel = CancellationToken::new();
    let task = tokio::spawn(subscribe(
        SubscriberConfig {
            redis_url: url.clone(),
            pattern: live_pattern(&prefix),
            epoch: "ep".into(),
            key: None,
        },
        sink,
        cancel.clone(),
    ));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        publisher.publish(&[event("over-tls")]).await;
        let got = calls
            .lock()
            .unwrap()
            .iter()
            .any(|c| *c == Call::Event("over-tls".into()));
        if got {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            calls.lock().unwrap()
        );
        let _ = tokio::time::timeout(Duration::from_millis(300), seen.notified()).await;
    }
    cancel.cancel();
    let _ = task.await;
}
