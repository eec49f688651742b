//! `switchyard-gateway`: one node of the gateway fleet.
//!
//! Where things are, from the edge inwards (a module only uses modules
//! listed after it; `tests/module_graph.rs` checks this):
//! - [`api`]: the server API for backends (its own listener, API keys):
//!   publish, disconnect, history, info, presence and presence stats.
//! - [`server`]: the HTTP listener, limits, routing, upgrade.
//! - [`poll`]: the long-poll fallback.
//! - [`session`]: one WebSocket connection (reader, session loop, writer).
//! - [`livefeed`]: the Redis subscription feeding the fan-out.
//! - [`publish`]: client publishes through the `IsPublishableByUser` gate.
//! - [`presence`]: this node's members of presence channels, their
//!   `join`/`leave` watchers, and the task keeping Redis in step (heartbeats,
//!   sweeps, announcements).
//! - [`occupancy`]: the connection quotas across the fleet (Redis counts
//!   with heartbeats; fail-open).
//! - [`fanout`]: live delivery per node: shards, backfill and head check.
//! - [`catchup`]: replay from PostgreSQL and the request to go live.
//! - [`subscribe`]: resolving a topic to channels and where replay starts
//!   (the cursor-trust rule is a pure function there).
//! - [`replay`]: the order in which replayed rows are handled.
//! - [`golive`], [`subscription`], [`outbound`]: the leaf types the above
//!   share: the go-live request, a subscription's spec and progress, a
//!   connection's byte- and frame-bounded outbound queue.
//! - [`connections`]: the node's connections by user and tenant (server
//!   disconnects, per-user and per-tenant quotas, counts).
//! - [`wakers`]: per-channel wake-ups for long-polls.
//! - [`http`], [`config`], [`auth`], [`error`], [`protocol`]: request
//!   helpers, configuration, JWT verification, typed errors, client frames.
//! - [`metrics`]: the metric catalog (`--print-metrics`).
//!
//! The invariant a maintainer must not break: a subscription receives every
//! entry of each of its channels after its cursor exactly once and in order;
//! Redis is only an accelerator — PostgreSQL is the truth, and every path
//! that may have missed something (gap, reconnect, slow client, new node)
//! goes back to it. Every task the node starts is owned by its task
//! trackers and ends at shutdown.

pub mod api;
pub mod auth;
pub mod catchup;
pub mod config;
pub mod connections;
pub mod error;
pub mod fanout;
pub mod golive;
pub mod http;
pub mod livefeed;
pub mod metrics;
pub mod occupancy;
pub mod outbound;
pub mod poll;
pub mod presence;
pub mod protocol;
pub mod publish;
mod replay;
pub mod server;
pub mod session;
pub mod subscribe;
pub mod subscription;
pub mod wakers;

use anyhow::Context as _;
use config::GatewayConfig;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use switchyard_channels::{Topology, TopologyHandle};
use switchyard_cursorlog::cursor::CursorCodec;
use switchyard_cursorlog::CursorLog;
use switchyard_livefeed::Publisher;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Shared state of a running node: the composition root the listener and
/// sessions hold; everything below them takes only the parts it needs.
#[derive(Debug)]
pub struct Node {
    /// This node's id (random per start), in `/v1/info`.
    pub(crate) id: String,
    pub(crate) cfg: GatewayConfig,
    pub(crate) connections: Arc<connections::Registry>,
    pub(crate) log: CursorLog,
    pub(crate) topology: TopologyHandle,
    pub(crate) auth: auth::Authenticator,
    pub(crate) fanout: fanout::Fanout,
    pub(crate) publisher: Publisher,
    pub(crate) presence: Arc<presence::Presence>,
    pub(crate) occupancy: Arc<occupancy::Occupancy>,
    pub(crate) feed: Arc<livefeed::FeedState>,
    pub(crate) wakers: Arc<wakers::ChannelWakers>,
    pub(crate) poll_slots: Semaphore,
    pub(crate) polls_per_user: poll::PollsPerUser,
    /// Long-polls' share of the PostgreSQL pool (reads only).
    pub(crate) poll_reads: Semaphore,
    pub(crate) cursors: CursorCodec,
    pub(crate) draining: AtomicBool,
    /// Last readiness check (refreshed in the background, so a flood of
    /// `/readyz` requests never reaches PostgreSQL).
    readiness: RwLock<Result<&'static str, String>>,
    sub_ids: AtomicU64,
}

