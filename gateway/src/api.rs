//! The server API: a separate listener (`SWITCHYARD_API_LISTEN`) for
//! backend services, authenticated by API key, never exposed with the
//! client port. Endpoints (described in `docs/server-api.yaml`, also served
//! at `/v1/openapi.yaml`):
//! - `POST /v1/publish`: an event scoped like a Kafka event, stored in the
//!   cursor log and sent live; answers the stored entries.
//! - `POST /v1/disconnect`: closes a user's connections on every node
//!   (close code 4003), through the Redis control channel.
//! - `GET /v1/history`: a page of a topic's log for given entitlements, with
//!   the long-poll's replay rules.
//! - `GET /v1/info`: this node's connections and subscriptions.
//! - `GET /v1/presence`, `GET /v1/presence/stats`: who is in a topic's
//!   presence channels for given entitlements (members up to the cap, and
//!   counts), over the fleet.
//!
//! Invariants: every request but the description is refused (401) unless it
//! carries a configured key, compared in constant time against every key; a
//! refusal is a JSON body in the shape of the protocol's `error` frame.

use crate::auth::Identity;
use crate::error::RequestError;
use crate::http::{
    accept_bounded, json_error, messages_response, query_param, required_topic, Body,
};
use crate::metrics as m;
use crate::presence::PresenceChannel;
use crate::protocol::presence_json;
use crate::publish::SystemEvent;
use crate::replay::read_messages;
use crate::Node;
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Deserialize;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use subtle::ConstantTimeEq as _;
use switchyard_channels::{Entitlements, Scope};
use switchyard_livefeed::Control;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The OpenAPI description of this API.
pub const OPENAPI: &str = include_str!("../../docs/server-api.yaml");

/// Open connections on the API listener (backends, not browsers).
const MAX_API_CONNECTIONS: usize = 256;
/// Largest JSON body beyond the payload itself.
const BODY_OVERHEAD: usize = 64 * 1024;
/// Rows per history page, at most.
const MAX_HISTORY: usize = 1000;
/// The Kafka envelope's bounds (bridge `envelope.rs`), for API publishes.
const MAX_ID_BYTES: usize = 128;
const MAX_NAME_BYTES: usize = 256;
const MAX_SCOPES: usize = 64;
const MAX_SCOPE_VALUES: usize = 1024;

/// Serves the API until `stop` fires; connections are tracked in `tracker`.
pub(crate) async fn serve(
    listener: TcpListener,
    node: Arc<Node>,
    stop: CancellationToken,
    tracker: TaskTracker,
) {
    let slots = Arc::new(Semaphore::new(MAX_API_CONNECTIONS));
    while let Some((permit, stream, peer)) =
        accept_bounded(&listener, &slots, &stop, "server API").await
    {
        let node = node.clone();
        let stop = stop.clone();
        tracker.spawn(async move {
            let _permit = permit;
            let svc = hyper::service::service_fn(move |req| {
                let node = node.clone();
                async move { Ok::<_, std::convert::Infallible>(route(req, node).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "api connection ended with an error");
                },
                _ = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
                }
            }
        });
    }
}

async fn route(req: Request<Incoming>, node: Arc<Node>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    if path == "/v1/openapi.yaml" {
        let mut r = Response::new(Full::new(Bytes::from_static(OPENAPI.as_bytes())));
        r.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/yaml"));
        return r;
    }
    let endpoint = match path.as_str() {
        "/v1/publish" => "publish",
        "/v1/disconnect" => "disconnect",
        "/v1/history" => "history",
        "/v1/info" => "info",
        "/v1/presence" => "presence",
        "/v1/presence/stats" => "presence_stats",
        _ => "unknown",
    };
    let resp = if !authorized(&node.cfg.api_keys, &req) {
        json_error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or unknown API key: send Authorization: Bearer <key> or X-Api-Key: <key>",
        )
    } else {
        match (req.method().clone(), endpoint) {
            (Method::POST, "publish") => publish(req, &node).await,
            (Method::POST, "disconnect") => disconnect(req, &node).await,
            (Method::GET, "history") => history(&req, &node).await,
            (Method::GET, "info") => info(&node),
            (Method::GET, "presence") => presence(&req, &node, true).await,
            (Method::GET, "presence_stats") => presence(&req, &node, false).await,
            (_, "unknown") => json_error(
                StatusCode::NOT_FOUND,
                "bad_request",
                "no such endpoint; see /v1/openapi.yaml",
            ),
            _ => json_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "bad_request",
                "method not allowed; see /v1/openapi.yaml",
            ),
        }
    };
    let result = if resp.status().is_success() {
        "ok"
    } else if resp.status() == StatusCode::UNAUTHORIZED {
        "unauthorized"
    } else if resp.status().is_client_error() {
        "refused"
    } else {
        "error"
    };
    metrics::counter!(m::API_REQUESTS, "op" => endpoint, "result" => result).increment(1);
    resp
}

