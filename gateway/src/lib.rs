//! `switchyard-gateway`: one node of the gateway fleet.
//!
//! Where things are:
//! - [`config`]: the typed configuration (environment variables).
//! - [`server`]: the HTTP listener, routing, upgrade and drain.
//! - [`auth`]: JWT verification and the identity it yields.
//! - [`protocol`]: client and server frames, JSON and protobuf.
//! - [`session`]: one WebSocket connection (reader and writer tasks).
//! - [`subscribe`]: resolving a topic to channels and where replay starts.
//! - [`fanout`]: live delivery, gap detection and backfill per node.
//! - [`catchup`]: replay from PostgreSQL and the switch to live.
//! - [`replay`]: the order in which replayed rows are handled.
//! - [`livefeed`]: what the Redis live feed (`switchyard-livefeed`) feeds:
//!   fan-out shards, resync on reconnect, long-poll wake-ups.
//! - [`poll`]: the long-poll fallback.
//! - [`publish`]: client publishes through the `IsPublishableByUser` gate.
//!
//! The invariant a maintainer must not break: a subscription receives every
//! entry of each of its channels after its cursor exactly once and in order;
//! Redis is only an accelerator — PostgreSQL is the truth, and every path
//! that may have missed something (gap, reconnect, slow client, new node)
//! goes back to it.

pub mod auth;
pub mod catchup;
pub mod config;
pub mod fanout;
pub mod livefeed;
mod metrics;
pub mod poll;
pub mod protocol;
pub mod publish;
mod replay;
pub mod server;
pub mod session;
pub mod subscribe;

use anyhow::Context as _;
use config::GatewayConfig;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use switchyard_channels::{Topology, TopologyHandle};
use switchyard_cursorlog::CursorLog;
use switchyard_livefeed::Publisher;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Shared state of a running node.
#[derive(Debug)]
pub struct Node {
    pub cfg: GatewayConfig,
    pub log: CursorLog,
    pub topology: TopologyHandle,
    pub auth: auth::Authenticator,
    pub fanout: fanout::Fanout,
    pub publisher: Publisher,
    pub feed: Arc<livefeed::FeedState>,
    pub live_notify: Arc<tokio::sync::Notify>,
    pub draining: AtomicBool,
    sub_ids: AtomicU64,
}

impl Node {
    pub(crate) fn next_sub_id(&self) -> u64 {
        self.sub_ids.fetch_add(1, Ordering::Relaxed)
    }

    /// Ready when PostgreSQL answers and the node is not draining. Redis is
    /// not required: without it the node still delivers everything through
    /// its head checks (later, not lost), so taking every node out of
    /// rotation during a Redis outage would only refuse clients. The answer
    /// says when the node runs degraded.
    pub async fn ready(&self) -> Result<&'static str, String> {
        if self.draining.load(Ordering::Relaxed) {
            return Err("draining".into());
        }
        self.log
            .ping()
            .await
            .map_err(|e| format!("postgres: {e}"))?;
        if self.feed.connected.load(Ordering::Relaxed) {
            Ok("ready")
        } else {
            Ok("ready, degraded: redis live feed down, delivering from PostgreSQL")
        }
    }
}

struct NodeReadiness(Arc<Node>);

impl switchyard_ops::admin::Readiness for NodeReadiness {
    fn check(&self) -> Pin<Box<dyn Future<Output = Result<String, String>> + Send + '_>> {
        Box::pin(async move { self.0.ready().await.map(str::to_owned) })
    }
}

/// A started gateway.
#[derive(Debug)]
pub struct Running {
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub node: Arc<Node>,
    stop_accepting: CancellationToken,
    drain: CancellationToken,
    background: CancellationToken,
    tracker: TaskTracker,
}

/// Builds and starts a node.
pub async fn start(cfg: GatewayConfig) -> anyhow::Result<Running> {
    let topology = Topology::load(&cfg.topology)
        .with_context(|| format!("SWITCHYARD_TOPOLOGY={}", cfg.topology.display()))?;
    let topology = TopologyHandle::new(topology);
    let auth = auth::Authenticator::new(
        cfg.jwt_hs256_secret.as_deref(),
        cfg.jwt_public_key_pem.as_deref(),
        cfg.jwt_issuer.clone(),
        cfg.jwt_audience.clone(),
    )
    .map_err(anyhow::Error::msg)?;
    let log = cfg.store.connect().await?;
    let publisher =
        Publisher::connect(&cfg.store.redis_url, &cfg.store.redis_prefix, log.epoch()).await?;
    let background = CancellationToken::new();
    let shards = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    let fanout = fanout::Fanout::start(
        shards,
        log.clone(),
        cfg.replay_page,
        cfg.catchup_concurrency,
        cfg.head_check,
        background.clone(),
    );
    let feed = Arc::new(livefeed::FeedState::default());
    let live_notify = Arc::new(tokio::sync::Notify::new());
    let node = Arc::new(Node {
        log: log.clone(),
        topology: topology.clone(),
        auth,
        fanout: fanout.clone(),
        publisher,
        feed: feed.clone(),
        live_notify: live_notify.clone(),
        draining: AtomicBool::new(false),
        sub_ids: AtomicU64::new(1),
        cfg: cfg.clone(),
    });
    tokio::spawn(livefeed::run(
        cfg.store.redis_url.clone(),
        switchyard_livefeed::live_pattern(&cfg.store.redis_prefix),
        log.epoch().to_owned(),
        fanout,
        feed,
        live_notify,
        background.clone(),
    ));
    topology.spawn_watcher(cfg.topology.clone(), background.clone());

    let metrics = switchyard_ops::telemetry::init_metrics();
    let admin = switchyard_ops::admin::spawn(
        cfg.admin_listen,
        metrics,
        Arc::new(NodeReadiness(node.clone())),
        background.clone(),
    )
    .await
    .with_context(|| format!("binding SWITCHYARD_ADMIN_LISTEN={}", cfg.admin_listen))?;
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("binding SWITCHYARD_LISTEN={}", cfg.listen))?;
    let listen = listener.local_addr()?;
    let stop_accepting = CancellationToken::new();
    let drain = CancellationToken::new();
    let tracker = TaskTracker::new();
    tokio::spawn(server::serve(
        listener,
        node.clone(),
        stop_accepting.clone(),
        drain.clone(),
        tracker.clone(),
    ));
    tracing::info!(%listen, %admin, epoch = log.epoch(), shards, "gateway started");
    Ok(Running {
        listen,
        admin,
        node,
        stop_accepting,
        drain,
        background,
        tracker,
    })
}

impl Running {
    /// Drains: stop accepting, tell every client to reconnect elsewhere
    /// (spread over the drain window), close with 1001, wait for sessions to
    /// end (at most `grace`), then stop background tasks.
    pub async fn shutdown(self, grace: Duration) {
        self.node.draining.store(true, Ordering::Relaxed);
        ::metrics::gauge!(crate::metrics::DRAINING).set(1.0);
        self.stop_accepting.cancel();
        self.drain.cancel();
        self.tracker.close();
        let left = tokio::time::timeout(grace, self.tracker.wait()).await;
        if left.is_err() {
            tracing::warn!(
                remaining = self.tracker.len(),
                "drain grace elapsed; closing remaining connections"
            );
        }
        self.background.cancel();
        tracing::info!("gateway stopped");
    }
}
