//! The client protocol (contract section 4): parsing client frames and
//! encoding server frames, in JSON (`switchyard.v1.json`, text frames) or
//! protobuf (`switchyard.v1.proto`, binary frames).
//!
//! Invariant: parsing never panics and always yields either a [`Request`] or a
//! [`BadFrame`] that still carries the request `id` when one could be read, so
//! the client can match the error to its request.

use base64::Engine as _;
use bytes::{BufMut, Bytes, BytesMut};
use prost::Message as _;
use serde::Deserialize;
use switchyard_cursorlog::LogEvent;
use switchyard_livefeed::presence::ChannelPresence;
use switchyard_proto::v1 as pb;

pub const SUBPROTOCOL_JSON: &str = "switchyard.v1.json";
pub const SUBPROTOCOL_PROTO: &str = "switchyard.v1.proto";

/// A connection's wire format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Json,
    Proto,
}

/// A client request.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    Subscribe {
        id: u64,
        topic: String,
        cursor: Option<String>,
        /// Receive `join`/`leave` frames of the topic's presence channels.
        presence: bool,
    },
    /// Who is in the caller's channels of `topic`.
    Presence {
        id: u64,
        topic: String,
    },
    Unsubscribe {
        id: u64,
        topic: String,
    },
    Publish {
        id: u64,
        topic: String,
        payload: Bytes,
        content_type: String,
    },
    Ping {
        id: u64,
    },
    Refresh {
        id: u64,
        token: String,
    },
}

/// A frame that could not be understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadFrame {
    pub id: Option<u64>,
    pub message: String,
}

/// Error codes of the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    BadRequest,
    Unauthorized,
    Forbidden,
    NotPublishable,
    RateLimited,
    TooLarge,
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotPublishable => "not_publishable",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::Internal => "internal",
        }
    }
}

/// A server reply other than `message`.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply<'a> {
    Welcome {
        connection_id: &'a str,
        user: &'a str,
    },
    Subscribed {
        id: u64,
        topic: &'a str,
        recovered: bool,
    },
    Unsubscribed {
        id: u64,
        topic: &'a str,
    },
    Published {
        id: u64,
    },
    Pong {
        id: u64,
    },
    Refreshed {
        id: u64,
    },
    Error {
        id: Option<u64>,
        code: ErrorCode,
        message: &'a str,
    },
    Reconnect {
        after_ms: u64,
    },
    Presence {
        id: u64,
        topic: &'a str,
        /// Per concrete channel (its name): counts and listed members.
        channels: &'a [(String, ChannelPresence)],
    },
}

/// A presence change to tell a subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PresenceChange<'a> {
    pub join: bool,
    pub topic: &'a str,
    /// The concrete channel's name (`Room-CHLT`).
    pub channel: &'a str,
    pub user: &'a str,
    /// Client info, JSON text.
    pub info: Option<&'a str>,
    pub expired: bool,
}

#[derive(Deserialize)]
struct JsonFrame<'a> {
    #[serde(rename = "type")]
    kind: Option<String>,
    id: Option<serde_json::Value>,
    topic: Option<String>,
    cursor: Option<String>,
    #[serde(borrow)]
    payload: Option<&'a serde_json::value::RawValue>,
    token: Option<String>,
    presence: Option<bool>,
}

/// Parses one client frame.
pub fn parse(protocol: Protocol, data: &[u8]) -> Result<Request, BadFrame> {
    match protocol {
        Protocol::Json => parse_json(data),
        Protocol::Proto => parse_proto(data),
    }
}

fn bad(id: Option<u64>, message: impl Into<String>) -> BadFrame {
    BadFrame {
        id,
        message: message.into(),
    }
}

