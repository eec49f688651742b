//! The tansu Kafka-protocol broker: started on a free port (in-memory
//! storage unless a test asks for another), topics, a producer, a restart
//! in place, and a consumer group's committed offsets.
//!
//! Invariant: a restarted broker keeps its port and storage, so clients
//! configured with its address reconnect to the same broker.

use crate::probe::{free_addr, free_port, wait_port, wait_port_async};
use crate::process::Proc;
use anyhow::{bail, Context as _};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::FutureProducer;
use rdkafka::ClientConfig;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Path of the tansu broker binary (`TANSU_BIN`, `~/.cargo/bin/tansu`, or PATH).
pub fn tansu_bin() -> PathBuf {
    if let Ok(p) = std::env::var("TANSU_BIN") {
        return PathBuf::from(p);
    }
    if let Ok(home) = std::env::var("HOME") {
        let p = Path::new(&home).join(".cargo/bin/tansu");
        if p.exists() {
            return p;
        }
    }
    PathBuf::from("tansu")
}

const MEMORY: &str = "memory://tansu/";

/// tansu's PostgreSQL schema (see the file's header for its origin).
const TANSU_SCHEMA: &str = include_str!("../sql/tansu-postgres.sql");

fn spawn_tansu(
    dir: &Path,
    storage: &str,
    port: u16,
    rust_log: Option<&str>,
) -> anyhow::Result<Proc> {
    let url = format!("tcp://127.0.0.1:{port}");
    let mut cmd = Command::new(tansu_bin());
    cmd.args([
        "broker",
        "--listener-url",
        &url,
        "--advertised-listener-url",
        &url,
        "--storage-engine",
        storage,
    ]);
    if let Some(level) = rust_log {
        cmd.env("RUST_LOG", level);
    }
    Proc::spawn("tansu", cmd, dir).context("starting tansu (install: cargo install tansu)")
}

/// A tansu broker on a free port.
#[derive(Debug)]
pub struct Broker {
    pub addr: String,
    pub proc: Proc,
    storage: String,
    port: u16,
}

impl Broker {
    /// In-memory broker.
    pub fn start(dir: &Path) -> anyhow::Result<Broker> {
        Self::start_with_storage(dir, MEMORY.into(), free_port())
    }

    pub fn start_with_storage(dir: &Path, storage: String, port: u16) -> anyhow::Result<Broker> {
        let proc = spawn_tansu(dir, &storage, port, None)?;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        wait_port(addr, Duration::from_secs(20)).context("tansu did not start")?;
        Ok(Broker {
            addr: addr.to_string(),
            proc,
            storage,
            port,
        })
    }

    /// In-memory broker started from async code (the load test): waits up
    /// to 30 s without blocking the runtime, fails with tansu's log as soon
    /// as it exits, and runs it with `RUST_LOG=<rust_log>`.
    pub async fn launch(dir: &Path, rust_log: &str) -> anyhow::Result<Broker> {
        let addr = free_addr()?;
        let mut proc = spawn_tansu(dir, MEMORY, addr.port(), Some(rust_log))?;
        wait_port_async(addr, Duration::from_secs(30), Some(&mut proc))
            .await
            .context("tansu did not start")?;
        Ok(Broker {
            addr: addr.to_string(),
            proc,
            storage: MEMORY.into(),
            port: addr.port(),
        })
    }

    /// A broker whose storage survives a restart: tansu's PostgreSQL
    /// storage engine in a fresh database on the server at `pg_base`
    /// (`postgres://user@host:port`), with tansu's schema
    /// (`testkit/sql/tansu-postgres.sql`, from the tansu release installed
    /// here) created first.
    pub async fn start_postgres(dir: &Path, pg_base: &str) -> anyhow::Result<Broker> {
        let db = crate::database::Database::create_as(pg_base, crate::unique("tansu")).await?;
        let client = db.client().await?;
        client
            .batch_execute(TANSU_SCHEMA)
            .await
            .context("creating tansu's schema")?;
        // The broker outlives this handle; the database goes with its server.
        let storage = format!("{}?sslmode=disable", db.hand_over());
        let addr = free_addr()?;
        let mut proc = spawn_tansu(dir, &storage, addr.port(), Some("warn"))?;
        wait_port_async(addr, Duration::from_secs(30), Some(&mut proc))
            .await
            .context("tansu (postgres storage) did not start")?;
        Ok(Broker {
            addr: addr.to_string(),
            proc,
            storage,
            port: addr.port(),
        })
    }

    /// The storage URL (`memory://…`, or the PostgreSQL database it keeps
    /// its data in).
    pub fn storage(&self) -> &str {
        &self.storage
    }

    /// Creates topics (idempotent).
    pub async fn create_topics(&self, topics: &[&str], partitions: i32) -> anyhow::Result<()> {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &self.addr)
            .create()?;
        let new: Vec<NewTopic<'_>> = topics
            .iter()
            .map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(1)))
            .collect();
        let res = admin
            .create_topics(
                &new,
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
            )
            .await
            .with_context(|| format!("creating topics {topics:?}"))?;
        for r in res {
            if let Err((t, e)) = r {
                if e != rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists {
                    bail!("creating topic {t}: {e}");
                }
            }
        }
        Ok(())
    }

    pub fn producer(&self) -> anyhow::Result<FutureProducer> {
        Ok(ClientConfig::new()
            .set("bootstrap.servers", &self.addr)
            .set("message.timeout.ms", "15000")
            .set("linger.ms", "1")
            .create()?)
    }

    /// Restarts the broker process on the same port and storage.
    pub fn restart(&mut self, dir: &Path) -> anyhow::Result<()> {
        self.proc.kill9();
        let b = Broker::start_with_storage(dir, self.storage.clone(), self.port)?;
        *self = b;
        Ok(())
    }
}

/// Sum of consumer group `group`'s committed offsets over `topic`'s
/// partitions (blocking: call it from a blocking thread in async code).
pub fn committed_offsets(brokers: &str, group: &str, topic: &str) -> anyhow::Result<i64> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .create()?;
    let md = c.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let mut tpl = rdkafka::TopicPartitionList::new();
    for t in md.topics() {
        for p in t.partitions() {
            tpl.add_partition(t.name(), p.id());
        }
    }
    let committed = c.committed_offsets(tpl, Duration::from_secs(10))?;
    Ok(committed
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            rdkafka::Offset::Offset(o) => Some(o),
            _ => None,
        })
        .sum())
}
