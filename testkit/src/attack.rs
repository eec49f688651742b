//! Hostile clients: the attacks a gateway must survive, each as one async
//! function that performs it against a node and reports what the node did.
//! The gateway's tests assert on one attack at a time; the chaos soak
//! (`switchyard-loadtest soak`) runs them all, over and over, beside the
//! well-behaved fleet.
//!
//! Invariant: every attack is bounded in time (it gives up and reports
//! [`Outcome::Held`] rather than waiting forever) and only ever targets a
//! loopback address.

use crate::client::{Client, Connect};
use crate::probe::{ensure_loopback, http_get_async};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message;

/// What the node did to an attacker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It closed the WebSocket with this code (after the `error` frames in
    /// the `Vec`, if any).
    Closed(u16, Vec<String>),
    /// It refused the HTTP request with this status.
    Refused(u16),
    /// It dropped the TCP connection, after this long.
    Dropped(Duration),
    /// It answered the bad frames with these `error` codes and kept the
    /// connection usable (a `ping` was answered afterwards).
    Answered(Vec<String>),
    /// The connection was still open when the attack gave up.
    Held(Duration),
    /// Statuses of a batch of HTTP requests.
    Statuses(Vec<u16>),
}

/// Reads frames until a close (or `limit`); returns the close code and the
/// `error` codes seen before it.
async fn until_close(c: &mut Client, limit: Duration) -> Outcome {
    let started = Instant::now();
    let mut errors = Vec::new();
    loop {
        let left = limit.saturating_sub(started.elapsed());
        if left.is_zero() {
            return Outcome::Held(started.elapsed());
        }
        match c.next_frame(left).await {
            Ok(v) if v["type"] == "__close" => {
                return Outcome::Closed(v["code"].as_u64().unwrap_or(0) as u16, errors)
            }
            Ok(v) if v["type"] == "error" => {
                errors.push(v["code"].as_str().unwrap_or("?").to_owned())
            }
            Ok(_) => {}
            // A reset after the close frame, or the end of the stream.
            Err(e) if e.to_string().contains("no frame within") => {
                return Outcome::Held(started.elapsed())
            }
            Err(_) => return Outcome::Dropped(started.elapsed()),
        }
    }
}

/// Sends one text message as `pieces` fragments of `piece` bytes each (each
/// fragment under the frame limit, the whole far over it) and reports how
/// the node ended it (expected: `too_large`, close 1009).
pub async fn fragment_flood(
    ws_url: &str,
    token: &str,
    piece: usize,
    pieces: usize,
    limit: Duration,
) -> anyhow::Result<Outcome> {
    let mut c = Client::connect(ws_url, token).await?;
    let chunk = vec![b' '; piece];
    c.send_raw(Message::Frame(Frame::message(
        chunk.clone(),
        OpCode::Data(Data::Text),
        false,
    )))
    .await?;
    for _ in 0..pieces {
        let frame = Frame::message(chunk.clone(), OpCode::Data(Data::Continue), false);
        if c.send_raw(Message::Frame(frame)).await.is_err() {
            break;
        }
    }
    Ok(until_close(&mut c, limit).await)
}

/// Opens a TCP connection, sends part of a request's headers and never the
/// rest (slowloris); reports when the node dropped it (expected: after the
/// header timeout).
pub async fn slowloris(addr: SocketAddr, limit: Duration) -> anyhow::Result<Outcome> {
    ensure_loopback(&addr)?;
    let mut sock = tokio::net::TcpStream::connect(addr).await?;
    sock.write_all(b"GET /v1/ws HTTP/1.1\r\nHost: x\r\n")
        .await?;
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        let left = limit.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, sock.read(&mut buf)).await {
            Err(_) => return Ok(Outcome::Held(started.elapsed())),
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(Outcome::Dropped(started.elapsed())),
            // A 408 (or any answer) before the close.
            Ok(Ok(_)) => {}
        }
    }
}