fn parse_json(data: &[u8]) -> Result<Request, BadFrame> {
    let f: JsonFrame<'_> = serde_json::from_slice(data).map_err(|e| {
        bad(
            None,
            format!("frame is not a JSON object of the protocol: {e}"),
        )
    })?;
    let id = match f.id {
        None => 0,
        Some(serde_json::Value::Number(n)) => n
            .as_u64()
            .ok_or_else(|| bad(None, "id must be a non-negative integer"))?,
        Some(_) => return Err(bad(None, "id must be a non-negative integer")),
    };
    let kind = f.kind.ok_or_else(|| bad(Some(id), "missing \"type\""))?;
    let topic = |t: Option<String>| -> Result<String, BadFrame> {
        match t {
            Some(t) if !t.is_empty() && t.len() <= 256 => Ok(t),
            _ => Err(bad(Some(id), "missing or invalid \"topic\"")),
        }
    };
    match kind.as_str() {
        "subscribe" => Ok(Request::Subscribe {
            id,
            topic: topic(f.topic)?,
            cursor: f.cursor.filter(|c| !c.is_empty()),
            presence: f.presence.unwrap_or(false),
        }),
        "presence" => Ok(Request::Presence {
            id,
            topic: topic(f.topic)?,
        }),
        "unsubscribe" => Ok(Request::Unsubscribe {
            id,
            topic: topic(f.topic)?,
        }),
        "publish" => Ok(Request::Publish {
            id,
            topic: topic(f.topic)?,
            payload: Bytes::copy_from_slice(
                f.payload.map(|p| p.get()).unwrap_or("null").as_bytes(),
            ),
            content_type: "application/json".into(),
        }),
        "ping" => Ok(Request::Ping { id }),
        "refresh" => Ok(Request::Refresh {
            id,
            token: f
                .token
                .filter(|t| !t.is_empty())
                .ok_or_else(|| bad(Some(id), "missing \"token\""))?,
        }),
        other => Err(bad(Some(id), format!("unknown frame type {other:?}"))),
    }
}

fn parse_proto(data: &[u8]) -> Result<Request, BadFrame> {
    let f = pb::ClientFrame::decode(data).map_err(|e| {
        bad(
            None,
            format!("frame is not a switchyard.v1.ClientFrame: {e}"),
        )
    })?;
    let id = f.id;
    let topic = |t: String| -> Result<String, BadFrame> {
        if t.is_empty() || t.len() > 256 {
            Err(bad(Some(id), "missing or invalid topic"))
        } else {
            Ok(t)
        }
    };
    match f.kind {
        None => Err(bad(Some(id), "frame has no kind")),
        Some(pb::client_frame::Kind::Subscribe(s)) => Ok(Request::Subscribe {
            id,
            topic: topic(s.topic)?,
            cursor: s.cursor.filter(|c| !c.is_empty()),
            presence: s.presence,
        }),
        Some(pb::client_frame::Kind::Presence(p)) => Ok(Request::Presence {
            id,
            topic: topic(p.topic)?,
        }),
        Some(pb::client_frame::Kind::Unsubscribe(u)) => Ok(Request::Unsubscribe {
            id,
            topic: topic(u.topic)?,
        }),
        Some(pb::client_frame::Kind::Publish(p)) => Ok(Request::Publish {
            id,
            topic: topic(p.topic)?,
            payload: p.payload,
            content_type: if p.content_type.is_empty() {
                "application/json".into()
            } else {
                p.content_type
            },
        }),
        Some(pb::client_frame::Kind::Ping(_)) => Ok(Request::Ping { id }),
        Some(pb::client_frame::Kind::Refresh(r)) if !r.token.is_empty() => {
            Ok(Request::Refresh { id, token: r.token })
        }
        Some(pb::client_frame::Kind::Refresh(_)) => Err(bad(Some(id), "missing token")),
    }
}

/// Encodes a reply.
pub fn encode_reply(protocol: Protocol, reply: &Reply<'_>) -> Bytes {
    match protocol {
        Protocol::Json => Bytes::from(reply_json(reply).to_string()),
        Protocol::Proto => Bytes::from(reply_proto(reply).encode_to_vec()),
    }
}

fn reply_json(reply: &Reply<'_>) -> serde_json::Value {
    use serde_json::json;
    match *reply {
        Reply::Welcome {
            connection_id,
            user,
        } => {
            json!({"type":"welcome","connection_id":connection_id,"user":user})
        }
        Reply::Subscribed {
            id,
            topic,
            recovered,
        } => {
            json!({"type":"subscribed","id":id,"topic":topic,"recovered":recovered})
        }
        Reply::Unsubscribed { id, topic } => json!({"type":"unsubscribed","id":id,"topic":topic}),
        Reply::Published { id } => json!({"type":"published","id":id}),
        Reply::Pong { id } => json!({"type":"pong","id":id}),
        Reply::Refreshed { id } => json!({"type":"refreshed","id":id}),
        Reply::Error { id, code, message } => match id {
            Some(id) => json!({"type":"error","id":id,"code":code.as_str(),"message":message}),
            None => json!({"type":"error","code":code.as_str(),"message":message}),
        },
        Reply::Reconnect { after_ms } => json!({"type":"reconnect","after_ms":after_ms}),
        Reply::Presence {
            id,
            topic,
            channels,
        } => json!({
            "type": "presence",
            "id": id,
            "topic": topic,
            "channels": channels.iter().map(|(name, p)| presence_json(name, p)).collect::<Vec<_>>(),
        }),
    }
}

