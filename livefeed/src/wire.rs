//! The live-event wire format: a [`LogEvent`] as protobuf
//! (`switchyard.internal.LiveEvent`), stamped with the epoch of the log it
//! was committed to.
//!
//! Invariant: [`decode`] of [`encode`] gives back the same event and epoch,
//! all entries included — readers de-duplicate an event reached through
//! several channels with them. A receiver must drop an event whose epoch is
//! not its own log's: its sequence numbers belong to another log.

use crate::FeedError;
use hmac::{Hmac, Mac};
use prost::Message as _;
use sha2::Sha256;
use std::sync::Arc;
use switchyard_cursorlog::{Entry, LiveStamp, LogEvent};
use switchyard_proto::internal;

/// Encodes `event` for Redis, stamped with the log `epoch`. Its
/// [`LiveStamp`](switchyard_cursorlog::LiveStamp) travels in fields 10–13,
/// which a decoder of the older format skips (and which the MAC covers like
/// the rest); `published_at_ms` is the caller's.
pub fn encode(event: &LogEvent, epoch: &str) -> Vec<u8> {
    encode_at(event, epoch, event.live.published_at_ms)
}

/// [`encode`] with `published_at_ms` as the publish time.
fn encode_at(event: &LogEvent, epoch: &str, published_at_ms: i64) -> Vec<u8> {
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
        traceparent: event.live.traceparent.clone(),
        received_at_ms: event.live.received_at_ms,
        committed_at_ms: event.live.committed_at_ms,
        published_at_ms,
    }
    .encode_to_vec()
}

/// Marks an authenticated message: `S1`, a 16-byte MAC, then the event.
const SIGNED: &[u8; 2] = b"S1";
const MAC_BYTES: usize = 16;

/// The secret shared by the bridge and every gateway that authenticates live
/// messages, so whoever can publish on Redis cannot inject a message nor
/// suppress a real one by claiming its sequence number.
#[derive(Clone)]
pub struct LiveKey(Arc<[u8]>);

impl std::fmt::Debug for LiveKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LiveKey(<hidden>)")
    }
}

impl LiveKey {
    pub fn new(secret: &[u8]) -> Self {
        LiveKey(secret.into())
    }

    /// The full HMAC-SHA256 tag of `body`.
    pub(crate) fn tag(&self, body: &[u8]) -> [u8; 32] {
        self.mac(body).finalize().into_bytes().into()
    }

    /// Whether `tag` (possibly truncated) authenticates `body`, in constant time.
    pub(crate) fn verify(&self, body: &[u8], tag: &[u8]) -> bool {
        self.mac(body).verify_truncated_left(tag).is_ok()
    }

    fn mac(&self, body: &[u8]) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(body);
        mac
    }
}

/// Encodes for Redis, authenticated when there is a key.
pub fn encode_with(event: &LogEvent, epoch: &str, key: Option<&LiveKey>) -> Vec<u8> {
    encode_with_at(event, epoch, key, event.live.published_at_ms)
}

/// [`encode_with`] stamped as published at `published_at_ms`.
pub fn encode_with_at(
    event: &LogEvent,
    epoch: &str,
    key: Option<&LiveKey>,
    published_at_ms: i64,
) -> Vec<u8> {
    seal(encode_at(event, epoch, published_at_ms), key)
}

/// Authenticates any message body under `key` (`S1`, a 16-byte MAC, then the
/// body); without a key the body goes as it is. Presence events use it too.
pub fn seal(body: Vec<u8>, key: Option<&LiveKey>) -> Vec<u8> {
    let Some(key) = key else {
        return body;
    };
    let mut out = Vec::with_capacity(SIGNED.len() + MAC_BYTES + body.len());
    out.extend_from_slice(SIGNED);
    out.extend_from_slice(&key.mac(&body).finalize().into_bytes()[..MAC_BYTES]);
    out.extend_from_slice(&body);
    out
}

