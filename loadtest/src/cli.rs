//! The command line of `switchyard-loadtest`.
//!
//! Invariant: every option has a default that reproduces the README's
//! figures, and every load knob is bounded (count and time), so
//! `switchyard-loadtest run <scenario>` always ends by itself.

use crate::systems::SystemKind;
use std::net::Ipv4Addr;
use std::path::PathBuf;

#[derive(Debug, clap::Parser)]
#[command(
    name = "switchyard-loadtest",
    about = "Measures Switchyard end to end (Kafka in, WebSocket out) against Socket.IO, a naive broadcaster and raw TCP, in one run"
)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Debug, clap::Subcommand)]
pub enum Cmd {
    /// Starts the broker and each system in turn, runs a scenario against
    /// them, writes results/<scenario>.{json,md,svg} and the README figures.
    Run(Box<RunArgs>),
    /// Rewrites the Markdown tables, plots and README figures from the JSON
    /// results already in the results directory.
    Report {
        #[arg(long)]
        out_dir: Option<PathBuf>,
    },
    /// Checks the machine: file-descriptor limits, sysctls, tools.
    Preflight,
    /// The chaos soak: Switchyard on private servers under a steady load,
    /// reconnecting and hostile clients and a schedule of faults; writes
    /// results/soak.{json,md}; exit 2 on loss or duplication.
    Soak(Box<SoakArgs>),
    /// A small fixed set against Switchyard only (~3 minutes): fan-out,
    /// ingest, idle memory, reconnect storm; one table compared with
    /// results/quick-baseline.json. Exit 3 when a figure is worse than its
    /// tolerance or events were lost.
    Quick(crate::quick::QuickArgs),
    /// Internal: runs one slice of a large fleet for a parent
    /// `switchyard-loadtest run` (JSON lines on stdin/stdout).
    #[command(name = "fleet-worker", hide = true)]
    FleetWorker,
}

/// Options of the chaos soak.
#[derive(Debug, Clone, clap::Args, serde::Serialize)]
pub struct SoakArgs {
    /// Seconds of load and faults [default: 600; with --ci: 120].
    #[arg(long)]
    pub duration: Option<f64>,
    /// Client connections: well-behaved, reconnecting and hostile
    /// [default: 2000; with --ci: 300].
    #[arg(long)]
    pub clients: Option<usize>,
    /// The CI size: 120 s and 300 clients (unless given).
    #[arg(long)]
    pub ci: bool,
    /// Events per second, over all products.
    #[arg(long, default_value_t = 20.0)]
    pub rate: f64,
    /// Products (each event is scoped to one).
    #[arg(long, default_value_t = 8)]
    pub products: u32,
    /// Products each client's user is entitled to.
    #[arg(long, default_value_t = 2)]
    pub products_per_user: u32,
    /// Serialised size of each event's payload, bytes.
    #[arg(long, default_value_t = 100)]
    pub payload_bytes: usize,
    /// Share of the clients that end their connection at random (every
    /// 3–20 s) and resume with their cursor.
    #[arg(long, default_value_t = 0.1)]
    pub churn_share: f64,
    /// Share of the clients that attack (fragment floods, slowloris,
    /// malformed frames, expired tokens, forged cursors, poll floods,
    /// stalled readers).
    #[arg(long, default_value_t = 0.05)]
    pub hostile_share: f64,
    /// Peak RSS a gateway or the bridge may reach, MiB.
    #[arg(long, default_value_t = 512)]
    pub max_rss_mib: u64,
    /// Seconds without progress after which the final drain stops waiting
    /// (what is missing then counts as lost).
    #[arg(long, default_value_t = 60.0)]
    pub drain_timeout_seconds: f64,
    /// Concurrent handshakes while the fleet connects.
    #[arg(long, default_value_t = 128)]
    pub connect_concurrency: usize,
    /// RUST_LOG of Switchyard's processes.
    #[arg(long, default_value = "warn")]
    pub server_log: String,
    /// Where soak.{json,md} go [default: loadtest/results].
    #[arg(long)]
    pub out_dir: Option<PathBuf>,
    /// Keep the run's directory (servers' data and logs) afterwards.
    #[arg(long)]
    pub keep: bool,
}

impl SoakArgs {
    pub fn duration_s(&self) -> f64 {
        self.duration
            .unwrap_or(if self.ci { 120.0 } else { 600.0 })
            .max(30.0)
    }

    pub fn clients(&self) -> usize {
        self.clients
            .unwrap_or(if self.ci { 300 } else { 2000 })
            .max(1)
    }
}