impl Node {
    pub(crate) fn next_sub_id(&self) -> u64 {
        self.sub_ids.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn planner(&self) -> subscribe::Planner<'_> {
        subscribe::Planner {
            log: &self.log,
            cursors: &self.cursors,
            topology: self.topology.current(),
            lookback_tz: self.cfg.store.lookback_tz,
        }
    }

    pub(crate) fn publishing(&self) -> publish::Publishing<'_> {
        publish::Publishing {
            log: &self.log,
            topology: self.topology.current(),
            publisher: &self.publisher,
            store: &self.cfg.store,
            max_publish_bytes: self.cfg.max_publish_bytes,
            rate: Some(publish::PublishRate {
                limit: self.cfg.publish_rate_per_user,
                window: self.cfg.publish_rate_window,
            }),
        }
    }

    /// The window over which a draining node closes its connections.
    pub fn drain_window(&self) -> Duration {
        self.cfg.drain
    }

    /// Whether the node takes clients, with the reason (admin port only).
    pub fn readiness(&self) -> Result<&'static str, String> {
        if self.draining.load(Ordering::Relaxed) {
            return Err("draining".into());
        }
        self.readiness
            .read()
            .map(|r| r.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// Ready when PostgreSQL answers. Redis is not required: without it the
    /// node still delivers everything through its head checks (later, not
    /// lost), so taking every node out of rotation during a Redis outage
    /// would only refuse clients. The answer says when the node runs
    /// degraded.
    async fn check_readiness(&self) -> Result<&'static str, String> {
        match tokio::time::timeout(Duration::from_secs(2), self.log.ping()).await {
            Err(_) => return Err("postgres: no answer within 2 s".into()),
            Ok(Err(e)) => return Err(format!("postgres: {e}")),
            Ok(Ok(())) => {}
        }
        if self.feed.connected.load(Ordering::Relaxed) {
            Ok("ready")
        } else {
            Ok("ready, degraded: redis live feed down, delivering from PostgreSQL")
        }
    }

    async fn refresh_readiness(self: Arc<Self>, cancel: CancellationToken) {
        loop {
            let state = self.check_readiness().await;
            match self.readiness.write() {
                Ok(mut r) => *r = state,
                Err(p) => *p.into_inner() = state,
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }
}

struct NodeReadiness(Arc<Node>);

impl switchyard_ops::admin::Readiness for NodeReadiness {
    fn check(&self) -> Pin<Box<dyn Future<Output = Result<String, String>> + Send + '_>> {
        Box::pin(async move { self.0.readiness().map(str::to_owned) })
    }
}

/// A started gateway.
#[derive(Debug)]
pub struct Running {
    pub listen: SocketAddr,
    /// The server API's address, when enabled.
    pub api: Option<SocketAddr>,
    pub admin: SocketAddr,
    pub node: Arc<Node>,
    stop_accepting: CancellationToken,
    drain: CancellationToken,
    background: CancellationToken,
    /// Client connections (HTTP and WebSocket sessions).
    connections: TaskTracker,
    /// Everything else: shards, ticker, catch-ups, backfills, live feed,
    /// topology watcher, admin endpoint, readiness, metrics upkeep.
    tasks: TaskTracker,
}

/// What a shutdown left behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Connections still open when the grace period ended (then aborted).
    pub connections_left: usize,
    /// Background tasks that did not end within their deadline.
    pub tasks_left: usize,
}

