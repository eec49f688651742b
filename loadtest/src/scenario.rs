//! The scenarios, and the run that puts them together: start the shared
//! servers once, then for each system in turn start it, connect the fleet,
//! wait until probe events reach every connection, measure, tear down.
//!
//! * fan-out / scoped: a sweep of offered rates, one step each, latency and
//!   deliveries per step, until a step hits a limit;
//! * reconnect: every client drops at once, stays away, comes back at once
//!   (with its cursor where the system has one);
//! * ingest: a backlog in Kafka drained by the bridge into PostgreSQL;
//! * idle: server RSS before and after connecting.
//!
//! Invariant: measurement starts only after every live connection has seen
//! a probe (so no system is charged for events sent before it listened), and
//! every wait is bounded; a system that fails is reported and the run moves
//! on to the next one.

use crate::cli::{RunArgs, ScenarioKind};
use crate::client::{ClientSpec, Fleet, FleetOptions, Mode};
use crate::event::{product_code, FANOUT_TOPIC, SCOPED_TOPIC};
use crate::infra::RedisNs;
use crate::procstat::{self, ProcSample};
use crate::producer::{KafkaProducer, KeyBy, Plan, Progress, Streams};
use crate::report::{now_rfc3339, Machine, ProcUsage, RunReport, SystemResult};
use crate::systems::{self, Infra, Parts, Running, SystemKind, SystemOptions};
use crate::verify::Tally;
use anyhow::{bail, Context as _};
use rand::{seq::IndexedRandom as _, SeedableRng as _};
use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchyard_testkit::{Broker, Database};

/// The HS256 secret the harness gives its gateways and signs tokens with.
pub const JWT_SECRET: &str = "switchyard-loadtest-secret-0123456789";

/// Everything shared by the systems of one run.
pub struct Ctx {
    pub args: RunArgs,
    pub dir: PathBuf,
    pub run_id: String,
    pub broker: Broker,
    pub redis: RedisNs,
    pub db: Option<Database>,
    db_client: Option<tokio_postgres::Client>,
    pub producer: Arc<KafkaProducer>,
    pub sys_opts: SystemOptions,
    redis_pid: Option<u32>,
    probe_seq: AtomicU64,
}

impl std::fmt::Debug for Ctx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx")
            .field("run_id", &self.run_id)
            .finish_non_exhaustive()
    }
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.0))
}

fn workspace_root() -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

impl Ctx {
    /// Starts the broker, creates the database (when Switchyard runs) and
    /// picks the Redis prefix.
    pub async fn start(args: RunArgs, need_db: bool) -> anyhow::Result<Ctx> {
        let run_id = crate::infra::suffix();
        let dir = std::env::temp_dir().join(format!("switchyard-loadtest-{run_id}"));
        std::fs::create_dir_all(&dir)?;
        eprintln!("run {run_id}: logs in {}", dir.display());
        let broker = Broker::launch(&dir, "warn").await?;
        eprintln!("tansu broker on {}", broker.addr);
        let redis = RedisNs::new(&args.redis);
        let redis_pid = redis.server_pid().await;
        if redis_pid.is_none() {
            eprintln!(
                "warning: cannot reach Redis at {} (needed by switchyard and socketio)",
                args.redis
            );
        }
        let (db, db_client) = if need_db {
            let name = format!("sy_load_{}", crate::infra::suffix());
            let mut db = Database::create_as(&args.postgres, name).await?;
            db.set_keep(args.keep);
            let c = db.client().await?;
            eprintln!("database {}", db.name);
            (Some(db), Some(c))
        } else {
            (None, None)
        };
        let producer = Arc::new(KafkaProducer::new(&broker.addr, args.linger_ms)?);
        // The peer binaries sit beside this one (or one level up, when this
        // is an integration test in target/<profile>/deps).
        let exe_dir = std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(std::path::Path::to_path_buf))
            .map(|d| match d.parent() {
                Some(up)
                    if !d.join("naive-broadcaster").exists()
                        && up.join("naive-broadcaster").exists() =>
                {
                    up.to_path_buf()
                }
                _ => d,
            })
            .unwrap_or_else(|| workspace_root().join("target/release"));
        let sys_opts = SystemOptions {
            switchyard_bin_dir: args
                .switchyard_bin_dir
                .clone()
                .unwrap_or_else(|| workspace_root().join("target/release")),
            peers_bin_dir: exe_dir,
            socketio_dir: std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("peers/socketio"),
            jwt_secret: JWT_SECRET.into(),
            nodes: args.nodes.max(1),
            fetch_wait_ms: args.fetch_wait_ms,
            switchyard_env: args.switchyard_env.clone(),
            server_log: args.server_log.clone(),
        };
        Ok(Ctx {
            args,
            dir,
            run_id,
            broker,
            redis,
            db,
            db_client,
            producer,
            sys_opts,
            redis_pid,
            probe_seq: AtomicU64::new(1),
        })
    }

    fn infra(&self) -> Infra<'_> {
        Infra {
            broker: &self.broker,
            redis: &self.redis,
            db: self.db.as_ref(),
            dir: &self.dir,
        }
    }

    /// A fresh Kafka topic for one system phase (so no system replays
    /// another's backlog); the events in it are generated identically.
    async fn topic(
        &self,
        scenario: ScenarioKind,
        kind: SystemKind,
        partitions: i32,
    ) -> anyhow::Result<String> {
        let t = format!(
            "sy_load_{}_{}_{}",
            self.run_id,
            scenario.name(),
            kind.name()
        );
        self.broker.create_topics(&[&t], partitions).await?;
        self.broker.create_topics(&[&format!("{t}.dlq")], 1).await?;
        Ok(t)
    }

    async fn infra_pids(&self) -> Vec<(String, u32)> {
        let mut v: Vec<(String, u32)> = self
            .broker
            .proc
            .pid()
            .map(|p| ("tansu".to_owned(), p))
            .into_iter()
            .collect();
        if let Some(p) = self.redis_pid {
            v.push(("redis-server".into(), p));
        }
        if let (Some(db), Some(c)) = (&self.db, &self.db_client) {
            for pid in db.backend_pids(c).await {
                v.push(("postgres".into(), pid));
            }
        }
        v
    }

    pub async fn cleanup(self) {
        if !self.args.keep {
            let _ = self.redis.cleanup().await;
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!(
                "kept {} (logs), Redis prefix {}",
                self.dir.display(),
                self.redis.prefix
            );
        }
    }
}

