//! A connection's writer task: owns the socket's write half, batches what
//! the outbound queue holds into one write, and is the only place that ends
//! a connection on the server's initiative (token expiry: close 4001; drain:
//! at a random point of the drain window, `reconnect` then close 1001; dead
//! peer: keepalive timeout; a socket that accepts no bytes for the write
//! timeout).
//!
//! Invariant: every write is bounded in time, so the keepalive, idle and
//! expiry checks always run, and a client that stops reading is closed
//! instead of holding the task; the connection token is cancelled when the
//! writer ends, which stops the reader.

use crate::metrics as m;
use crate::outbound::{Outbound, OutboundRx, Stamp};
use crate::protocol::{self, ErrorCode, Protocol, Reply};
use fastwebsockets::{Frame, OpCode, Payload};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How a writer behaves.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WriterConfig {
    pub(crate) protocol: Protocol,
    /// Window over which drain spreads reconnect delays.
    pub(crate) drain_window: Duration,
    /// Ping period.
    pub(crate) keepalive: Duration,
    /// A peer silent for longer is closed.
    pub(crate) idle_limit: Duration,
    /// A write that makes no progress for this long closes the connection.
    pub(crate) write_timeout: Duration,
}

/// The writer's links to the rest of the connection.
#[derive(Debug)]
pub(crate) struct WriterLinks {
    pub(crate) queue: OutboundRx,
    /// The token's expiry (unix seconds); refreshes change it.
    pub(crate) expiry: watch::Receiver<u64>,
    /// The node's drain signal.
    pub(crate) drain: CancellationToken,
    pub(crate) connection: CancellationToken,
    pub(crate) last_read: Arc<AtomicU64>,
    pub(crate) epoch: Instant,
}

/// Records what the messages just written measure: their delivery lag by
/// path, the node's receive-to-write stage of live ones, and a
/// `gateway.write` span for a sampled one. Empties `stamps`.
fn written_out(stamps: &mut Vec<Stamp>, write_started: std::time::SystemTime) {
    if stamps.is_empty() {
        return;
    }
    let now_ms = chrono::Utc::now().timestamp_millis();
    let secs = |from: i64| (now_ms - from).max(0) as f64 / 1000.0;
    for st in stamps.drain(..) {
        metrics::histogram!(m::DELIVERY_LAG, "path" => st.path.as_str())
            .record(secs(st.created_at_ms));
        if st.received_at_ms > 0 {
            metrics::histogram!(m::STAGE_SECONDS, "stage" => "write")
                .record(secs(st.received_at_ms));
        }
        if let Some(parent) = st.trace {
            use opentelemetry::trace::{Span as _, Tracer as _};
            let tracer = switchyard_ops::tracecontext::tracer();
            let mut span = tracer
                .span_builder("gateway.write")
                .with_kind(opentelemetry::trace::SpanKind::Producer)
                .with_start_time(write_started)
                .with_attributes(vec![opentelemetry::KeyValue::new(
                    "switchyard.path",
                    st.path.as_str(),
                )])
                .start_with_context(
                    &tracer,
                    &switchyard_ops::tracecontext::remote_parent((*parent).clone()),
                );
            span.end();
        }
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn push_frame(buf: &mut Vec<u8>, opcode: OpCode, payload: &[u8]) {
    let mut frame = Frame::new(true, opcode, None, Payload::Borrowed(payload));
    let mut head = [0u8; 14];
    let n = frame.fmt_head(&mut head);
    buf.extend_from_slice(&head[..n]);
    buf.extend_from_slice(payload);
}

fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason.as_bytes());
    p
}

/// Seconds from now until `exp`, capped so the deadline never overflows.
fn until(exp: u64) -> tokio::time::Instant {
    const YEAR: u64 = 365 * 24 * 3600;
    let left = exp.saturating_sub(now_secs()).min(YEAR);
    tokio::time::Instant::now() + Duration::from_secs(left)
}