fn reply_proto(reply: &Reply<'_>) -> pb::ServerFrame {
    use pb::server_frame::Kind;
    let (id, kind) = match *reply {
        Reply::Welcome {
            connection_id,
            user,
        } => (
            0,
            Kind::Welcome(pb::Welcome {
                connection_id: connection_id.into(),
                user: user.into(),
            }),
        ),
        Reply::Subscribed {
            id,
            topic,
            recovered,
        } => (
            id,
            Kind::Subscribed(pb::Subscribed {
                topic: topic.into(),
                recovered,
            }),
        ),
        Reply::Unsubscribed { id, topic } => (
            id,
            Kind::Unsubscribed(pb::Unsubscribed {
                topic: topic.into(),
            }),
        ),
        Reply::Published { id } => (id, Kind::Published(pb::Published {})),
        Reply::Pong { id } => (id, Kind::Pong(pb::Pong {})),
        Reply::Refreshed { id } => (id, Kind::Refreshed(pb::Refreshed {})),
        Reply::Error { id, code, message } => (
            id.unwrap_or(0),
            Kind::Error(pb::Error {
                code: code.as_str().into(),
                message: message.into(),
            }),
        ),
        Reply::Reconnect { after_ms } => (0, Kind::Reconnect(pb::Reconnect { after_ms })),
        Reply::Presence {
            id,
            topic,
            channels,
        } => (
            id,
            Kind::Presence(pb::Presence {
                topic: topic.into(),
                channels: channels
                    .iter()
                    .map(|(name, p)| pb::ChannelPresence {
                        channel: name.clone(),
                        users: p.users,
                        connections: p.connections,
                        members: p
                            .members
                            .iter()
                            .map(|m| pb::PresenceMember {
                                user: m.user.clone(),
                                connections: m.connections,
                                info_json: m.info.clone().unwrap_or_default(),
                            })
                            .collect(),
                        truncated: p.truncated,
                    })
                    .collect(),
            }),
        ),
    };
    pb::ServerFrame {
        id,
        kind: Some(kind),
    }
}

/// Client info as a JSON value: it was checked to be JSON when the token
/// was read; anything else (never expected) goes as a string.
fn info_value(info: &str) -> serde_json::Value {
    serde_json::from_str(info).unwrap_or_else(|_| serde_json::Value::String(info.to_owned()))
}

/// One channel of a `presence` reply, in JSON.
pub fn presence_json(name: &str, p: &ChannelPresence) -> serde_json::Value {
    use serde_json::json;
    json!({
        "channel": name,
        "users": p.users,
        "connections": p.connections,
        "truncated": p.truncated,
        "members": p.members.iter().map(|m| {
            let mut v = json!({"user": m.user, "connections": m.connections});
            if let Some(info) = &m.info {
                v["info"] = info_value(info);
            }
            v
        }).collect::<Vec<_>>(),
    })
}

/// Encodes a `join` or `leave` frame.
pub fn encode_presence_change(protocol: Protocol, c: &PresenceChange<'_>) -> Bytes {
    use serde_json::json;
    match protocol {
        Protocol::Json => {
            let kind = if c.join { "join" } else { "leave" };
            let mut v = json!({
                "type": kind,
                "topic": c.topic,
                "channel": c.channel,
                "user": c.user,
            });
            if let Some(info) = c.info.filter(|_| c.join) {
                v["info"] = info_value(info);
            }
            if c.expired {
                v["expired"] = json!(true);
            }
            Bytes::from(v.to_string())
        }
        Protocol::Proto => {
            let kind = if c.join {
                pb::server_frame::Kind::Join(pb::Join {
                    topic: c.topic.into(),
                    channel: c.channel.into(),
                    user: c.user.into(),
                    info_json: c.info.unwrap_or("").into(),
                })
            } else {
                pb::server_frame::Kind::Leave(pb::Leave {
                    topic: c.topic.into(),
                    channel: c.channel.into(),
                    user: c.user.into(),
                    expired: c.expired,
                })
            };
            Bytes::from(
                pb::ServerFrame {
                    id: 0,
                    kind: Some(kind),
                }
                .encode_to_vec(),
            )
        }
    }
}

