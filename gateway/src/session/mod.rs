//! One client WebSocket connection, as three tasks: a [`reader`] that only
//! reads frames, the session loop here that owns the protocol state
//! (subscriptions, identity, rate limit) and reacts to messages and topology
//! reloads, and a [`writer`] that owns the socket's write half, fed by the
//! connection's bounded [`crate::outbound`] queue.
//!
//! Invariant: nothing a client sends can make the node allocate without
//! bound: messages are size-limited (fragments included), the outbound queue
//! is bounded in frames and bytes (a slow reader is demoted to catch-up by
//! the fan-out, and closed when it does not drain within the stall bound),
//! requests are rate-limited, subscriptions are capped.

mod reader;
pub(crate) mod writer;

use crate::auth::Identity;
use crate::connections::Slot;
use crate::error::RequestError;
use crate::metrics as m;
use crate::outbound::{self, Outbound, OutboundTx};
use crate::presence::{Membership, PresenceChannel};
use crate::protocol::{self, ErrorCode, Protocol, Reply, Request};
use crate::subscribe::Planner;
use crate::subscription::{Positions, SubSpec};
use crate::Node;
use futures::StreamExt as _;
use reader::{Inbound, ReaderLinks};
use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use writer::{WriterConfig, WriterLinks};

const KEEPALIVE: Duration = Duration::from_secs(30);
/// Whole client messages the reader may hand on before it waits for the
/// session loop.
const INBOUND_QUEUE: usize = 15;
const IDLE_LIMIT: Duration = Duration::from_secs(75);
/// Delay before re-resolving subscriptions again after the log failed.
const RERESOLVE_RETRY: Duration = Duration::from_secs(2);

/// Token bucket for client requests.
#[derive(Debug)]
pub(super) struct RateLimit {
    tokens: f64,
    per_sec: f64,
    burst: f64,
    last: Instant,
}

impl RateLimit {
    pub(super) fn new(per_sec: u32, burst: u32) -> Self {
        RateLimit {
            tokens: f64::from(burst),
            per_sec: f64::from(per_sec),
            burst: f64::from(burst),
            last: Instant::now(),
        }
    }

