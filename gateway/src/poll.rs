//! `GET /v1/poll`: the long-poll fallback for networks that block
//! WebSockets. Stateless on the node: every request carries its cursor, reads
//! the log after it, and, when nothing is there yet, waits for the live feed
//! to signal new events (re-checking the log at least once a second).
//!
//! Invariant: the same replay rules as a WebSocket catch-up
//! ([`crate::replay::plan_page`]), so the guarantees (complete, once,
//! ordered, scoped) hold across both transports and a client may switch.

use crate::protocol::{self, ErrorCode, Protocol};
use crate::replay::{plan_page, Action};
use crate::server::{authenticate, json_error, query_param, Body};
use crate::Node;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const MAX_TIMEOUT_MS: u64 = 60_000;
const MAX_MESSAGES: usize = 1000;

pub(crate) async fn handle(
    req: Request<Incoming>,
    node: Arc<Node>,
    drain: CancellationToken,
) -> Response<Body> {
    let identity = match authenticate(&node, &req) {
        Ok(i) => i,
        Err(resp) => return *resp,
    };
    let query = req.uri().query().unwrap_or("");
    let Some(topic) = query_param(query, "topic").filter(|t| !t.is_empty()) else {
        return json_error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "missing topic parameter",
        );
    };
    let cursor = query_param(query, "cursor").filter(|c| !c.is_empty());
    let timeout_ms = match query_param(query, "timeout_ms").map(|t| t.parse::<u64>()) {
        None => 25_000,
        Some(Ok(t)) => t.min(MAX_TIMEOUT_MS),
        Some(Err(_)) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "timeout_ms must be a number of milliseconds",
            )
        }
    };
    let plan = match crate::subscribe::plan(&node, &identity, &topic, cursor.as_deref(), None).await
    {
        Ok(p) => p,
        Err((code, msg)) => {
            let status = match code {
                ErrorCode::Forbidden => StatusCode::FORBIDDEN,
                ErrorCode::Internal => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::BAD_REQUEST,
            };
            return json_error(status, code.as_str(), &msg);
        }
    };
    let mut positions = plan.positions;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(timeout_ms);
    let mut messages: Vec<Bytes> = Vec::new();
    loop {
        // Register interest before reading so an event landing between the
        // read and the wait still wakes us.
        let notified = node.live_notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        loop {
            let page = match node
                .log
                .read_after(&positions, None, node.cfg.replay_page)
                .await
            {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(error = %e, "long-poll read failed");
                    return json_error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "internal",
                        "the message log is unavailable; retry shortly",
                    );
                }
            };
            let mut pos: HashMap<i64, i64> = positions.iter().copied().collect();
            let actions = plan_page(&page.rows, &mut pos);
            let progressed = !actions.is_empty();
            for action in actions {
                let (event, fresh, earlier) = match action {
                    Action::Jump { channel, to } => {
                        set(&mut positions, channel, to);
                        continue;
                    }
                    Action::Event {
                        event,
                        fresh,
                        earlier,
                    } => (event, fresh, earlier),
                };
                for (ch, seq) in &fresh {
                    set(&mut positions, *ch, *seq);
                }
                let for_other_user = event
                    .user_id
                    .as_deref()
                    .is_some_and(|u| u != &*identity.user);
                if earlier || for_other_user {
                    continue;
                }
                let cursor = switchyard_cursorlog::cursor::encode_parts(
                    node.log.epoch(),
                    positions.iter().copied(),
                );
                messages.push(protocol::encode_message(Protocol::Json, &event, &cursor));
                if messages.len() >= MAX_MESSAGES {
                    break;
                }
            }
            if !progressed {
                break;
            }
            if !page.more || messages.len() >= MAX_MESSAGES {
                break;
            }
        }
        if !messages.is_empty() || tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::select! {
            _ = &mut notified => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = tokio::time::sleep_until(deadline) => {}
            _ = drain.cancelled() => break,
        }
    }
    let cursor =
        switchyard_cursorlog::cursor::encode_parts(node.log.epoch(), positions.iter().copied());
    let mut body = Vec::with_capacity(64 + messages.iter().map(|m| m.len() + 1).sum::<usize>());
    body.extend_from_slice(b"{\"messages\":[");
    for (i, m) in messages.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(m);
    }
    body.extend_from_slice(b"],\"cursor\":\"");
    body.extend_from_slice(cursor.as_bytes());
    body.extend_from_slice(b"\",\"recovered\":");
    body.extend_from_slice(if plan.recovered { b"true" } else { b"false" });
    body.push(b'}');
    let mut r = Response::new(Full::new(Bytes::from(body)));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn set(positions: &mut [(i64, i64)], channel: i64, seq: i64) {
    if let Some(p) = positions.iter_mut().find(|p| p.0 == channel) {
        p.1 = seq;
    }
}
