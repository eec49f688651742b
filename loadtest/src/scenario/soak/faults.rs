//! The soak's fault schedule and the private servers it hits: gateway
//! SIGKILL and SIGTERM (restarted on the same ports), bridge SIGKILL
//! (restarted), Redis restart, PostgreSQL restart, a window where
//! PostgreSQL is read-only, and a Kafka broker restart (tansu keeps its data
//! in PostgreSQL). Each injection is timed: how long the component was
//! down, how long until an event produced after it came back was
//! delivered, and (gateway faults) how long until every well-behaved client
//! was connected again.
//!
//! Invariant: faults only ever hit servers this run started (a private
//! PostgreSQL, a private redis-server, the run's tansu, bridge and
//! gateways), never the machine's shared PostgreSQL or Redis; one fault at
//! a time, each followed by its recovery measurement before the next.

use crate::client::LocalFleet as Fleet;
use anyhow::Context as _;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use switchyard_testkit::{wait_ready, PgServer, RedisServer, Stack};

/// A kind of fault.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    GatewaySigkill,
    GatewaySigterm,
    BridgeSigkill,
    RedisRestart,
    PostgresRestart,
    PostgresReadOnly,
    BrokerRestart,
}

impl FaultKind {
    /// One cycle of the schedule.
    pub const CYCLE: [FaultKind; 7] = [
        FaultKind::GatewaySigkill,
        FaultKind::BridgeSigkill,
        FaultKind::RedisRestart,
        FaultKind::GatewaySigterm,
        FaultKind::PostgresRestart,
        FaultKind::BrokerRestart,
        FaultKind::PostgresReadOnly,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::GatewaySigkill => "gateway SIGKILL",
            FaultKind::GatewaySigterm => "gateway SIGTERM",
            FaultKind::BridgeSigkill => "bridge SIGKILL",
            FaultKind::RedisRestart => "Redis restart",
            FaultKind::PostgresRestart => "PostgreSQL restart",
            FaultKind::PostgresReadOnly => "PostgreSQL read-only",
            FaultKind::BrokerRestart => "Kafka broker restart",
        }
    }
}

/// One injected fault and how the system recovered.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct FaultRecord {
    pub kind: FaultKind,
    pub target: String,
    /// Seconds since the load started.
    pub at_s: f64,
    /// Injection until the component was back (ready, or the read-only
    /// window closed).
    pub down_s: f64,
    /// Injection until a client received an event produced after the
    /// component was back.
    pub delivery_s: Option<f64>,
    /// Gateway faults: injection until as many well-behaved clients were
    /// connected as before it.
    pub reconnected_s: Option<f64>,
    pub error: Option<String>,
}

/// The run's private servers and Switchyard's processes.
pub(super) struct Servers {
    pub(super) stack: Stack,
    /// Switchyard's PostgreSQL (faulted).
    pub(super) pg: PgServer,
    /// tansu's storage (never faulted).
    pub(super) broker_pg: PgServer,
    pub(super) redis: RedisServer,
    pub(super) dir: PathBuf,
}

impl Servers {
    /// `(name, pid)` of every server process now running.
    pub(super) fn pids(&self) -> Vec<(String, u32)> {
        let mut v = Vec::new();
        for (i, g) in self.stack.gateways.iter().enumerate() {
            if let Some(p) = g.proc.pid() {
                v.push((format!("gateway-{i}"), p));
            }
        }
        if let Some(p) = self.stack.bridge.as_ref().and_then(|b| b.pid()) {
            v.push(("bridge".into(), p));
        }
        if let Some(p) = self.stack.broker.proc.pid() {
            v.push(("tansu".into(), p));
        }
        if let Some(p) = self.redis.proc.pid() {
            v.push(("redis-server".into(), p));
        }
        if let Some(p) = self.pg.pid() {
            v.push(("postgres (switchyard)".into(), p));
        }
        if let Some(p) = self.broker_pg.pid() {
            v.push(("postgres (tansu storage)".into(), p));
        }
        v
    }

