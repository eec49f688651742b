//! One client WebSocket connection, as three tasks: a reader that only reads
//! frames, the session loop that owns the protocol state (subscriptions,
//! identity, rate limit) and reacts to frames and topology reloads, and a
//! writer that owns the socket's write half, fed by a bounded queue of
//! [`Outbound`] frames.
//!
//! The writer is the only place that ends a connection on the server's
//! initiative (token expiry: close 4001; drain: `reconnect` then close 1001;
//! dead peer: keepalive timeout). It then cancels the connection token, which
//! stops the reader; the reader never reads again after that, which is what
//! makes racing `read_frame` against the token safe.
//!
//! Invariant: nothing a client sends can make the node allocate without
//! bound: frames are size-limited, the outbound queue is bounded (a slow
//! reader is demoted to catch-up by the fan-out, never buffered), requests
//! are rate-limited, subscriptions are capped.

use crate::auth::Identity;
use crate::fanout::SubSpec;
use crate::metrics as m;
use crate::protocol::{self, ErrorCode, Protocol, Reply, Request};
use crate::Node;
use bytes::Bytes;
use fastwebsockets::{Frame, OpCode, Payload, Role};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

/// A frame queued for the writer.
#[derive(Debug)]
pub enum Outbound {
    /// A data frame (text for JSON, binary for protobuf).
    Frame(Bytes),
    /// A control frame the reader owes the peer (pong, close reply).
    Control(OpCode, Vec<u8>),
    /// Close the connection with this code and reason.
    Close(u16, &'static str),
}

const KEEPALIVE: Duration = Duration::from_secs(30);
const IDLE_LIMIT: Duration = Duration::from_secs(75);

/// Token bucket for client requests.
#[derive(Debug)]
struct RateLimit {
    tokens: f64,
    per_sec: f64,
    burst: f64,
    last: Instant,
}

impl RateLimit {
    fn new(per_sec: u32, burst: u32) -> Self {
        RateLimit {
            tokens: f64::from(burst),
            per_sec: f64::from(per_sec),
            burst: f64::from(burst),
            last: Instant::now(),
        }
    }

