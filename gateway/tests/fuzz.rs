//! Fuzz targets for client frame decoding, run by `cargo test` on a stable
//! toolchain (see `switchyard_testkit::fuzz`): every corpus entry in
//! `fuzz/corpus/client_json/` and `fuzz/corpus/client_proto/` is replayed,
//! then `SWITCHYARD_FUZZ_CASES` generated inputs (random, corpus, mutated
//! corpus). Properties: parsing never panics and answers a request or a
//! `BadFrame` with a message; a frame built from any request parses back
//! to that request (JSON and protobuf); every `message` frame the node
//! encodes is valid JSON carrying the event's fields.

#![allow(clippy::unwrap_used)]

use bytes::Bytes;
use proptest::prelude::*;
use prost::Message as _;
use serde_json::{json, Value};
use std::time::Instant;
use switchyard_cursorlog::{Entry, LogEvent};
use switchyard_gateway::protocol::{encode_message, parse, Protocol, Request};
use switchyard_proto::v1 as pb;
use switchyard_testkit::fuzz;

fn check_parse(protocol: Protocol, data: &[u8]) {
    match parse(protocol, data) {
        Ok(Request::Subscribe { topic, .. })
        | Ok(Request::Presence { topic, .. })
        | Ok(Request::Unsubscribe { topic, .. })
        | Ok(Request::Publish { topic, .. }) => {
            assert!(!topic.is_empty() && topic.len() <= 256, "topic {topic:?}");
        }
        Ok(Request::Refresh { token, .. }) => assert!(!token.is_empty()),
        Ok(Request::Ping { .. }) => {}
        Err(bad) => assert!(!bad.message.is_empty(), "an error without a message"),
    }
}

fn run_target(target: &str, protocol: Protocol) {
    let corpus = fuzz::corpus(target);
    let started = Instant::now();
    for (name, data) in &corpus {
        let r =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check_parse(protocol, data)));
        assert!(r.is_ok(), "corpus entry {target}/{name} broke the parser");
    }
    let mut runner = proptest::test_runner::TestRunner::new(fuzz::config());
    runner
        .run(&fuzz::inputs(&corpus), |data| {
            check_parse(protocol, &data);
            Ok(())
        })
        .unwrap();
    eprintln!(
        "fuzz {target}: {} corpus entries + {} cases in {:?}",
        corpus.len(),
        fuzz::cases(),
        started.elapsed()
    );
}

#[test]
fn fuzz_client_frames_json() {
    run_target("client_json", Protocol::Json);
}

#[test]
fn fuzz_client_frames_proto() {
    run_target("client_proto", Protocol::Proto);
}

fn topic() -> impl Strategy<Value = String> {
    "\\PC{1,40}".prop_filter("topic length", |t| t.len() <= 256)
}

fn json_payload() -> impl Strategy<Value = Value> {
    fuzz::json_values()
}

/// Requests as the protocol can express them.
fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        (
            any::<u64>(),
            topic(),
            proptest::option::of("[A-Za-z0-9_-]{1,64}"),
            any::<bool>()
        )
            .prop_map(|(id, topic, cursor, presence)| Request::Subscribe {
                id,
                topic,
                cursor,
                presence
            }),
        (any::<u64>(), topic()).prop_map(|(id, topic)| Request::Presence { id, topic }),
        (any::<u64>(), topic()).prop_map(|(id, topic)| Request::Unsubscribe { id, topic }),
        any::<u64>().prop_map(|id| Request::Ping { id }),
        (any::<u64>(), "[A-Za-z0-9._-]{1,200}")
            .prop_map(|(id, token)| Request::Refresh { id, token }),
    ]
}

fn to_json(r: &Request) -> Value {
    match r {
        Request::Subscribe {
            id,
            topic,
            cursor,
            presence,
        } => {
            let mut v = json!({"type": "subscribe", "id": id, "topic": topic});
            if let Some(c) = cursor {
                v["cursor"] = json!(c);
            }
            if *presence {
                v["presence"] = json!(true);
            }
            v
        }
        Request::Presence { id, topic } => json!({"type": "presence", "id": id, "topic": topic}),
        Request::Unsubscribe { id, topic } => {
            json!({"type": "unsubscribe", "id": id, "topic": topic})
        }
        Request::Ping { id } => json!({"type": "ping", "id": id}),
        Request::Refresh { id, token } => json!({"type": "refresh", "id": id, "token": token}),
        Request::Publish { .. } => unreachable!("publishes are built separately"),
    }
}

