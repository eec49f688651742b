//! The systems under test and how the harness starts each of them, on free
//! loopback ports, fed from the run's broker:
//!
//! * `switchyard`: `switchyard-bridge` and two `switchyard-gateway` nodes,
//!   configured through the contract's environment (section 1) with the
//!   run's database, Redis prefix and topology file;
//! * `socketio`: two Node processes of `peers/socketio/server.js` (Socket.IO
//!   with its Redis adapter, kafkajs in one consumer group);
//! * `naive`: one `naive-broadcaster` (tokio-tungstenite + rdkafka);
//! * `rawtcp`: one `raw-fanout` (length-prefixed TCP, the ceiling).
//!
//! For a fleet larger than [`CONNS_PER_SERVER_PROCESS`] every system gets
//! ⌈connections / 15,000⌉ client-facing processes ([`SystemOptions::sized_for`]):
//! that many gateway nodes or Socket.IO processes at least, and that many
//! `naive-broadcaster` / `raw-fanout` processes, each in its own consumer
//! group so each gets every event. Clients are spread round-robin.
//!
//! Invariant: a system is ready only when its readiness check passes
//! (`/readyz`, or the listening port for the Rust peers); the scenarios then
//! also wait for probe events to reach every connection before measuring.

use crate::client::Protocol;
use crate::infra::RedisNs;
use anyhow::{bail, Context as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use switchyard_testkit::{free_addr, wait_port_async, wait_serving, Broker, Database, Proc};

/// A system the load test can drive.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum SystemKind {
    Switchyard,
    Socketio,
    Naive,
    Rawtcp,
}

impl SystemKind {
    pub const ALL: [SystemKind; 4] = [
        SystemKind::Switchyard,
        SystemKind::Socketio,
        SystemKind::Naive,
        SystemKind::Rawtcp,
    ];

    pub fn name(self) -> &'static str {
        match self {
            SystemKind::Switchyard => "switchyard",
            SystemKind::Socketio => "socketio",
            SystemKind::Naive => "naive",
            SystemKind::Rawtcp => "rawtcp",
        }
    }

    pub fn protocol(self) -> Protocol {
        match self {
            SystemKind::Switchyard => Protocol::Switchyard,
            SystemKind::Socketio => Protocol::SocketIo,
            SystemKind::Naive => Protocol::NaiveWs,
            SystemKind::Rawtcp => Protocol::RawTcp,
        }
    }

    /// Whether it can deliver per-user scopes (the others broadcast).
    pub fn scopes(self) -> bool {
        matches!(self, SystemKind::Switchyard | SystemKind::Socketio)
    }
}

impl std::fmt::Display for SystemKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Where the binaries are and how to configure the systems.
#[derive(Debug, Clone)]
pub struct SystemOptions {
    /// Directory of `switchyard-bridge` and `switchyard-gateway`.
    pub switchyard_bin_dir: PathBuf,
    /// Directory of `naive-broadcaster` and `raw-fanout`.
    pub peers_bin_dir: PathBuf,
    /// `loadtest/peers/socketio`.
    pub socketio_dir: PathBuf,
    pub jwt_secret: String,
    /// Gateway nodes (Switchyard) and Node processes (Socket.IO).
    pub nodes: usize,
    /// Processes of the naive broadcaster and of the raw TCP fan-out.
    pub peer_procs: usize,
    /// Kafka fetch wait given to every consumer, for parity (0 = defaults).
    pub fetch_wait_ms: u32,
    /// Extra environment for Switchyard's processes (`K=V`).
    pub switchyard_env: Vec<(String, String)>,
    /// `RUST_LOG` for Switchyard's processes.
    pub server_log: String,
}

/// Connections one server process is given at most: one process may hold
/// 20,000 open files on the machine the figures come from, and the limit
/// cannot be raised.
pub const CONNS_PER_SERVER_PROCESS: usize = 15_000;

impl SystemOptions {
    /// The options for a fleet of `conns` connections: enough server
    /// processes that none holds more than [`CONNS_PER_SERVER_PROCESS`].
    pub fn sized_for(&self, conns: usize) -> SystemOptions {
        let need = conns.div_ceil(CONNS_PER_SERVER_PROCESS).max(1);
        SystemOptions {
            nodes: self.nodes.max(need),
            peer_procs: self.peer_procs.max(need),
            ..self.clone()
        }
    }

    /// The client-facing processes `kind` runs with these options.
    pub fn front_processes(&self, kind: SystemKind) -> usize {
        match kind {
            SystemKind::Switchyard | SystemKind::Socketio => self.nodes,
            SystemKind::Naive | SystemKind::Rawtcp => self.peer_procs,
        }
    }
}

/// The run's shared servers, handed to [`start`].
#[derive(Debug, Clone, Copy)]
pub struct Infra<'a> {
    pub broker: &'a Broker,
    pub redis: &'a RedisNs,
    pub db: Option<&'a Database>,
    pub dir: &'a Path,
}

