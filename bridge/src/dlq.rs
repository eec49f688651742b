//! The dead-letter records the bridge writes for rejected events.
//!
//! A DLQ record is normally a copy of the original (key, value, headers)
//! plus `switchyard-*` headers that say why and where it came from. A copy
//! the producer or the broker cannot take (above `message.max.bytes`) would
//! be retried forever and stall the partition behind it, so such a record
//! goes to the DLQ as metadata only: the `switchyard-*` headers, the original
//! sizes, the original key when it is small, and no value.
//!
//! Invariant: every rejected record yields a DLQ record the producer can
//! send; the metadata-only form never depends on the original's size.

use crate::envelope::Rejection;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::FutureRecord;
use rdkafka::types::RDKafkaErrorCode;

/// librdkafka's default `message.max.bytes` (producer side).
pub(crate) const DEFAULT_MESSAGE_MAX_BYTES: usize = 1_000_000;
/// Room for the `switchyard-*` headers and the record's framing.
const HEADROOM: usize = 8 * 1024;
/// Longest detail header, and longest key kept in a metadata-only record.
const MAX_DETAIL_BYTES: usize = 1024;
const MAX_KEPT_KEY_BYTES: usize = 1024;

/// How much of the original a DLQ record carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Form {
    /// Key, value and headers of the original.
    Full,
    /// Only the `switchyard-*` headers (and a small key).
    MetadataOnly,
}

/// Bytes of the original record as the producer counts them (key, value,
/// header names and values).
pub(crate) fn original_bytes(msg: &OwnedMessage) -> usize {
    let headers = msg.headers().map_or(0, |h| {
        h.iter()
            .map(|h| h.key.len() + h.value.map_or(0, <[u8]>::len))
            .sum()
    });
    msg.payload().map_or(0, <[u8]>::len) + msg.key().map_or(0, <[u8]>::len) + headers
}

/// The copy to try first for `msg` under a producer limit of `max_bytes`.
pub(crate) fn first_form(msg: &OwnedMessage, max_bytes: usize) -> Form {
    if original_bytes(msg) + HEADROOM <= max_bytes {
        Form::Full
    } else {
        Form::MetadataOnly
    }
}

/// Whether a send failed because the record is too large, locally or at the
/// broker, so a smaller record may succeed where a retry cannot.
pub(crate) fn is_too_large(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::MessageBatchTooLarge
                | RDKafkaErrorCode::InvalidMessageSize
        )
    )
}