/// A scenario, or all of them.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum ScenarioKind {
    /// One topic, every connection subscribed: latency against offered rate.
    Fanout,
    /// Many products, each user entitled to a few: scoped delivery.
    Scoped,
    /// All clients drop and come back at once (with cursors where the
    /// system has them): time until all caught up, and what was lost.
    Reconnect,
    /// Events/s the bridge makes durable in PostgreSQL (Switchyard only).
    Ingest,
    /// Server memory per idle connection.
    Idle,
    /// Latency and server CPU per delivery against connection count,
    /// Switchyard against raw TCP (not part of `all`).
    Growth,
    /// Every scenario in turn.
    All,
}

impl ScenarioKind {
    pub fn name(self) -> &'static str {
        match self {
            ScenarioKind::Fanout => "fanout",
            ScenarioKind::Scoped => "scoped",
            ScenarioKind::Reconnect => "reconnect",
            ScenarioKind::Ingest => "ingest",
            ScenarioKind::Idle => "idle",
            ScenarioKind::Growth => "growth",
            ScenarioKind::All => "all",
        }
    }

    pub const EACH: [ScenarioKind; 5] = [
        ScenarioKind::Fanout,
        ScenarioKind::Scoped,
        ScenarioKind::Reconnect,
        ScenarioKind::Ingest,
        ScenarioKind::Idle,
    ];
}

#[derive(Debug, Clone, clap::Args, serde::Serialize)]
pub struct RunArgs {
    /// fanout | scoped | reconnect | ingest | idle | growth | all
    #[arg(value_enum)]
    pub scenario: ScenarioKind,

    /// Systems to measure, in this order [default: every system the
    /// scenario applies to; Switchyard is skipped with a note when its
    /// binaries are missing, unless named here].
    #[arg(long, value_enum, value_delimiter = ',')]
    pub systems: Vec<SystemKind>,

    /// Client connections [default: 10000; scoped 5000].
    #[arg(long)]
    pub connections: Option<usize>,

    /// Offered event rates to sweep, events/s [fan-out default:
    /// 1,2,5,10,20,50,100; scoped: 20,50,100,200,500,1000].
    #[arg(long, value_delimiter = ',')]
    pub rates: Vec<f64>,

    /// Seconds of production per rate step.
    #[arg(long, default_value_t = 10.0)]
    pub step_seconds: f64,

    /// Serialised size of each event's payload object, bytes.
    #[arg(long, default_value_t = 100)]
    pub payload_bytes: usize,

    /// Scoped: number of products.
    #[arg(long, default_value_t = 100)]
    pub products: u32,

    /// Scoped: products each user is entitled to.
    #[arg(long, default_value_t = 3)]
    pub products_per_user: u32,

    /// Stop sweeping a system once a step's p99 exceeds this (ms), or it
    /// lost events, or delivered under 99 % of what was offered.
    #[arg(long, default_value_t = 1000.0)]
    pub max_p99_ms: f64,

    /// Reconnect storm: events/s while the storm runs.
    #[arg(long, default_value_t = 5.0)]
    pub storm_rate: f64,
    /// Reconnect storm: seconds connected before the drop.
    #[arg(long, default_value_t = 5.0)]
    pub storm_warm_seconds: f64,
    /// Reconnect storm: seconds every client stays away.
    #[arg(long, default_value_t = 3.0)]
    pub storm_offline_seconds: f64,
    /// Reconnect storm: seconds of production after the reconnect.
    #[arg(long, default_value_t = 10.0)]
    pub storm_after_seconds: f64,
    /// Reconnect storm: give up waiting for catch-up after this many seconds.
    #[arg(long, default_value_t = 60.0)]
    pub storm_timeout_seconds: f64,

    /// Ingest: events pre-loaded into Kafka for the bridge to drain.
    #[arg(long, default_value_t = 300_000)]
    pub ingest_events: u64,
    /// Ingest: partitions of the ingest topic (records keyed by product).
    #[arg(long, default_value_t = 3)]
    pub ingest_partitions: i32,
    /// Ingest: give up after this many seconds.
    #[arg(long, default_value_t = 180.0)]
    pub ingest_timeout_seconds: f64,

