//! Decoding and validating the Kafka event envelope (contract section 2):
//! protobuf `switchyard.v1.Event`, or the same event as JSON when the record
//! has `content-type: application/json` or its value starts with `{`.
//!
//! Invariant: every record yields either a [`DomainEvent`] or a [`Rejection`]
//! with a machine-readable reason; decoding never panics on any input.

use bytes::Bytes;
use prost::Message as _;
use serde::Deserialize;
use switchyard_channels::Scope;
use switchyard_cursorlog::event::is_json_content_type;

/// Longest accepted event id, in bytes.
pub const MAX_ID_BYTES: usize = 128;
const MAX_NAME_BYTES: usize = 256;
const MAX_SCOPES: usize = 64;
const MAX_SCOPE_VALUES: usize = 1024;

/// A decoded, valid event (its topic is checked against the topology later).
#[derive(Debug, Clone, PartialEq)]
pub struct DomainEvent {
    pub id: String,
    pub topic: String,
    pub tenant: String,
    pub scopes: Vec<Scope>,
    pub user_id: Option<String>,
    pub payload: Bytes,
    pub content_type: String,
    pub created_at_ms: Option<i64>,
}

/// Why a record goes to the DLQ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Stable machine-readable code (the DLQ `switchyard-dlq-reason` header).
    pub reason: &'static str,
    /// Human-readable detail.
    pub detail: String,
}