/// The body of a [`seal`]ed message; with a key, only a message
/// authenticated with it ([`FeedError::Unauthenticated`] otherwise).
pub fn open<'a>(bytes: &'a [u8], key: Option<&LiveKey>) -> Result<&'a [u8], FeedError> {
    let Some(key) = key else {
        return Ok(bytes);
    };
    let Some(rest) = bytes.strip_prefix(SIGNED.as_slice()) else {
        return Err(FeedError::Unauthenticated);
    };
    if rest.len() < MAC_BYTES {
        return Err(FeedError::Unauthenticated);
    }
    let (tag, body) = rest.split_at(MAC_BYTES);
    key.mac(body)
        .verify_truncated_left(tag)
        .map_err(|_| FeedError::Unauthenticated)?;
    Ok(body)
}

/// Decodes a Redis message; with a key, only messages authenticated with it
/// are accepted ([`FeedError::Unauthenticated`] otherwise).
pub fn decode_with(bytes: &[u8], key: Option<&LiveKey>) -> Result<(String, LogEvent), FeedError> {
    decode(open(bytes, key)?)
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
            live: LiveStamp {
                traceparent: m.traceparent,
                received_at_ms: m.received_at_ms,
                committed_at_ms: m.committed_at_ms,
                published_at_ms: m.published_at_ms,
                node_received_at_ms: 0,
            },
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
            live: Default::default(),
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
    fn the_live_stamp_roundtrips_and_is_authenticated() {
        let mut e = LogEvent {
            live: LiveStamp {
                traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
                received_at_ms: 10,
                committed_at_ms: 11,
                published_at_ms: 0,
                node_received_at_ms: 0,
            },
            event_id: "e1".into(),
            topic: "News".into(),
            tenant: String::new(),
            user_id: None,
            payload: Bytes::from_static(b"{}"),
            content_type: "application/json".into(),
            created_at_ms: 5,
            entries: vec![Entry { channel: 1, seq: 2 }],
        };
        let key = LiveKey::new(&[7u8; 32]);
        let signed = encode_with_at(&e, "ep", Some(&key), 12);
        let (_, back) = decode_with(&signed, Some(&key)).unwrap();
        e.live.published_at_ms = 12;
        assert_eq!(back, e);
        // The stamp is under the MAC: changing the trace context is refused.
        let at = signed.windows(3).position(|w| w == b"00-").unwrap();
        let mut forged = signed.clone();
        forged[at + 3] = b'5';
        assert!(matches!(
            decode_with(&forged, Some(&key)),
            Err(FeedError::Unauthenticated)
        ));
        // An event without a stamp encodes as the format before it did.
        e.live = LiveStamp::default();
        let plain = encode(&e, "ep");
        assert!(!plain.windows(3).any(|w| w == b"00-"));
        assert_eq!(decode(&plain).unwrap().1, e);
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(matches!(decode(b"\xff\xff"), Err(FeedError::Decode(_))));
    }

    #[test]
    fn authenticated_messages_need_the_key() {
        let ev = LogEvent {
            live: Default::default(),
            event_id: "e".into(),
            topic: "T".into(),
            tenant: String::new(),
            user_id: None,
            payload: bytes::Bytes::from_static(b"{}"),
            content_type: "application/json".into(),
            created_at_ms: 1,
            entries: vec![Entry { channel: 1, seq: 2 }],
        };
        let key = LiveKey::new(&[9u8; 32]);
        let signed = encode_with(&ev, "ep", Some(&key));
        let (epoch, back) = decode_with(&signed, Some(&key)).unwrap();
        assert_eq!((epoch.as_str(), back.event_id.as_str()), ("ep", "e"));
        // Unsigned, signed with another key, or tampered with: refused.
        let plain = encode(&ev, "ep");
        assert!(matches!(
            decode_with(&plain, Some(&key)),
            Err(FeedError::Unauthenticated)
        ));
        let other = encode_with(&ev, "ep", Some(&LiveKey::new(&[8u8; 32])));
        assert!(matches!(
            decode_with(&other, Some(&key)),
            Err(FeedError::Unauthenticated)
        ));
        let mut tampered = signed.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert!(matches!(
            decode_with(&tampered, Some(&key)),
            Err(FeedError::Unauthenticated)
        ));
        // Without a key, plain messages decode as before.
        assert!(decode_with(&plain, None).is_ok());
    }
}
