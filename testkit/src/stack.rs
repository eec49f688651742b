//! A whole Switchyard deployment for one test: broker and topics, a fresh
//! database, a Redis prefix, the topology file, the bridge and the gateway
//! nodes as child processes, and what tests ask of it (produce, committed
//! offsets, stored events).
//!
//! Invariant: every stack has its own topics, database, Redis prefix,
//! consumer group and ports, so stacks never see each other's data; the
//! binaries are the workspace's current build.

use crate::api::API_KEY;
use crate::broker::{committed_offsets, tansu_bin, Broker};
use crate::database::{pg_base, Database};
use crate::probe::{free_port, wait_ready};
use crate::process::{binary, scratch_dir, Proc};
use crate::redis::redis_base;
use crate::token::SECRET;
use crate::unique;
use anyhow::{anyhow, Context as _};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

/// Options of a [`Stack`].
#[derive(Debug, Clone)]
pub struct StackOptions {
    pub gateways: usize,
    pub topology: Value,
    /// Redis URL; default the machine's Redis with a unique prefix.
    pub redis_url: Option<String>,
    /// PostgreSQL server URL (without database); default the machine's.
    pub pg_base: Option<String>,
    pub partitions: i32,
    /// Extra environment for every process.
    pub env: Vec<(String, String)>,
    /// Keep the broker's data in PostgreSQL on this server
    /// (`postgres://user@host:port`) so it survives a broker restart;
    /// default in memory.
    pub broker_pg: Option<String>,
}

impl Default for StackOptions {
    fn default() -> Self {
        StackOptions {
            gateways: 2,
            topology: seed_topology(),
            redis_url: None,
            pg_base: None,
            partitions: 3,
            env: Vec::new(),
            broker_pg: None,
        }
    }
}

/// The seed case study's topology, plus a few topics the tests use.
pub fn seed_topology() -> Value {
    json!({
        "Hubs": [{
            "Name": "Content",
            "Type": "PubSub",
            "Channels": [
                {
                    "Name": "News-[ScopeValue]",
                    "Topic": "News",
                    "IsPublishableByUser": false,
                    "Filters": [{"Type": "Product Codes", "Values": ["*"]}],
                    "LookBack": {"IsEnabled": true, "TtlPeriodType": "CalendarDay", "TtlValue": 1}
                },
                {
                    "Name": "Site Visit Count",
                    "Topic": "SiteVisits",
                    "IsPublishableByUser": false,
                    "Filters": []
                },
                {
                    "Name": "Chat",
                    "Topic": "Chat",
                    "IsPublishableByUser": true,
                    "Filters": []
                },
                {
                    "Name": "Presence",
                    "Topic": "Presence",
                    "IsPublishableByUser": true,
                    "Filters": [],
                    "Ephemeral": true
                },
                {
                    "Name": "Notifications",
                    "Topic": "Notifications",
                    "IsPublishableByUser": false,
                    "Filters": [],
                    "LookBack": {"IsEnabled": true, "TtlPeriodType": "Minutes", "TtlValue": 60}
                }
            ],
            "FilterCollections": [
                {"Name": "AllProducts", "Filters": [{"Type": "Product Codes", "Values": ["*"]}]}
            ]
        }]
    })
}

/// A running gateway node.
#[derive(Debug)]
pub struct GatewayNode {
    pub proc: Proc,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    /// The server API (key [`crate::API_KEY`]).
    pub api: SocketAddr,
}

impl GatewayNode {
    pub fn ws_url(&self) -> String {
        format!("ws://{}/v1/ws", self.listen)
    }
}

/// A whole Switchyard deployment for one test.
pub struct Stack {
    pub dir: PathBuf,
    pub broker: Broker,
    pub db: Database,
    pub redis_url: String,
    pub prefix: String,
    pub topology_path: PathBuf,
    pub events_topic: String,
    pub dlq_topic: String,
    pub group: String,
    pub bridge: Option<Proc>,
    pub bridge_admin: SocketAddr,
    pub gateways: Vec<GatewayNode>,
    env: Vec<(String, String)>,
    producer: FutureProducer,
}