/// A started system.
#[derive(Debug)]
pub struct Running {
    pub kind: SystemKind,
    pub procs: Vec<Proc>,
    /// Client-facing addresses, one per node.
    pub endpoints: Vec<SocketAddr>,
    pub kafka_topic: String,
    pub kafka_group: String,
    /// How the system was started, for the report (e.g. more nodes than
    /// asked for).
    pub notes: Vec<String>,
}

impl Running {
    /// (name, pid) of every server process of the system not yet stopped.
    pub fn pids(&self) -> Vec<(String, u32)> {
        self.procs
            .iter()
            .filter_map(|p| Some((p.name().to_owned(), p.pid()?)))
            .collect()
    }

    /// Fails with the log tail of any process that died.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        for p in &mut self.procs {
            if !p.running() {
                bail!("{} exited:\n{}", p.name(), p.log_tail(3000));
            }
        }
        Ok(())
    }

    pub fn stop(&mut self) {
        for p in &mut self.procs {
            p.stop(Duration::from_secs(3));
        }
    }
}

/// The topology the load test's Switchyard uses: a scoped `News` topic (one
/// channel per product) and an unfiltered `Fanout` topic.
pub fn topology() -> serde_json::Value {
    serde_json::json!({
        "Hubs": [{
            "Name": "Load",
            "Type": "PubSub",
            "Channels": [
                {
                    "Name": "News-[ScopeValue]",
                    "Topic": crate::event::SCOPED_TOPIC,
                    "IsPublishableByUser": false,
                    "Filters": [{"Type": "Product Codes", "Values": ["*"]}]
                },
                {
                    "Name": "Broadcast",
                    "Topic": crate::event::FANOUT_TOPIC,
                    "IsPublishableByUser": false,
                    "Filters": []
                }
            ],
            "FilterCollections": []
        }]
    })
}

/// Checks the binaries and packages a system needs, before any server
/// starts; installs the Socket.IO peer's npm packages (`npm ci`) when
/// missing.
pub fn preflight(kind: SystemKind, opts: &SystemOptions) -> anyhow::Result<()> {
    match kind {
        SystemKind::Switchyard => {
            for b in ["switchyard-bridge", "switchyard-gateway"] {
                let p = opts.switchyard_bin_dir.join(b);
                if !p.exists() {
                    bail!(
                        "{} not found: build it with `cargo build --release -p switchyard-bridge -p switchyard-gateway` (or pass --switchyard-bin-dir)",
                        p.display()
                    );
                }
            }
        }
        SystemKind::Socketio => {
            let ok = Command::new("node")
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success());
            if !ok {
                bail!("node is not installed (Socket.IO peer needs Node.js >= 18)");
            }
            if !opts.socketio_dir.join("node_modules/socket.io").exists() {
                eprintln!(
                    "installing the Socket.IO peer's packages (npm ci) in {}",
                    opts.socketio_dir.display()
                );
                let st = Command::new("npm")
                    .args(["ci", "--no-audit", "--no-fund"])
                    .current_dir(&opts.socketio_dir)
                    .status()
                    .context("running npm ci")?;
                if !st.success() {
                    bail!("npm ci failed in {}", opts.socketio_dir.display());
                }
            }
        }
        SystemKind::Naive | SystemKind::Rawtcp => {
            let b = if kind == SystemKind::Naive {
                "naive-broadcaster"
            } else {
                "raw-fanout"
            };
            let p = opts.peers_bin_dir.join(b);
            if !p.exists() {
                bail!(
                    "{} not found: cargo build --release -p switchyard-loadtest",
                    p.display()
                );
            }
        }
    }
    Ok(())
}

/// What to start of Switchyard (the ingest scenario needs only the bridge).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parts {
    All,
    BridgeOnly,
}