/// CPU/memory accounting over one measurement.
struct Meter {
    t0: Instant,
    server: HashMap<u32, ProcSample>,
    infra: HashMap<u32, ProcSample>,
    me: ProcSample,
    jiffies: (u64, u64),
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Drop for Meter {
    fn drop(&mut self) {
        // Stops the RSS sampler also when a step fails half-way.
        self.stop.store(true, Relaxed);
    }
}

struct Usage {
    server_cpu_s: f64,
    server_cpu_pct: f64,
    server_rss: u64,
    server_rss_peak: u64,
    processes: Vec<ProcUsage>,
    infra: Vec<ProcUsage>,
    generator_cpu_s: f64,
    busy_pct: f64,
}

impl Meter {
    async fn begin(ctx: &Ctx, sys: &Running) -> Meter {
        let server: HashMap<u32, ProcSample> = sys
            .pids()
            .iter()
            .filter_map(|(_, pid)| Some((*pid, procstat::sample(*pid)?)))
            .collect();
        let infra = ctx
            .infra_pids()
            .await
            .iter()
            .filter_map(|(_, pid)| Some((*pid, procstat::sample(*pid)?)))
            .collect();
        let peak = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        {
            let pids: Vec<u32> = server.keys().copied().collect();
            let (peak, stop) = (peak.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(Relaxed) {
                    let sum: u64 = pids
                        .iter()
                        .filter_map(|p| procstat::sample(*p))
                        .map(|s| s.rss_bytes)
                        .sum();
                    peak.fetch_max(sum, Relaxed);
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            });
        }
        Meter {
            t0: Instant::now(),
            server,
            infra,
            me: procstat::sample_self(),
            jiffies: procstat::machine_jiffies(),
            peak,
            stop,
        }
    }

    async fn end(self, ctx: &Ctx, sys: &Running) -> Usage {
        self.stop.store(true, Relaxed);
        let wall = self.t0.elapsed().as_secs_f64().max(1e-6);
        let mut processes = Vec::new();
        for (name, pid) in sys.pids() {
            let now = procstat::sample(pid).unwrap_or_default();
            let before = self.server.get(&pid).copied().unwrap_or_default();
            processes.push(ProcUsage {
                name,
                pid,
                cpu_s: (now.cpu_s - before.cpu_s).max(0.0),
                rss_bytes: now.rss_bytes,
            });
        }
        let mut infra: Vec<ProcUsage> = Vec::new();
        for (name, pid) in ctx.infra_pids().await {
            let now = procstat::sample(pid).unwrap_or_default();
            let before = self.infra.get(&pid).copied().unwrap_or_default();
            let cpu = (now.cpu_s - before.cpu_s).max(0.0);
            if let Some(agg) = infra.iter_mut().find(|p| p.name.starts_with(&name)) {
                agg.cpu_s += cpu;
                agg.rss_bytes = agg.rss_bytes.max(now.rss_bytes);
            } else {
                infra.push(ProcUsage {
                    name,
                    pid,
                    cpu_s: cpu,
                    rss_bytes: now.rss_bytes,
                });
            }
        }
        let server_cpu_s: f64 = processes.iter().map(|p| p.cpu_s).sum();
        let server_rss: u64 = processes.iter().map(|p| p.rss_bytes).sum();
        Usage {
            server_cpu_s,
            server_cpu_pct: 100.0 * server_cpu_s / wall,
            server_rss,
            server_rss_peak: self.peak.load(Relaxed).max(server_rss),
            processes,
            infra,
            generator_cpu_s: (procstat::sample_self().cpu_s - self.me.cpu_s).max(0.0),
            busy_pct: procstat::busy_pct(self.jiffies, procstat::machine_jiffies()),
        }
    }
}

/// Rounds to 3 decimals (CPU seconds from clock ticks, percentages).
fn r3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

impl Usage {
    fn apply(mut self, r: &mut SystemResult) {
        for p in self.processes.iter_mut().chain(self.infra.iter_mut()) {
            p.cpu_s = r3(p.cpu_s);
        }
        r.server_cpu_s = r3(self.server_cpu_s);
        r.server_cpu_pct = r3(self.server_cpu_pct);
        r.server_rss_bytes = self.server_rss;
        r.server_rss_peak_bytes = self.server_rss_peak;
        r.processes = self.processes;
        r.infra = self.infra;
        r.generator_cpu_s = r3(self.generator_cpu_s);
        r.machine_busy_pct = r3(self.busy_pct);
    }
}

/// Entitled product indices of user `i` (seeded: the same in every system).
pub fn entitlements(i: usize, products: u32, per_user: u32) -> Vec<u32> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5157_0000 ^ i as u64);
    let all: Vec<u32> = (0..products.max(1)).collect();
    let mut v: Vec<u32> = all
        .choose_multiple(&mut rng, per_user.clamp(1, products.max(1)) as usize)
        .copied()
        .collect();
    v.sort_unstable();
    v
}

fn token(sub: &str, products: &[String]) -> anyhow::Result<String> {
    let exp = crate::now_us() / 1_000_000 + 6 * 3600;
    let claims = serde_json::json!({"sub": sub, "exp": exp, "products": products, "features": []});
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )?)
}