/// Whether the request carries one of `keys`. Every key is compared, each
/// in constant time, so the time taken says nothing about which key or how
/// much of it matched (only, as for any comparison, about its length).
fn authorized<B>(keys: &[String], req: &Request<B>) -> bool {
    let h = req.headers();
    let presented = h
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .or_else(|| h.get("x-api-key").and_then(|v| v.to_str().ok()))
        .map(str::trim);
    let Some(presented) = presented.filter(|p| !p.is_empty()) else {
        return false;
    };
    let mut ok = subtle::Choice::from(0);
    for k in keys {
        ok |= k.as_bytes().ct_eq(presented.as_bytes());
    }
    ok.into()
}

fn json_ok(value: &serde_json::Value) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(value.to_string())));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn refuse(e: RequestError, what: &'static str) -> Response<Body> {
    e.log(what);
    let status = match e {
        RequestError::Log(_) | RequestError::NotStored => StatusCode::SERVICE_UNAVAILABLE,
        RequestError::NoChannels(_) => StatusCode::FORBIDDEN,
        RequestError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        _ => StatusCode::BAD_REQUEST,
    };
    json_error(status, e.code().as_str(), &e.to_string())
}

async fn read_json<T: for<'de> Deserialize<'de>>(
    req: Request<Incoming>,
    limit: usize,
) -> Result<T, Response<Body>> {
    let body = match Limited::new(req.into_body(), limit).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return Err(if e.is::<http_body_util::LengthLimitError>() {
                json_error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "too_large",
                    &format!("request body exceeds {limit} bytes"),
                )
            } else {
                json_error(StatusCode::BAD_REQUEST, "bad_request", "unreadable body")
            })
        }
    };
    serde_json::from_slice(&body).map_err(|e| {
        json_error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            &format!("invalid JSON body: {e}"),
        )
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishBody {
    #[serde(default)]
    id: Option<String>,
    topic: String,
    #[serde(default)]
    tenant: Option<String>,
    #[serde(default)]
    scopes: Vec<ScopeBody>,
    #[serde(default)]
    user_id: Option<String>,
    #[serde(default)]
    payload: Option<Box<serde_json::value::RawValue>>,
    #[serde(default)]
    payload_base64: Option<String>,
    #[serde(default)]
    content_type: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScopeBody {
    #[serde(rename = "type")]
    scope_type: String,
    #[serde(default)]
    values: Vec<String>,
}

/// The Kafka envelope's rules for the fields of an API publish.
fn validate(b: &PublishBody) -> Result<(), String> {
    if let Some(id) = &b.id {
        if id.is_empty() || id.len() > MAX_ID_BYTES {
            return Err(format!("id must be 1 to {MAX_ID_BYTES} bytes"));
        }
    }
    if b.topic.is_empty() {
        return Err("topic is required".into());
    }
    for (field, v) in [
        ("id", b.id.as_deref()),
        ("topic", Some(b.topic.as_str())),
        ("tenant", b.tenant.as_deref()),
        ("user_id", b.user_id.as_deref()),
    ] {
        let Some(v) = v else { continue };
        if v.chars().any(char::is_control) {
            return Err(format!("{field} contains control characters"));
        }
        if field != "id" && v.len() > MAX_NAME_BYTES {
            return Err(format!("{field} is longer than {MAX_NAME_BYTES} bytes"));
        }
    }
    if b.scopes.len() > MAX_SCOPES || b.scopes.iter().any(|s| s.values.len() > MAX_SCOPE_VALUES) {
        return Err(format!(
            "at most {MAX_SCOPES} scopes of {MAX_SCOPE_VALUES} values each"
        ));
    }
    if b.scopes.iter().any(|s| s.scope_type.is_empty()) {
        return Err("a scope has an empty type".into());
    }
    if b.payload.is_some() && b.payload_base64.is_some() {
        return Err("give payload or payload_base64, not both".into());
    }
    Ok(())
}

async fn publish(req: Request<Incoming>, node: &Node) -> Response<Body> {
    let max = node.cfg.api_max_payload_bytes;
    let body: PublishBody = match read_json(req, max.saturating_mul(2) + BODY_OVERHEAD).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    if let Err(e) = validate(&body) {
        return json_error(StatusCode::BAD_REQUEST, "bad_request", &e);
    }
    let (payload, content_type) = match (&body.payload_base64, &body.payload) {
        (Some(b64), _) => match base64::engine::general_purpose::STANDARD.decode(b64) {
            Ok(p) => (
                Bytes::from(p),
                body.content_type
                    .clone()
                    .unwrap_or_else(|| "application/octet-stream".into()),
            ),
            Err(_) => {
                return json_error(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    "payload_base64 is not valid base64",
                )
            }
        },
        (None, Some(raw)) => (
            Bytes::copy_from_slice(raw.get().as_bytes()),
            "application/json".into(),
        ),
        (None, None) => (Bytes::from_static(b"null"), "application/json".into()),
    };
    if payload.len() > max {
        return refuse(
            RequestError::PayloadTooLarge {
                size: payload.len(),
                limit: max,
            },
            "api publish",
        );
    }
    let ev = SystemEvent {
        id: body.id,
        topic: body.topic,
        tenant: body.tenant.unwrap_or_default(),
        scopes: body
            .scopes
            .into_iter()
            .map(|s| Scope {
                scope_type: s.scope_type,
                values: s.values,
            })
            .collect(),
        user_id: body.user_id.filter(|u| !u.is_empty()),
        payload,
        content_type,
    };
    match node.publishing().publish_system(ev).await {
        Ok(p) => json_ok(&serde_json::json!({
            "event_id": p.event_id,
            "duplicate": p.duplicate,
            "routed": p.duplicate || !p.entries.is_empty(),
            "entries": p.entries.iter().map(|(name, id, seq)| serde_json::json!({
                "channel": name, "channel_id": id, "seq": seq,
            })).collect::<Vec<_>>(),
        })),
        Err(e) => refuse(e, "api publish"),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DisconnectBody {
    user: String,
}

async fn disconnect(req: Request<Incoming>, node: &Node) -> Response<Body> {
    let body: DisconnectBody = match read_json(req, BODY_OVERHEAD).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    if body.user.is_empty() || body.user.len() > MAX_NAME_BYTES {
        return json_error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            &format!("user must be 1 to {MAX_NAME_BYTES} bytes"),
        );
    }
    // This node first, so the answer holds even when Redis does not.
    let here = node.connections.disconnect(&body.user);
    metrics::counter!(m::SERVER_DISCONNECTS).increment(here as u64);
    let control = Control::Disconnect {
        user: body.user.clone(),
    };
    match node.publisher.publish_control(&control).await {
        Ok(()) => json_ok(&serde_json::json!({
            "user": body.user, "closed_here": here, "broadcast": true,
        })),
        Err(e) => {
            tracing::warn!(error = %e, "disconnect broadcast failed");
            json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "internal",
                "closed on this node only: the broadcast to other nodes failed (Redis); retry",
            )
        }
    }
}

fn list(query: &str, name: &str) -> Vec<String> {
    query_param(query, name)
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

async fn history(req: &Request<Incoming>, node: &Node) -> Response<Body> {
    let query = req.uri().query().unwrap_or("");
    let topic = match required_topic(query) {
        Ok(t) => t,
        Err(refusal) => return *refusal,
    };
    let limit = match query_param(query, "limit").map(|l| l.parse::<usize>()) {
        None => 100,
        Some(Ok(l)) if (1..=MAX_HISTORY).contains(&l) => l,
        Some(_) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                &format!("limit must be 1 to {MAX_HISTORY}"),
            )
        }
    };
    let user = query_param(query, "user").filter(|u| !u.is_empty());
    let identity = query_identity(query);
    let cursor = query_param(query, "cursor").filter(|c| !c.is_empty());
    let planner = node.planner();
    let plan = match planner
        .plan(&identity, &topic, cursor.as_deref(), None)
        .await
    {
        Ok(p) => p,
        Err(e) => return refuse(e, "api history"),
    };
    let log = planner.log;
    let mut positions = plan.positions;
    let (messages, more) = match read_messages(
        log,
        planner.cursors,
        &mut positions,
        user.as_deref(),
        node.cfg.page_limit(),
        limit,
        None,
    )
    .await
    {
        Ok(r) => r,
        Err(e) => return refuse(RequestError::Log(e), "api history"),
    };
    let cursor = planner.cursors.encode(positions.iter().copied());
    messages_response(&messages, &cursor, plan.recovered, Some(more))
}

/// The entitlements of a history or presence query (`tenant`, `products`,
/// `features`, `user`).
fn query_identity(query: &str) -> Identity {
    Identity {
        user: query_param(query, "user").unwrap_or_default().into(),
        exp: u64::MAX,
        info: None,
        entitlements: Entitlements {
            tenant: query_param(query, "tenant").filter(|t| !t.is_empty()),
            products: list(query, "products"),
            features: list(query, "features"),
        },
    }
}

async fn presence(req: &Request<Incoming>, node: &Node, members: bool) -> Response<Body> {
    let query = req.uri().query().unwrap_or("");
    let topic = match required_topic(query) {
        Ok(t) => t,
        Err(refusal) => return *refusal,
    };
    let topology = node.topology.current();
    if !topology.has_topic(&topic) {
        return refuse(RequestError::UnknownTopic(topic), "api presence");
    }
    if !topology.topic_has_presence(&topic) {
        return json_error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            &format!("topic {topic} has no presence (no channel of it has Presence: true)"),
        );
    }
    let identity = query_identity(query);
    let channels = PresenceChannel::of(topology.resolve_subscriber(&topic, &identity.entitlements));
    if channels.is_empty() {
        return refuse(RequestError::NoChannels(topic), "api presence");
    }
    match node.presence.read(&channels, members).await {
        Ok(list) => {
            let channels: Vec<serde_json::Value> = list
                .iter()
                .map(|(name, p)| {
                    let mut v = presence_json(name, p);
                    if !members {
                        if let Some(o) = v.as_object_mut() {
                            o.remove("members");
                            o.remove("truncated");
                        }
                    }
                    v
                })
                .collect();
            json_ok(&serde_json::json!({ "topic": topic, "channels": channels }))
        }
        Err(message) => json_error(StatusCode::SERVICE_UNAVAILABLE, "internal", &message),
    }
}

