//! What the client listener's HTTP handlers share: the JSON error response,
//! reading the bearer token and query parameters, and authenticating a
//! request.
//!
//! Invariant: a refusal is a JSON body in the shape of the protocol's
//! `error` frame, and never carries internal detail.

use crate::auth::{AuthError, Authenticator, Identity};
use crate::metrics as m;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

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
pub(crate) fn token_of<B>(req: &Request<B>) -> Option<String> {
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

/// The first value of `name` in a query string, decoded.
pub(crate) fn query_param(query: &str, name: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// The non-empty `topic` parameter of a query; without one, a ready 400.
pub(crate) fn required_topic(query: &str) -> Result<String, Box<Response<Body>>> {
    query_param(query, "topic")
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            Box::new(json_error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "missing topic parameter",
            ))
        })
}

/// Verifies the request's token; the refusal is a ready 401 response.
pub(crate) fn authenticate(
    auth: &Authenticator,
    req: &Request<Incoming>,
) -> Result<Identity, Box<Response<Body>>> {
    let verified = match token_of(req) {
        None => Err(AuthError::Missing),
        Some(t) => auth.verify(&t),
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

/// Whether `origin` may connect: any when the allow-list is empty, and
/// requests without an `Origin` (non-browser clients) always.
pub(crate) fn origin_allowed<B>(allowed: &[String], req: &Request<B>) -> bool {
    is_allowed(allowed, req.headers().get("origin"))
}

fn is_allowed(allowed: &[String], origin: Option<&HeaderValue>) -> bool {
    if allowed.is_empty() {
        return true;
    }
    match origin.map(|v| v.to_str()) {
        Some(Ok(o)) => allowed.iter().any(|a| a == o),
        Some(Err(_)) => false,
        None => true,
    }
}

/// CORS headers for a browser request from `origin` (long-poll): the
/// origin is echoed when allowed (any origin when the allow-list is empty);
/// nothing is added for a request without `Origin` or from another origin.
pub(crate) fn cors<R>(allowed: &[String], origin: Option<&HeaderValue>, resp: &mut Response<R>) {
    let Some(origin) = origin else {
        return;
    };
    if !is_allowed(allowed, Some(origin)) {
        return;
    }
    let h = resp.headers_mut();
    h.insert("access-control-allow-origin", origin.clone());
    h.insert("vary", HeaderValue::from_static("origin"));
    h.insert(
        "access-control-allow-methods",
        HeaderValue::from_static("GET, OPTIONS"),
    );
    h.insert(
        "access-control-allow-headers",
        HeaderValue::from_static("authorization, content-type"),
    );
    h.insert("access-control-max-age", HeaderValue::from_static("600"));
}

/// The answer to a CORS preflight (`OPTIONS`): 204 with the CORS headers
/// when the origin is allowed, 403 otherwise.
pub(crate) fn preflight<B>(allowed: &[String], req: &Request<B>) -> Response<Body> {
    if !origin_allowed(allowed, req) {
        return json_error(StatusCode::FORBIDDEN, "forbidden", "origin not allowed");
    }
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::NO_CONTENT;
    cors(allowed, req.headers().get("origin"), &mut r);
    r
}

/// A `{"messages": [...], "cursor": ..., "recovered": ...}` response (and
/// `"more"` when given) from messages already encoded as JSON: what a
/// long-poll and the server API's history answer.
pub(crate) fn messages_response(
    messages: &[Bytes],
    cursor: &str,
    recovered: bool,
    more: Option<bool>,
) -> Response<Body> {
    let flag = |b: bool| -> &'static [u8] {
        if b {
            b"true"
        } else {
            b"false"
        }
    };
    let mut body = Vec::with_capacity(96 + messages.iter().map(|m| m.len() + 1).sum::<usize>());
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
    body.extend_from_slice(flag(recovered));
    if let Some(more) = more {
        body.extend_from_slice(b",\"more\":");
        body.extend_from_slice(flag(more));
    }
    body.push(b'}');
    let mut r = Response::new(Full::new(Bytes::from(body)));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// Takes a connection slot, then accepts one connection: past the slots,
/// new connections wait in the kernel's backlog instead of the process.
/// `None` once `stop` fires. `what` names the listener in logs.
pub(crate) async fn accept_bounded(
    listener: &TcpListener,
    slots: &Arc<Semaphore>,
    stop: &CancellationToken,
    what: &'static str,
) -> Option<(OwnedSemaphorePermit, TcpStream, SocketAddr)> {
    loop {
        let permit = tokio::select! {
            _ = stop.cancelled() => return None,
            p = slots.clone().acquire_owned() => p.ok()?,
        };
        tokio::select! {
            _ = stop.cancelled() => return None,
            r = listener.accept() => match r {
                Ok((stream, peer)) => return Some((permit, stream, peer)),
                Err(e) => {
                    // Typically EMFILE: back off instead of spinning.
                    tracing::warn!(error = %e, listener = what, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
        }
    }
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
        assert_eq!(query_param("x", "x").as_deref(), Some(""));
        assert_eq!(query_param("y=1", "x"), None);
    }

    #[test]
    fn origins_are_checked_only_when_configured() {
        let req = |o: Option<&str>| {
            let mut b = Request::builder().uri("/v1/ws");
            if let Some(o) = o {
                b = b.header("origin", o);
            }
            b.body(()).unwrap()
        };
        let allowed = vec!["https://app.example".to_owned()];
        assert!(origin_allowed(&[], &req(Some("https://evil.example"))));
        assert!(origin_allowed(&allowed, &req(Some("https://app.example"))));
        assert!(!origin_allowed(
            &allowed,
            &req(Some("https://evil.example"))
        ));
        assert!(origin_allowed(&allowed, &req(None)));
    }

    #[test]
    fn cors_echoes_allowed_origins_only() {
        let req = |o: &str| {
            Request::builder()
                .method("OPTIONS")
                .uri("/v1/poll")
                .header("origin", o)
                .body(())
                .unwrap()
        };
        let allowed = vec!["https://app.example".to_owned()];
        let r = preflight(&allowed, &req("https://app.example"));
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        assert_eq!(
            r.headers()["access-control-allow-origin"],
            "https://app.example"
        );
        assert!(r.headers()["access-control-allow-headers"]
            .to_str()
            .unwrap()
            .contains("authorization"));
        let r = preflight(&allowed, &req("https://evil.example"));
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        assert!(!r.headers().contains_key("access-control-allow-origin"));
        // An empty allow-list accepts any origin.
        let r = preflight(&[], &req("https://any.example"));
        assert_eq!(
            r.headers()["access-control-allow-origin"],
            "https://any.example"
        );
    }
}