fn source_ip(args: &RunArgs, i: usize) -> anyhow::Result<Ipv4Addr> {
    let o = args.first_source_ip.octets();
    let step = (i / args.conns_per_source_ip.max(1)) as u32;
    let ip = u32::from_be_bytes(o) + step;
    let ip = Ipv4Addr::from(ip);
    if !ip.is_loopback() {
        bail!("source address {ip} left 127.0.0.0/8: lower --connections or raise --conns-per-source-ip");
    }
    Ok(ip)
}

/// Builds the fleet's client specs for `sys`.
fn clients(
    ctx: &Ctx,
    sys: &Running,
    n: usize,
    scoped: bool,
) -> anyhow::Result<Vec<(ClientSpec, Vec<u32>)>> {
    let a = &ctx.args;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let streams = if scoped {
            entitlements(i, a.products, a.products_per_user)
        } else {
            vec![0]
        };
        let products: Vec<String> = if scoped {
            streams.iter().map(|p| product_code(*p)).collect()
        } else {
            Vec::new()
        };
        let token = if sys.kind == SystemKind::Switchyard {
            token(&format!("load-{i}"), &products)?
        } else {
            String::new()
        };
        out.push((
            ClientSpec {
                protocol: sys.kind.protocol(),
                server: sys.endpoints[i % sys.endpoints.len()],
                source_ip: source_ip(a, i)?,
                token,
                topic: if scoped { SCOPED_TOPIC } else { FANOUT_TOPIC },
                products,
            },
            streams,
        ));
    }
    Ok(out)
}

fn fleet_options(a: &RunArgs) -> FleetOptions {
    FleetOptions {
        connect_concurrency: a.connect_concurrency,
        connect_timeout: secs(a.connect_timeout_seconds),
        max_attempts: 8,
        shards: 16,
    }
}

/// Connects the fleet and waits for the probe barrier; notes what fell short.
async fn connect_fleet(
    ctx: &Ctx,
    sys: &mut Running,
    n: usize,
    scoped: bool,
    notes: &mut Vec<String>,
) -> anyhow::Result<Fleet> {
    let t = Instant::now();
    let fleet = Fleet::spawn(clients(ctx, sys, n, scoped)?, fleet_options(&ctx.args));
    let live = fleet
        .wait_live(n, secs(ctx.args.connect_deadline_seconds))
        .await;
    eprintln!(
        "  {live}/{n} connections live after {:.1}s",
        t.elapsed().as_secs_f64()
    );
    sys.check_alive()?;
    if live < n {
        notes.push(format!(
            "only {live} of {n} connections came up within {}s; errors: {}",
            ctx.args.connect_deadline_seconds,
            fleet.sample_errors(3).join(" | ")
        ));
    }
    if live == 0 {
        let errs = fleet.sample_errors(3).join(" | ");
        fleet.shutdown(Duration::from_secs(5)).await;
        bail!("no connection came up: {errs}");
    }
    probe_barrier(ctx, sys, &fleet, scoped, notes).await;
    Ok(fleet)
}

/// Sends probe events until every live connection has seen one.
async fn probe_barrier(
    ctx: &Ctx,
    sys: &Running,
    fleet: &Fleet,
    scoped: bool,
    notes: &mut Vec<String>,
) {
    let first = ctx.probe_seq.load(Relaxed);
    let deadline = Instant::now() + Duration::from_secs(60);
    let (client_topic, products) = if scoped {
        (SCOPED_TOPIC, Some(ctx.args.products))
    } else {
        (FANOUT_TOPIC, None)
    };
    loop {
        let k = ctx.probe_seq.fetch_add(1, Relaxed);
        ctx.producer
            .probe(&sys.kafka_topic, &ctx.run_id, client_topic, products, k);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let live = fleet.live();
        let probed = fleet.probed(first);
        if probed >= live && live > 0 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            return;
        }
        if Instant::now() > deadline {
            notes.push(format!(
                "probe barrier: only {probed} of {live} live connections saw a probe within 60s"
            ));
            return;
        }
    }
}

/// Runs `scenario` over its systems and returns the report.
pub async fn run(
    args: RunArgs,
    scenario: ScenarioKind,
    command: String,
) -> anyhow::Result<RunReport> {
    let (systems, explicit) = args.systems_to_run();
    let mut report = RunReport {
        scenario: scenario.name().into(),
        generated_at: now_rfc3339(),
        command,
        machine: Machine::detect(),
        params: serde_json::to_value(&args)?,
        results: Vec::new(),
        ok: true,
        problems: Vec::new(),
    };
    let need_db = systems.contains(&SystemKind::Switchyard);
    let ctx = Ctx::start(args.clone(), need_db).await?;
    let mut runnable = Vec::new();
    for kind in systems {
        if scenario == ScenarioKind::Scoped && !kind.scopes() {
            report.results.push(not_run(
                &ctx,
                scenario,
                kind,
                "broadcasts to everyone: no per-user scopes to measure",
            ));
            continue;
        }
        if scenario == ScenarioKind::Ingest && kind != SystemKind::Switchyard {
            report.results.push(not_run(
                &ctx,
                scenario,
                kind,
                "keeps no durable log: nothing to ingest",
            ));
            continue;
        }
        match systems::preflight(kind, &ctx.sys_opts) {
            Ok(()) => runnable.push(kind),
            Err(e) if !explicit && kind == SystemKind::Switchyard => {
                eprintln!("skipping switchyard: {e:#}");
                report.results.push(not_run(
                    &ctx,
                    scenario,
                    kind,
                    &format!("not measured: {e:#}"),
                ));
            }
            Err(e) => {
                report.results.push(failed(&ctx, scenario, kind, &e));
            }
        }
    }
    if scenario == ScenarioKind::Ingest {
        match kafka_ceiling(&ctx).await {
            Ok(r) => report.results.push(r),
            Err(e) => eprintln!("kafka read ceiling: {e:#}"),
        }
    }
    for kind in runnable {
        eprintln!("\n== {} / {}", scenario.name(), kind);
        let res = match scenario {
            ScenarioKind::Fanout => sweep(&ctx, kind, false).await,
            ScenarioKind::Scoped => sweep(&ctx, kind, true).await,
            ScenarioKind::Reconnect => storm(&ctx, kind).await,
            ScenarioKind::Idle => idle(&ctx, kind).await,
            ScenarioKind::Ingest => ingest(&ctx, kind).await,
            ScenarioKind::All => bail!("`all` is expanded by the caller"),
        };
        match res {
            Ok(r) => {
                eprintln!("{}", one_line(&r));
                report.results.push(r)
            }
            Err(e) => {
                eprintln!("{kind} failed: {e:#}");
                report.results.push(failed(&ctx, scenario, kind, &e));
            }
        }
    }
    // Keep report.results in the order asked for, peers' notes included.
    for r in &report.results {
        let mut bad = Vec::new();
        let steps = if r.steps.is_empty() {
            std::slice::from_ref(r)
        } else {
            &r.steps[..]
        };
        for st in steps {
            if st.lost > 0 || st.duplicated > 0 || st.unentitled > 0 {
                bad.push(format!(
                    "{}{}: lost {}, duplicated {}, out of scope {}",
                    r.system,
                    if st.offered_rate > 0.0 && !r.steps.is_empty() {
                        format!(" at {} events/s", st.offered_rate)
                    } else {
                        String::new()
                    },
                    st.lost,
                    st.duplicated,
                    st.unentitled
                ));
            }
        }
        if let Some(e) = &r.error {
            if !r.notes.iter().any(|n| n.starts_with("not measured")) {
                bad.push(format!(
                    "{}: failed: {}",
                    r.system,
                    e.lines().next().unwrap_or("")
                ));
            }
        }
        report.problems.extend(bad);
    }
    report.ok = report.problems.is_empty();
    ctx.cleanup().await;
    Ok(report)
}