/// Builds and starts a node.
pub async fn start(cfg: GatewayConfig) -> anyhow::Result<Running> {
    let topology = Topology::load(&cfg.topology)
        .with_context(|| format!("SWITCHYARD_TOPOLOGY={}", cfg.topology.display()))?;
    // Describe and zero every metric before anything can increment one.
    let metrics = switchyard_ops::telemetry::init_metrics();
    metrics::register(topology.topics());
    let topology = TopologyHandle::new(topology);
    let auth = auth::Authenticator::from_config(&cfg.auth())
        .await
        .map_err(anyhow::Error::msg)?;
    let log = cfg.store.connect().await?;
    let live_key = cfg
        .store
        .live_key
        .as_deref()
        .map(|k| switchyard_livefeed::LiveKey::new(k.as_bytes()));
    if live_key.is_none() {
        tracing::warn!("live messages are not authenticated: set SWITCHYARD_LIVE_KEY (the same for the bridge and every gateway) so whoever can publish on Redis cannot inject or suppress messages");
    }
    let publisher = Publisher::connect(
        &cfg.store.redis_url,
        &cfg.store.redis_prefix,
        log.epoch(),
        live_key.clone(),
    )
    .await?;
    let background = CancellationToken::new();
    let tasks = TaskTracker::new();
    let shards = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    let cursors = CursorCodec::new(log.epoch(), cfg.cursor_key.clone());
    if !cursors.signed() {
        tracing::warn!("cursors are unsigned: set SWITCHYARD_CURSOR_KEY (the same on every gateway) so clients cannot forge positions");
    }
    let catchup = Arc::new(catchup::CatchupContext {
        cursors: cursors.clone(),
        log: log.clone(),
        read_permits: Semaphore::new(cfg.catchup_concurrency.max(1)),
        replay_page: cfg.page_limit(),
        stall_timeout: cfg.stall_timeout,
    });
    let fanout = fanout::Fanout::start(
        fanout::FanoutConfig {
            shards,
            head_check: cfg.head_check,
        },
        catchup,
        tasks.clone(),
        background.clone(),
    );
    let feed = Arc::new(livefeed::FeedState::default());
    let wakers = Arc::new(wakers::ChannelWakers::default());
    let node_id = uuid::Uuid::new_v4().simple().to_string();
    let registry = Arc::new(connections::Registry::new(connections::Limits {
        per_user: cfg.max_user_connections,
        per_tenant: cfg.max_tenant_connections,
    }));
    let presence = Arc::new(presence::Presence::new(
        node_id.clone(),
        cfg.presence_ttl,
        cfg.presence_max_members,
        publisher.clone(),
    ));
    let occupancy = Arc::new(occupancy::Occupancy::new(
        node_id.clone(),
        cfg.presence_ttl,
        registry.clone(),
        publisher.clone(),
    ));
    let node = Arc::new(Node {
        id: node_id,
        connections: registry,
        presence: presence.clone(),
        occupancy: occupancy.clone(),
        log: log.clone(),
        topology: topology.clone(),
        auth,
        fanout: fanout.clone(),
        publisher,
        feed: feed.clone(),
        wakers: wakers.clone(),
        poll_slots: Semaphore::new(cfg.max_polls.max(1)),
        polls_per_user: poll::PollsPerUser::new(cfg.max_polls_per_user),
        poll_reads: Semaphore::new(cfg.poll_read_concurrency.max(1)),
        cursors,
        draining: AtomicBool::new(false),
        readiness: RwLock::new(Err("starting".into())),
        sub_ids: AtomicU64::new(1),
        cfg: cfg.clone(),
    });
    // The first readiness answer is known before the node is announced.
    let first = node.check_readiness().await;
    *node.readiness.write().unwrap_or_else(|p| p.into_inner()) = first;
    tasks.spawn(node.clone().refresh_readiness(background.clone()));
    tasks.spawn(node.auth.clone().run_refresh(background.clone()));
    tasks.spawn(livefeed::run(
        switchyard_livefeed::SubscriberConfig {
            redis_url: cfg.store.redis_url.clone(),
            pattern: switchyard_livefeed::live_pattern(&cfg.store.redis_prefix),
            epoch: log.epoch().to_owned(),
            key: live_key.clone(),
        },
        fanout,
        feed,
        wakers,
        background.clone(),
    ));
    tasks.spawn(topology.watcher(cfg.topology.clone(), background.clone()));
    tasks.spawn(presence.clone().run(background.clone()));
    tasks.spawn(occupancy.run(background.clone()));
    tasks.spawn({
        let key = cfg
            .store
            .live_key
            .as_deref()
            .map(|k| switchyard_livefeed::LiveKey::new(k.as_bytes()));
        switchyard_livefeed::subscribe_channel(
            cfg.store.redis_url.clone(),
            switchyard_livefeed::presence_events_channel(&cfg.store.redis_prefix),
            "presence",
            move |payload| match switchyard_livefeed::presence::PresenceEvent::decode(
                payload,
                key.as_ref(),
            ) {
                Ok(event) => presence.deliver(&event),
                Err(e) => tracing::warn!(error = %e, "presence message ignored"),
            },
            background.clone(),
        )
    });
    let registry = node.connections.clone();
    tasks.spawn(switchyard_livefeed::subscribe_control(
        cfg.store.redis_url.clone(),
        cfg.store.redis_prefix.clone(),
        live_key,
        move |control| match control {
            switchyard_livefeed::Control::Disconnect { user } => {
                let n = registry.disconnect(&user);
                if n > 0 {
                    ::metrics::counter!(crate::metrics::SERVER_DISCONNECTS).increment(n as u64);
                    tracing::info!(%user, connections = n, "user disconnected by the server API");
                }
            }
        },
        background.clone(),
    ));
    tasks.spawn({
        let log = log.clone();
        switchyard_ops::telemetry::run_upkeep(
            metrics.clone(),
            switchyard_ops::telemetry::UPKEEP_PERIOD,
            background.clone(),
            move || switchyard_cursorlog::metrics::record_pool(&log),
        )
    });

    let (admin, admin_server) = switchyard_ops::admin::bind(
        cfg.admin_listen,
        metrics,
        Arc::new(NodeReadiness(node.clone())),
        background.clone(),
    )
    .await
    .with_context(|| format!("binding SWITCHYARD_ADMIN_LISTEN={}", cfg.admin_listen))?;
    tasks.spawn(admin_server);
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("binding SWITCHYARD_LISTEN={}", cfg.listen))?;
    let listen = listener.local_addr()?;
    let stop_accepting = CancellationToken::new();
    let drain = CancellationToken::new();
    let connections = TaskTracker::new();
    tasks.spawn(server::serve(
        listener,
        node.clone(),
        stop_accepting.clone(),
        drain.clone(),
        connections.clone(),
    ));
    let api = match cfg.api_listen {
        None => None,
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding SWITCHYARD_API_LISTEN={addr}"))?;
            let api = listener.local_addr()?;
            // API requests end with the background tasks, after the drain:
            // backends keep publishing while clients move away.
            tasks.spawn(api::serve(
                listener,
                node.clone(),
                background.clone(),
                tasks.clone(),
            ));
            Some(api)
        }
    };
    tracing::info!(%listen, %admin, ?api, epoch = log.epoch(), shards, "gateway started");
    Ok(Running {
        listen,
        api,
        admin,
        node,
        stop_accepting,
        drain,
        background,
        connections,
        tasks,
    })
}

