//! Test harness for Switchyard's integration tests. It runs the real
//! servers: a tansu Kafka-protocol broker on a free port (in-memory storage),
//! a fresh PostgreSQL database per stack, Redis (the machine's, under a
//! unique key prefix, or a private `redis-server` when a test restarts it),
//! and the real `switchyard-bridge` / `switchyard-gateway` binaries as child
//! processes, so tests can SIGKILL them.
//!
//! Invariant: every stack uses its own database, topics, Redis prefix and
//! ports, so tests run in parallel and repeated runs never collide; every
//! child process is killed when its handle drops.

use anyhow::{anyhow, bail, Context as _};
use futures::{SinkExt as _, StreamExt as _};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use serde_json::{json, Value};
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::Message;

/// The HS256 secret every test gateway trusts.
pub const SECRET: &str = "switchyard-test-secret-0123456789";

/// PostgreSQL server for tests (`SWITCHYARD_TEST_PG`, default the machine's).
pub fn pg_base() -> String {
    std::env::var("SWITCHYARD_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// Redis for tests (`SWITCHYARD_TEST_REDIS`, default the machine's).
pub fn redis_base() -> String {
    std::env::var("SWITCHYARD_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A free TCP port on 127.0.0.1, never the same twice in one test process
/// (the kernel happily hands a just-released ephemeral port out again).
pub fn free_port() -> u16 {
    static HANDED_OUT: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut used = HANDED_OUT.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("bind an ephemeral port");
        if !used.contains(&port) {
            used.push(port);
            return port;
        }
    }
}

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// A scratch directory for a stack's files and logs.
pub fn scratch_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(unique(&format!("switchyard-{name}")));
    std::fs::create_dir_all(&d).expect("create scratch dir");
    d
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// Path of a workspace binary, building it (once per test process) so tests
/// always run the current code.
pub fn binary(name: &str) -> PathBuf {
    static BUILT: Mutex<Vec<String>> = Mutex::new(Vec::new());
    // Test executables live in `<profile>/deps`, the testkit's own binaries
    // (`switchyard-stack`) in `<profile>` itself.
    let profile_dir = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .and_then(|dir| {
            if dir.ends_with("deps") {
                dir.parent().map(Path::to_path_buf)
            } else {
                Some(dir)
            }
        })
        .unwrap_or_else(|| workspace_root().join("target/debug"));
    let path = profile_dir.join(name);
    let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
    if !built.iter().any(|b| b == name) {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let package = name.to_owned();
        let mut cmd = Command::new(cargo);
        cmd.current_dir(workspace_root())
            .args(["build", "--quiet", "-p", &package, "--bin", name]);
        // Build where the running executable came from, whatever
        // CARGO_TARGET_DIR the caller's environment has (or lacks).
        if let Some(target_dir) = profile_dir.parent() {
            cmd.arg("--target-dir").arg(target_dir);
        }
        if profile_dir.ends_with("release") {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo build");
        assert!(status.success(), "cargo build of {name} failed");
        built.push(name.to_owned());
    }
    path
}

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

/// A child process killed (SIGKILL) on drop; its output goes to a log file.
#[derive(Debug)]
pub struct Proc {
    name: String,
    child: Option<Child>,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(name: &str, mut cmd: Command, dir: &Path) -> anyhow::Result<Proc> {
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let err = out.try_clone()?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("spawning {name}"))?;
        Ok(Proc {
            name: name.to_owned(),
            child: Some(child),
            log,
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends SIGTERM (graceful drain).
    pub fn term(&self) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
    }

    /// Waits for exit; returns the exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    self.child = None;
                    return status.code();
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.child.is_some() && std::thread::panicking() {
            eprintln!(
                "--- log of {} ({}) ---\n{}",
                self.name,
                self.log.display(),
                tail(&self.log_text(), 4000)
            );
        }
        self.kill9();
    }
}

fn tail(s: &str, n: usize) -> &str {
    let start = s.len().saturating_sub(n);
    let mut i = start;
    while !s.is_char_boundary(i) {
        i += 1;
    }
    &s[i..]
}

fn wait_port(addr: SocketAddr, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("nothing listens on {addr} after {timeout:?}")
}

/// `GET path` over plain HTTP/1.0; returns (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    let status = buf
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow!("no HTTP status in {buf:?}"))?;
    let body = buf
        .split_once("\r\n\r\n")
        .map(|x| x.1)
        .unwrap_or("")
        .to_owned();
    Ok((status, body))
}

/// Waits until `GET /readyz` answers 200.
pub fn wait_ready(admin: SocketAddr, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    while Instant::now() < deadline {
        match http_get(admin, "/readyz") {
            // A node serving degraded (its Redis feed not yet connected)
            // is ready for clients, but tests want it whole.
            Ok((200, body)) if !body.contains("degraded") => return Ok(()),
            Ok((code, body)) => last = format!("{code} {body}"),
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("{admin} not ready after {timeout:?}: {last}")
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

/// A fresh PostgreSQL database, dropped with the handle.
#[derive(Debug)]
pub struct Database {
    pub name: String,
    pub url: String,
    base: String,
}

impl Database {
    pub async fn create() -> anyhow::Result<Database> {
        Self::create_on(&pg_base()).await
    }

    pub async fn create_on(base: &str) -> anyhow::Result<Database> {
        let name = unique("sy_test");
        let base = base.to_owned();
        let (client, conn) =
            tokio_postgres::connect(&format!("{base}/postgres"), tokio_postgres::NoTls)
                .await
                .context("connecting to the test PostgreSQL (SWITCHYARD_TEST_PG)")?;
        tokio::spawn(conn);
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await?;
        Ok(Database {
            url: format!("{base}/{name}"),
            name,
            base,
        })
    }

    pub async fn client(&self) -> anyhow::Result<tokio_postgres::Client> {
        let (client, conn) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        Ok(client)
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        let base = &self.base;
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        let _ = Command::new("psql")
            .args([&format!("{base}/postgres"), "-q", "-c", &sql])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A private PostgreSQL server (for tests that stop PostgreSQL), run as the
/// `postgres` system user in a scratch directory.
#[derive(Debug)]
pub struct PgServer {
    pub port: u16,
    data: PathBuf,
    bin: PathBuf,
}

impl PgServer {
    pub fn start(dir: &Path) -> anyhow::Result<PgServer> {
        let bin = std::fs::read_dir("/usr/lib/postgresql")?
            .filter_map(Result::ok)
            .map(|e| e.path().join("bin"))
            .filter(|p| p.join("initdb").exists())
            .max()
            .ok_or_else(|| anyhow!("no PostgreSQL server binaries under /usr/lib/postgresql"))?;
        let data = dir.join(unique("pgdata"));
        std::fs::create_dir_all(&data)?;
        let chown = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(dir)
            .status()?;
        if !chown.success() {
            bail!("cannot chown {} to postgres", dir.display());
        }
        let ok = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(bin.join("initdb"))
            .args(["--auth=trust", "-U", "postgres", "-D"])
            .arg(&data)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?;
        if !ok.success() {
            bail!("initdb failed");
        }
        let pg = PgServer {
            port: free_port(),
            data,
            bin,
        };
        pg.resume()?;
        Ok(pg)
    }

    /// Starts (again) on the same port and data.
    pub fn resume(&self) -> anyhow::Result<()> {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.data.display()
        );
        let ok = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .args(["-w", "-t", "30", "-D"])
            .arg(&self.data)
            .args(["-o", &opts, "-l"])
            .arg(self.data.join("server.log"))
            .arg("start")
            .stdout(Stdio::null())
            .status()?;
        if !ok.success() {
            bail!("pg_ctl start failed");
        }
        Ok(())
    }

    /// Stops immediately (connections are cut).
    pub fn stop(&self) {
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .args(["-w", "-m", "immediate", "-D"])
            .arg(&self.data)
            .arg("stop")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    pub fn base_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}", self.port)
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A private redis-server (for tests that restart Redis).
#[derive(Debug)]
pub struct RedisServer {
    pub port: u16,
    pub proc: Proc,
}

impl RedisServer {
    pub fn start(dir: &Path, port: u16) -> anyhow::Result<RedisServer> {
        let mut cmd = Command::new("redis-server");
        cmd.args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ]);
        let proc = Proc::spawn(&format!("redis-{port}"), cmd, dir)?;
        wait_port(
            format!("127.0.0.1:{port}").parse()?,
            Duration::from_secs(10),
        )?;
        Ok(RedisServer { port, proc })
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

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
        let broker = Broker::start(&dir)?;
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
        let mut cmd = Command::new(binary("switchyard-gateway"));
        self.common_env(&mut cmd);
        cmd.env("SWITCHYARD_LISTEN", listen.to_string())
            .env("SWITCHYARD_ADMIN_LISTEN", admin.to_string())
            .env("SWITCHYARD_JWT_HS256_SECRET", SECRET)
            .env("SWITCHYARD_HEAD_CHECK_MS", "500")
            .env("SWITCHYARD_DRAIN_SECONDS", "2");
        let i = self.gateways.len();
        let proc = Proc::spawn(&format!("gateway-{i}"), cmd, &self.dir)?;
        self.gateways.push(GatewayNode {
            proc,
            listen,
            admin,
        });
        Ok(i)
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

    /// Sum of the bridge group's committed offsets over the events topic.
    pub fn committed_offsets(&self) -> anyhow::Result<i64> {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.broker.addr)
            .set("group.id", &self.group)
            .create()?;
        let md = c.fetch_metadata(Some(&self.events_topic), Duration::from_secs(10))?;
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

    /// Rows in the cursor log's events table.
    pub async fn stored_events(&self) -> anyhow::Result<i64> {
        let c = self.db.client().await?;
        Ok(c.query_one("SELECT count(*) FROM events", &[])
            .await?
            .get(0))
    }
}

/// An HS256 token for the test secret.
pub fn token(sub: &str, products: &[&str], features: &[&str], ttl_secs: i64) -> String {
    token_with(
        json!({"sub": sub, "products": products, "features": features}),
        ttl_secs,
    )
}

/// A token with arbitrary claims; `exp` is set from `ttl_secs`.
pub fn token_with(claims: Value, ttl_secs: i64) -> String {
    mint_hs256(claims, ttl_secs, SECRET).expect("encode token")
}

/// An HS256 token signed with `secret`, with `exp` set `ttl_secs` from now
/// (negative: already expired). The one JWT minting path of the tests, the
/// demo and the developers' token tool (`switchyard-demo token`).
pub fn mint_hs256(mut claims: Value, ttl_secs: i64, secret: &str) -> anyhow::Result<String> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    claims["exp"] = json!(now + ttl_secs);
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )?)
}

/// A news event in the seed's shape.
pub fn news(id: &str, products: &[&str], n: u64) -> Value {
    json!({
        "id": id,
        "topic": "News",
        "scopes": [{"type": "Product Codes", "values": products}],
        "payload": {"n": n},
        "created_at_ms": now_ms()
    })
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A WebSocket client speaking the JSON protocol.
pub struct Client {
    ws: Ws,
    next_id: u64,
    /// Frames read while waiting for something else.
    pending: std::collections::VecDeque<Value>,
    /// Last cursor seen per topic.
    pub cursors: std::collections::HashMap<String, String>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("next_id", &self.next_id)
            .finish()
    }
}

/// How a connection attempt ended.
#[derive(Debug)]
pub enum Connect {
    Open(Box<Client>),
    /// HTTP status and body of a refused upgrade.
    Refused(u16, String),
}

impl Client {
    /// Connects with `?access_token=` and waits for `welcome`.
    pub async fn connect(url: &str, token: &str) -> anyhow::Result<Client> {
        match Self::try_connect(&format!("{url}?access_token={token}"), None).await? {
            Connect::Open(c) => Ok(*c),
            Connect::Refused(code, body) => bail!("connection refused: {code} {body}"),
        }
    }

    pub async fn try_connect(url: &str, bearer: Option<&str>) -> anyhow::Result<Connect> {
        let mut req = url.into_client_request()?;
        if let Some(t) = bearer {
            req.headers_mut()
                .insert("authorization", format!("Bearer {t}").parse()?);
        }
        match tokio_tungstenite::connect_async(req).await {
            Ok((ws, _)) => {
                let mut c = Client {
                    ws,
                    next_id: 1,
                    pending: Default::default(),
                    cursors: Default::default(),
                };
                let w = c.next_frame(Duration::from_secs(10)).await?;
                if w["type"] != "welcome" {
                    bail!("expected welcome, got {w}");
                }
                Ok(Connect::Open(Box::new(c)))
            }
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                let body = resp
                    .body()
                    .as_ref()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default();
                Ok(Connect::Refused(resp.status().as_u16(), body))
            }
            Err(e) => Err(e.into()),
        }
    }

    pub async fn send_raw(&mut self, msg: Message) -> anyhow::Result<()> {
        self.ws.send(msg).await?;
        Ok(())
    }

    pub async fn send(&mut self, v: Value) -> anyhow::Result<()> {
        self.send_raw(Message::Text(v.to_string().into())).await
    }

    /// Sends a request with a fresh id; returns the id.
    pub async fn request(&mut self, mut v: Value) -> anyhow::Result<u64> {
        let id = self.next_id;
        self.next_id += 1;
        v["id"] = json!(id);
        self.send(v).await?;
        Ok(id)
    }

    /// Next JSON frame from the socket (or the pending queue).
    pub async fn next_frame(&mut self, timeout: Duration) -> anyhow::Result<Value> {
        if let Some(v) = self.pending.pop_front() {
            return Ok(v);
        }
        self.read_socket(timeout).await
    }

    async fn read_socket(&mut self, timeout: Duration) -> anyhow::Result<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .map_err(|_| anyhow!("no frame within {timeout:?}"))?;
            match msg {
                None => bail!("connection closed"),
                Some(Err(e)) => bail!("connection error: {e}"),
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(&t)?;
                    if v["type"] == "message" {
                        if let (Some(topic), Some(c)) = (v["topic"].as_str(), v["cursor"].as_str())
                        {
                            self.cursors.insert(topic.to_owned(), c.to_owned());
                        }
                    }
                    return Ok(v);
                }
                Some(Ok(Message::Close(f))) => {
                    let code = f.as_ref().map(|f| u16::from(f.code)).unwrap_or(0);
                    return Ok(
                        json!({"type": "__close", "code": code, "reason": f.map(|f| f.reason.to_string()).unwrap_or_default()}),
                    );
                }
                Some(Ok(_)) => continue,
            }
        }
    }

    /// Waits for the reply to request `id`, queueing other frames.
    pub async fn reply(&mut self, id: u64, timeout: Duration) -> anyhow::Result<Value> {
        if let Some(pos) = self
            .pending
            .iter()
            .position(|v| v["id"] == json!(id) && v["type"] != "message")
        {
            return Ok(self.pending.remove(pos).expect("present"));
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let v = self.read_socket(left).await?;
            if v["id"] == json!(id) && v["type"] != "message" {
                return Ok(v);
            }
            self.pending.push_back(v);
        }
    }

    /// Subscribes and returns the `subscribed` (or `error`) reply.
    pub async fn subscribe(&mut self, topic: &str, cursor: Option<&str>) -> anyhow::Result<Value> {
        let mut req = json!({"type": "subscribe", "topic": topic});
        if let Some(c) = cursor {
            req["cursor"] = json!(c);
        }
        let id = self.request(req).await?;
        self.reply(id, Duration::from_secs(10)).await
    }

    /// Collects `message` frames until `n` arrived (or the timeout).
    pub async fn messages(&mut self, n: usize, timeout: Duration) -> anyhow::Result<Vec<Value>> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut out = Vec::new();
        while out.len() < n {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                bail!(
                    "got {} of {n} messages; last {:?}",
                    out.len(),
                    ids(&out).last()
                );
            }
            match self.next_frame(left).await {
                Ok(v) if v["type"] == "message" => out.push(v),
                Ok(v) if v["type"] == "__close" => {
                    bail!("closed after {} of {n} messages: {v}", out.len())
                }
                Ok(_) => {}
                Err(e) => bail!(
                    "got {} of {n} messages ({e}); last {:?}",
                    out.len(),
                    ids(&out).last()
                ),
            }
        }
        Ok(out)
    }

    /// Asserts no `message` frame arrives within `quiet`.
    pub async fn expect_silence(&mut self, quiet: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + quiet;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Ok(());
            }
            match self.next_frame(left).await {
                Ok(v) if v["type"] == "message" => bail!("unexpected message {v}"),
                Ok(_) => {}
                Err(_) => return Ok(()),
            }
        }
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

/// The event ids of message frames.
pub fn ids(msgs: &[Value]) -> Vec<String> {
    msgs.iter()
        .map(|m| m["id"].as_str().unwrap_or("?").to_owned())
        .collect()
}

/// A stack with the default options (seed topology, two gateways).
pub async fn default_stack() -> Stack {
    require_servers();
    Stack::start(StackOptions::default())
        .await
        .expect("stack starts")
}

/// The `payload.n` of message frames (the tests number their events).
pub fn ns(msgs: &[Value]) -> Vec<u64> {
    msgs.iter()
        .map(|m| m["payload"]["n"].as_u64().expect("payload.n"))
        .collect()
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