/// Sends frames that are not requests (binary garbage, broken JSON, an
/// unknown type, a request without its fields), then a `ping`; reports the
/// `error` codes and whether the ping was still answered.
pub async fn malformed_frames(
    ws_url: &str,
    token: &str,
    limit: Duration,
) -> anyhow::Result<Outcome> {
    let mut c = Client::connect(ws_url, token).await?;
    let bad = [
        Message::Binary(vec![0xff, 0x00, 0x13, 0x37].into()),
        Message::Text("{not json".into()),
        Message::Text(r#"{"type":"teleport","id":7}"#.into()),
        Message::Text(r#"{"type":"subscribe","id":8}"#.into()),
        Message::Text(r#"[1,2,3]"#.into()),
    ];
    for m in bad {
        if c.send_raw(m).await.is_err() {
            return Ok(until_close(&mut c, limit).await);
        }
    }
    let Ok(ping) = c.request(json!({"type": "ping"})).await else {
        return Ok(until_close(&mut c, limit).await);
    };
    let started = Instant::now();
    let mut errors = Vec::new();
    loop {
        let left = limit.saturating_sub(started.elapsed());
        if left.is_zero() {
            return Ok(Outcome::Held(started.elapsed()));
        }
        let v: Value = match c.next_frame(left).await {
            Ok(v) => v,
            Err(_) => return Ok(Outcome::Dropped(started.elapsed())),
        };
        if v["type"] == "error" {
            errors.push(v["code"].as_str().unwrap_or("?").to_owned());
        } else if v["type"] == "__close" {
            return Ok(Outcome::Closed(
                v["code"].as_u64().unwrap_or(0) as u16,
                errors,
            ));
        } else if v["type"] == "pong" && v["id"] == json!(ping) {
            c.close().await;
            return Ok(Outcome::Answered(errors));
        }
    }
}

/// Tries to connect with `token` (for instance one that has expired);
/// reports the refusal (expected: 401) or, if the node let it in, how the
/// connection ended.
pub async fn with_token(ws_url: &str, token: &str, limit: Duration) -> anyhow::Result<Outcome> {
    match Client::try_connect(&format!("{ws_url}?access_token={token}"), None).await? {
        Connect::Refused(code, _) => Ok(Outcome::Refused(code)),
        Connect::Open(mut c) => Ok(until_close(&mut c, limit).await),
    }
}

/// Subscribes to `topic` (replaying its lookback window) and then reads
/// nothing; reports how the node ended the connection within `hold`.
pub async fn stalled_reader(
    ws_url: &str,
    token: &str,
    topic: &str,
    hold: Duration,
) -> anyhow::Result<Outcome> {
    let mut c = Client::connect(ws_url, token).await?;
    c.request(json!({"type": "subscribe", "topic": topic}))
        .await?;
    let started = Instant::now();
    // Not reading: the socket's buffers and the node's queue fill up.
    tokio::time::sleep(hold).await;
    // Now see whether the node gave up on us (after draining what is
    // buffered), without waiting long.
    let mut drained = 0u64;
    loop {
        match c.next_frame(Duration::from_millis(500)).await {
            Ok(v) if v["type"] == "__close" => {
                return Ok(Outcome::Closed(
                    v["code"].as_u64().unwrap_or(0) as u16,
                    Vec::new(),
                ))
            }
            Ok(_) => {
                drained += 1;
                if drained > 1_000_000 {
                    return Ok(Outcome::Held(started.elapsed()));
                }
            }
            Err(e) if e.to_string().contains("no frame within") => {
                c.close().await;
                return Ok(Outcome::Held(started.elapsed()));
            }
            Err(_) => return Ok(Outcome::Dropped(started.elapsed())),
        }
    }
}

/// Subscribes with `cursor` (for instance a forged one); returns the
/// `subscribed` (or `error`) reply.
pub async fn subscribe_with_cursor(
    ws_url: &str,
    token: &str,
    topic: &str,
    cursor: &str,
) -> anyhow::Result<Value> {
    let mut c = Client::connect(ws_url, token).await?;
    let r = c.subscribe(topic, Some(cursor)).await?;
    c.close().await;
    Ok(r)
}

/// Fires `n` long-polls at once (each waiting up to `wait_ms`); reports
/// their HTTP statuses (expected: 200, and 503 `rate_limited` past the
/// node's cap; 0 for a request that failed to connect or answer).
pub async fn poll_flood(
    addr: SocketAddr,
    token: &str,
    topic: &str,
    n: usize,
    wait_ms: u64,
) -> anyhow::Result<Outcome> {
    ensure_loopback(&addr)?;
    let path = format!("/v1/poll?topic={topic}&timeout_ms={wait_ms}&access_token={token}");
    let polls = (0..n).map(|_| {
        let path = path.clone();
        async move {
            http_get_async(addr, &path)
                .await
                .map(|(code, _)| code)
                .unwrap_or(0)
        }
    });
    let statuses = futures::future::join_all(polls).await;
    Ok(Outcome::Statuses(statuses))
}

/// A long-poll flood's statuses that are neither answers nor the node's
/// refusal past its cap.
pub fn unexpected_statuses(statuses: &[u16]) -> Vec<u16> {
    statuses
        .iter()
        .copied()
        .filter(|s| !matches!(s, 200 | 429 | 503 | 0))
        .collect()
}