impl std::fmt::Debug for Stack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stack")
            .field("dir", &self.dir)
            .field("db", &self.db.name)
            .field("events_topic", &self.events_topic)
            .finish_non_exhaustive()
    }
}

impl Stack {
    pub async fn start(opts: StackOptions) -> anyhow::Result<Stack> {
        let dir = scratch_dir("stack");
        let broker = match &opts.broker_pg {
            Some(base) => Broker::start_postgres(&dir, base).await?,
            None => Broker::start(&dir)?,
        };
        let events_topic = unique("events");
        let dlq_topic = format!("{events_topic}.dlq");
        broker
            .create_topics(&[&events_topic], opts.partitions)
            .await?;
        broker.create_topics(&[&dlq_topic], 1).await?;
        let db = Database::create_on(&opts.pg_base.clone().unwrap_or_else(pg_base)).await?;
        let topology_path = dir.join("topology.json");
        std::fs::write(&topology_path, serde_json::to_vec_pretty(&opts.topology)?)?;
        let producer = broker.producer()?;
        let mut stack = Stack {
            redis_url: opts.redis_url.clone().unwrap_or_else(redis_base),
            prefix: unique("sy"),
            group: unique("bridge"),
            bridge: None,
            bridge_admin: format!("127.0.0.1:{}", free_port()).parse()?,
            gateways: Vec::new(),
            env: opts.env.clone(),
            dir,
            broker,
            db,
            topology_path,
            events_topic,
            dlq_topic,
            producer,
        };
        stack.start_bridge()?;
        for _ in 0..opts.gateways {
            stack.start_gateway()?;
        }
        stack.wait_ready()?;
        Ok(stack)
    }

    fn common_env(&self, cmd: &mut Command) {
        cmd.env("SWITCHYARD_POSTGRES_URL", &self.db.url)
            .env("SWITCHYARD_REDIS_URL", &self.redis_url)
            .env("SWITCHYARD_REDIS_PREFIX", &self.prefix)
            .env("SWITCHYARD_TOPOLOGY", &self.topology_path)
            .env(
                "RUST_LOG",
                std::env::var("SWITCHYARD_TEST_LOG").unwrap_or_else(|_| "info".into()),
            );
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
    }

    pub fn start_bridge(&mut self) -> anyhow::Result<()> {
        let mut cmd = Command::new(binary("switchyard-bridge"));
        self.common_env(&mut cmd);
        cmd.env("SWITCHYARD_KAFKA_BROKERS", &self.broker.addr)
            .env("SWITCHYARD_KAFKA_TOPICS", &self.events_topic)
            .env("SWITCHYARD_KAFKA_GROUP", &self.group)
            .env("SWITCHYARD_KAFKA_INSTANCE_ID", format!("{}-0", self.group))
            .env("SWITCHYARD_KAFKA_DLQ_TOPIC", &self.dlq_topic)
            .env("SWITCHYARD_ADMIN_LISTEN", self.bridge_admin.to_string());
        self.bridge = Some(Proc::spawn("bridge", cmd, &self.dir)?);
        Ok(())
    }

    /// Starts one more gateway node; returns its index.
    pub fn start_gateway(&mut self) -> anyhow::Result<usize> {
        let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
        let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
        let i = self.gateways.len();
        let proc = self.spawn_gateway(i, listen, admin, api)?;
        self.gateways.push(GatewayNode {
            proc,
            listen,
            admin,
            api,
        });
        Ok(i)
    }

    /// Starts gateway node `i` again on its ports (after it was killed or
    /// stopped), so clients that know its address find it there.
    pub fn restart_gateway(&mut self, i: usize) -> anyhow::Result<()> {
        let g = &mut self.gateways[i];
        g.proc.kill9();
        let (listen, admin, api) = (g.listen, g.admin, g.api);
        let proc = self.spawn_gateway(i, listen, admin, api)?;
        self.gateways[i].proc = proc;
        Ok(())
    }