impl Running {
    /// Drains: stop accepting, close every client connection at a random
    /// point of the drain window (`reconnect`, then close 1001), wait for
    /// sessions to end (at most `grace`), then cancel every background task
    /// and wait
    /// for them (at most `grace` again). Sessions and tasks still running at
    /// their deadline are aborted by the runtime when the process exits; the
    /// report counts them.
    pub async fn shutdown(self, grace: Duration) -> ShutdownReport {
        self.node.draining.store(true, Ordering::Relaxed);
        ::metrics::gauge!(crate::metrics::DRAINING).set(1.0);
        self.stop_accepting.cancel();
        self.drain.cancel();
        self.connections.close();
        let mut report = ShutdownReport {
            connections_left: 0,
            tasks_left: 0,
        };
        if tokio::time::timeout(grace, self.connections.wait())
            .await
            .is_err()
        {
            report.connections_left = self.connections.len();
            tracing::warn!(
                remaining = report.connections_left,
                "drain grace elapsed with connections still open"
            );
        }
        self.background.cancel();
        self.tasks.close();
        if tokio::time::timeout(grace, self.tasks.wait())
            .await
            .is_err()
        {
            report.tasks_left = self.tasks.len();
            tracing::warn!(
                remaining = report.tasks_left,
                "background tasks did not stop in time"
            );
        }
        tracing::info!(?report, "gateway stopped");
        report
    }
}
