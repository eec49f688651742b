//! The shared servers of a run: a tansu Kafka-protocol broker on a free port
//! (in-memory storage), a fresh PostgreSQL database `sy_load_<random>`, and
//! a Redis key/channel prefix of the run's own.
//!
//! Invariant: nothing a run creates outlives it unless `--keep` is given:
//! the broker is a child process, the database is dropped and the prefix's
//! keys deleted at the end, so runs never see each other's data.

use crate::process::{free_addr, wait_port, Proc};
use anyhow::{bail, Context as _};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::ClientConfig;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// A short random suffix for names.
pub fn suffix() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..10].to_owned()
}

/// Path of the tansu binary (`TANSU_BIN`, `~/.cargo/bin/tansu`, or PATH).
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

/// A Kafka-protocol broker for the run.
#[derive(Debug)]
pub struct Broker {
    pub addr: String,
    pub proc: Proc,
}

impl Broker {
    /// Starts tansu on a free loopback port with in-memory storage, or uses
    /// an external broker when `external` is given (it must be loopback).
    pub async fn start(dir: &Path) -> anyhow::Result<Broker> {
        let addr = free_addr()?;
        let url = format!("tcp://{addr}");
        let mut cmd = Command::new(tansu_bin());
        cmd.args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
            "--storage-engine",
            "memory://tansu/",
        ]);
        cmd.env("RUST_LOG", "warn");
        let mut proc = Proc::spawn("tansu", cmd, dir)
            .context("starting tansu (install: cargo install tansu)")?;
        wait_port(addr, Duration::from_secs(30), Some(&mut proc))
            .await
            .context("tansu did not start")?;
        Ok(Broker {
            addr: addr.to_string(),
            proc,
        })
    }

    /// Creates a topic (idempotent).
    pub async fn create_topic(&self, name: &str, partitions: i32) -> anyhow::Result<()> {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &self.addr)
            .create()?;
        let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
        let res = admin
            .create_topics(
                [&topic],
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
            )
            .await
            .with_context(|| format!("creating topic {name}"))?;
        for r in res {
            if let Err((t, e)) = r {
                if e != rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists {
                    bail!("creating topic {t}: {e}");
                }
            }
        }
        Ok(())
    }
}

/// A fresh PostgreSQL database.
#[derive(Debug)]
pub struct Database {
    pub name: String,
    pub url: String,
    base: String,
    keep: bool,
}

impl Database {
    /// Creates `sy_load_<random>` on the server at `base`
    /// (`postgres://user@host:port`).
    pub async fn create(base: &str, keep: bool) -> anyhow::Result<Database> {
        let name = format!("sy_load_{}", suffix());
        let (client, conn) =
            tokio_postgres::connect(&format!("{base}/postgres"), tokio_postgres::NoTls)
                .await
                .with_context(|| format!("connecting to PostgreSQL at {base}"))?;
        tokio::spawn(conn);
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .with_context(|| format!("creating database {name}"))?;
        Ok(Database {
            url: format!("{base}/{name}"),
            name,
            base: base.to_owned(),
            keep,
        })
    }

    pub async fn client(&self) -> anyhow::Result<tokio_postgres::Client> {
        let (client, conn) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        Ok(client)
    }

    /// Pids of the PostgreSQL backends serving this database.
    pub async fn backend_pids(&self, client: &tokio_postgres::Client) -> Vec<u32> {
        client
            .query(
                "SELECT pid FROM pg_stat_activity WHERE datname = $1",
                &[&self.name],
            )
            .await
            .map(|rows| rows.iter().map(|r| r.get::<_, i32>(0) as u32).collect())
            .unwrap_or_default()
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        if self.keep {
            eprintln!("keeping database {}", self.url);
            return;
        }
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        let _ = Command::new("psql")
            .args([&format!("{}/postgres", self.base), "-q", "-c", &sql])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// The run's own namespace on the machine's Redis.
#[derive(Debug, Clone)]
pub struct RedisNs {
    pub url: String,
    pub prefix: String,
}

impl RedisNs {
    pub fn new(url: &str) -> Self {
        RedisNs {
            url: url.to_owned(),
            prefix: format!("sy_load_{}", suffix()),
        }
    }

    async fn conn(&self) -> anyhow::Result<redis::aio::MultiplexedConnection> {
        let client = redis::Client::open(self.url.as_str())?;
        Ok(client.get_multiplexed_async_connection().await?)
    }

    /// The redis-server's pid (from `INFO server`), to charge its CPU.
    pub async fn server_pid(&self) -> Option<u32> {
        let mut c = self.conn().await.ok()?;
        let info: String = redis::cmd("INFO")
            .arg("server")
            .query_async(&mut c)
            .await
            .ok()?;
        info.lines()
            .find_map(|l| l.strip_prefix("process_id:"))
            .and_then(|v| v.trim().parse().ok())
    }

    /// Deletes every key under the prefix.
    pub async fn cleanup(&self) -> anyhow::Result<u64> {
        let mut c = self.conn().await?;
        let mut cursor: u64 = 0;
        let mut deleted = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{}*", self.prefix))
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut c)
                .await?;
            if !keys.is_empty() {
                let n: u64 = redis::cmd("DEL").arg(&keys).query_async(&mut c).await?;
                deleted += n;
            }
            if next == 0 {
                return Ok(deleted);
            }
            cursor = next;
        }
    }
}