fn to_proto(r: &Request) -> pb::ClientFrame {
    use pb::client_frame::Kind;
    let (id, kind) = match r.clone() {
        Request::Subscribe {
            id,
            topic,
            cursor,
            presence,
        } => (
            id,
            Kind::Subscribe(pb::Subscribe {
                topic,
                cursor,
                presence,
            }),
        ),
        Request::Presence { id, topic } => (id, Kind::Presence(pb::PresenceRequest { topic })),
        Request::Unsubscribe { id, topic } => (id, Kind::Unsubscribe(pb::Unsubscribe { topic })),
        Request::Ping { id } => (id, Kind::Ping(pb::Ping {})),
        Request::Refresh { id, token } => (id, Kind::Refresh(pb::Refresh { token })),
        Request::Publish {
            id,
            topic,
            payload,
            content_type,
        } => (
            id,
            Kind::Publish(pb::Publish {
                topic,
                payload,
                content_type,
            }),
        ),
    };
    pb::ClientFrame {
        id,
        kind: Some(kind),
    }
}

proptest! {
    #![proptest_config(fuzz::config())]

    /// decode(encode(request)) == request, in JSON.
    #[test]
    fn json_requests_round_trip(r in request()) {
        let text = to_json(&r).to_string();
        prop_assert_eq!(parse(Protocol::Json, text.as_bytes()).unwrap(), r);
    }

    /// A JSON publish keeps its payload document exactly (as compact JSON).
    #[test]
    fn json_publishes_keep_their_payload(id in any::<u64>(), t in topic(), payload in json_payload()) {
        let text = json!({"type": "publish", "id": id, "topic": t, "payload": payload}).to_string();
        match parse(Protocol::Json, text.as_bytes()).unwrap() {
            Request::Publish { id: got, topic, payload: p, content_type } => {
                prop_assert_eq!(got, id);
                prop_assert_eq!(topic, t);
                prop_assert_eq!(content_type, "application/json");
                let back: Value = serde_json::from_slice(&p).unwrap();
                prop_assert_eq!(back, payload);
            }
            other => prop_assert!(false, "parsed as {:?}", other),
        }
    }

    /// decode(encode(request)) == request, in protobuf (publishes included,
    /// with any payload bytes and content type).
    #[test]
    fn proto_requests_round_trip(
        r in prop_oneof![
            request(),
            (any::<u64>(), topic(), prop::collection::vec(any::<u8>(), 0..256), "[a-z]{1,12}/[a-z.+-]{1,20}")
                .prop_map(|(id, topic, payload, content_type)| Request::Publish {
                    id, topic, payload: Bytes::from(payload), content_type,
                }),
        ]
    ) {
        let bytes = to_proto(&r).encode_to_vec();
        prop_assert_eq!(parse(Protocol::Proto, &bytes).unwrap(), r);
    }

    /// Every `message` frame is valid JSON with the event's topic, id and
    /// cursor, and its payload: embedded when JSON, base64 otherwise.
    #[test]
    fn message_frames_are_valid_json(
        t in "\\PC{1,40}",
        id in "\\PC{1,40}",
        cursor in "[A-Za-z0-9_-]{0,64}",
        payload in prop_oneof![
            json_payload().prop_map(|v| (v.to_string().into_bytes(), "application/json".to_owned())),
            prop::collection::vec(any::<u8>(), 0..64).prop_map(|b| (b, "application/octet-stream".to_owned())),
        ],
        created in any::<i64>(),
    ) {
        let ev = LogEvent {
            event_id: id.clone(),
            topic: t.clone(),
            tenant: String::new(),
            user_id: None,
            payload: Bytes::from(payload.0.clone()),
            content_type: payload.1.clone(),
            created_at_ms: created,
            entries: vec![Entry { channel: 1, seq: 1 }],
            live: Default::default(),
        };
        let frame = encode_message(Protocol::Json, &ev, &cursor);
        let v: Value = serde_json::from_slice(&frame).unwrap();
        prop_assert_eq!(&v["type"], "message");
        prop_assert_eq!(v["topic"].as_str(), Some(t.as_str()));
        prop_assert_eq!(v["id"].as_str(), Some(id.as_str()));
        prop_assert_eq!(v["cursor"].as_str(), Some(cursor.as_str()));
        if payload.1 == "application/json" {
            let want: Value = serde_json::from_slice(&payload.0).unwrap();
            prop_assert_eq!(&v["payload"], &want);
        }
        let proto = encode_message(Protocol::Proto, &ev, &cursor);
        let back = pb::ServerFrame::decode(&proto[..]).unwrap();
        match back.kind {
            Some(pb::server_frame::Kind::Message(m)) => {
                prop_assert_eq!(m.event_id, id);
                prop_assert_eq!(&m.payload[..], &payload.0[..]);
            }
            other => prop_assert!(false, "decoded as {:?}", other),
        }
    }
}