    fn spawn_gateway(
        &self,
        i: usize,
        listen: SocketAddr,
        admin: SocketAddr,
        api: SocketAddr,
    ) -> anyhow::Result<Proc> {
        let mut cmd = Command::new(binary("switchyard-gateway"));
        // Defaults a test's `StackOptions::env` may override.
        cmd.env("SWITCHYARD_API_LISTEN", api.to_string())
            .env("SWITCHYARD_API_KEYS", API_KEY)
            .env("SWITCHYARD_HEAD_CHECK_MS", "500")
            .env("SWITCHYARD_DRAIN_SECONDS", "2");
        self.common_env(&mut cmd);
        cmd.env("SWITCHYARD_LISTEN", listen.to_string())
            .env("SWITCHYARD_ADMIN_LISTEN", admin.to_string())
            .env("SWITCHYARD_JWT_HS256_SECRET", SECRET);
        Proc::spawn(&format!("gateway-{i}"), cmd, &self.dir)
    }

    pub fn wait_ready(&self) -> anyhow::Result<()> {
        if self.bridge.is_some() {
            wait_ready(self.bridge_admin, Duration::from_secs(60)).context("bridge")?;
        }
        for g in &self.gateways {
            if g.proc.pid().is_some() {
                wait_ready(g.admin, Duration::from_secs(60)).context("gateway")?;
            }
        }
        Ok(())
    }

    pub fn gateway(&self, i: usize) -> &GatewayNode {
        &self.gateways[i]
    }

    /// Produces JSON events, keyed by topic (one partition per topic).
    pub async fn produce(&self, events: &[Value]) -> anyhow::Result<()> {
        let payloads: Vec<(String, String)> = events
            .iter()
            .map(|e| {
                let key = e["topic"].as_str().unwrap_or("").to_owned();
                (key, e.to_string())
            })
            .collect();
        self.produce_raw(payloads.iter().map(|(k, v)| (k.as_str(), v.as_bytes())))
            .await
    }

    /// Produces raw record values with keys.
    pub async fn produce_raw<'a>(
        &self,
        records: impl Iterator<Item = (&'a str, &'a [u8])>,
    ) -> anyhow::Result<()> {
        let futs: Vec<_> = records
            .map(|(k, v)| {
                self.producer.send(
                    FutureRecord::to(&self.events_topic).key(k).payload(v),
                    Duration::from_secs(15),
                )
            })
            .collect();
        for r in futures::future::join_all(futs).await {
            r.map_err(|(e, _)| anyhow!("produce failed: {e}"))?;
        }
        Ok(())
    }

    /// Produces one record with `headers` (e.g. a W3C `traceparent`).
    pub async fn produce_with_headers(
        &self,
        key: &str,
        value: &[u8],
        headers: &[(&str, &str)],
    ) -> anyhow::Result<()> {
        let mut h = rdkafka::message::OwnedHeaders::new();
        for (k, v) in headers {
            h = h.insert(rdkafka::message::Header {
                key: k,
                value: Some(*v),
            });
        }
        self.producer
            .send(
                FutureRecord::to(&self.events_topic)
                    .key(key)
                    .payload(value)
                    .headers(h),
                Duration::from_secs(15),
            )
            .await
            .map_err(|(e, _)| anyhow!("produce failed: {e}"))?;
        Ok(())
    }

    /// Sum of the bridge group's committed offsets over the events topic.
    pub fn committed_offsets(&self) -> anyhow::Result<i64> {
        committed_offsets(&self.broker.addr, &self.group, &self.events_topic)
    }

    /// Rows in the cursor log's events table.
    pub async fn stored_events(&self) -> anyhow::Result<i64> {
        let c = self.db.client().await?;
        Ok(c.query_one("SELECT count(*) FROM events", &[])
            .await?
            .get(0))
    }
}

/// A stack with the default options (seed topology, two gateways).
pub async fn default_stack() -> Stack {
    require_servers();
    Stack::start(StackOptions::default())
        .await
        .expect("stack starts")
}

/// Shared one-time check that the external servers tests need are present.
pub fn require_servers() {
    static CHECKED: OnceLock<()> = OnceLock::new();
    CHECKED.get_or_init(|| {
        assert!(
            Command::new(tansu_bin()).arg("--help").stdout(Stdio::null()).status().is_ok(),
            "tansu is not installed: run .ci/run (or `cargo install tansu --locked --features dynostore,postgres`)"
        );
    });
}
