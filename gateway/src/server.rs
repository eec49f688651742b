//! The client listener: HTTP/1.1 with upgrades (hyper), routing `/v1/ws` to
//! WebSocket sessions and `/v1/poll` to long-polls, with the limits that
//! keep a flood of connections or slow headers from exhausting the node.
//!
//! Invariants:
//! - Authentication (and the Origin check, when configured) happens before
//!   the upgrade, so an unauthenticated client never holds a WebSocket; a
//!   draining node accepts nothing new.
//! - At most `max_connections` TCP connections are open on the listener: a
//!   permit is taken before `accept`, so past the cap the kernel's backlog
//!   holds new connections instead of the process.
//! - A client has `header_timeout` to send its request headers.

use crate::http::{
    accept_bounded, authenticate, cors, json_error, origin_allowed, preflight, Body,
};
use crate::metrics as m;
use crate::poll::PollContext;
use crate::protocol::{Protocol, SUBPROTOCOL_JSON, SUBPROTOCOL_PROTO};
use crate::Node;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Accepts connections until `stop` fires; connections are tracked in
/// `tracker`.
pub(crate) async fn serve(
    listener: TcpListener,
    node: Arc<Node>,
    stop: CancellationToken,
    drain: CancellationToken,
    tracker: TaskTracker,
) {
    let slots = Arc::new(Semaphore::new(node.cfg.max_connections.max(1)));
    while let Some((permit, stream, peer)) =
        accept_bounded(&listener, &slots, &stop, "client").await
    {
        let _ = stream.set_nodelay(true);
        let keepalive = socket2::TcpKeepalive::new()
            .with_time(node.cfg.tcp_keepalive)
            .with_interval(node.cfg.tcp_keepalive);
        if let Err(e) = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive) {
            tracing::debug!(%peer, error = %e, "cannot set TCP keepalive");
        }
        let node = node.clone();
        let drain = drain.clone();
        let tracker2 = tracker.clone();
        // Shared by the HTTP connection and, after an upgrade, the WebSocket
        // session: the slot is free only when both are gone.
        let permit = Arc::new(permit);
        tracker.spawn(async move {
            let header_timeout = node.cfg.header_timeout;
            let svc = hyper::service::service_fn(move |req| {
                let node = node.clone();
                let drain = drain.clone();
                let tracker = tracker2.clone();
                let slot = permit.clone();
                async move {
                    Ok::<_, std::convert::Infallible>(route(req, node, drain, tracker, slot).await)
                }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
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
    slot: Arc<OwnedSemaphorePermit>,
) -> Response<Body> {
    match req.uri().path() {
        "/v1/ws" => upgrade(req, node, drain, tracker, slot).await,
        "/v1/poll" => {
            let allowed = &node.cfg.allowed_origins;
            if req.method() == hyper::Method::OPTIONS {
                return preflight(allowed, &req);
            }
            if !origin_allowed(allowed, &req) {
                return json_error(StatusCode::FORBIDDEN, "forbidden", "origin not allowed");
            }
            let origin = req.headers().get("origin").cloned();
            let ctx = PollContext {
                auth: &node.auth,
                planner: node.planner(),
                wakers: &node.wakers,
                slots: &node.poll_slots,
                per_user: &node.polls_per_user,
                read_permits: &node.poll_reads,
                replay_page: node.cfg.page_limit(),
                recheck: node.cfg.head_check,
                drain,
            };
            let mut resp = crate::poll::handle(req, ctx).await;
            cors(allowed, origin.as_ref(), &mut resp);
            resp
        }
        "/healthz" => switchyard_ops::admin::text(StatusCode::OK, "ok\n".into()),
        // The public port says only whether the node takes clients; the
        // reason (which may carry dependency detail) is on the admin port.
        "/readyz" => match node.readiness() {
            Ok(_) => switchyard_ops::admin::text(StatusCode::OK, "ready\n".into()),
            Err(_) => {
                switchyard_ops::admin::text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n".into())
            }
        },
        _ => json_error(
            StatusCode::NOT_FOUND,
            "bad_request",
            "no such endpoint; use /v1/ws or /v1/poll",
        ),
    }
}

async fn upgrade(
    mut req: Request<Incoming>,
    node: Arc<Node>,
    drain: CancellationToken,
    tracker: TaskTracker,
    slot: Arc<OwnedSemaphorePermit>,
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
    if !origin_allowed(&node.cfg.allowed_origins, &req) {
        return json_error(StatusCode::FORBIDDEN, "forbidden", "origin not allowed");
    }
    let identity = match authenticate(&node.auth, &req) {
        Ok(i) => i,
        Err(resp) => return *resp,
    };
    // Quotas are checked before the upgrade: a refused client gets an HTTP
    // answer it can read, not a WebSocket that closes at once.
    let place = node
        .connections
        .reserve(identity.user.clone(), identity.entitlements.tenant.clone());
    // The per-node count is the first line; then the fleet's (Redis,
    // fail-open), which sees this node's counts with the new place in them.
    let place = match place {
        Ok(p) => match node
            .occupancy
            .check(&identity.user, identity.entitlements.tenant.as_deref())
            .await
        {
            Ok(()) => Ok(p),
            Err(refusal) => Err(refusal),
        },
        Err(refusal) => Err(refusal),
    };
    let place = match place {
        Ok(p) => p,
        Err(refusal) => {
            metrics::counter!(m::QUOTA_REFUSALS, "kind" => refusal.kind()).increment(1);
            metrics::counter!(m::CONNECTIONS_TOTAL, "result" => "quota").increment(1);
            return json_error(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                &refusal.to_string(),
            );
        }
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
        let _slot = slot;
        match fut.await {
            Ok(ws) => {
                crate::session::run(ws.into_inner(), node, identity, place, protocol, drain).await
            }
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
