//! The run's shared context: the broker, database, Redis namespace and
//! producer every system of one run uses, where the binaries are, a fresh
//! Kafka topic per system phase, and producing one open-loop step.
//!
//! Invariant: each system phase gets its own topic, so no system replays
//! another's backlog; the servers are started once per run and cleaned up
//! at its end (unless `--keep`).

use crate::cli::{RunArgs, ScenarioKind};
use crate::infra::RedisNs;
use crate::producer::{KafkaProducer, Plan, Progress};
use crate::systems::{self, Infra, Parts, Running, SystemKind, SystemOptions};
use anyhow::Context as _;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;
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
    pub(super) probe_seq: AtomicU64,
}

impl std::fmt::Debug for Ctx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx")
            .field("run_id", &self.run_id)
            .finish_non_exhaustive()
    }
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
            // Beside the generator when built there (CARGO_TARGET_DIR), so a
            // run measures the binaries of the same build.
            switchyard_bin_dir: args.switchyard_bin_dir.clone().unwrap_or_else(|| {
                if exe_dir.join("switchyard-gateway").exists() {
                    exe_dir.clone()
                } else {
                    workspace_root().join("target/release")
                }
            }),
            peers_bin_dir: exe_dir,
            socketio_dir: std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("peers/socketio"),
            jwt_secret: JWT_SECRET.into(),
            nodes: args.nodes.max(1),
            peer_procs: 1,
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

    /// Starts `kind` with enough client-facing processes for `conns`
    /// connections (see [`SystemOptions::sized_for`]); the returned system's
    /// notes say how many when that is more than asked for.
    pub(super) async fn start_system(
        &self,
        kind: SystemKind,
        topic: &str,
        conns: usize,
        parts: Parts,
    ) -> anyhow::Result<Running> {
        let opts = self.sys_opts.sized_for(conns);
        let mut sys = systems::start(kind, self.infra(), &opts, topic, parts).await?;
        let (asked, got) = (
            self.sys_opts.front_processes(kind),
            opts.front_processes(kind),
        );
        if got > asked && parts == Parts::All {
            sys.notes.push(format!(
                "{got} client-facing server processes instead of {asked}: at most {} connections per process (open-files limit)",
                systems::CONNS_PER_SERVER_PROCESS
            ));
        }
        Ok(sys)
    }

    pub(super) fn infra(&self) -> Infra<'_> {
        Infra {
            broker: &self.broker,
            redis: &self.redis,
            db: self.db.as_ref(),
            dir: &self.dir,
        }
    }

    /// A fresh Kafka topic for one system phase (so no system replays
    /// another's backlog); the events in it are generated identically.
    pub(super) async fn topic(
        &self,
        scenario: ScenarioKind,
        kind: SystemKind,
        partitions: i32,
    ) -> anyhow::Result<String> {
        self.topic_tagged(scenario, kind, "", partitions).await
    }

    /// [`Self::topic`] with a tag, for a scenario that starts a system
    /// more than once (each start gets a fresh topic).
    pub(super) async fn topic_tagged(
        &self,
        scenario: ScenarioKind,
        kind: SystemKind,
        tag: &str,
        partitions: i32,
    ) -> anyhow::Result<String> {
        let t = format!(
            "sy_load_{}_{}_{}{tag}",
            self.run_id,
            scenario.name(),
            kind.name()
        );
        self.broker.create_topics(&[&t], partitions).await?;
        self.broker.create_topics(&[&format!("{t}.dlq")], 1).await?;
        Ok(t)
    }

    pub(super) async fn infra_pids(&self) -> Vec<(String, u32)> {
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

/// Produces one open-loop step on a blocking thread; returns what was sent
/// and the advanced sequence numbers.
pub(super) async fn produce(
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