    pub(super) fn allow(&mut self) -> bool {
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
    /// Whether the client asked for `join`/`leave` frames.
    watch: bool,
    /// Its place in the topic's presence channels (left when dropped).
    _presence: Option<Membership>,
}

struct Session {
    node: Arc<Node>,
    conn_id: String,
    identity: Identity,
    protocol: Protocol,
    tx: OutboundTx,
    connection: CancellationToken,
    subs: HashMap<String, ActiveSub>,
    rate: RateLimit,
    expiry: watch::Sender<u64>,
    /// Set when re-resolving hit an unavailable log: try again then.
    reresolve_at: Option<tokio::time::Instant>,
}

/// Serves an upgraded connection until it ends.
pub(crate) async fn run<S>(
    io: S,
    node: Arc<Node>,
    identity: Identity,
    mut place: Slot,
    protocol: Protocol,
    drain: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn_id = uuid::Uuid::new_v4().simple().to_string();
    let (r, w) = tokio::io::split(io);

    let (tx, rx) = outbound::queue(node.cfg.outbound_queue.max(8), node.cfg.outbound_bytes);
    let (expiry_tx, expiry_rx) = watch::channel(identity.exp);
    let connection = CancellationToken::new();
    place.attach(tx.clone(), connection.clone());
    let last_read = Arc::new(AtomicU64::new(0));
    let epoch = Instant::now();
    metrics::gauge!(m::CONNECTIONS).increment(1.0);
    tracing::debug!(conn = %conn_id, user = %identity.user, "connected");

    let writer = tokio::spawn(writer::run(
        w,
        WriterConfig {
            protocol,
            drain_window: node.cfg.drain,
            keepalive: KEEPALIVE,
            idle_limit: IDLE_LIMIT,
            write_timeout: node.cfg.stall_timeout,
        },
        WriterLinks {
            queue: rx,
            expiry: expiry_rx,
            drain,
            connection: connection.clone(),
            last_read: last_read.clone(),
            epoch,
        },
    ));

    let mut session = Session {
        conn_id: conn_id.clone(),
        identity,
        protocol,
        tx: tx.clone(),
        connection: connection.clone(),
        subs: HashMap::new(),
        rate: RateLimit::new(node.cfg.rate_per_sec, node.cfg.rate_burst),
        expiry: expiry_tx,
        reresolve_at: None,
        node,
    };
    let welcome = protocol::encode_reply(
        protocol,
        &Reply::Welcome {
            connection_id: &session.conn_id,
            user: &session.identity.user,
        },
    );
    // Boxed: a send that waits for room is never needed again.
    let _ = Box::pin(tx.send(Outbound::Frame(welcome))).await;

    // The reader gets its own task: `read_frame` is not cancel-safe, so it
    // is never raced against anything it must survive; the session loop
    // below selects over its output and the topology's changes instead.
    // futures' bounded channel allocates per message, not a 32-slot block
    // up front as tokio's does: an idle connection's channel stays small.
    let (in_tx, mut in_rx) = futures::channel::mpsc::channel::<Inbound>(INBOUND_QUEUE);
    let reader_task = tokio::spawn(reader::run(
        r,
        ReaderLinks {
            outbound: tx.clone(),
            inbound: in_tx,
            connection: connection.clone(),
            last_read,
            epoch,
            max_message_bytes: session.node.cfg.max_frame_bytes,
            pings: RateLimit::new(
                session.node.cfg.ping_rate_per_sec,
                session.node.cfg.ping_burst,
            ),
        },
    ));
    let mut topology_changes = session.node.topology.subscribe();
    loop {
        let retry = session.reresolve_at;
        tokio::select! {
            inbound = in_rx.next() => match inbound {
                // Boxed: the request paths (PostgreSQL, Redis) have large
                // futures; kept out of line, an idle connection's task stays
                // small.
                Some(Inbound::Data(data)) => Box::pin(session.handle(&data)).await,
                Some(Inbound::TooLarge) => {
                    Box::pin(session.too_large()).await;
                    break;
                }
                None => break,
            },
            changed = topology_changes.changed() => {
                if changed.is_ok() {
                    Box::pin(session.reresolve()).await;
                }
            }
            // Boxed when set: an idle session does not carry a timer.
            _ = async { match retry { Some(at) => Box::pin(tokio::time::sleep_until(at)).await, None => std::future::pending().await } }, if retry.is_some() => {
                session.reresolve_at = None;
                Box::pin(session.reresolve()).await;
            }
        }
        place.set_subscriptions(session.subs.len());
    }
    // Boxed: the teardown's futures would otherwise sit in every idle
    // connection's session task.
    Box::pin(finish(session, tx, writer, reader_task, connection)).await;
}

/// Ends a connection: lets the writer flush what is queued (an error, a
/// close reply) before the socket goes, then stops it if the peer is gone.
async fn finish(
    mut session: Session,
    tx: OutboundTx,
    mut writer: tokio::task::JoinHandle<()>,
    reader_task: tokio::task::JoinHandle<()>,
    connection: CancellationToken,
) {
    let _ = tx.try_send(Outbound::Close(1000, "closing"));
    session.close_all().await;
    drop(session);
    drop(tx);
    if tokio::time::timeout(Duration::from_secs(2), &mut writer)
        .await
        .is_err()
    {
        connection.cancel();
        let _ = writer.await;
    }
    connection.cancel();
    let _ = reader_task.await;
    metrics::gauge!(m::CONNECTIONS).decrement(1.0);
}

impl Session {
    fn planner(&self) -> Planner<'_> {
        self.node.planner()
    }

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

