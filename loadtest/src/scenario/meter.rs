//! CPU and memory accounting over one measurement: the system's processes,
//! the shared servers (tansu, Redis, the database's backends) and the
//! generator itself, with the peak RSS sampled while it runs.
//!
//! Invariant: the RSS sampler stops when the meter ends or drops, also
//! when a step fails half-way, so no sampler outlives its measurement.

use super::ctx::Ctx;
use crate::procstat::{self, ProcSample};
use crate::report::{ProcUsage, SystemResult};
use crate::systems::Running;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// CPU/memory accounting over one measurement.
pub(super) struct Meter {
    t0: Instant,
    pub(super) server: HashMap<u32, ProcSample>,
    infra: HashMap<u32, ProcSample>,
    /// The generator: this process and its fleet workers.
    me: HashMap<u32, ProcSample>,
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

pub(super) struct Usage {
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
    pub(super) async fn begin(ctx: &Ctx, sys: &Running) -> Meter {
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
            me: generator(),
            jiffies: procstat::machine_jiffies(),
            peak,
            stop,
        }
    }

    pub(super) async fn end(self, ctx: &Ctx, sys: &Running) -> Usage {
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
            generator_cpu_s: generator()
                .iter()
                .map(|(pid, now)| {
                    let before = self.me.get(pid).map_or(0.0, |b| b.cpu_s);
                    (now.cpu_s - before).max(0.0)
                })
                .sum(),
            busy_pct: procstat::busy_pct(self.jiffies, procstat::machine_jiffies()),
        }
    }
}

/// The generator's processes now.
fn generator() -> HashMap<u32, ProcSample> {
    procstat::generator_pids()
        .into_iter()
        .filter_map(|pid| Some((pid, procstat::sample(pid)?)))
        .collect()
}

/// Rounds to 3 decimals (CPU seconds from clock ticks, percentages).
fn r3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

impl Usage {
    pub(super) fn apply(mut self, r: &mut SystemResult) {
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