pub(crate) async fn run<W>(mut w: W, cfg: WriterConfig, links: WriterLinks)
where
    W: AsyncWrite + Unpin,
{
    let WriterLinks {
        mut queue,
        mut expiry,
        drain,
        connection,
        last_read,
        epoch,
    } = links;
    let data_op = match cfg.protocol {
        Protocol::Json => OpCode::Text,
        Protocol::Proto => OpCode::Binary,
    };
    // Both buffers are released whenever the queue runs dry: an idle
    // connection holds neither.
    let mut buf: Vec<u8> = Vec::new();
    let mut batch: Vec<Outbound> = Vec::new();
    // The writer's own frames (drain, expiry, keepalive): not from the
    // queue, so they hold no bytes of its budget.
    let mut own: Vec<Outbound> = Vec::new();
    // The stamps of the messages in `buf`, measured once it is written.
    let mut stamps: Vec<Stamp> = Vec::new();
    let mut keepalive =
        tokio::time::interval_at(tokio::time::Instant::now() + cfg.keepalive, cfg.keepalive);
    // The futures are created once, not per wake-up: `drain` is one token
    // shared by every connection, and registering with it on each loop turn
    // made all writers contend on its lock.
    let drain_signal = drain.cancelled();
    tokio::pin!(drain_signal);
    let conn_ended = connection.cancelled();
    tokio::pin!(conn_ended);
    let deadline = tokio::time::sleep_until(until(*expiry.borrow()));
    tokio::pin!(deadline);
    let mut closing = false;
    let mut expiry_open = true;
    let mut drain_at: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            n = queue.recv_many(&mut batch, 64) => {
                if n == 0 {
                    break;
                }
            }
            _ = &mut conn_ended => break,
            _ = &mut drain_signal, if !closing && drain_at.is_none() => {
                // Close at a random point of the drain window, so the fleet
                // takes this node's clients back spread over it rather than
                // all at once (and without trusting clients to wait).
                let spread = cfg.drain_window.as_millis().max(1) as u64;
                let at = tokio::time::Instant::now()
                    + Duration::from_millis(rand::random::<u64>() % spread);
                drain_at = Some(at);
                deadline.as_mut().reset(at.min(until(*expiry.borrow())));
            }
            // One timer for both deadlines (an idle connection keeps it):
            // the token's expiry and, once draining, the moment to close.
            _ = &mut deadline, if !closing => {
                if drain_at.is_some_and(|at| at <= tokio::time::Instant::now()) {
                    // A little jitter on top, for clients that share a node.
                    let after_ms = rand::random::<u64>() % 250;
                    let f = protocol::encode_reply(cfg.protocol, &Reply::Reconnect { after_ms });
                    own.push(Outbound::Frame(f));
                    own.push(Outbound::Close(1001, "server draining"));
                } else {
                    let f = protocol::encode_reply(
                        cfg.protocol,
                        &Reply::Error { id: None, code: ErrorCode::Unauthorized, message: "token expired" },
                    );
                    own.push(Outbound::Frame(f));
                    own.push(Outbound::Close(4001, "token expired"));
                }
            }
            r = expiry.changed(), if expiry_open => {
                match r {
                    Ok(()) => {
                        let exp = until(*expiry.borrow());
                        deadline.as_mut().reset(drain_at.map_or(exp, |at| at.min(exp)));
                    }
                    // The session is gone; nothing will refresh the token.
                    Err(_) => expiry_open = false,
                }
            }
            _ = keepalive.tick() => {
                let idle = epoch.elapsed().as_secs().saturating_sub(last_read.load(Ordering::Relaxed));
                if idle > cfg.idle_limit.as_secs() {
                    own.push(Outbound::Close(1001, "idle timeout"));
                } else {
                    own.push(Outbound::Control(OpCode::Ping, Vec::new()));
                }
            }
        }
        buf.clear();
        let (mut released_frames, mut released) = (0usize, 0u32);
        for (item, from_queue) in batch
            .drain(..)
            .map(|o| (o, true))
            .chain(own.drain(..).map(|o| (o, false)))
        {
            if from_queue {
                released_frames += 1;
                released = released.saturating_add(queue.cost(&item));
            }
            if closing {
                continue;
            }
            match item {
                Outbound::Frame(b) => push_frame(&mut buf, data_op, &b),
                Outbound::Message(b, stamp) => {
                    push_frame(&mut buf, data_op, &b);
                    stamps.push(stamp);
                }
                Outbound::Control(OpCode::Close, p) => {
                    push_frame(&mut buf, OpCode::Close, &p);
                    closing = true;
                }
                Outbound::Control(op, p) => push_frame(&mut buf, op, &p),
                Outbound::Close(code, reason) => {
                    push_frame(&mut buf, OpCode::Close, &close_payload(code, reason));
                    closing = true;
                }
            }
        }
        if !buf.is_empty() {
            // Boxed: the timer exists only while a write is in flight, so an
            // idle connection's task does not carry it.
            let write_started = std::time::SystemTime::now();
            let write = Box::pin(tokio::time::timeout(cfg.write_timeout, w.write_all(&buf)));
            let written = tokio::select! {
                r = write => r,
                _ = &mut conn_ended => break,
            };
            match written {
                Ok(Ok(())) => written_out(&mut stamps, write_started),
                Ok(Err(_)) => break,
                Err(_) => {
                    metrics::counter!(crate::metrics::STALLED_CLOSES, "where" => "socket")
                        .increment(1);
                    tracing::info!(
                        write_timeout_ms = cfg.write_timeout.as_millis() as u64,
                        "socket accepted no data within the write timeout; closing the connection"
                    );
                    break;
                }
            }
        }
        queue.release(released_frames, released);
        if queue.is_empty() {
            buf = Vec::new();
            batch = Vec::new();
            own = Vec::new();
            stamps = Vec::new();
        } else if buf.capacity() > 64 * 1024 {
            buf = Vec::new();
        }
        if closing {
            let _ = tokio::time::timeout(Duration::from_secs(1), w.flush()).await;
            break;
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), w.shutdown()).await;
    connection.cancel();
}