fn info(node: &Node) -> Response<Body> {
    json_ok(&serde_json::json!({
        "node": node.id,
        "connections": node.connections.connections(),
        "users": node.connections.users(),
        "subscriptions": node.connections.subscriptions(),
        "live_feed_connected": node.feed.connected.load(Ordering::Relaxed),
        "draining": node.draining.load(Ordering::Relaxed),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().uri("/v1/info");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn only_configured_keys_are_authorized() {
        let keys = vec![
            "key-one-0123456789".to_owned(),
            "key-two-0123456789".to_owned(),
        ];
        assert!(authorized(
            &keys,
            &req(&[("authorization", "Bearer key-two-0123456789")])
        ));
        assert!(authorized(
            &keys,
            &req(&[("x-api-key", "key-one-0123456789")])
        ));
        assert!(!authorized(
            &keys,
            &req(&[("authorization", "Bearer key-one-012345678")])
        ));
        assert!(!authorized(
            &keys,
            &req(&[("authorization", "key-one-0123456789")])
        ));
        assert!(!authorized(&keys, &req(&[("x-api-key", "")])));
        assert!(!authorized(&keys, &req(&[])));
        assert!(!authorized(&[], &req(&[("x-api-key", "")])));
    }

    #[test]
    fn publishes_follow_the_envelope_rules() {
        let body = |v: serde_json::Value| serde_json::from_value::<PublishBody>(v).unwrap();
        assert!(validate(&body(serde_json::json!({"topic": "News"}))).is_ok());
        assert!(validate(&body(serde_json::json!({"topic": ""}))).is_err());
        assert!(validate(&body(
            serde_json::json!({"topic": "N", "id": "x".repeat(129)})
        ))
        .is_err());
        assert!(validate(&body(serde_json::json!({"topic": "N\u{7}"}))).is_err());
        assert!(validate(&body(
            serde_json::json!({"topic": "N", "scopes": [{"type": "", "values": []}]})
        ))
        .is_err());
        assert!(validate(&body(
            serde_json::json!({"topic": "N", "payload": 1, "payload_base64": "AA=="})
        ))
        .is_err());
        assert!(serde_json::from_value::<PublishBody>(
            serde_json::json!({"topic": "N", "channel": "x"})
        )
        .is_err());
    }
}
