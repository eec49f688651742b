//! Helpers for the bridge's failure tests: a bridge process with chosen
//! settings, a database made read-only, a second member of the bridge's
//! consumer group, records produced to chosen partitions, and the DLQ.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::OwnedMessage;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use switchyard_testkit::{binary, http_get, pg_base, Proc, Stack};

pub const T: Duration = Duration::from_secs(30);

pub async fn eventually<F: FnMut() -> bool>(what: &str, timeout: Duration, mut f: F) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

/// Waits until the log holds `n` events; panics with what it holds.
pub async fn stored(s: &Stack, n: i64, timeout: Duration) {
    stored_where(s, n, timeout, |got| got == n).await;
}

/// Waits until the log holds at least `n` events.
pub async fn stored_at_least(s: &Stack, n: i64, timeout: Duration) {
    stored_where(s, n, timeout, |got| got >= n).await;
}

async fn stored_where(s: &Stack, n: i64, timeout: Duration, done: impl Fn(i64) -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        let got = s.stored_events().await.unwrap();
        if done(got) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the log holds {got} events, expected {n} within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Starts a bridge for `s` like the harness does, but with the bridge's own
/// defaults for group membership (no `SWITCHYARD_KAFKA_INSTANCE_ID`) and
/// `env` on top.
pub fn spawn_bridge(s: &Stack, name: &str, env: &[(&str, &str)]) -> Proc {
    let mut cmd = Command::new(binary("switchyard-bridge"));
    cmd.env("SWITCHYARD_POSTGRES_URL", &s.db.url)
        .env("SWITCHYARD_REDIS_URL", &s.redis_url)
        .env("SWITCHYARD_REDIS_PREFIX", &s.prefix)
        .env("SWITCHYARD_TOPOLOGY", &s.topology_path)
        .env("SWITCHYARD_KAFKA_BROKERS", &s.broker.addr)
        .env("SWITCHYARD_KAFKA_TOPICS", &s.events_topic)
        .env("SWITCHYARD_KAFKA_GROUP", &s.group)
        .env("SWITCHYARD_KAFKA_DLQ_TOPIC", &s.dlq_topic)
        .env("SWITCHYARD_ADMIN_LISTEN", s.bridge_admin.to_string())
        .env_remove("SWITCHYARD_KAFKA_INSTANCE_ID")
        .env(
            "RUST_LOG",
            std::env::var("SWITCHYARD_TEST_LOG").unwrap_or_else(|_| "info".into()),
        );
    for (k, v) in env {
        cmd.env(k, v);
    }
    Proc::spawn(name, cmd, &s.dir).unwrap()
}

/// A metric's value on an admin endpoint (first sample), if exported.
pub fn metric(admin: SocketAddr, name: &str) -> Option<f64> {
    let (_, body) = http_get(admin, "/metrics").ok()?;
    body.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (k, v) = l.rsplit_once(' ')?;
        (k == name || k.starts_with(&format!("{name}{{"))).then(|| v.parse().ok())?
    })
}

pub fn paused(admin: SocketAddr) -> bool {
    metric(admin, "switchyard_bridge_consumer_paused") == Some(1.0)
}

/// Makes every new transaction in the stack's database read-only (as on a
/// replica after a failover) or writable again, and ends the sessions that
/// exist so the bridge's new ones get the setting.
pub async fn set_read_only(s: &Stack, on: bool) {
    let c = s.db.client().await.unwrap();
    let name = &s.db.name;
    let setting = if on {
        format!("ALTER DATABASE {name} SET default_transaction_read_only = on")
    } else {
        format!("ALTER DATABASE {name} RESET default_transaction_read_only")
    };
    // This session may itself have started read-only; one query string is
    // one transaction, so the statements go one by one.
    c.batch_execute("SET default_transaction_read_only = off")
        .await
        .unwrap();
    c.batch_execute(&setting).await.unwrap();
    c.batch_execute(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = '{name}' AND pid <> pg_backend_pid()"
    ))
    .await
    .unwrap();
}

/// Cuts the stack's database off (no new sessions, the existing ones ended)
/// or lets sessions in again: a database outage the bridge can only wait
/// out. Runs through `psql` on the server's `postgres` database.
pub fn set_reachable(s: &Stack, on: bool) {
    let name = &s.db.name;
    let mut sql = format!("ALTER DATABASE {name} ALLOW_CONNECTIONS {on};");
    if !on {
        sql.push_str(&format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}';"
        ));
    }
    let status = Command::new("psql")
        .args([&format!("{}/postgres", pg_base()), "-q", "-c", &sql])
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "psql failed: {sql}");
}

/// A producer whose records may be up to 5 MB.
pub fn big_producer(s: &Stack) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", &s.broker.addr)
        .set("message.max.bytes", "5000000")
        .set("linger.ms", "1")
        .create()
        .unwrap()
}

pub async fn produce_to(p: &FutureProducer, topic: &str, partition: i32, value: &[u8]) {
    p.send(
        FutureRecord::to(topic)
            .partition(partition)
            .key("k")
            .payload(value),
        Duration::from_secs(15),
    )
    .await
    .map_err(|(e, _)| e)
    .unwrap();
}

/// Records in partition 0 of the stack's DLQ topic.
pub fn dlq_len(s: &Stack) -> i64 {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &s.broker.addr)
        .create()
        .unwrap();
    let (low, high) = c
        .fetch_watermarks(&s.dlq_topic, 0, Duration::from_secs(10))
        .unwrap();
    high - low
}

/// Reads `n` records of the DLQ topic.
pub fn read_dlq(s: &Stack, n: usize) -> Vec<OwnedMessage> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &s.broker.addr)
        .set("group.id", format!("{}-dlq-reader", s.group))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    c.subscribe(&[&s.dlq_topic]).unwrap();
    let deadline = Instant::now() + T;
    let mut out = Vec::new();
    while out.len() < n {
        assert!(
            Instant::now() < deadline,
            "read {} of {n} DLQ records",
            out.len()
        );
        if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
            out.push(m.detach());
        }
    }
    out
}

/// Another member of the bridge's consumer group that takes partitions and
/// reads nothing into the log (and commits nothing). Leaves on drop.
pub struct Member {
    stop: Arc<AtomicBool>,
    assigned: Arc<Mutex<Vec<i32>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Member {
    pub fn join(s: &Stack) -> Member {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &s.broker.addr)
            .set("group.id", &s.group)
            .set("enable.auto.commit", "false")
            .set("session.timeout.ms", "6000")
            .set("heartbeat.interval.ms", "500")
            .create()
            .unwrap();
        c.subscribe(&[&s.events_topic]).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let assigned = Arc::new(Mutex::new(Vec::new()));
        let thread = std::thread::spawn({
            let (stop, assigned) = (stop.clone(), assigned.clone());
            move || {
                while !stop.load(Ordering::Relaxed) {
                    let _ = c.poll(Duration::from_millis(100));
                    if let Ok(a) = c.assignment() {
                        *assigned.lock().unwrap() =
                            a.elements().iter().map(|e| e.partition()).collect();
                    }
                }
                // Dropping the consumer closes it: it leaves the group.
            }
        });
        Member {
            stop,
            assigned,
            thread: Some(thread),
        }
    }

    pub fn assigned(&self) -> Vec<i32> {
        self.assigned.lock().unwrap().clone()
    }

    pub fn leave(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// How many times the bridge logged an assignment.
pub fn assignments(bridge: &Proc) -> usize {
    bridge.log_text().matches("partitions assigned").count()
}

/// Resident memory of a process, in kB.
pub fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}
