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
