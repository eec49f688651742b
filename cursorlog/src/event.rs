//! [`LogEvent`]: a durable event as readers see it, whether it came from the
//! Redis live stream or from a replay read; [`NewEvent`]: what the writer
//! appends. Also the Redis wire format ([`LogEvent::encode_live`]).
//!
//! Invariant: `entries` lists every (channel, seq) the event holds in the log;
//! readers de-duplicate an event reached through several channels with it, so
//! a live event must carry all of them, never a subset.

use bytes::Bytes;
use prost::Message as _;
use switchyard_proto::internal;

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

/// Why a live event could not be decoded.
#[derive(Debug, thiserror::Error)]
#[error("undecodable live event: {0}")]
pub struct LiveDecodeError(#[from] prost::DecodeError);

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

    /// Redis wire encoding, stamped with the log epoch.
    pub fn encode_live(&self, epoch: &str) -> Vec<u8> {
        internal::LiveEvent {
            epoch: epoch.to_owned(),
            id: self.event_id.clone(),
            topic: self.topic.clone(),
            user_id: self.user_id.clone(),
            payload: self.payload.clone(),
            content_type: self.content_type.clone(),
            created_at_ms: self.created_at_ms,
            entries: self
                .entries
                .iter()
                .map(|e| internal::Entry {
                    channel: e.channel,
                    seq: e.seq,
                })
                .collect(),
            tenant: self.tenant.clone(),
        }
        .encode_to_vec()
    }

    /// Decodes a Redis message; returns the epoch it was stamped with.
    pub fn decode_live(bytes: &[u8]) -> Result<(String, LogEvent), LiveDecodeError> {
        let m = internal::LiveEvent::decode(bytes)?;
        Ok((
            m.epoch,
            LogEvent {
                event_id: m.id,
                topic: m.topic,
                tenant: m.tenant,
                user_id: m.user_id,
                payload: m.payload,
                content_type: m.content_type,
                created_at_ms: m.created_at_ms,
                entries: m
                    .entries
                    .into_iter()
                    .map(|e| Entry {
                        channel: e.channel,
                        seq: e.seq,
                    })
                    .collect(),
            },
        ))
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
    fn live_roundtrip() {
        let e = LogEvent {
            event_id: "e1".into(),
            topic: "News".into(),
            tenant: String::new(),
            user_id: Some("u".into()),
            payload: Bytes::from_static(b"{}"),
            content_type: "application/json".into(),
            created_at_ms: 5,
            entries: vec![Entry { channel: 1, seq: 2 }, Entry { channel: 3, seq: 4 }],
        };
        let (epoch, back) = LogEvent::decode_live(&e.encode_live("ep")).unwrap();
        assert_eq!(epoch, "ep");
        assert_eq!(back, e);
        assert_eq!(back.seq_in(3), Some(4));
        assert!(LogEvent::decode_live(b"\xff\xff").is_err());
    }

    #[test]
    fn json_content_types() {
        assert!(is_json_content_type("application/json; charset=utf-8"));
        assert!(is_json_content_type("application/vnd.x+json"));
        assert!(is_json_content_type(""));
        assert!(!is_json_content_type("application/octet-stream"));
    }
}
