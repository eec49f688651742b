//! Routing an event by its resolved channels: which channels it is appended
//! to in the cursor log (and until when it is kept), which ones it reaches
//! live only, and what is published when nothing of it is durable. The
//! bridge (Kafka events) and the gateways (client publishes) both route
//! through [`route`], so the two paths cannot disagree.
//!
//! Invariant: an ephemeral channel never reaches the log — its entries carry
//! `seq == 0` and are added to the live event only — and the live event of a
//! logged event carries every entry the append assigned plus every ephemeral
//! entry, never a subset (readers de-duplicate with them, see
//! [`crate::event`]).

use crate::config::StoreConfig;
use crate::event::{expires_at, Entry, LogEvent, NewEvent};
use bytes::Bytes;
use switchyard_channels::ResolvedChannel;

/// An event before routing: what it says, not where it goes.
#[derive(Debug, Clone)]
pub struct Draft {
    pub event_id: String,
    pub topic: String,
    pub tenant: String,
    pub user_id: Option<String>,
    pub payload: Bytes,
    pub content_type: String,
    pub created_at_ms: i64,
}

/// Where a routed event goes.
#[derive(Debug, Clone)]
pub enum Route {
    /// At least one channel is logged: append `event`, then, once the append
    /// is committed, add `ephemeral` to the entries of the event it returned
    /// and publish that.
    Logged {
        event: NewEvent,
        ephemeral: Vec<Entry>,
    },
    /// Every channel is ephemeral: nothing to append; publish this event
    /// (its entries all have `seq == 0`).
    Ephemeral(LogEvent),
}

/// Routes `draft` to `channels` (each resolved channel with its id from
/// [`crate::CursorLog::channel_ids`]). Logged channel ids come out sorted
/// and without duplicates, ephemeral entries likewise; the retention of a
/// logged event is [`expires_at`] of its logged channels from `now`.
pub fn route<'a>(
    draft: Draft,
    channels: impl IntoIterator<Item = (&'a ResolvedChannel, i64)>,
    now: chrono::DateTime<chrono::Utc>,
    store: &StoreConfig,
) -> Route {
    let mut logged: Vec<&ResolvedChannel> = Vec::new();
    let mut log_ids: Vec<i64> = Vec::new();
    let mut ephemeral: Vec<Entry> = Vec::new();
    for (channel, id) in channels {
        if channel.ephemeral {
            ephemeral.push(Entry {
                channel: id,
                seq: 0,
            });
        } else {
            logged.push(channel);
            log_ids.push(id);
        }
    }
    log_ids.sort_unstable();
    log_ids.dedup();
    ephemeral.sort_unstable();
    ephemeral.dedup();
    let Draft {
        event_id,
        topic,
        tenant,
        user_id,
        payload,
        content_type,
        created_at_ms,
    } = draft;
    if log_ids.is_empty() {
        return Route::Ephemeral(LogEvent {
            live: Default::default(),
            event_id,
            topic,
            tenant,
            user_id,
            payload,
            content_type,
            created_at_ms,
            entries: ephemeral,
        });
    }
    Route::Logged {
        event: NewEvent {
            event_id,
            topic,
            tenant,
            user_id,
            payload,
            content_type,
            created_at_ms,
            expires_at: expires_at(logged, now, store.retention, store.lookback_tz),
            channels: log_ids,
        },
        ephemeral,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use switchyard_channels::LookBack;

    fn store() -> StoreConfig {
        StoreConfig {
            postgres_url: String::new(),
            pg_pool_size: 1,
            redis_url: String::new(),
            redis_prefix: "t".into(),
            lookback_tz: chrono_tz::UTC,
            retention: Duration::from_secs(60),
            live_key: None,
        }
    }

    fn channel(name: &str, ephemeral: bool, retention: Option<Duration>) -> ResolvedChannel {
        ResolvedChannel {
            key: format!("Hub/{name}"),
            name: name.into(),
            hub: "Hub".into(),
            topic: "News".into(),
            ephemeral,
            presence: false,
            lookback: None,
            retention,
        }
    }

    fn draft() -> Draft {
        Draft {
            event_id: "e1".into(),
            topic: "News".into(),
            tenant: "t1".into(),
            user_id: Some("u".into()),
            payload: Bytes::from_static(b"{}"),
            content_type: "application/json".into(),
            created_at_ms: 42,
        }
    }

    fn now() -> chrono::DateTime<chrono::Utc> {
        chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap_or_default()
    }

    #[test]
    fn logged_channels_are_sorted_deduplicated_and_ephemeral_ones_kept_apart() {
        let a = channel("A", false, None);
        let b = channel("B", false, None);
        let e = channel("E", true, None);
        let f = channel("F", true, None);
        let channels = [(&b, 7), (&e, 9), (&a, 3), (&b, 7), (&f, 4), (&e, 9)];
        let Route::Logged { event, ephemeral } = route(draft(), channels, now(), &store()) else {
            panic!("an event with a logged channel is appended");
        };
        assert_eq!(event.channels, vec![3, 7]);
        assert_eq!(
            ephemeral,
            vec![Entry { channel: 4, seq: 0 }, Entry { channel: 9, seq: 0 }]
        );
        assert_eq!(
            (event.event_id.as_str(), event.topic.as_str()),
            ("e1", "News")
        );
        assert_eq!(
            (event.tenant.as_str(), event.user_id.as_deref()),
            ("t1", Some("u"))
        );
        assert_eq!(event.created_at_ms, 42);
        assert_eq!(event.payload, Bytes::from_static(b"{}"));
    }

    #[test]
    fn expiry_counts_only_logged_channels() {
        let short = channel("A", false, None);
        let long = channel("B", false, Some(Duration::from_secs(3600)));
        let ephemeral_long = channel("E", true, Some(Duration::from_secs(86_400)));
        let expiry = |channels: &[(&ResolvedChannel, i64)]| match route(
            draft(),
            channels.iter().copied(),
            now(),
            &store(),
        ) {
            Route::Logged { event, .. } => event.expires_at,
            Route::Ephemeral(_) => panic!("logged channels are appended"),
        };
        // The default retention, unless a logged channel keeps it longer.
        assert_eq!(
            expiry(&[(&short, 1), (&ephemeral_long, 2)]),
            now() + chrono::Duration::seconds(60)
        );
        assert_eq!(
            expiry(&[(&short, 1), (&long, 2)]),
            now() + chrono::Duration::seconds(3600)
        );
        let mut lookback = channel("C", false, None);
        lookback.lookback = Some(LookBack::Minutes(30));
        assert!(expiry(&[(&lookback, 3)]) > now() + chrono::Duration::seconds(60));
    }

    #[test]
    fn an_event_on_ephemeral_channels_only_is_published_without_append() {
        let e = channel("E", true, None);
        let f = channel("F", true, None);
        let Route::Ephemeral(live) = route(draft(), [(&f, 5), (&e, 2)], now(), &store()) else {
            panic!("nothing durable to append");
        };
        assert_eq!(
            live.entries,
            vec![Entry { channel: 2, seq: 0 }, Entry { channel: 5, seq: 0 }]
        );
        assert_eq!((live.event_id.as_str(), live.created_at_ms), ("e1", 42));
        assert_eq!(live.user_id.as_deref(), Some("u"));
    }

    #[test]
    fn an_event_without_channels_is_an_empty_ephemeral_event() {
        let Route::Ephemeral(live) = route(draft(), [], now(), &store()) else {
            panic!("nothing to append");
        };
        assert!(live.entries.is_empty());
    }
}