impl Rejection {
    pub fn new(reason: &'static str, detail: impl Into<String>) -> Self {
        Rejection {
            reason,
            detail: detail.into(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonEvent<'a> {
    id: Option<String>,
    topic: Option<String>,
    #[serde(default)]
    scopes: Vec<JsonScope>,
    #[serde(default)]
    user_id: Option<String>,
    #[serde(default, borrow)]
    payload: Option<&'a serde_json::value::RawValue>,
    #[serde(default)]
    created_at_ms: Option<i64>,
    #[serde(default)]
    tenant: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonScope {
    #[serde(rename = "type")]
    scope_type: String,
    #[serde(default)]
    values: Vec<String>,
}

/// Decodes one record value. `header_content_type` is the record's
/// `content-type` header, if any.
pub fn decode(
    value: Option<&[u8]>,
    header_content_type: Option<&str>,
    max_bytes: usize,
) -> Result<DomainEvent, Rejection> {
    let value = value.ok_or_else(|| Rejection::new("empty", "the record has no value"))?;
    if value.len() > max_bytes {
        return Err(Rejection::new(
            "oversized",
            format!(
                "record value is {} bytes, the limit is {max_bytes}",
                value.len()
            ),
        ));
    }
    if header_content_type.is_some_and(is_json_header) {
        return validate(decode_json(value)?);
    }
    // Without a header, a value starting with `{` is taken for JSON — but a
    // protobuf event can start that way too (field 1's tag is `\n`, then
    // the id's length: 123 is `{`), so one that is not JSON is tried as
    // protobuf before it is rejected with the JSON diagnosis.
    if value.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{') {
        return match decode_json(value) {
            Ok(ev) => validate(ev),
            Err(json_err) => decode_proto(value).and_then(validate).map_err(|_| json_err),
        };
    }
    validate(decode_proto(value)?)
}

fn is_json_header(ct: &str) -> bool {
    let base = ct.split(';').next().unwrap_or("").trim();
    base.eq_ignore_ascii_case("application/json")
}

fn decode_json(value: &[u8]) -> Result<DomainEvent, Rejection> {
    let ev: JsonEvent<'_> = serde_json::from_slice(value)
        .map_err(|e| Rejection::new("decode_error", format!("invalid JSON event: {e}")))?;
    let payload = ev
        .payload
        .map(|p| Bytes::copy_from_slice(p.get().as_bytes()))
        .unwrap_or_else(|| Bytes::from_static(b"null"));
    Ok(DomainEvent {
        id: ev.id.unwrap_or_default(),
        topic: ev.topic.unwrap_or_default(),
        tenant: ev.tenant.unwrap_or_default(),
        scopes: ev
            .scopes
            .into_iter()
            .map(|s| Scope {
                scope_type: s.scope_type,
                values: s.values,
            })
            .collect(),
        user_id: ev.user_id.filter(|u| !u.is_empty()),
        payload,
        content_type: "application/json".into(),
        created_at_ms: ev.created_at_ms,
    })
}

fn decode_proto(value: &[u8]) -> Result<DomainEvent, Rejection> {
    let ev = switchyard_proto::v1::Event::decode(value).map_err(|e| {
        Rejection::new(
            "decode_error",
            format!("neither JSON nor a protobuf switchyard.v1.Event: {e}"),
        )
    })?;
    let content_type = if ev.content_type.is_empty() {
        "application/json".to_owned()
    } else {
        ev.content_type
    };
    if is_json_content_type(&content_type) {
        if ev.payload.is_empty() {
            // An empty JSON payload is `null`, not an invalid document.
        } else if serde_json::from_slice::<&serde_json::value::RawValue>(&ev.payload).is_err() {
            return Err(Rejection::new(
                "invalid_payload",
                format!("payload is not valid JSON but content_type is {content_type:?}"),
            ));
        }
    }
    let payload = if ev.payload.is_empty() && is_json_content_type(&content_type) {
        Bytes::from_static(b"null")
    } else {
        ev.payload
    };
    Ok(DomainEvent {
        id: ev.id,
        topic: ev.topic,
        tenant: ev.tenant,
        scopes: ev
            .scopes
            .into_iter()
            .map(|s| Scope {
                scope_type: s.r#type,
                values: s.values,
            })
            .collect(),
        user_id: ev.user_id.filter(|u| !u.is_empty()),
        payload,
        content_type,
        created_at_ms: (ev.created_at_ms != 0).then_some(ev.created_at_ms),
    })
}

fn validate(ev: DomainEvent) -> Result<DomainEvent, Rejection> {
    if ev.id.is_empty() {
        return Err(Rejection::new("missing_id", "the event has no id"));
    }
    if ev.id.len() > MAX_ID_BYTES {
        return Err(Rejection::new(
            "invalid_id",
            format!(
                "the event id is {} bytes, the limit is {MAX_ID_BYTES}",
                ev.id.len()
            ),
        ));
    }
    if ev.topic.is_empty() {
        return Err(Rejection::new("missing_topic", "the event has no topic"));
    }
    for (field, v) in [
        ("id", Some(ev.id.as_str())),
        ("topic", Some(ev.topic.as_str())),
        ("tenant", Some(ev.tenant.as_str())),
        ("user_id", ev.user_id.as_deref()),
    ] {
        let Some(v) = v else { continue };
        if v.contains('\0') || v.chars().any(char::is_control) {
            return Err(Rejection::new(
                "invalid_field",
                format!("{field} contains control characters"),
            ));
        }
        if field != "id" && v.len() > MAX_NAME_BYTES {
            return Err(Rejection::new(
                "invalid_field",
                format!("{field} is longer than {MAX_NAME_BYTES} bytes"),
            ));
        }
    }
    if ev.scopes.len() > MAX_SCOPES || ev.scopes.iter().any(|s| s.values.len() > MAX_SCOPE_VALUES) {
        return Err(Rejection::new(
            "invalid_scopes",
            format!("at most {MAX_SCOPES} scopes of {MAX_SCOPE_VALUES} values each"),
        ));
    }
    if ev.scopes.iter().any(|s| s.scope_type.is_empty()) {
        return Err(Rejection::new(
            "invalid_scopes",
            "a scope has an empty type",
        ));
    }
    Ok(ev)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MAX: usize = 4096;

    #[test]
    fn json_envelope_of_the_contract() {
        let v = br#"{"id":"4b1d","topic":"News","scopes":[{"type":"Product Codes","values":["CHLT","FullAccess"]}],"user_id":"u-42","payload":{"headline":"x"},"created_at_ms":1763800000000}"#;
        let ev = decode(Some(v), None, MAX).unwrap();
        assert_eq!(ev.id, "4b1d");
        assert_eq!(ev.scopes[0].values, vec!["CHLT", "FullAccess"]);
        assert_eq!(ev.user_id.as_deref(), Some("u-42"));
        assert_eq!(&ev.payload[..], br#"{"headline":"x"}"#);
        assert_eq!(ev.created_at_ms, Some(1763800000000));
    }

    #[test]
    fn protobuf_envelope() {
        let p = switchyard_proto::v1::Event {
            id: "e".into(),
            topic: "News".into(),
            payload: Bytes::from_static(b"[1,2]"),
            ..Default::default()
        };
        let ev = decode(Some(&p.encode_to_vec()), None, MAX).unwrap();
        assert_eq!(ev.content_type, "application/json");
        assert_eq!(&ev.payload[..], b"[1,2]");
        let bin = switchyard_proto::v1::Event {
            id: "e".into(),
            topic: "News".into(),
            payload: Bytes::from_static(&[0, 159, 146]),
            content_type: "application/octet-stream".into(),
            ..Default::default()
        };
        assert!(decode(Some(&bin.encode_to_vec()), None, MAX).is_ok());
    }

    #[test]
    fn rejections_carry_reasons() {
        let r = |v: &[u8]| decode(Some(v), None, MAX).unwrap_err().reason;
        assert_eq!(r(br#"{"topic":"News"}"#), "missing_id");
        assert_eq!(r(br#"{"id":"a"}"#), "missing_topic");
        assert_eq!(r(br#"{"id":"a","topic":"News""#), "decode_error");
        assert_eq!(r(br#"{"id":"a","topic":"News","bogus":1}"#), "decode_error");
        assert_eq!(r(b"\xff\xfe garbage"), "decode_error");
        let long = format!(r#"{{"id":"{}","topic":"News"}}"#, "x".repeat(129));
        assert_eq!(r(long.as_bytes()), "invalid_id");
        assert_eq!(r(br#"{"id":"a\u0000","topic":"News"}"#), "invalid_field");
        let big = vec![b' '; MAX + 1];
        assert_eq!(r(&big), "oversized");
        assert_eq!(decode(None, None, MAX).unwrap_err().reason, "empty");
        let bad_json_payload = switchyard_proto::v1::Event {
            id: "e".into(),
            topic: "News".into(),
            payload: Bytes::from_static(b"{not json"),
            ..Default::default()
        };
        assert_eq!(r(&bad_json_payload.encode_to_vec()), "invalid_payload");
    }

    /// Found by the envelope fuzz target: a protobuf event whose bytes look
    /// like JSON (a 123-byte id puts `\n{` first) was rejected as bad JSON.
    #[test]
    fn a_protobuf_event_that_starts_like_json_is_decoded() {
        for id in ["x".repeat(123), format!("{{{}", "y".repeat(8))] {
            let p = switchyard_proto::v1::Event {
                id: id.clone(),
                topic: "News".into(),
                payload: Bytes::from_static(b"{}"),
                ..Default::default()
            };
            let bytes = p.encode_to_vec();
            assert_eq!(bytes.iter().find(|b| !b.is_ascii_whitespace()), Some(&b'{'));
            let ev = decode(Some(&bytes), None, MAX).unwrap();
            assert_eq!(ev.id, id);
        }
        // Broken JSON is still diagnosed as JSON.
        let e = decode(Some(br#"{"id":"a","topic":"News""#), None, MAX).unwrap_err();
        assert!(e.detail.contains("JSON"), "{}", e.detail);
    }

    proptest! {
        #[test]
        fn never_panics(v in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode(Some(&v), None, MAX);
            let _ = decode(Some(&v), Some("application/json"), MAX);
        }
    }
}
