//! The client listener: HTTP/1.1 with upgrades (hyper), routing `/v1/ws` to
//! WebSocket sessions and `/v1/poll` to long-polls, and the drain on
//! shutdown.
//!
//! Invariant: authentication (and the Origin check, when configured) happens
//! before the upgrade, so an unauthenticated client never holds a WebSocket;
//! a draining node accepts nothing new.

use crate::auth::{AuthError, Identity};
use crate::metrics as m;
use crate::protocol::{Protocol, SUBPROTOCOL_JSON, SUBPROTOCOL_PROTO};
use crate::Node;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub(crate) type Body = Full<Bytes>;

/// A JSON error response in the shape of the protocol's `error` frame.
pub(crate) fn json_error(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    let body = serde_json::json!({"type": "error", "code": code, "message": message}).to_string();
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// The bearer token of a request: `Authorization: Bearer` or `?access_token=`.
pub(crate) fn token_of(req: &Request<Incoming>) -> Option<String> {
    if let Some(v) = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        if let Some(t) = v
            .strip_prefix("Bearer ")
            .or_else(|| v.strip_prefix("bearer "))
        {
            return Some(t.trim().to_owned());
        }
    }
    query_param(req.uri().query()?, "access_token")
}

pub(crate) fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(v) => {
                        out.push(v);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub(crate) fn authenticate(
    node: &Node,
    req: &Request<Incoming>,
) -> Result<Identity, Box<Response<Body>>> {
    let verified = match token_of(req) {
        None => Err(AuthError::Missing),
        Some(t) => node.auth.verify(&t),
    };
    verified.map_err(|e| {
        metrics::counter!(m::AUTH_FAILURES, "reason" => e.reason()).increment(1);
        metrics::counter!(m::CONNECTIONS_TOTAL, "result" => "unauthorized").increment(1);
        Box::new(json_error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            &e.to_string(),
        ))
    })
}

/// Accepts connections until `stop` fires; sessions are tracked in `tracker`.
pub(crate) async fn serve(
    listener: TcpListener,
    node: Arc<Node>,
    stop: CancellationToken,
    drain: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    // Typically EMFILE: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let node = node.clone();
        let drain = drain.clone();
        let tracker2 = tracker.clone();
        tracker.spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let node = node.clone();
                let drain = drain.clone();
                let tracker = tracker2.clone();
                async move { Ok::<_, std::convert::Infallible>(route(req, node, drain, tracker).await) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .max_buf_size(64 * 1024)
                .serve_connection(TokioIo::new(stream), svc)
                .with_upgrades()
                .await
            {
                tracing::debug!(%peer, error = %e, "http connection ended with an error");
            }
        });
    }
}

async fn route(
    req: Request<Incoming>,
    node: Arc<Node>,
    drain: CancellationToken,
    tracker: TaskTracker,
) -> Response<Body> {
    match req.uri().path() {
        "/v1/ws" => upgrade(req, node, drain, tracker),
        "/v1/poll" => crate::poll::handle(req, node, drain).await,
        "/healthz" => switchyard_ops::admin::text(StatusCode::OK, "ok\n".into()),
        "/readyz" => match node.ready().await {
            Ok(state) => switchyard_ops::admin::text(StatusCode::OK, format!("{state}\n")),
            Err(why) => switchyard_ops::admin::text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {why}\n"),
            ),
        },
        _ => json_error(
            StatusCode::NOT_FOUND,
            "bad_request",
            "no such endpoint; use /v1/ws or /v1/poll",
        ),
    }
}

fn upgrade(
    mut req: Request<Incoming>,
    node: Arc<Node>,
    drain: CancellationToken,
    tracker: TaskTracker,
) -> Response<Body> {
    if node.draining.load(Ordering::Relaxed) {
        return json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "internal",
            "node is draining; connect to another node",
        );
    }
    if !fastwebsockets::upgrade::is_upgrade_request(&req) {
        return json_error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "expected a WebSocket upgrade",
        );
    }
    if !node.cfg.allowed_origins.is_empty() {
        let origin = req.headers().get("origin").and_then(|v| v.to_str().ok());
        if let Some(o) = origin {
            if !node.cfg.allowed_origins.iter().any(|a| a == o) {
                return json_error(StatusCode::FORBIDDEN, "forbidden", "origin not allowed");
            }
        }
    }
    let identity = match authenticate(&node, &req) {
        Ok(i) => i,
        Err(resp) => return *resp,
    };
    let offered: Vec<String> = req
        .headers()
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|p| p.trim().to_owned()))
        .collect();
    let (protocol, echo) = if offered.is_empty() {
        (Protocol::Json, None)
    } else if offered.iter().any(|p| p == SUBPROTOCOL_PROTO) {
        (Protocol::Proto, Some(SUBPROTOCOL_PROTO))
    } else if offered.iter().any(|p| p == SUBPROTOCOL_JSON) {
        (Protocol::Json, Some(SUBPROTOCOL_JSON))
    } else {
        return json_error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "unsupported subprotocol; offer switchyard.v1.json or switchyard.v1.proto",
        );
    };
    let (resp, fut) = match fastwebsockets::upgrade::upgrade(&mut req) {
        Ok(x) => x,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, "bad_request", &e.to_string()),
    };
    metrics::counter!(m::CONNECTIONS_TOTAL, "result" => "accepted").increment(1);
    tracker.spawn(async move {
        match fut.await {
            Ok(ws) => crate::session::run(ws.into_inner(), node, identity, protocol, drain).await,
            Err(e) => tracing::debug!(error = %e, "upgrade failed"),
        }
    });
    let (parts, _) = resp.into_parts();
    let mut resp = Response::from_parts(parts, Full::new(Bytes::new()));
    if let Some(p) = echo {
        resp.headers_mut()
            .insert("sec-websocket-protocol", HeaderValue::from_static(p));
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters_are_decoded() {
        assert_eq!(
            query_param("a=1&access_token=x%2Ey", "access_token").as_deref(),
            Some("x.y")
        );
        assert_eq!(
            query_param("topic=News+Flash", "topic").as_deref(),
            Some("News Flash")
        );
        assert_eq!(
            query_param("cursor=%zz%", "cursor").as_deref(),
            Some("%zz%")
        );
        assert_eq!(query_param("x", "x"), None);
    }
}