/// Starts `kind` consuming `kafka_topic` (which must exist) and waits until
/// it is ready.
pub async fn start(
    kind: SystemKind,
    infra: Infra<'_>,
    opts: &SystemOptions,
    kafka_topic: &str,
    parts: Parts,
) -> anyhow::Result<Running> {
    let group = format!("{}-{}", kind.name(), crate::infra::suffix());
    let mut running = Running {
        kind,
        procs: Vec::new(),
        endpoints: Vec::new(),
        kafka_topic: kafka_topic.to_owned(),
        kafka_group: group.clone(),
        notes: Vec::new(),
    };
    match kind {
        SystemKind::Switchyard => {
            let db = infra.db.context("Switchyard needs a database")?;
            let topo = infra.dir.join("topology.json");
            std::fs::write(&topo, serde_json::to_vec_pretty(&topology())?)?;
            let common = |cmd: &mut Command| {
                cmd.env("SWITCHYARD_POSTGRES_URL", &db.url)
                    .env("SWITCHYARD_REDIS_URL", &infra.redis.url)
                    .env("SWITCHYARD_REDIS_PREFIX", &infra.redis.prefix)
                    .env("SWITCHYARD_TOPOLOGY", &topo)
                    .env("RUST_LOG", &opts.server_log);
                for (k, v) in &opts.switchyard_env {
                    cmd.env(k, v);
                }
            };
            let bridge_admin = free_addr()?;
            let mut cmd = Command::new(opts.switchyard_bin_dir.join("switchyard-bridge"));
            common(&mut cmd);
            cmd.env("SWITCHYARD_KAFKA_BROKERS", &infra.broker.addr)
                .env("SWITCHYARD_KAFKA_TOPICS", kafka_topic)
                .env("SWITCHYARD_KAFKA_GROUP", &group)
                .env("SWITCHYARD_KAFKA_DLQ_TOPIC", format!("{kafka_topic}.dlq"))
                .env("SWITCHYARD_ADMIN_LISTEN", bridge_admin.to_string());
            if opts.fetch_wait_ms > 0
                && !opts
                    .switchyard_env
                    .iter()
                    .any(|(k, _)| k == "SWITCHYARD_KAFKA_OPTIONS")
            {
                cmd.env(
                    "SWITCHYARD_KAFKA_OPTIONS",
                    format!("fetch.wait.max.ms={}", opts.fetch_wait_ms),
                );
            }
            let mut bridge = Proc::spawn("switchyard-bridge", cmd, infra.dir)?;
            wait_serving(bridge_admin, Duration::from_secs(90), &mut bridge).await?;
            running.procs.push(bridge);
            if parts == Parts::All {
                for i in 0..opts.nodes {
                    let listen = free_addr()?;
                    let admin = free_addr()?;
                    let mut cmd = Command::new(opts.switchyard_bin_dir.join("switchyard-gateway"));
                    // A PostgreSQL server takes 100 connections by default:
                    // past 4 nodes, the gateways' pools (16 each) beside the
                    // bridge's would not fit, and a storm would find the
                    // server full. `--switchyard-env` still overrides it.
                    if opts.nodes > 4 {
                        cmd.env(
                            "SWITCHYARD_PG_POOL_SIZE",
                            (64 / opts.nodes).max(4).to_string(),
                        );
                    }
                    common(&mut cmd);
                    cmd.env("SWITCHYARD_LISTEN", listen.to_string())
                        .env("SWITCHYARD_ADMIN_LISTEN", admin.to_string())
                        .env("SWITCHYARD_JWT_HS256_SECRET", &opts.jwt_secret);
                    let mut gw = Proc::spawn(&format!("switchyard-gateway-{i}"), cmd, infra.dir)?;
                    wait_serving(admin, Duration::from_secs(90), &mut gw).await?;
                    running.procs.push(gw);
                    running.endpoints.push(listen);
                }
            }
        }
        SystemKind::Socketio => {
            for i in 0..opts.nodes {
                let listen = free_addr()?;
                let mut cmd = Command::new("node");
                cmd.arg(opts.socketio_dir.join("server.js"))
                    .env("HOST", listen.ip().to_string())
                    .env("PORT", listen.port().to_string())
                    .env("NODE_ID", i.to_string())
                    .env("REDIS_URL", &infra.redis.url)
                    .env("REDIS_KEY", &infra.redis.prefix)
                    .env("KAFKA_BROKERS", &infra.broker.addr)
                    .env("KAFKA_TOPIC", kafka_topic)
                    .env("KAFKA_GROUP", &group);
                if opts.fetch_wait_ms > 0 {
                    cmd.env("FETCH_WAIT_MS", opts.fetch_wait_ms.to_string());
                }
                let mut node = Proc::spawn(&format!("socketio-{i}"), cmd, infra.dir)?;
                wait_serving(listen, Duration::from_secs(90), &mut node).await?;
                running.procs.push(node);
                running.endpoints.push(listen);
            }
        }
        SystemKind::Naive | SystemKind::Rawtcp => {
            let (bin, name) = if kind == SystemKind::Naive {
                ("naive-broadcaster", "naive")
            } else {
                ("raw-fanout", "rawtcp")
            };
            let procs = opts.peer_procs.max(1);
            for i in 0..procs {
                // Its own consumer group: every process gets every event.
                let group = if procs == 1 {
                    group.clone()
                } else {
                    format!("{group}-{i}")
                };
                let listen = free_addr()?;
                let mut cmd = Command::new(opts.peers_bin_dir.join(bin));
                cmd.args(["--listen", &listen.to_string()])
                    .args(["--brokers", &infra.broker.addr])
                    .args(["--topic", kafka_topic])
                    .args(["--group", &group]);
                if opts.fetch_wait_ms > 0 {
                    cmd.args(["--fetch-wait-ms", &opts.fetch_wait_ms.to_string()]);
                }
                let pname = if procs == 1 {
                    name.to_owned()
                } else {
                    format!("{name}-{i}")
                };
                let mut p = Proc::spawn(&pname, cmd, infra.dir)?;
                wait_port_async(listen, Duration::from_secs(30), Some(&mut p)).await?;
                running.procs.push(p);
                running.endpoints.push(listen);
            }
        }
    }
    Ok(running)
}