    async fn refuse(&self, id: Option<u64>, what: &'static str, e: &RequestError) {
        e.log(what);
        self.error(id, e.code(), &e.to_string()).await;
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
            Request::Subscribe {
                id,
                topic,
                cursor,
                presence,
            } => self.subscribe(id, topic, cursor, presence).await,
            Request::Presence { id, topic } => self.presence(id, &topic).await,
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
            } => match self
                .node
                .publishing()
                .publish(&self.identity, &topic, payload, content_type)
                .await
            {
                Ok(()) => self.send(Reply::Published { id }).await,
                Err(e) => self.refuse(Some(id), "publish", &e).await,
            },
            Request::Refresh { id, token } => self.refresh(id, &token).await,
        }
    }

    async fn subscribe(&mut self, id: u64, topic: String, cursor: Option<String>, watch: bool) {
        if !self.subs.contains_key(&topic) && self.subs.len() >= self.node.cfg.max_subscriptions {
            self.error(
                Some(id),
                ErrorCode::RateLimited,
                "too many subscriptions on this connection",
            )
            .await;
            return;
        }
        let topology = self.node.topology.current();
        if watch && topology.has_topic(&topic) && !topology.topic_has_presence(&topic) {
            let message = format!(
                "topic {topic} has no presence (no channel of it has Presence: true); subscribe without \"presence\""
            );
            self.error(Some(id), ErrorCode::BadRequest, &message).await;
            return;
        }
        let plan = self
            .planner()
            .plan(&self.identity, &topic, cursor.as_deref(), None)
            .await;
        let plan = match plan {
            Ok(p) => p,
            Err(e) => {
                self.refuse(Some(id), "subscribe", &e).await;
                return;
            }
        };
        let old = self.subs.remove(&topic);
        if let Some(old) = &old {
            self.node.fanout.remove(&topic, old.id, false).await;
        }
        self.send(Reply::Subscribed {
            id,
            topic: &topic,
            recovered: plan.recovered,
        })
        .await;
        self.start(topic, plan.channels, plan.positions, watch)
            .await;
        // The old membership goes after the new one exists: a resubscribe
        // is no leave and join.
        drop(old);
    }

    /// This connection's place in `topic`'s presence channels, if it has any.
    fn membership(&self, topic: &str, watch: bool) -> Option<Membership> {
        let topology = self.node.topology.current();
        if !topology.topic_has_presence(topic) {
            return None;
        }
        let channels =
            PresenceChannel::of(topology.resolve_subscriber(topic, &self.identity.entitlements));
        if channels.is_empty() {
            return None;
        }
        Some(self.node.presence.enter(
            channels,
            self.identity.user.clone(),
            self.identity.info.clone(),
            watch.then(|| (self.tx.clone(), self.protocol)),
        ))
    }

    /// Answers who is in the caller's presence channels of `topic`.
    async fn presence(&self, id: u64, topic: &str) {
        let topology = self.node.topology.current();
        if !topology.has_topic(topic) {
            let e = RequestError::UnknownTopic(topic.to_owned());
            self.refuse(Some(id), "presence", &e).await;
            return;
        }
        if !topology.topic_has_presence(topic) {
            let message =
                format!("topic {topic} has no presence (no channel of it has Presence: true)");
            self.error(Some(id), ErrorCode::BadRequest, &message).await;
            return;
        }
        let channels =
            PresenceChannel::of(topology.resolve_subscriber(topic, &self.identity.entitlements));
        if channels.is_empty() {
            let e = RequestError::NoChannels(topic.to_owned());
            self.refuse(Some(id), "presence", &e).await;
            return;
        }
        match self.node.presence.read(&channels, true).await {
            Ok(list) => {
                self.send(Reply::Presence {
                    id,
                    topic,
                    channels: &list,
                })
                .await
            }
            Err(message) => self.error(Some(id), ErrorCode::Internal, &message).await,
        }
    }

    async fn start(
        &mut self,
        topic: String,
        channels: Vec<i64>,
        positions: Positions,
        watch: bool,
    ) {
        let sub_id = self.node.next_sub_id();
        let spec = SubSpec {
            id: sub_id,
            user: self.identity.user.clone(),
            topic: topic.clone(),
            channels: channels.clone(),
            protocol: self.protocol,
            tx: self.tx.clone(),
            cancel: CancellationToken::new(),
            connection: self.connection.clone(),
        };
        let presence = self.membership(&topic, watch);
        self.subs.insert(
            topic,
            ActiveSub {
                id: sub_id,
                channels,
                watch,
                _presence: presence,
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
    /// at their lookback window, revoked ones stop at once. When the log is
    /// unavailable the subscription keeps running as it was and the
    /// re-resolution is retried shortly.
    async fn reresolve(&mut self) {
        let topics: Vec<String> = self.subs.keys().cloned().collect();
        for topic in topics {
            let Some(current) = self.subs.get(&topic) else {
                continue;
            };
            let old_id = current.id;
            let old_channels = current.channels.clone();
            let watch = current.watch;
            // Unchanged channels need no work (the common case on reload).
            match self.planner().channel_ids(&self.identity, &topic).await {
                Ok(ids) if ids == old_channels => continue,
                Err(e @ RequestError::Log(_)) => {
                    e.log("re-resolve");
                    self.retry_reresolve();
                    continue;
                }
                _ => {}
            }
            let positions = self.node.fanout.remove(&topic, old_id, true).await;
            // Kept until the new subscription (and its membership) exists.
            let _old = self.subs.remove(&topic);
            let plan = self
                .planner()
                .plan(&self.identity, &topic, None, positions.as_deref())
                .await;
            match plan {
                Ok(plan) => {
                    tracing::debug!(topic, "subscription re-resolved");
                    self.start(topic, plan.channels, plan.positions, watch)
                        .await;
                }
                Err(e @ RequestError::Log(_)) => {
                    // Keep delivering what the subscription had; try again.
                    e.log("re-resolve");
                    let positions = positions.unwrap_or_default();
                    self.start(topic, old_channels, positions, watch).await;
                    self.retry_reresolve();
                }
                Err(e) => {
                    let message = format!("subscription to {topic} ended: {e}");
                    self.error(None, e.code(), &message).await;
                }
            }
        }
    }

    fn retry_reresolve(&mut self) {
        if self.reresolve_at.is_none() {
            self.reresolve_at = Some(tokio::time::Instant::now() + RERESOLVE_RETRY);
        }
    }

    /// Answers a message over the size limit, and closes with 1009.
    async fn too_large(&self) {
        self.error(None, ErrorCode::TooLarge, "message exceeds the size limit")
            .await;
        let _ = self
            .tx
            .send(Outbound::Close(1009, "message too large"))
            .await;
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
        | Request::Presence { id, .. }
        | Request::Refresh { id, .. } => *id,
    }
}