    fn allow(&mut self) -> bool {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.last).as_secs_f64() * self.per_sec)
            .min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

struct ActiveSub {
    id: u64,
    channels: Vec<i64>,
}

struct Session {
    node: Arc<Node>,
    conn_id: String,
    identity: Identity,
    protocol: Protocol,
    tx: mpsc::Sender<Outbound>,
    subs: HashMap<String, ActiveSub>,
    rate: RateLimit,
    expiry: watch::Sender<u64>,
}

/// Serves an upgraded connection until it ends.
pub(crate) async fn run<S>(
    io: S,
    node: Arc<Node>,
    identity: Identity,
    protocol: Protocol,
    drain: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn_id = uuid::Uuid::new_v4().simple().to_string();
    let (r, w) = tokio::io::split(io);
    let (ws_read, _) = fastwebsockets::after_handshake_split(r, tokio::io::sink(), Role::Server);
    let mut ws_read = ws_read;
    ws_read.set_max_message_size(node.cfg.max_frame_bytes);
    ws_read.set_auto_close(true);
    ws_read.set_auto_pong(true);
    let reader = fastwebsockets::FragmentCollectorRead::new(ws_read);

    let (tx, rx) = mpsc::channel(node.cfg.outbound_queue.max(8));
    let (expiry_tx, expiry_rx) = watch::channel(identity.exp);
    let conn_cancel = CancellationToken::new();
    let last_read = Arc::new(AtomicU64::new(0));
    let epoch = Instant::now();
    metrics::gauge!(m::CONNECTIONS).increment(1.0);
    let span = tracing::info_span!("conn", id = %conn_id, user = %identity.user);
    let _e = span.enter();
    tracing::debug!("connected");
    drop(_e);

    let writer = tokio::spawn(write_loop(
        w,
        rx,
        protocol,
        expiry_rx,
        drain,
        conn_cancel.clone(),
        last_read.clone(),
        epoch,
        node.cfg.drain,
    ));

    let mut session = Session {
        conn_id: conn_id.clone(),
        identity,
        protocol,
        tx: tx.clone(),
        subs: HashMap::new(),
        rate: RateLimit::new(node.cfg.rate_per_sec, node.cfg.rate_burst),
        expiry: expiry_tx,
        node,
    };
    let welcome = protocol::encode_reply(
        protocol,
        &Reply::Welcome {
            connection_id: &session.conn_id,
            user: &session.identity.user,
        },
    );
    let _ = tx.send(Outbound::Frame(welcome)).await;

    // The reader gets its own task: `read_frame` is not cancel-safe, so it
    // is never raced against anything it must survive; the session loop
    // below selects over its output and the topology's changes instead.
    let (in_tx, mut in_rx) = mpsc::channel::<Inbound>(16);
    let reader_task = tokio::spawn(read_loop(
        reader,
        tx.clone(),
        in_tx,
        conn_cancel.clone(),
        last_read,
        epoch,
    ));
    let mut topology_changes = session.node.topology.subscribe();
    loop {
        tokio::select! {
            inbound = in_rx.recv() => match inbound {
                // Boxed: the request paths (PostgreSQL, Redis) have large
                // futures; kept out of line, an idle connection's task stays
                // small.
                Some(Inbound::Data(data)) => Box::pin(session.handle(&data)).await,
                Some(Inbound::TooLarge) => {
                    session.error(None, ErrorCode::TooLarge, "frame exceeds the size limit").await;
                    let _ = tx.send(Outbound::Close(1009, "frame too large")).await;
                    break;
                }
                None => break,
            },
            changed = topology_changes.changed() => {
                if changed.is_ok() {
                    Box::pin(session.reresolve()).await;
                }
            }
        }
    }
    // Let the writer flush what is queued (an error, a close reply) before
    // the socket goes; then stop it if the peer is gone.
    let _ = tx.try_send(Outbound::Close(1000, "closing"));
    session.close_all().await;
    drop(session);
    drop(tx);
    let mut writer = writer;
    if tokio::time::timeout(Duration::from_secs(2), &mut writer)
        .await
        .is_err()
    {
        conn_cancel.cancel();
        let _ = writer.await;
    }
    conn_cancel.cancel();
    let _ = reader_task.await;
    metrics::gauge!(m::CONNECTIONS).decrement(1.0);
}

/// What the reader hands the session loop.
enum Inbound {
    Data(Vec<u8>),
    TooLarge,
}

async fn read_loop<R>(
    mut reader: fastwebsockets::FragmentCollectorRead<R>,
    tx: mpsc::Sender<Outbound>,
    inbound: mpsc::Sender<Inbound>,
    conn_cancel: CancellationToken,
    last_read: Arc<AtomicU64>,
    epoch: Instant,
) where
    R: AsyncRead + Unpin,
{
    let control_tx = tx.clone();
    let mut send_fn = move |frame: Frame<'_>| {
        let tx = control_tx.clone();
        let op = frame.opcode;
        let payload = frame.payload.to_vec();
        async move {
            tx.send(Outbound::Control(op, payload))
                .await
                .map_err(|_| "connection closing")
        }
    };
    let mut fatal = false;
    loop {
        // Racing `read_frame` is safe here only because the reader is never
        // used again once the connection is cancelled.
        let frame = tokio::select! {
            _ = conn_cancel.cancelled() => break,
            f = reader.read_frame(&mut send_fn) => f,
        };
        last_read.store(epoch.elapsed().as_secs(), Ordering::Relaxed);
        let frame = match frame {
            Ok(f) => f,
            Err(e) => {
                use fastwebsockets::WebSocketError as W;
                match e {
                    W::FrameTooLarge => {
                        fatal = true;
                        let _ = inbound.send(Inbound::TooLarge).await;
                    }
                    W::InvalidUTF8 => {
                        fatal = true;
                        let _ = tx.send(Outbound::Close(1007, "invalid UTF-8")).await;
                    }
                    W::ConnectionClosed | W::UnexpectedEOF => {}
                    other => {
                        fatal = true;
                        tracing::debug!(error = %other, "websocket read error");
                        let _ = tx.send(Outbound::Close(1002, "protocol error")).await;
                    }
                }
                break;
            }
        };
        let data = match frame.opcode {
            OpCode::Close => break,
            OpCode::Text | OpCode::Binary => frame.payload.to_vec(),
            _ => continue,
        };
        if inbound.send(Inbound::Data(data)).await.is_err() {
            break;
        }
    }
    drop(inbound);
    if fatal {
        // Unread input (e.g. the rest of an oversized frame) would make the
        // kernel reset the connection and could destroy the error frame in
        // flight; keep the socket until the writer is done, briefly.
        let _ = tokio::time::timeout(Duration::from_secs(2), conn_cancel.cancelled()).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

impl Session {
    async fn send(&self, reply: Reply<'_>) {
        let _ = self
            .tx
            .send(Outbound::Frame(protocol::encode_reply(
                self.protocol,
                &reply,
            )))
            .await;
    }

    async fn error(&self, id: Option<u64>, code: ErrorCode, message: &str) {
        metrics::counter!(m::CLIENT_ERRORS, "code" => code.as_str()).increment(1);
        self.send(Reply::Error { id, code, message }).await;
    }

    async fn handle(&mut self, data: &[u8]) {
        if !self.rate.allow() {
            let id = protocol::parse(self.protocol, data)
                .ok()
                .map(|r| request_id(&r));
            self.error(id, ErrorCode::RateLimited, "too many requests; slow down")
                .await;
            return;
        }
        let req = match protocol::parse(self.protocol, data) {
            Ok(r) => r,
            Err(bad) => {
                self.error(bad.id, ErrorCode::BadRequest, &bad.message)
                    .await;
                return;
            }
        };
        match req {
            Request::Ping { id } => self.send(Reply::Pong { id }).await,
            Request::Subscribe { id, topic, cursor } => self.subscribe(id, topic, cursor).await,
            Request::Unsubscribe { id, topic } => {
                if let Some(s) = self.subs.remove(&topic) {
                    self.node.fanout.remove(&topic, s.id, false).await;
                }
                self.send(Reply::Unsubscribed { id, topic: &topic }).await;
            }
            Request::Publish {
                id,
                topic,
                payload,
                content_type,
            } => match crate::publish::publish(
                &self.node,
                &self.identity,
                &topic,
                payload,
                content_type,
            )
            .await
            {
                Ok(()) => self.send(Reply::Published { id }).await,
                Err((code, msg)) => self.error(Some(id), code, &msg).await,
            },
            Request::Refresh { id, token } => self.refresh(id, &token).await,
        }
    }

    async fn subscribe(&mut self, id: u64, topic: String, cursor: Option<String>) {
        if !self.subs.contains_key(&topic) && self.subs.len() >= self.node.cfg.max_subscriptions {
            self.error(
                Some(id),
                ErrorCode::RateLimited,
                "too many subscriptions on this connection",
            )
            .await;
            return;
        }
        let plan = match crate::subscribe::plan(
            &self.node,
            &self.identity,
            &topic,
            cursor.as_deref(),
            None,
        )
        .await
        {
            Ok(p) => p,
            Err((code, msg)) => {
                self.error(Some(id), code, &msg).await;
                return;
            }
        };
        if let Some(old) = self.subs.remove(&topic) {
            self.node.fanout.remove(&topic, old.id, false).await;
        }
        self.send(Reply::Subscribed {
            id,
            topic: &topic,
            recovered: plan.recovered,
        })
        .await;
        self.start(topic, plan.channels, plan.positions).await;
    }

    async fn start(&mut self, topic: String, channels: Vec<i64>, positions: Vec<(i64, i64)>) {
        let sub_id = self.node.next_sub_id();
        let spec = SubSpec {
            id: sub_id,
            user: self.identity.user.clone(),
            topic: topic.clone(),
            channels: channels.clone(),
            protocol: self.protocol,
            tx: self.tx.clone(),
            cancel: CancellationToken::new(),
        };
        self.subs.insert(
            topic,
            ActiveSub {
                id: sub_id,
                channels,
            },
        );
        self.node.fanout.register(spec, positions).await;
    }

    async fn refresh(&mut self, id: u64, token: &str) {
        let identity = match self.node.auth.verify(token) {
            Ok(i) => i,
            Err(e) => {
                metrics::counter!(m::AUTH_FAILURES, "reason" => e.reason()).increment(1);
                self.error(Some(id), ErrorCode::Unauthorized, &e.to_string())
                    .await;
                return;
            }
        };
        if identity.user != self.identity.user {
            self.error(
                Some(id),
                ErrorCode::Forbidden,
                "a refreshed token must be for the same user",
            )
            .await;
            return;
        }
        self.identity = identity;
        let _ = self.expiry.send(self.identity.exp);
        self.reresolve().await;
        self.send(Reply::Refreshed { id }).await;
    }

    /// Re-resolves every subscription against the current entitlements and
    /// topology: channels kept continue from their positions, new ones start
    /// at their lookback window, revoked ones stop at once.
    async fn reresolve(&mut self) {
        let topics: Vec<String> = self.subs.keys().cloned().collect();
        for topic in topics {
            let Some(current) = self.subs.get(&topic) else {
                continue;
            };
            let old_id = current.id;
            let old_channels = current.channels.clone();
            let topology = self.node.topology.current();
            let keys: Vec<String> = topology
                .resolve_subscriber(&topic, &self.identity.entitlements)
                .into_iter()
                .map(|c| c.key)
                .collect();
            // Unchanged channels need no work (the common case on reload).
            if let Ok(mut ids) = self.node.log.channel_ids(&keys).await {
                ids.sort_unstable();
                ids.dedup();
                if ids == old_channels {
                    continue;
                }
            }
            let positions = self.node.fanout.remove(&topic, old_id, true).await;
            self.subs.remove(&topic);
            let plan = crate::subscribe::plan(
                &self.node,
                &self.identity,
                &topic,
                None,
                positions.as_deref(),
            )
            .await;
            match plan {
                Ok(plan) => {
                    tracing::debug!(topic, "subscription re-resolved");
                    self.start(topic, plan.channels, plan.positions).await;
                }
                Err((code, msg)) => {
                    let message = format!("subscription to {topic} ended: {msg}");
                    self.error(None, code, &message).await;
                }
            }
        }
    }

    async fn close_all(&mut self) {
        for (topic, s) in self.subs.drain() {
            self.node.fanout.remove(&topic, s.id, false).await;
        }
    }
}

fn request_id(r: &Request) -> u64 {
    match r {
        Request::Subscribe { id, .. }
        | Request::Unsubscribe { id, .. }
        | Request::Publish { id, .. }
        | Request::Ping { id }
        | Request::Refresh { id, .. } => *id,
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

#[allow(clippy::too_many_arguments)]
async fn write_loop<W>(
    mut w: W,
    mut rx: mpsc::Receiver<Outbound>,
    protocol: Protocol,
    mut expiry: watch::Receiver<u64>,
    drain: CancellationToken,
    conn_cancel: CancellationToken,
    last_read: Arc<AtomicU64>,
    epoch: Instant,
    drain_window: Duration,
) where
    W: AsyncWrite + Unpin,
{
    let data_op = match protocol {
        Protocol::Json => OpCode::Text,
        Protocol::Proto => OpCode::Binary,
    };
    // Both buffers are released whenever the queue runs dry: an idle
    // connection holds neither (64 queued frames are 2.5 KiB).
    let mut buf: Vec<u8> = Vec::new();
    let mut batch: Vec<Outbound> = Vec::new();
    let mut keepalive =
        tokio::time::interval_at(tokio::time::Instant::now() + KEEPALIVE, KEEPALIVE);
    let expiry_sleep = |exp: u64| {
        let left = exp.saturating_sub(now_secs());
        tokio::time::Instant::now() + Duration::from_secs(left)
    };
    // The futures are created once, not per wake-up: `drain` is one token
    // shared by every connection, and registering with it on each loop turn
    // made all writers contend on its lock.
    let drain_signal = drain.cancelled();
    tokio::pin!(drain_signal);
    let conn_ended = conn_cancel.cancelled();
    tokio::pin!(conn_ended);
    let token_expiry = tokio::time::sleep_until(expiry_sleep(*expiry.borrow()));
    tokio::pin!(token_expiry);
    let mut closing: Option<(u16, &'static str)> = None;
    let mut expiry_open = true;
    loop {
        tokio::select! {
            n = rx.recv_many(&mut batch, 64) => {
                if n == 0 {
                    break;
                }
            }
            _ = &mut conn_ended => break,
            _ = &mut drain_signal, if closing.is_none() => {
                // Spread reconnects over the drain window so the fleet is not
                // hit by every client at once.
                let spread = drain_window.as_millis().max(1) as u64;
                let after_ms = rand::random::<u64>() % spread;
                let f = protocol::encode_reply(protocol, &Reply::Reconnect { after_ms });
                batch.push(Outbound::Frame(f));
                batch.push(Outbound::Close(1001, "server draining"));
            }
            _ = &mut token_expiry, if closing.is_none() => {
                let f = protocol::encode_reply(
                    protocol,
                    &Reply::Error { id: None, code: ErrorCode::Unauthorized, message: "token expired" },
                );
                batch.push(Outbound::Frame(f));
                batch.push(Outbound::Close(4001, "token expired"));
            }
            r = expiry.changed(), if expiry_open => {
                match r {
                    Ok(()) => {
                        let at = expiry_sleep(*expiry.borrow());
                        token_expiry.as_mut().reset(at);
                    }
                    // The session is gone; nothing will refresh the token.
                    Err(_) => expiry_open = false,
                }
            }
            _ = keepalive.tick() => {
                let idle = epoch.elapsed().as_secs().saturating_sub(last_read.load(Ordering::Relaxed));
                if idle > IDLE_LIMIT.as_secs() {
                    batch.push(Outbound::Close(1001, "idle timeout"));
                } else {
                    batch.push(Outbound::Control(OpCode::Ping, Vec::new()));
                }
            }
        }
        buf.clear();
        for item in batch.drain(..) {
            if closing.is_some() {
                continue;
            }
            match item {
                Outbound::Frame(b) => push_frame(&mut buf, data_op, &b),
                Outbound::Control(OpCode::Close, p) => {
                    push_frame(&mut buf, OpCode::Close, &p);
                    closing = Some((1000, ""));
                }
                Outbound::Control(op, p) => push_frame(&mut buf, op, &p),
                Outbound::Close(code, reason) => {
                    push_frame(&mut buf, OpCode::Close, &close_payload(code, reason));
                    closing = Some((code, reason));
                }
            }
        }
        if !buf.is_empty() && w.write_all(&buf).await.is_err() {
            break;
        }
        if rx.is_empty() {
            buf = Vec::new();
            batch = Vec::new();
        } else if buf.capacity() > 64 * 1024 {
            buf = Vec::new();
        }
        if closing.is_some() {
            let _ = w.flush().await;
            break;
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), w.shutdown()).await;
    conn_cancel.cancel();
}
