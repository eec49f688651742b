//! The admin endpoint: `/healthz` (the process runs), `/readyz` (dependencies
//! answer and the process is not draining) and `/metrics` (Prometheus text).
//!
//! Invariant: `/healthz` never touches a dependency, so a liveness probe does
//! not restart a process that is merely waiting for PostgreSQL.

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::PrometheusHandle;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Answers whether the process is ready (with a short state, e.g. a
/// degraded mode); the error says what is not.
pub trait Readiness: Send + Sync + 'static {
    fn check(&self) -> Pin<Box<dyn Future<Output = Result<String, String>> + Send + '_>>;
}

/// Serves the admin endpoint until `cancel` fires.
pub async fn serve(
    listener: TcpListener,
    metrics: PrometheusHandle,
    ready: Arc<dyn Readiness>,
    cancel: CancellationToken,
) {
    loop {
        let (stream, _) = tokio::select! {
            _ = cancel.cancelled() => return,
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let metrics = metrics.clone();
        let ready = ready.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let metrics = metrics.clone();
                let ready = ready.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(req, &metrics, &*ready).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// Binds `addr` and spawns [`serve`]; returns the bound address.
pub async fn spawn(
    addr: SocketAddr,
    metrics: PrometheusHandle,
    ready: Arc<dyn Readiness>,
    cancel: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let (local, server) = bind(addr, metrics, ready, cancel).await?;
    tokio::spawn(server);
    Ok(local)
}

/// Binds the admin endpoint and returns its address and the server as a
/// future, for callers that own their tasks; it ends when `cancel` fires.
pub async fn bind(
    addr: SocketAddr,
    metrics: PrometheusHandle,
    ready: Arc<dyn Readiness>,
    cancel: CancellationToken,
) -> std::io::Result<(
    SocketAddr,
    impl std::future::Future<Output = ()> + Send + 'static,
)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    Ok((local, serve(listener, metrics, ready, cancel)))
}

async fn handle(
    req: Request<Incoming>,
    metrics: &PrometheusHandle,
    ready: &dyn Readiness,
) -> Response<Full<Bytes>> {
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        "/readyz" => match ready.check().await {
            Ok(state) => text(StatusCode::OK, format!("{state}\n")),
            Err(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {why}\n"),
            ),
        },
        "/metrics" => text(StatusCode::OK, metrics.render()),
        _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
    }
}

/// A plain-text response.
pub fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}
