//! Fuzz target for the Kafka envelope, run by `cargo test` on a stable
//! toolchain (see `switchyard_testkit::fuzz`): every entry of
//! `fuzz/corpus/envelope/` is replayed, then `SWITCHYARD_FUZZ_CASES`
//! generated records (random, corpus, mutated corpus), each decoded with no
//! header, a JSON header and a protobuf header. Properties: decoding never
//! panics; an accepted event obeys every envelope rule; a rejection names a
//! known reason; any valid event encoded as JSON or protobuf decodes back
//! to itself.

#![allow(clippy::unwrap_used)]

use bytes::Bytes;
use proptest::prelude::*;
use prost::Message as _;
use serde_json::{json, Value};
use std::time::Instant;
use switchyard_bridge::envelope::{decode, DomainEvent, MAX_ID_BYTES};
use switchyard_channels::Scope;
use switchyard_testkit::fuzz;

const MAX: usize = 64 * 1024;

const REASONS: &[&str] = &[
    "empty",
    "oversized",
    "decode_error",
    "invalid_payload",
    "missing_id",
    "invalid_id",
    "missing_topic",
    "invalid_field",
    "invalid_scopes",
];

fn check(value: &[u8]) {
    for header in [
        None,
        Some("application/json"),
        Some("application/x-protobuf"),
    ] {
        match decode(Some(value), header, MAX) {
            Ok(ev) => {
                assert!(
                    !ev.id.is_empty() && ev.id.len() <= MAX_ID_BYTES,
                    "id {:?}",
                    ev.id
                );
                assert!(!ev.topic.is_empty() && ev.topic.len() <= 256);
                for f in [&ev.id, &ev.topic, &ev.tenant] {
                    assert!(
                        !f.chars().any(char::is_control),
                        "control characters in {f:?}"
                    );
                }
                assert!(ev.scopes.len() <= 64);
                assert!(ev.scopes.iter().all(|s| !s.scope_type.is_empty()));
                assert!(!ev.content_type.is_empty());
                if switchyard_cursorlog::event::is_json_content_type(&ev.content_type) {
                    assert!(
                        serde_json::from_slice::<&serde_json::value::RawValue>(&ev.payload).is_ok(),
                        "a JSON event with a payload that is not JSON"
                    );
                }
            }
            Err(r) => {
                assert!(REASONS.contains(&r.reason), "unknown reason {}", r.reason);
                assert!(!r.detail.is_empty());
            }
        }
    }
}

#[test]
fn fuzz_envelope() {
    let corpus = fuzz::corpus("envelope");
    let started = Instant::now();
    for (name, data) in &corpus {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(data)));
        assert!(r.is_ok(), "corpus entry envelope/{name} broke the decoder");
    }
    let mut runner = proptest::test_runner::TestRunner::new(fuzz::config());
    runner
        .run(&fuzz::inputs(&corpus), |data| {
            check(&data);
            Ok(())
        })
        .unwrap();
    eprintln!(
        "fuzz envelope: {} corpus entries + {} cases in {:?}",
        corpus.len(),
        fuzz::cases(),
        started.elapsed()
    );
}

fn name(max: usize) -> impl Strategy<Value = String> {
    "[^\\p{Cc}]{1,40}".prop_filter("length", move |s| s.len() <= max)
}

fn json_payload() -> impl Strategy<Value = Value> {
    fuzz::json_values()
}

/// Valid events with a JSON payload.
fn event() -> impl Strategy<Value = DomainEvent> {
    (
        name(MAX_ID_BYTES),
        name(256),
        prop_oneof![Just(String::new()), name(256)],
        prop::collection::vec((name(256), prop::collection::vec("\\PC{0,12}", 0..5)), 0..5),
        proptest::option::of(name(256)),
        json_payload(),
        proptest::option::of(any::<i64>().prop_filter("non-zero", |t| *t != 0)),
    )
        .prop_map(
            |(id, topic, tenant, scopes, user_id, payload, created_at_ms)| DomainEvent {
                id,
                topic,
                tenant,
                scopes: scopes
                    .into_iter()
                    .map(|(scope_type, values)| Scope { scope_type, values })
                    .collect(),
                user_id,
                payload: Bytes::from(payload.to_string()),
                content_type: "application/json".into(),
                created_at_ms,
            },
        )
}

fn to_json(ev: &DomainEvent) -> Vec<u8> {
    let payload: Value = serde_json::from_slice(&ev.payload).unwrap();
    let mut v = json!({
        "id": ev.id,
        "topic": ev.topic,
        "tenant": ev.tenant,
        "scopes": ev.scopes.iter().map(|s| json!({"type": s.scope_type, "values": s.values})).collect::<Vec<_>>(),
        "payload": payload,
    });
    if let Some(u) = &ev.user_id {
        v["user_id"] = json!(u);
    }
    if let Some(t) = ev.created_at_ms {
        v["created_at_ms"] = json!(t);
    }
    serde_json::to_vec(&v).unwrap()
}

fn to_proto(ev: &DomainEvent) -> Vec<u8> {
    switchyard_proto::v1::Event {
        id: ev.id.clone(),
        topic: ev.topic.clone(),
        scopes: ev
            .scopes
            .iter()
            .map(|s| switchyard_proto::v1::Scope {
                r#type: s.scope_type.clone(),
                values: s.values.clone(),
            })
            .collect(),
        user_id: ev.user_id.clone(),
        payload: ev.payload.clone(),
        content_type: ev.content_type.clone(),
        created_at_ms: ev.created_at_ms.unwrap_or(0),
        tenant: ev.tenant.clone(),
    }
    .encode_to_vec()
}

proptest! {
    #![proptest_config(fuzz::config())]

    /// decode(encode(event)) == event, for the JSON envelope.
    #[test]
    fn json_envelopes_round_trip(ev in event()) {
        let mut back = decode(Some(&to_json(&ev)), None, usize::MAX).unwrap();
        // The payload is kept as the producer wrote it; compare documents.
        let (a, b): (Value, Value) = (
            serde_json::from_slice(&back.payload).unwrap(),
            serde_json::from_slice(&ev.payload).unwrap(),
        );
        prop_assert_eq!(a, b);
        back.payload = ev.payload.clone();
        prop_assert_eq!(back, ev);
    }

    /// decode(encode(event)) == event, for the protobuf envelope.
    #[test]
    fn proto_envelopes_round_trip(ev in event()) {
        prop_assert_eq!(decode(Some(&to_proto(&ev)), None, usize::MAX).unwrap(), ev);
    }
}
