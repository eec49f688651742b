//! The tansu Kafka-protocol broker: started on a free port (in-memory
//! storage unless a test asks for another), topics, a producer, a restart
//! in place.
//!
//! Invariant: a restarted broker keeps its port and storage, so clients
//! configured with its address reconnect to the same broker.

use crate::probe::{free_port, wait_port};
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
        Self::start_with_storage(dir, "memory://tansu/".into(), free_port())
    }

    pub fn start_with_storage(dir: &Path, storage: String, port: u16) -> anyhow::Result<Broker> {
        let url = format!("tcp://127.0.0.1:{port}");
        let mut cmd = Command::new(tansu_bin());
        cmd.args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
            "--storage-engine",
            &storage,
        ]);
        let proc = Proc::spawn("tansu", cmd, dir)?;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        wait_port(addr, Duration::from_secs(20)).context("tansu did not start")?;
        Ok(Broker {
            addr: addr.to_string(),
            proc,
            storage,
            port,
        })
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
            .await?;
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