/// Encodes a `message` frame. JSON payloads are embedded as-is; others as a
/// base64 string with their `content_type`.
pub fn encode_message(protocol: Protocol, event: &LogEvent, cursor: &str) -> Bytes {
    match protocol {
        Protocol::Proto => Bytes::from(
            pb::ServerFrame {
                id: 0,
                kind: Some(pb::server_frame::Kind::Message(pb::Message {
                    topic: event.topic.clone(),
                    event_id: event.event_id.clone(),
                    cursor: cursor.to_owned(),
                    payload: event.payload.clone(),
                    content_type: event.content_type.clone(),
                    created_at_ms: event.created_at_ms,
                })),
            }
            .encode_to_vec(),
        ),
        Protocol::Json => {
            let mut b = BytesMut::with_capacity(96 + event.payload.len() + cursor.len());
            b.put_slice(b"{\"type\":\"message\",\"topic\":");
            put_json_str(&mut b, &event.topic);
            b.put_slice(b",\"id\":");
            put_json_str(&mut b, &event.event_id);
            b.put_slice(b",\"cursor\":\"");
            // Cursors are URL-safe base64: no escaping needed.
            b.put_slice(cursor.as_bytes());
            b.put_slice(b"\",\"payload\":");
            if event.is_json() {
                b.put_slice(&event.payload);
            } else {
                b.put_u8(b'"');
                b.put_slice(
                    base64::engine::general_purpose::STANDARD
                        .encode(&event.payload)
                        .as_bytes(),
                );
                b.put_slice(b"\",\"content_type\":");
                put_json_str(&mut b, &event.content_type);
            }
            b.put_slice(b",\"created_at_ms\":");
            b.put_slice(event.created_at_ms.to_string().as_bytes());
            b.put_u8(b'}');
            b.freeze()
        }
    }
}

