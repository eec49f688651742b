//! [`LogEvent`]: a durable event as readers see it, whether it came from the
//! Redis live stream or from a replay read; [`NewEvent`]: what the writer
//! appends. (The Redis wire format of a live event is `switchyard-livefeed`'s.)
//!
//! Invariant: `entries` lists every (channel, seq) the event holds in the log;
//! readers de-duplicate an event reached through several channels with it, so
//! a live event must carry all of them, never a subset.

use bytes::Bytes;

/// A position of an event: entry `seq` of channel `channel`.
/// `seq == 0` marks a best-effort (ephemeral) delivery that is not in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Entry {
    pub channel: i64,
    pub seq: i64,
}

/// A durable event as read back from the log or received live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEvent {
    pub event_id: String,
    pub topic: String,
    pub tenant: String,
    pub user_id: Option<String>,
    pub payload: Bytes,
    pub content_type: String,
    pub created_at_ms: i64,
    pub entries: Vec<Entry>,
    /// What the live path stamps on an event (empty for one read back from
    /// the log).
    pub live: LiveStamp,
}

/// The trace context and the stage times of an event on the live path:
/// set by the bridge, carried in the live wire format, read by the
/// gateway's delivery span and its per-stage latency histograms. Not stored
/// in the log: a replayed event starts a trace of its own.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LiveStamp {
    /// W3C `traceparent` of the span the delivery continues (empty: none).
    pub traceparent: String,
    /// When the bridge read the record from Kafka (ms since the epoch; 0:
    /// unknown).
    pub received_at_ms: i64,
    /// When the PostgreSQL transaction holding it committed (0: not logged,
    /// e.g. ephemeral or a client publish).
    pub committed_at_ms: i64,
    /// When it was put on Redis (0: unknown).
    pub published_at_ms: i64,
    /// When this gateway node received it from Redis (0: not received
    /// live). Set by the node, not carried on the wire.
    pub node_received_at_ms: i64,
}

/// An event to append.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub event_id: String,
    pub topic: String,
    pub tenant: String,
    pub user_id: Option<String>,
    pub payload: Bytes,
    pub content_type: String,
    pub created_at_ms: i64,
    pub expires_at: chrono::DateTime<chrono::Utc>,
    /// Channel ids (from [`crate::CursorLog::channel_ids`]), without duplicates.
    pub channels: Vec<i64>,
}

impl LogEvent {
    /// The sequence of this event in `channel`, if it is in that channel.
    pub fn seq_in(&self, channel: i64) -> Option<i64> {
        self.entries
            .iter()
            .find(|e| e.channel == channel)
            .map(|e| e.seq)
    }

    /// Whether the payload is JSON (embedded as-is in JSON frames).
    pub fn is_json(&self) -> bool {
        is_json_content_type(&self.content_type)
    }
}

/// `application/json`, `application/x+json`, `text/json` (parameters ignored).
pub fn is_json_content_type(ct: &str) -> bool {
    let base = ct.split(';').next().unwrap_or("").trim();
    base.is_empty()
        || base.eq_ignore_ascii_case("application/json")
        || base.eq_ignore_ascii_case("text/json")
        || base.to_ascii_lowercase().ends_with("+json")
}

/// When an event appended at `now` to `channels` expires: the longest of the
/// default retention, each channel's lookback window and each channel's own
/// retention.
pub fn expires_at<'a>(
    channels: impl IntoIterator<Item = &'a switchyard_channels::ResolvedChannel>,
    now: chrono::DateTime<chrono::Utc>,
    default_retention: std::time::Duration,
    tz: chrono_tz::Tz,
) -> chrono::DateTime<chrono::Utc> {
    let span = |d: std::time::Duration| chrono::Duration::from_std(d).unwrap_or_default();
    let mut at = now + span(default_retention);
    for c in channels {
        if let Some(lb) = c.lookback {
            at = at.max(lb.expires_at(now, tz));
        }
        if let Some(r) = c.retention {
            at = at.max(now + span(r));
        }
    }
    at
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_in_finds_the_channel_entry() {
        let e = LogEvent {
            live: Default::default(),
            event_id: "e1".into(),
            topic: "News".into(),
            tenant: String::new(),
            user_id: None,
            payload: Bytes::from_static(b"{}"),
            content_type: "application/json".into(),
            created_at_ms: 5,
            entries: vec![Entry { channel: 1, seq: 2 }, Entry { channel: 3, seq: 4 }],
        };
        assert_eq!(e.seq_in(3), Some(4));
        assert_eq!(e.seq_in(2), None);
    }

    #[test]
    fn json_content_types() {
        assert!(is_json_content_type("application/json; charset=utf-8"));
        assert!(is_json_content_type("application/vnd.x+json"));
        assert!(is_json_content_type(""));
        assert!(!is_json_content_type("application/octet-stream"));
    }
}