    fn publish_pids(&self, pids: &Mutex<Vec<(String, u32)>>) {
        *pids.lock().unwrap_or_else(|p| p.into_inner()) = self.pids();
    }
}

/// What a fault measurement looks at.
pub(super) struct Watch<'a> {
    pub(super) fleet: &'a Fleet,
    /// Well-behaved connections (the first `good` of the fleet).
    pub(super) good: usize,
    pub(super) pids: &'a Mutex<Vec<(String, u32)>>,
    pub(super) read_only_window: Duration,
}

/// Injects `kind` (gateway faults on node `node`), waits for the component
/// to come back and for delivery to resume; returns the record.
pub(super) async fn inject(
    s: &mut Servers,
    kind: FaultKind,
    node: usize,
    t0: Instant,
    w: &Watch<'_>,
) -> FaultRecord {
    let live_before = live_good(w);
    let started = Instant::now();
    let mut rec = FaultRecord {
        kind,
        target: String::new(),
        at_s: started.duration_since(t0).as_secs_f64(),
        down_s: 0.0,
        delivery_s: None,
        reconnected_s: None,
        error: None,
    };
    eprintln!("  [{:6.1}s] fault: {}", rec.at_s, kind.name());
    let res = match kind {
        FaultKind::GatewaySigkill | FaultKind::GatewaySigterm => {
            rec.target = format!("gateway-{node}");
            tokio::task::block_in_place(|| restart_gateway(s, node, kind))
        }
        FaultKind::BridgeSigkill => {
            rec.target = "bridge".into();
            tokio::task::block_in_place(|| restart_bridge(s))
        }
        FaultKind::RedisRestart => {
            rec.target = "redis-server".into();
            tokio::task::block_in_place(|| restart_redis(s))
        }
        FaultKind::PostgresRestart => {
            rec.target = "postgres (switchyard)".into();
            tokio::task::block_in_place(|| {
                s.pg.stop();
                std::thread::sleep(Duration::from_secs(2));
                s.pg.resume()
            })
        }
        FaultKind::PostgresReadOnly => {
            rec.target = "postgres (switchyard)".into();
            read_only_window(&s.pg.base_url(), w.read_only_window).await
        }
        FaultKind::BrokerRestart => {
            rec.target = "tansu".into();
            let dir = s.dir.clone();
            tokio::task::block_in_place(|| s.stack.broker.restart(&dir))
        }
    };
    s.publish_pids(w.pids);
    rec.down_s = started.elapsed().as_secs_f64();
    if let Err(e) = res {
        eprintln!("    fault {} failed: {e:#}", kind.name());
        rec.error = Some(format!("{e:#}"));
        return rec;
    }
    // Delivery resumed: an event scheduled after the component came back
    // reached a client.
    let back_us = crate::now_us();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if w.fleet.shared.latest_t_us.load(Relaxed) >= back_us {
            rec.delivery_s = Some(started.elapsed().as_secs_f64());
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    if matches!(kind, FaultKind::GatewaySigkill | FaultKind::GatewaySigterm) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if live_good(w) >= live_before {
                rec.reconnected_s = Some(started.elapsed().as_secs_f64());
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
    eprintln!(
        "    back after {:.1}s, delivering after {}, reconnected after {}",
        rec.down_s,
        rec.delivery_s.map_or("-".into(), |v| format!("{v:.1}s")),
        rec.reconnected_s.map_or("-".into(), |v| format!("{v:.1}s")),
    );
    rec
}

fn live_good(w: &Watch<'_>) -> usize {
    w.fleet.conns[..w.good]
        .iter()
        .filter(|c| c.live.load(Relaxed))
        .count()
}

fn restart_gateway(s: &mut Servers, node: usize, kind: FaultKind) -> anyhow::Result<()> {
    let g = &mut s.stack.gateways[node];
    if kind == FaultKind::GatewaySigterm {
        g.proc.term();
        // It drains (SWITCHYARD_DRAIN_SECONDS) and exits.
        if g.proc.wait_exit(Duration::from_secs(30)).is_none() {
            anyhow::bail!("gateway-{node} did not exit within 30 s of SIGTERM");
        }
    } else {
        g.proc.kill9();
    }
    std::thread::sleep(Duration::from_secs(1));
    s.stack.restart_gateway(node)?;
    wait_ready(s.stack.gateways[node].admin, Duration::from_secs(60))
        .with_context(|| format!("gateway-{node} after restart"))
}

fn restart_bridge(s: &mut Servers) -> anyhow::Result<()> {
    if let Some(b) = s.stack.bridge.as_mut() {
        b.kill9();
    }
    std::thread::sleep(Duration::from_secs(1));
    s.stack.start_bridge()?;
    wait_ready(s.stack.bridge_admin, Duration::from_secs(60)).context("bridge after restart")
}

fn restart_redis(s: &mut Servers) -> anyhow::Result<()> {
    let port = s.redis.port;
    s.redis.proc.kill9();
    std::thread::sleep(Duration::from_secs(1));
    s.redis = RedisServer::start(&s.dir, port)?;
    Ok(())
}

/// Makes every new transaction on the server read-only for `window` (what a
/// failover to a replica looks like), then writable again.
async fn read_only_window(base: &str, window: Duration) -> anyhow::Result<()> {
    let (c, conn) = tokio_postgres::connect(&format!("{base}/postgres"), tokio_postgres::NoTls)
        .await
        .context("connecting to switch PostgreSQL read-only")?;
    let conn = tokio::spawn(conn);
    // This session must stay able to undo it.
    c.simple_query("SET default_transaction_read_only = off")
        .await?;
    c.simple_query("ALTER SYSTEM SET default_transaction_read_only = on")
        .await?;
    c.simple_query("SELECT pg_reload_conf()").await?;
    tokio::time::sleep(window).await;
    c.simple_query("ALTER SYSTEM RESET default_transaction_read_only")
        .await?;
    c.simple_query("SELECT pg_reload_conf()").await?;
    drop(c);
    let _ = conn.await;
    Ok(())
}

/// When each fault of the schedule is due, and on which node: `cycles`
/// cycles spread evenly between `first` and `last` (seconds since the load
/// started), gateway faults alternating between the nodes.
pub(super) fn schedule(
    first: f64,
    last: f64,
    cycles: usize,
    nodes: usize,
) -> Vec<(f64, FaultKind, usize)> {
    let n = FaultKind::CYCLE.len() * cycles.max(1);
    let step = if n > 1 {
        (last - first).max(0.0) / (n - 1) as f64
    } else {
        0.0
    };
    let mut gateway_faults = 0usize;
    (0..n)
        .map(|i| {
            let kind = FaultKind::CYCLE[i % FaultKind::CYCLE.len()];
            let mut node = 0;
            if matches!(kind, FaultKind::GatewaySigkill | FaultKind::GatewaySigterm) {
                node = gateway_faults % nodes.max(1);
                gateway_faults += 1;
            }
            (first + step * i as f64, kind, node)
        })
        .collect()
}

/// Keeps `pids` current for the memory sampler.
pub(super) fn share_pids(s: &Servers) -> Arc<Mutex<Vec<(String, u32)>>> {
    Arc::new(Mutex::new(s.pids()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_covers_every_kind_spread_over_the_window_on_both_nodes() {
        let s = schedule(10.0, 100.0, 2, 2);
        assert_eq!(s.len(), 14);
        assert_eq!(s[0].0, 10.0);
        assert!((s[13].0 - 100.0).abs() < 1e-9);
        for k in FaultKind::CYCLE {
            assert_eq!(s.iter().filter(|f| f.1 == k).count(), 2, "{k:?}");
        }
        let gw: Vec<usize> = s
            .iter()
            .filter(|f| matches!(f.1, FaultKind::GatewaySigkill | FaultKind::GatewaySigterm))
            .map(|f| f.2)
            .collect();
        assert_eq!(gw, vec![0, 1, 0, 1]);
        assert!(s.windows(2).all(|w| w[0].0 < w[1].0));
    }
}