fn put_json_str(b: &mut BytesMut, s: &str) {
    // serde_json's string escaping, written straight into the buffer.
    let mut w = b.writer();
    let _ = serde_json::to_writer(&mut w, s);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_contract_frames() {
        let p = |s: &str| parse(Protocol::Json, s.as_bytes());
        assert_eq!(
            p(r#"{"type":"subscribe","id":1,"topic":"News","cursor":"abc"}"#).unwrap(),
            Request::Subscribe {
                id: 1,
                topic: "News".into(),
                cursor: Some("abc".into()),
                presence: false,
            }
        );
        assert_eq!(
            p(r#"{"type":"subscribe","id":2,"topic":"Chat","presence":true}"#).unwrap(),
            Request::Subscribe {
                id: 2,
                topic: "Chat".into(),
                cursor: None,
                presence: true,
            }
        );
        assert_eq!(
            p(r#"{"type":"presence","id":3,"topic":"Chat"}"#).unwrap(),
            Request::Presence {
                id: 3,
                topic: "Chat".into()
            }
        );
        assert_eq!(p(r#"{"type":"presence","id":3}"#).unwrap_err().id, Some(3));
        assert_eq!(
            p(r#"{"type":"ping","id":4}"#).unwrap(),
            Request::Ping { id: 4 }
        );
        assert!(matches!(
            p(r#"{"type":"publish","id":3,"topic":"Chat","payload":{"a":1}}"#).unwrap(),
            Request::Publish { id: 3, ref payload, .. } if &payload[..] == br#"{"a":1}"#
        ));
        assert_eq!(
            p(r#"{"type":"refresh","id":5,"token":"t"}"#).unwrap(),
            Request::Refresh {
                id: 5,
                token: "t".into()
            }
        );
    }

    #[test]
    fn bad_frames_keep_the_id() {
        let p = |s: &[u8]| parse(Protocol::Json, s).unwrap_err();
        assert_eq!(p(br#"{"type":"bogus","id":7}"#).id, Some(7));
        assert_eq!(p(br#"{"type":"subscribe","id":8}"#).id, Some(8));
        assert_eq!(p(b"not json").id, None);
        assert_eq!(p(br#"{"type":"ping","id":-1}"#).id, None);
        assert_eq!(p(b"\xff\x00").id, None);
        assert!(parse(Protocol::Proto, b"\xff\xff\xff").is_err());
    }

    #[test]
    fn message_frames_are_valid_json() {
        let ev = LogEvent {
            live: Default::default(),
            event_id: "e\"1".into(),
            topic: "News".into(),
            tenant: String::new(),
            user_id: None,
            payload: Bytes::from_static(br#"{"h":"x"}"#),
            content_type: "application/json".into(),
            created_at_ms: 42,
            entries: vec![],
        };
        let b = encode_message(Protocol::Json, &ev, "CUR");
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["id"], "e\"1");
        assert_eq!(v["payload"]["h"], "x");
        assert_eq!(v["cursor"], "CUR");
        let mut bin = ev.clone();
        bin.payload = Bytes::from_static(&[0, 1, 2]);
        bin.content_type = "application/octet-stream".into();
        let v: serde_json::Value =
            serde_json::from_slice(&encode_message(Protocol::Json, &bin, "C")).unwrap();
        assert_eq!(v["payload"], "AAEC");
        assert_eq!(v["content_type"], "application/octet-stream");
        let p = encode_message(Protocol::Proto, &ev, "C");
        let f = pb::ServerFrame::decode(p).unwrap();
        assert!(matches!(f.kind, Some(pb::server_frame::Kind::Message(m)) if m.cursor == "C"));
    }

    #[test]
    fn presence_frames_in_both_protocols() {
        let change = PresenceChange {
            join: true,
            topic: "Chat",
            channel: "Chat-A",
            user: "u\"1",
            info: Some(r#"{"name":"Ann"}"#),
            expired: false,
        };
        let v: serde_json::Value =
            serde_json::from_slice(&encode_presence_change(Protocol::Json, &change)).unwrap();
        assert_eq!(v["type"], "join");
        assert_eq!(v["user"], "u\"1");
        assert_eq!(v["info"]["name"], "Ann");
        let leave = PresenceChange {
            join: false,
            expired: true,
            ..change
        };
        let v: serde_json::Value =
            serde_json::from_slice(&encode_presence_change(Protocol::Json, &leave)).unwrap();
        assert_eq!(
            (v["type"].as_str(), v["expired"].as_bool()),
            (Some("leave"), Some(true))
        );
        assert!(v.get("info").is_none());
        let f = pb::ServerFrame::decode(encode_presence_change(Protocol::Proto, &leave)).unwrap();
        assert!(
            matches!(f.kind, Some(pb::server_frame::Kind::Leave(l)) if l.expired && l.user == "u\"1")
        );
        let channels = vec![(
            "Chat-A".to_owned(),
            ChannelPresence {
                users: 3,
                connections: 5,
                members: vec![switchyard_livefeed::presence::Member {
                    user: "a".into(),
                    connections: 2,
                    info: None,
                }],
                truncated: true,
            },
        )];
        let reply = Reply::Presence {
            id: 4,
            topic: "Chat",
            channels: &channels,
        };
        let v: serde_json::Value =
            serde_json::from_slice(&encode_reply(Protocol::Json, &reply)).unwrap();
        assert_eq!(v["channels"][0]["users"], 3);
        assert_eq!(v["channels"][0]["members"][0]["connections"], 2);
        assert_eq!(v["channels"][0]["truncated"], true);
        let f = pb::ServerFrame::decode(encode_reply(Protocol::Proto, &reply)).unwrap();
        assert!(
            matches!(f.kind, Some(pb::server_frame::Kind::Presence(p)) if p.channels[0].connections == 5)
        );
    }

    #[test]
    fn proto_roundtrip() {
        let f = pb::ClientFrame {
            id: 9,
            kind: Some(pb::client_frame::Kind::Subscribe(pb::Subscribe {
                topic: "News".into(),
                cursor: None,
                presence: false,
            })),
        };
        assert_eq!(
            parse(Protocol::Proto, &f.encode_to_vec()).unwrap(),
            Request::Subscribe {
                id: 9,
                topic: "News".into(),
                cursor: None,
                presence: false,
            }
        );
    }
}