fn base(ctx: &Ctx, scenario: ScenarioKind, kind: &str) -> SystemResult {
    SystemResult {
        system: kind.to_owned(),
        scenario: scenario.name().into(),
        connections: match scenario {
            ScenarioKind::Ingest => 0,
            s => ctx.args.connections_for(s),
        },
        measured_at: now_rfc3339(),
        ..Default::default()
    }
}

fn not_run(ctx: &Ctx, scenario: ScenarioKind, kind: SystemKind, why: &str) -> SystemResult {
    let mut r = base(ctx, scenario, kind.name());
    r.connections = 0;
    r.notes.push(format!("not measured: {why}"));
    r.error = Some(why.to_owned());
    r
}

fn failed(ctx: &Ctx, scenario: ScenarioKind, kind: SystemKind, e: &anyhow::Error) -> SystemResult {
    let mut r = base(ctx, scenario, kind.name());
    r.error = Some(format!("{e:#}"));
    r
}

fn one_line(r: &SystemResult) -> String {
    format!(
        "  => {} {}: conns {} events/s {:.0} deliveries/s {:.0} p50 {} p99 {} max {} cpu {:.1}s rss {:.1}MiB lost {} dup {}{}{}{}",
        r.system,
        r.scenario,
        r.connected,
        r.events_per_s,
        r.deliveries_per_s,
        r.p50_ms.map_or("-".into(), |v| format!("{v:.1}ms")),
        r.p99_ms.map_or("-".into(), |v| format!("{v:.1}ms")),
        r.max_ms.map_or("-".into(), |v| format!("{v:.1}ms")),
        r.server_cpu_s,
        r.server_rss_bytes as f64 / 1048576.0,
        r.lost,
        r.duplicated,
        r.catch_up_s.map_or(String::new(), |v| format!(" catch-up {v:.2}s")),
        r.rss_per_conn_bytes.map_or(String::new(), |v| format!(" {v:.0} B/conn")),
        r.durable_events_per_s.map_or(String::new(), |v| format!(" durable {v:.0}/s")),
    )
}

/// Produces one open-loop step on a blocking thread; returns what was sent
/// and the advanced sequence numbers.
async fn produce(
    ctx: &Ctx,
    plan: Plan,
    next_n: Vec<u64>,
    progress: Arc<Progress>,
) -> anyhow::Result<(crate::producer::Produced, Vec<u64>)> {
    let producer = ctx.producer.clone();
    tokio::task::spawn_blocking(move || {
        let mut n = next_n;
        let p = producer.run(&plan, &mut n, &progress);
        let _ = producer.flush(Duration::from_secs(30));
        (p, n)
    })
    .await
    .context("producer thread")
}