    /// Growth: connection counts, one measurement each.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "2000,10000,20000,50000,100000"
    )]
    pub growth_connections: Vec<usize>,
    /// Growth: events/s of each measurement.
    #[arg(long, default_value_t = 5.0)]
    pub growth_rate: f64,

    /// Idle: seconds to let the servers settle before reading memory.
    #[arg(long, default_value_t = 5.0)]
    pub idle_settle_seconds: f64,

    /// Partitions of the fan-out / scoped topics (records keyed by topic).
    #[arg(long, default_value_t = 1)]
    pub partitions: i32,

    /// Gateway nodes of Switchyard and Node processes of Socket.IO.
    #[arg(long, default_value_t = 2)]
    pub nodes: usize,

    /// Connections per loopback source address before moving on to the
    /// next one (127.0.0.1, 127.0.0.2, ...): each has ~28k ephemeral ports,
    /// but `bind(addr, 0)` takes odd ports first and scans all ~14k of them
    /// for every bind once they are used up, which makes connecting crawl
    /// (kernel CPU); 12,000 stays below that.
    #[arg(long, default_value_t = 12_000)]
    pub conns_per_source_ip: usize,

    /// Connections per generator process: a larger fleet runs in
    /// ⌈connections / this⌉ worker processes (one process may hold at
    /// most 20,000 open files here).
    #[arg(long, default_value_t = crate::fleet::DEFAULT_CONNS_PER_PROCESS)]
    pub conns_per_process: usize,

    /// First loopback source address.
    #[arg(long, default_value = "127.0.0.1")]
    pub first_source_ip: Ipv4Addr,

    /// Concurrent handshakes while connecting (the storm lifts it).
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,
    /// Seconds one connection attempt may take.
    #[arg(long, default_value_t = 30.0)]
    pub connect_timeout_seconds: f64,
    /// Seconds to wait for all connections before measuring with those up.
    #[arg(long, default_value_t = 180.0)]
    pub connect_deadline_seconds: f64,

    /// Seconds without a new delivery after which a step stops waiting for
    /// the rest (they count as lost).
    #[arg(long, default_value_t = 10.0)]
    pub drain_timeout_seconds: f64,

    /// Kafka `fetch.wait.max.ms` given to every system's consumer (0 keeps
    /// each client's default). Switchyard gets it through
    /// SWITCHYARD_KAFKA_OPTIONS. tansu answers a fetch when this wait ends,
    /// not when data arrives, so it is every system's latency floor.
    #[arg(long, default_value_t = 10)]
    pub fetch_wait_ms: u32,

    /// Producer `linger.ms`.
    #[arg(long, default_value_t = 1)]
    pub linger_ms: u32,

    /// Exit 0 even when events were lost or duplicated.
    #[arg(long)]
    pub allow_loss: bool,

    /// Keep the other systems' objects of an existing results file (each
    /// object says when it was measured).
    #[arg(long)]
    pub merge: bool,

    /// Where results go [default: loadtest/results].
    #[arg(long)]
    pub out_dir: Option<PathBuf>,

    /// Where switchyard-bridge and switchyard-gateway are
    /// [default: beside switchyard-loadtest when there, else target/release
    /// of the workspace].
    #[arg(long)]
    pub switchyard_bin_dir: Option<PathBuf>,

    /// Extra environment for Switchyard's processes, `K=V` (repeatable).
    #[arg(long = "switchyard-env", value_parser = parse_kv)]
    pub switchyard_env: Vec<(String, String)>,

    /// RUST_LOG of Switchyard's processes.
    #[arg(long, default_value = "warn")]
    pub server_log: String,

    /// PostgreSQL server (a fresh database is created on it).
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432")]
    pub postgres: String,

    /// Redis server (the run uses a prefix of its own).
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    pub redis: String,

    /// Keep the run's directory (logs) and database afterwards.
    #[arg(long)]
    pub keep: bool,

    /// Do not rewrite loadtest/README.md's figures.
    #[arg(long)]
    pub no_readme: bool,
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("expected K=V, got {s:?}"))
}

impl RunArgs {
    pub fn connections_for(&self, s: ScenarioKind) -> usize {
        self.connections.unwrap_or(match s {
            ScenarioKind::Scoped => 5000,
            ScenarioKind::Growth => self.growth_connections.iter().copied().max().unwrap_or(0),
            _ => 10_000,
        })
    }

    pub fn rates_for(&self, s: ScenarioKind) -> Vec<f64> {
        if !self.rates.is_empty() {
            return self.rates.clone();
        }
        match s {
            ScenarioKind::Scoped => vec![20.0, 50.0, 100.0, 200.0, 500.0, 1000.0],
            _ => vec![1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0],
        }
    }

    /// The systems to run, and whether they were named explicitly.
    pub fn systems_to_run(&self, s: ScenarioKind) -> (Vec<SystemKind>, bool) {
        if !self.systems.is_empty() {
            return (self.systems.clone(), true);
        }
        if s == ScenarioKind::Growth {
            return (vec![SystemKind::Switchyard, SystemKind::Rawtcp], false);
        }
        // Systems a scenario does not apply to are listed as not measured.
        (SystemKind::ALL.to_vec(), false)
    }
}
