//! Free loopback ports and readiness probes: does something listen on a
//! port, what does an admin endpoint answer, is a server ready. The plain
//! functions block (tests' synchronous set-up); the `async` ones are for
//! callers on a tokio runtime, which must not block it (the load test), and
//! give up as soon as the process they wait for exits.
//!
//! Invariant: every wait is bounded by its timeout, no port is handed out
//! twice in one process, and the `async` probes reach only loopback
//! addresses.

use crate::process::Proc;
use anyhow::{anyhow, bail};
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// A free TCP port on 127.0.0.1, never the same twice in one test process
/// (the kernel happily hands a just-released ephemeral port out again).
pub fn free_port() -> u16 {
    fresh_port().expect("bind an ephemeral port")
}

/// A free loopback address, as [`free_port`] picks them, or the error when
/// no port can be bound (for callers that report failures, not panic).
pub fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(SocketAddr::from(([127, 0, 0, 1], fresh_port()?)))
}

fn fresh_port() -> std::io::Result<u16> {
    static HANDED_OUT: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut used = HANDED_OUT.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        if !used.contains(&port) {
            used.push(port);
            return Ok(port);
        }
    }
}

/// Fails unless `addr` is in 127.0.0.0/8 (or `::1`): the guard of every
/// harness that must only ever target this machine.
pub fn ensure_loopback(addr: &SocketAddr) -> anyhow::Result<()> {
    if addr.ip().is_loopback() {
        Ok(())
    } else {
        bail!("{addr} is not a loopback address; the load test only targets 127.0.0.0/8")
    }
}

pub(crate) fn wait_port(addr: SocketAddr, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("nothing listens on {addr} after {timeout:?}")
}

/// Waits until something accepts connections on `addr`, without blocking
/// the runtime; fails with its log tail as soon as `proc` exits.
pub async fn wait_port_async(
    addr: SocketAddr,
    timeout: Duration,
    mut proc: Option<&mut Proc>,
) -> anyhow::Result<()> {
    ensure_loopback(&addr)?;
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if tokio::time::timeout(
            Duration::from_millis(500),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        .is_ok_and(|r| r.is_ok())
        {
            return Ok(());
        }
        if let Some(p) = proc.as_deref_mut() {
            if !p.running() {
                bail!(
                    "{} exited before listening on {addr}:\n{}",
                    p.name(),
                    p.log_tail(3000)
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("nothing listens on {addr} after {timeout:?}")
}

/// The status code and body of an HTTP/1.x response.
fn status_and_body(response: &str) -> Option<(u16, String)> {
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|x| x.1)
        .unwrap_or("")
        .to_owned();
    Some((status, body))
}

/// `GET path` over plain HTTP/1.0; returns (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    status_and_body(&buf).ok_or_else(|| anyhow!("no HTTP status in {buf:?}"))
}

/// The sum of the samples on `addr`'s `/metrics` whose line starts with
/// `name` and contains `label` (`""`: every sample of `name`). Panics when
/// the endpoint does not answer: a test that asks expects it up.
pub fn metric_sum(addr: SocketAddr, name: &str, label: &str) -> f64 {
    let (_, text) = http_get(addr, "/metrics").expect("GET /metrics");
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// [`http_get`] without blocking the runtime, all within 5 s.
pub async fn http_get_async(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    ensure_loopback(&addr)?;
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
            .await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        anyhow::Ok(String::from_utf8_lossy(&buf).into_owned())
    };
    let text = tokio::time::timeout(Duration::from_secs(5), fut)
        .await
        .map_err(|_| anyhow!("GET {addr}{path} timed out"))??;
    status_and_body(&text).ok_or_else(|| anyhow!("no HTTP status from {addr}{path}"))
}

/// Waits until `GET /readyz` answers 200.
pub fn wait_ready(admin: SocketAddr, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    while Instant::now() < deadline {
        match http_get(admin, "/readyz") {
            // A node serving degraded (its Redis feed not yet connected)
            // is ready for clients, but tests want it whole.
            Ok((200, body)) if !body.contains("degraded") => return Ok(()),
            Ok((code, body)) => last = format!("{code} {body}"),
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("{admin} not ready after {timeout:?}: {last}")
}

/// Waits until `GET /readyz` on `admin` answers 200, degraded included (the
/// node serves clients), without blocking the runtime; fails with its log
/// tail as soon as `proc` exits.
pub async fn wait_serving(
    admin: SocketAddr,
    timeout: Duration,
    proc: &mut Proc,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    while Instant::now() < deadline {
        match http_get_async(admin, "/readyz").await {
            Ok((200, _)) => return Ok(()),
            Ok((code, body)) => last = format!("{code} {}", body.trim()),
            Err(e) => last = e.to_string(),
        }
        if !proc.running() {
            bail!(
                "{} exited before it was ready:\n{}",
                proc.name(),
                proc.log_tail(3000)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!(
        "{} ({admin}) not ready after {timeout:?}: {last}\n{}",
        proc.name(),
        proc.log_tail(2000)
    )
}
