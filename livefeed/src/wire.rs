//! The live-event wire format: a [`LogEvent`] as protobuf
//! (`switchyard.internal.LiveEvent`), stamped with the epoch of the log it
//! was committed to.
//!
//! Invariant: [`decode`] of [`encode`] gives back the same event and epoch,
//! all entries included — readers de-duplicate an event reached through
//! several channels with them. A receiver must drop an event whose epoch is
//! not its own log's: its sequence numbers belong to another log.

use crate::FeedError;
use prost::Message as _;
use switchyard_cursorlog::{Entry, LogEvent};
use switchyard_proto::internal;

/// Encodes `event` for Redis, stamped with the log `epoch`.
pub fn encode(event: &LogEvent, epoch: &str) -> Vec<u8> {
    internal::LiveEvent {
        epoch: epoch.to_owned(),
        id: event.event_id.clone(),
        topic: event.topic.clone(),
        user_id: event.user_id.clone(),
        payload: event.payload.clone(),
        content_type: event.content_type.clone(),
        created_at_ms: event.created_at_ms,
        entries: event
            .entries
            .iter()
            .map(|e| internal::Entry {
                channel: e.channel,
                seq: e.seq,
            })
            .collect(),
        tenant: event.tenant.clone(),
    }
    .encode_to_vec()
}

/// Decodes a Redis message into the epoch it was stamped with and the event.
pub fn decode(bytes: &[u8]) -> Result<(String, LogEvent), FeedError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn roundtrip_keeps_every_entry_and_the_epoch() {
        let e = LogEvent {
            event_id: "e1".into(),
            topic: "News".into(),
            tenant: "t".into(),
            user_id: Some("u".into()),
            payload: Bytes::from_static(b"{}"),
            content_type: "application/json".into(),
            created_at_ms: 5,
            entries: vec![
                Entry { channel: 1, seq: 2 },
                Entry { channel: 3, seq: 4 },
                Entry { channel: 9, seq: 0 },
            ],
        };
        let (epoch, back) = decode(&encode(&e, "ep")).unwrap();
        assert_eq!(epoch, "ep");
        assert_eq!(back, e);
        assert_eq!(back.seq_in(3), Some(4));
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(matches!(decode(b"\xff\xff"), Err(FeedError::Decode(_))));
    }
}