/// Waits until `want` deliveries were recorded, or nothing arrived for the
/// drain timeout (or an absolute cap).
async fn drain(ctx: &Ctx, fleet: &Fleet, want: u64, already: u64) {
    let idle_limit = secs(ctx.args.drain_timeout_seconds);
    let cap = Instant::now() + Duration::from_secs(300);
    let mut last = already + fleet.shared.recorder.deliveries();
    let mut last_change = Instant::now();
    loop {
        let got = already + fleet.shared.recorder.deliveries();
        if got >= want || Instant::now() > cap {
            return;
        }
        if got != last {
            last = got;
            last_change = Instant::now();
        } else if last_change.elapsed() > idle_limit {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Subscribers per stream among live connections.
fn subscribers(fleet: &Fleet, streams: usize) -> Vec<u64> {
    let mut v = vec![0u64; streams];
    for c in &fleet.conns {
        if c.live.load(Relaxed) {
            for s in c.streams.iter() {
                if let Some(x) = v.get_mut(*s as usize) {
                    *x += 1;
                }
            }
        }
    }
    v
}

/// Fan-out (one topic) or scoped (products) sweep over offered rates.
async fn sweep(ctx: &Ctx, kind: SystemKind, scoped: bool) -> anyhow::Result<SystemResult> {
    let a = &ctx.args;
    let scenario = if scoped {
        ScenarioKind::Scoped
    } else {
        ScenarioKind::Fanout
    };
    let n = a.connections_for(scenario);
    let topic = ctx.topic(scenario, kind, a.partitions).await?;
    let mut sys = systems::start(kind, ctx.infra(), &ctx.sys_opts, &topic, Parts::All).await?;
    let mut head = base(ctx, scenario, kind.name());
    let fleet = match connect_fleet(ctx, &mut sys, n, scoped, &mut head.notes).await {
        Ok(f) => f,
        Err(e) => {
            sys.stop();
            return Err(e);
        }
    };
    let streams = if scoped { a.products as usize } else { 1 };
    let mut next_n = vec![0u64; streams];
    let mut steps: Vec<SystemResult> = Vec::new();
    for rate in a.rates_for(scenario) {
        let subs = subscribers(&fleet, streams);
        let live = fleet.live();
        let before = Tally::collect(&fleet.conns, &next_n);
        let failed_before = ctx.producer.deliveries.failed.load(Relaxed);
        fleet.shared.recorder.take();
        let meter = Meter::begin(ctx, &sys).await;
        let t0 = crate::now_us();
        let plan = Plan {
            kafka_topic: topic.clone(),
            run: format!("{}-{}", ctx.run_id, kind.name()),
            client_topic: if scoped { SCOPED_TOPIC } else { FANOUT_TOPIC },
            streams: if scoped {
                Streams::Scoped {
                    products: a.products,
                    seed: 42,
                }
            } else {
                Streams::Fanout
            },
            key: KeyBy::Topic,
            rate,
            count: (rate * a.step_seconds).round().max(1.0) as u64,
            deadline: secs(a.step_seconds * 1.5 + 1.0),
            payload_bytes: a.payload_bytes,
        };
        eprintln!(
            "  step {rate} events/s x {}s ({} live connections)",
            a.step_seconds, live
        );
        let before_n = next_n.clone();
        let (produced, after_n) = produce(ctx, plan, next_n, Arc::new(Progress::default())).await?;
        next_n = after_n;
        let expected: u64 = next_n
            .iter()
            .zip(&before_n)
            .zip(&subs)
            .map(|((a, b), s)| (a - b) * s)
            .sum();
        drain(ctx, &fleet, expected, 0).await;
        let sample = fleet.shared.recorder.take();
        let tally = Tally::collect(&fleet.conns, &next_n).since(&before);
        let usage = meter.end(ctx, &sys).await;
        let mut st = base(ctx, scenario, kind.name());
        st.connected = live;
        st.offered_rate = rate;
        st.events = produced.sent;
        st.events_per_s = produced.rate(rate);
        st.deliveries = sample.deliveries;
        st.expected_deliveries = expected;
        let span_us = sample.last_us.saturating_sub(t0).max(1);
        st.deliveries_per_s = sample.deliveries as f64 * 1e6 / span_us as f64;
        st.duration_s = span_us as f64 / 1e6;
        if let Some(p) = sample.percentiles() {
            st.p50_ms = Some(p.p50_ms);
            st.p90_ms = Some(p.p90_ms);
            st.p99_ms = Some(p.p99_ms);
            st.p999_ms = Some(p.p999_ms);
            st.max_ms = Some(p.max_ms);
            st.mean_ms = Some(p.mean_ms);
        }
        st.lost = tally.lost;
        st.duplicated = tally.duplicated;
        st.unentitled = tally.unentitled;
        st.connect_failures = tally.connect_failures;
        st.disconnects = tally.disconnects;
        usage.apply(&mut st);
        let failed = ctx.producer.deliveries.failed.load(Relaxed) - failed_before;
        if failed > 0 {
            st.notes
                .push(format!("Kafka refused {failed} events: they count as lost"));
        }
        if produced.max_behind_us > 100_000 {
            st.notes.push(format!(
                "the producer fell {:.0} ms behind its schedule (the machine is saturated; latency includes it)",
                produced.max_behind_us as f64 / 1000.0
            ));
        }
        if st.disconnects > 0 {
            st.notes.push(format!(
                "{} disconnects during the step: {}",
                st.disconnects,
                fleet.sample_errors(2).join(" | ")
            ));
        }
        if tally.lost > 0 {
            st.notes
                .push(format!("{} connections lost events", tally.conns_with_loss));
            if std::env::var_os("LOADTEST_DEBUG").is_some() {
                for (i, c) in fleet
                    .conns
                    .iter()
                    .enumerate()
                    .filter(|(_, c)| c.next_of(0) < next_n[0])
                    .take(10)
                {
                    eprintln!(
                        "    conn {i}: next {} received {} probe {} live {} err {:?}",
                        c.next_of(0),
                        c.received.load(Relaxed),
                        c.probe.load(Relaxed),
                        c.live.load(Relaxed),
                        c.last_error.lock().ok().and_then(|e| e.clone())
                    );
                }
            }
        }
        let mut limit = Vec::new();
        if st.p99_ms.unwrap_or(f64::MAX) > a.max_p99_ms {
            limit.push(format!("p99 above {} ms", a.max_p99_ms));
        }
        if st.lost > 0 || st.duplicated > 0 {
            limit.push("lost or duplicated events".into());
        }
        if (st.deliveries as f64) < 0.99 * expected as f64 {
            limit.push(format!(
                "delivered {} of {} expected",
                st.deliveries, expected
            ));
        }
        st.saturated = !limit.is_empty();
        if st.saturated {
            st.notes.push(format!("limit hit: {}", limit.join(", ")));
        }
        eprintln!("{}", one_line(&st));
        let stop = st.saturated || sys.check_alive().is_err();
        steps.push(st);
        if stop {
            break;
        }
    }
    fleet.shutdown(Duration::from_secs(10)).await;
    let alive = sys.check_alive();
    sys.stop();
    let best = steps
        .iter()
        .filter(|s| !s.saturated)
        .max_by(|x, y| x.offered_rate.total_cmp(&y.offered_rate))
        .or_else(|| steps.first())
        .cloned()
        .unwrap_or_default();
    let mut out = SystemResult {
        notes: head.notes,
        steps,
        ..best
    };
    if !out.steps.iter().any(|s| !s.saturated) {
        out.notes
            .push("no rate was sustained; the row shows the first step".into());
    }
    if let Err(e) = alive {
        out.error = Some(format!("{e:#}"));
    }
    Ok(out)
}

/// The reconnect storm.
async fn storm(ctx: &Ctx, kind: SystemKind) -> anyhow::Result<SystemResult> {
    let a = &ctx.args;
    let scenario = ScenarioKind::Reconnect;
    let n = a.connections_for(scenario);
    let topic = ctx.topic(scenario, kind, a.partitions).await?;
    let mut sys = systems::start(kind, ctx.infra(), &ctx.sys_opts, &topic, Parts::All).await?;
    let mut r = base(ctx, scenario, kind.name());
    let fleet = match connect_fleet(ctx, &mut sys, n, false, &mut r.notes).await {
        Ok(f) => f,
        Err(e) => {
            sys.stop();
            return Err(e);
        }
    };
    let live = fleet.live();
    r.connected = live;
    r.offered_rate = a.storm_rate;
    fleet.shared.recorder.take();
    let meter = Meter::begin(ctx, &sys).await;
    let total_s = a.storm_warm_seconds + a.storm_offline_seconds + a.storm_after_seconds;
    let plan = Plan {
        kafka_topic: topic.clone(),
        run: format!("{}-{}", ctx.run_id, kind.name()),
        client_topic: FANOUT_TOPIC,
        streams: Streams::Fanout,
        key: KeyBy::Topic,
        rate: a.storm_rate,
        count: (a.storm_rate * total_s).round().max(1.0) as u64,
        deadline: secs(total_s * 1.5 + 1.0),
        payload_bytes: a.payload_bytes,
    };
    let progress = Arc::new(Progress::default());
    let t_start = Instant::now();
    let producing = {
        let producer = ctx.producer.clone();
        let progress = progress.clone();
        tokio::task::spawn_blocking(move || {
            let mut next = vec![0u64];
            let p = producer.run(&plan, &mut next, &progress);
            let _ = producer.flush(Duration::from_secs(30));
            (p, next)
        })
    };
    tokio::time::sleep(secs(a.storm_warm_seconds)).await;
    eprintln!("  dropping {live} connections at once");
    fleet.set_mode(Mode::Offline);
    tokio::time::sleep(secs(a.storm_offline_seconds)).await;
    let sent = progress.sent.load(Relaxed);
    // Caught up = has the last event produced before the reconnect.
    let target = sent.saturating_sub(1);
    fleet.shared.catch_up_target.store(target, Relaxed);
    for c in &fleet.conns {
        c.caught_up_at_us.store(0, Relaxed);
    }
    fleet.widen_gate(n);
    let t_reconnect = crate::now_us();
    eprintln!("  reconnecting all at once (catch-up target: event {target})");
    fleet.set_mode(Mode::Run);
    let deadline = Instant::now() + secs(a.storm_timeout_seconds);
    let was_live: Vec<bool> = fleet
        .conns
        .iter()
        .map(|c| c.connected_at_us.load(Relaxed) > 0)
        .collect();
    loop {
        let caught = fleet
            .conns
            .iter()
            .zip(&was_live)
            .filter(|(c, w)| **w && c.caught_up_at_us.load(Relaxed) > 0)
            .count();
        if caught >= live || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (produced, next_n) = producing.await.context("producer thread")?;
    let produced_total = next_n[0];
    // Drain: until every connection has the last event, or nothing moves.
    let idle_limit = secs(a.drain_timeout_seconds.min(5.0));
    let mut last = u64::MAX;
    let mut last_change = Instant::now();
    loop {
        let behind: u64 = fleet
            .conns
            .iter()
            .map(|c| produced_total.saturating_sub(c.next_of(0)))
            .sum();
        if behind == 0 || last_change.elapsed() > idle_limit {
            break;
        }
        if behind != last {
            last = behind;
            last_change = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let sample = fleet.shared.recorder.take();
    let tally = Tally::collect(&fleet.conns, &next_n);
    let usage = meter.end(ctx, &sys).await;
    let mut catch = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)?;
    let mut caught = 0;
    let mut worst = 0u64;
    let mut reconnected_worst = 0u64;
    let mut reconnected = 0;
    for (c, w) in fleet.conns.iter().zip(&was_live) {
        if !*w {
            continue;
        }
        let at = c.caught_up_at_us.load(Relaxed);
        if at > 0 {
            caught += 1;
            let d = at.saturating_sub(t_reconnect).max(1);
            worst = worst.max(d);
            catch.saturating_record(d);
        }
        let con = c.connected_at_us.load(Relaxed);
        if con >= t_reconnect {
            reconnected += 1;
            reconnected_worst = reconnected_worst.max(con - t_reconnect);
        }
    }
    r.caught_up = Some(caught);
    r.catch_up_s = (caught == live).then_some(worst as f64 / 1e6);
    if caught < live {
        r.notes.push(format!(
            "only {caught} of {live} clients caught up within {}s",
            a.storm_timeout_seconds
        ));
    }
    if !catch.is_empty() {
        r.catch_up_p50_s = Some(catch.value_at_quantile(0.5) as f64 / 1e6);
        r.catch_up_p99_s = Some(catch.value_at_quantile(0.99) as f64 / 1e6);
    }
    r.reconnect_s = (reconnected == live).then_some(reconnected_worst as f64 / 1e6);
    if reconnected < live {
        r.notes
            .push(format!("only {reconnected} of {live} clients reconnected"));
    }
    r.events = produced.sent;
    r.events_per_s = produced.rate(a.storm_rate);
    r.deliveries = sample.deliveries;
    r.expected_deliveries = produced_total * live as u64;
    r.duration_s = t_start.elapsed().as_secs_f64();
    r.deliveries_per_s = sample.deliveries as f64 / r.duration_s.max(1e-6);
    if let Some(p) = sample.percentiles() {
        r.p50_ms = Some(p.p50_ms);
        r.p90_ms = Some(p.p90_ms);
        r.p99_ms = Some(p.p99_ms);
        r.p999_ms = Some(p.p999_ms);
        r.max_ms = Some(p.max_ms);
        r.mean_ms = Some(p.mean_ms);
    }
    r.lost = tally.lost;
    r.duplicated = tally.duplicated;
    r.unentitled = tally.unentitled;
    r.connect_failures = tally.connect_failures;
    r.disconnects = tally.disconnects;
    usage.apply(&mut r);
    if tally.lost > 0 && kind != SystemKind::Switchyard {
        r.notes.push(
            "no cursor to resume from: events sent while a client was away are lost by design"
                .into(),
        );
    }
    if tally.connect_failures > 0 {
        r.notes.push(format!(
            "{} failed connection attempts (retried): {}",
            tally.connect_failures,
            fleet.sample_errors(2).join(" | ")
        ));
    }
    fleet.shutdown(Duration::from_secs(10)).await;
    let alive = sys.check_alive();
    sys.stop();
    if let Err(e) = alive {
        r.error = Some(format!("{e:#}"));
    }
    Ok(r)
}

/// Memory per idle connection.
async fn idle(ctx: &Ctx, kind: SystemKind) -> anyhow::Result<SystemResult> {
    let a = &ctx.args;
    let scenario = ScenarioKind::Idle;
    let n = a.connections_for(scenario);
    let topic = ctx.topic(scenario, kind, a.partitions).await?;
    let mut sys = systems::start(kind, ctx.infra(), &ctx.sys_opts, &topic, Parts::All).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss = |sys: &Running| -> u64 {
        sys.pids()
            .iter()
            .filter_map(|(_, p)| procstat::sample(*p))
            .map(|s| s.rss_bytes)
            .sum()
    };
    let before = rss(&sys);
    let mut r = base(ctx, scenario, kind.name());
    let fleet = match connect_fleet(ctx, &mut sys, n, false, &mut r.notes).await {
        Ok(f) => f,
        Err(e) => {
            sys.stop();
            return Err(e);
        }
    };
    // Let start-up work finish before the idle window.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let meter = Meter::begin(ctx, &sys).await;
    tokio::time::sleep(secs(a.idle_settle_seconds)).await;
    let live = fleet.live();
    let after = rss(&sys);
    let usage = meter.end(ctx, &sys).await;
    r.connected = live;
    r.rss_before_bytes = Some(before);
    r.rss_per_conn_bytes = Some(after.saturating_sub(before) as f64 / live.max(1) as f64);
    r.duration_s = a.idle_settle_seconds;
    let tally = Tally::collect(&fleet.conns, &[0]);
    r.connect_failures = tally.connect_failures;
    r.disconnects = tally.disconnects;
    usage.apply(&mut r);
    r.server_rss_bytes = after;
    r.notes.push(format!(
        "RSS of the system's processes with {live} connections, minus before any (all processes summed)"
    ));
    fleet.shutdown(Duration::from_secs(10)).await;
    let alive = sys.check_alive();
    sys.stop();
    if let Err(e) = alive {
        r.error = Some(format!("{e:#}"));
    }
    Ok(r)
}

/// Kafka's own read rate for the ingest backlog: the ceiling any consumer
/// of this broker has on this machine.
async fn kafka_ceiling(ctx: &Ctx) -> anyhow::Result<SystemResult> {
    let a = &ctx.args;
    let topic = format!("sy_load_{}_ingest_ceiling", ctx.run_id);
    ctx.broker
        .create_topics(&[&topic], a.ingest_partitions)
        .await?;
    let (write_rate, sent) = preload(ctx, &topic).await?;
    let brokers = ctx.broker.addr.clone();
    let t = topic.clone();
    let want = sent;
    let (got, secs_taken) =
        tokio::task::spawn_blocking(move || read_all(&brokers, &t, want, Duration::from_secs(120)))
            .await
            .context("consumer thread")??;
    let mut r = base(ctx, ScenarioKind::Ingest, "kafka-read");
    r.events = got;
    r.events_per_s = got as f64 / secs_taken.max(1e-6);
    r.durable_events_per_s = Some(r.events_per_s);
    r.lost = want.saturating_sub(got);
    r.duration_s = secs_taken;
    r.notes.push(format!(
        "not a system: one rdkafka consumer reading the same backlog from the broker, for scale (the producer wrote it at {write_rate:.0} events/s)"
    ));
    Ok(r)
}

/// Pre-loads the ingest backlog at full speed; returns (events/s, count).
async fn preload(ctx: &Ctx, topic: &str) -> anyhow::Result<(f64, u64)> {
    let a = &ctx.args;
    let plan = Plan {
        kafka_topic: topic.to_owned(),
        run: format!("{}-{}", ctx.run_id, topic),
        client_topic: SCOPED_TOPIC,
        streams: Streams::Scoped {
            products: a.products,
            seed: 7,
        },
        key: KeyBy::Product,
        rate: 0.0,
        count: a.ingest_events,
        deadline: secs(a.ingest_timeout_seconds),
        payload_bytes: a.payload_bytes,
    };
    let t = Instant::now();
    let failed_before = ctx.producer.deliveries.failed.load(Relaxed);
    let (p, _) = produce(
        ctx,
        plan,
        vec![0; a.products as usize],
        Arc::new(Progress::default()),
    )
    .await?;
    let failed = ctx.producer.deliveries.failed.load(Relaxed) - failed_before;
    if failed > 0 {
        bail!("Kafka refused {failed} of {} backlog events", p.sent);
    }
    Ok((p.sent as f64 / t.elapsed().as_secs_f64().max(1e-6), p.sent))
}

fn read_all(
    brokers: &str,
    topic: &str,
    want: u64,
    timeout: Duration,
) -> anyhow::Result<(u64, f64)> {
    use rdkafka::consumer::{BaseConsumer, Consumer as _};
    let c: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("ceiling-{}", crate::infra::suffix()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()?;
    c.subscribe(&[topic])?;
    let deadline = Instant::now() + timeout;
    let mut got = 0u64;
    let mut first: Option<Instant> = None;
    let mut last = Instant::now();
    while got < want && Instant::now() < deadline {
        if let Some(m) = c.poll(Duration::from_millis(200)) {
            m?;
            got += 1;
            last = Instant::now();
            first.get_or_insert(last);
        }
    }
    Ok((got, first.map_or(0.0, |f| (last - f).as_secs_f64())))
}

async fn committed(brokers: String, group: String, topic: String) -> Option<i64> {
    tokio::task::spawn_blocking(move || {
        switchyard_testkit::committed_offsets(&brokers, &group, &topic).ok()
    })
    .await
    .ok()
    .flatten()
}

/// Events/s the bridge makes durable: a backlog is loaded into Kafka first,
/// then the bridge starts and drains it into PostgreSQL.
async fn ingest(ctx: &Ctx, kind: SystemKind) -> anyhow::Result<SystemResult> {
    let a = &ctx.args;
    let db = ctx.db.as_ref().context("ingest needs the database")?;
    let client = db.client().await?;
    let topic = ctx
        .topic(ScenarioKind::Ingest, kind, a.ingest_partitions)
        .await?;
    eprintln!("  loading {} events into {topic}", a.ingest_events);
    let (write_rate, sent) = preload(ctx, &topic).await?;
    eprintln!("  backlog written at {write_rate:.0} events/s; starting the bridge");
    let mut r = base(ctx, ScenarioKind::Ingest, kind.name());
    r.events = sent;
    r.notes.push(format!(
        "backlog of {sent} events ({} B payloads, {} products, keyed by product over {} partitions) written to Kafka at {write_rate:.0} events/s before the bridge started",
        a.payload_bytes, a.products, a.ingest_partitions
    ));
    let t_start = Instant::now();
    let mut sys =
        systems::start(kind, ctx.infra(), &ctx.sys_opts, &topic, Parts::BridgeOnly).await?;
    let mut meter = Meter::begin(ctx, &sys).await;
    // The bridge may have drained part of the backlog before it reported
    // ready: charge it all the CPU it used since it started.
    meter.server.clear();
    let deadline = t_start + secs(a.ingest_timeout_seconds);
    let mut samples: Vec<(Instant, u64)> = Vec::new();
    let mut count_error = None;
    loop {
        match count_rows(&client).await {
            Ok(v) => samples.push((Instant::now(), v)),
            Err(e) => count_error = Some(e.to_string()),
        }
        let last = samples.last().map_or(0, |s| s.1);
        if last >= sent || Instant::now() > deadline {
            break;
        }
        if let Err(e) = sys.check_alive() {
            sys.stop();
            return Err(e);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let usage = meter.end(ctx, &sys).await;
    let durable = samples.last().map_or(0, |s| s.1);
    if let Some(e) = count_error.filter(|_| samples.is_empty()) {
        r.notes.push(format!(
            "could not count rows in `events` ({e}); committed offsets only"
        ));
    }
    // Rate from the first sample that saw rows to the one that saw them all.
    let first = samples.iter().position(|s| s.1 > 0);
    if let (Some(i), Some(last)) = (first, samples.last()) {
        let (t0, c0) = samples[i.saturating_sub(1)];
        let dt = (last.0 - t0).as_secs_f64();
        if dt > 0.0 {
            r.durable_events_per_s = Some((last.1 - c0) as f64 / dt);
        }
        r.duration_s = dt;
        let mut peak: f64 = 0.0;
        for (j, s) in samples.iter().enumerate() {
            if let Some(prev) = samples[..j]
                .iter()
                .rev()
                .find(|p| (s.0 - p.0) >= Duration::from_secs(1))
            {
                peak = peak.max((s.1 - prev.1) as f64 / (s.0 - prev.0).as_secs_f64());
            }
        }
        r.peak_1s_events_per_s = Some(peak);
    }
    r.durable_events = Some(durable);
    r.events_per_s = r.durable_events_per_s.unwrap_or(0.0);
    // Offsets are committed after the rows: give the auto-commit a moment.
    let mut offsets = None;
    for _ in 0..20 {
        offsets = committed(
            ctx.broker.addr.clone(),
            sys.kafka_group.clone(),
            topic.clone(),
        )
        .await;
        if offsets.is_some_and(|o| o as u64 >= sent) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    r.committed_offsets = offsets;
    if durable < sent {
        r.lost = sent - durable;
        r.notes.push(format!(
            "only {durable} of {sent} events durable after {:.0}s",
            t_start.elapsed().as_secs_f64()
        ));
    }
    if durable > sent {
        r.duplicated = durable - sent;
    }
    if offsets.is_some_and(|o| (o as u64) < sent) {
        r.notes.push(format!(
            "committed offsets {} < {sent}",
            offsets.unwrap_or(0)
        ));
    }
    usage.apply(&mut r);
    let alive = sys.check_alive();
    sys.stop();
    if let Err(e) = alive {
        r.error = Some(format!("{e:#}"));
    }
    Ok(r)
}

/// Rows in the cursor log's `events` table (one per durable event).
async fn count_rows(c: &tokio_postgres::Client) -> Result<u64, tokio_postgres::Error> {
    c.query_one("SELECT count(*) FROM events", &[])
        .await
        .map(|row| row.get::<_, i64>(0) as u64)
}