/// The DLQ record for `msg`, rejected for `why`.
pub(crate) fn record<'a>(
    dlq_topic: &'a str,
    msg: &'a OwnedMessage,
    why: &Rejection,
    form: Form,
) -> FutureRecord<'a, [u8], [u8]> {
    let mut headers = OwnedHeaders::new();
    if form == Form::Full {
        if let Some(h) = msg.headers() {
            for hdr in h.iter() {
                headers = headers.insert(Header {
                    key: hdr.key,
                    value: hdr.value,
                });
            }
        }
    }
    let value_bytes = msg.payload().map_or(0, <[u8]>::len).to_string();
    let mut headers = headers
        .insert(Header {
            key: "switchyard-dlq-reason",
            value: Some(why.reason),
        })
        .insert(Header {
            key: "switchyard-dlq-detail",
            value: Some(truncate(&why.detail, MAX_DETAIL_BYTES)),
        })
        .insert(Header {
            key: "switchyard-source-topic",
            value: Some(msg.topic()),
        })
        .insert(Header {
            key: "switchyard-source-partition",
            value: Some(&msg.partition().to_string()),
        })
        .insert(Header {
            key: "switchyard-source-offset",
            value: Some(&msg.offset().to_string()),
        })
        .insert(Header {
            key: "switchyard-original-bytes",
            value: Some(&value_bytes),
        });
    if form == Form::MetadataOnly {
        headers = headers.insert(Header {
            key: "switchyard-dlq-payload",
            value: Some("omitted"),
        });
    }
    let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(dlq_topic).headers(headers);
    match (form, msg.key()) {
        (Form::Full, Some(k)) => record = record.key(k),
        (Form::MetadataOnly, Some(k)) if k.len() <= MAX_KEPT_KEY_BYTES => record = record.key(k),
        _ => {}
    }
    if form == Form::Full {
        if let Some(p) = msg.payload() {
            record = record.payload(p);
        }
    }
    record
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::Timestamp;

    fn msg(value: usize, key: usize) -> OwnedMessage {
        let headers = OwnedHeaders::new().insert(Header {
            key: "trace",
            value: Some("abc"),
        });
        OwnedMessage::new(
            Some(vec![b'v'; value]),
            Some(vec![b'k'; key]),
            "events".into(),
            Timestamp::NotAvailable,
            2,
            41,
            Some(headers),
        )
    }

    fn header<'a>(r: &'a FutureRecord<'_, [u8], [u8]>, key: &str) -> Option<&'a [u8]> {
        r.headers
            .as_ref()?
            .iter()
            .find(|h| h.key == key)
            .and_then(|h| h.value)
    }

    #[test]
    fn a_record_the_producer_can_take_is_copied_whole() {
        let m = msg(1000, 4);
        assert_eq!(original_bytes(&m), 1000 + 4 + "trace".len() + 3);
        assert_eq!(first_form(&m, DEFAULT_MESSAGE_MAX_BYTES), Form::Full);
        let why = Rejection::new("oversized", "too big");
        let r = record("dlq", &m, &why, Form::Full);
        assert_eq!(r.payload.map(<[u8]>::len), Some(1000));
        assert_eq!(r.key.map(<[u8]>::len), Some(4));
        assert_eq!(header(&r, "trace"), Some(b"abc".as_slice()));
        assert_eq!(
            header(&r, "switchyard-dlq-reason"),
            Some(b"oversized".as_slice())
        );
        assert_eq!(header(&r, "switchyard-dlq-payload"), None);
    }

    #[test]
    fn a_record_above_the_limit_goes_as_metadata_only() {
        let m = msg(2_000_000, 10);
        assert_eq!(
            first_form(&m, DEFAULT_MESSAGE_MAX_BYTES),
            Form::MetadataOnly
        );
        // Close to the limit counts too: the added headers need room.
        assert_eq!(
            first_form(
                &msg(DEFAULT_MESSAGE_MAX_BYTES - 100, 0),
                DEFAULT_MESSAGE_MAX_BYTES
            ),
            Form::MetadataOnly
        );
        let why = Rejection::new("oversized", "d".repeat(10_000));
        let r = record("dlq", &m, &why, Form::MetadataOnly);
        assert!(r.payload.is_none());
        assert_eq!(r.key.map(<[u8]>::len), Some(10), "a small key is kept");
        assert_eq!(header(&r, "trace"), None, "original headers are dropped");
        for (k, v) in [
            ("switchyard-dlq-reason", "oversized"),
            ("switchyard-source-topic", "events"),
            ("switchyard-source-partition", "2"),
            ("switchyard-source-offset", "41"),
            ("switchyard-original-bytes", "2000000"),
            ("switchyard-dlq-payload", "omitted"),
        ] {
            assert_eq!(header(&r, k), Some(v.as_bytes()), "{k}");
        }
        assert_eq!(
            header(&r, "switchyard-dlq-detail").map(<[u8]>::len),
            Some(MAX_DETAIL_BYTES)
        );
        let big_key = msg(10, 5000);
        assert!(record("dlq", &big_key, &why, Form::MetadataOnly)
            .key
            .is_none());
    }

    #[test]
    fn size_errors_are_told_apart_from_outages() {
        use rdkafka::error::KafkaError::MessageProduction;
        assert!(is_too_large(&MessageProduction(
            RDKafkaErrorCode::MessageSizeTooLarge
        )));
        assert!(!is_too_large(&MessageProduction(
            RDKafkaErrorCode::MessageTimedOut
        )));
    }
}
