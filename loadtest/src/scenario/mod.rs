//! The scenarios, and the run that puts them together: start the shared
//! servers once, then for each system in turn start it, connect the fleet,
//! wait until probe events reach every connection, measure, tear down.
//!
//! | module | owns |
//! | --- | --- |
//! | `fanout` | one unfiltered topic to every connection, over the rate sweep |
//! | `scoped` | per-user product scopes, over the rate sweep |
//! | `reconnect` | every client drops at once, stays away, comes back at once (with its cursor where the system has one) |
//! | `ingest` | a backlog in Kafka drained by the bridge into PostgreSQL |
//! | `idle` | server RSS before and after connecting |
//! | `growth` | latency and server CPU per delivery against connection count, Switchyard vs raw TCP |
//! | `soak` | the chaos soak: private servers, faults, attackers, the exact check (its own subcommand) |
//! | `sweep` | the sweep of offered rates, one step each, until a step hits a limit |
//! | `connect` | client specs, connecting the fleet, the probe barrier |
//! | `meter` | CPU and memory over one measurement |
//! | `ctx` | the run's shared servers, producer and per-phase topics |
//!
//! This module runs one scenario over its systems and builds the report's
//! rows.
//!
//! Invariant: measurement starts only after every live connection has seen
//! a probe (so no system is charged for events sent before it listened), and
//! every wait is bounded; a system that fails is reported and the run moves
//! on to the next one.

mod connect;
mod ctx;
mod fanout;
mod growth;
mod idle;
mod ingest;
mod meter;
mod reconnect;
mod scoped;
pub mod soak;
mod sweep;

pub use ctx::{Ctx, JWT_SECRET};
pub use scoped::entitlements;

use crate::cli::{RunArgs, ScenarioKind};
use crate::fleet::Fleet;
use crate::latency::Sample;
use crate::report::{now_rfc3339, Machine, RunReport, SystemResult};
use crate::systems::{self, Running, SystemKind};
use crate::verify::Tally;
use anyhow::bail;
use std::time::Duration;

/// Runs `scenario` over its systems and returns the report.
pub async fn run(
    args: RunArgs,
    scenario: ScenarioKind,
    command: String,
) -> anyhow::Result<RunReport> {
    let (systems, explicit) = args.systems_to_run(scenario);
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
        match ingest::kafka_ceiling(&ctx).await {
            Ok(r) => report.results.push(r),
            Err(e) => eprintln!("kafka read ceiling: {e:#}"),
        }
    }
    for kind in runnable {
        eprintln!("\n== {} / {}", scenario.name(), kind);
        let res = match scenario {
            ScenarioKind::Fanout => fanout::run(&ctx, kind).await,
            ScenarioKind::Scoped => scoped::run(&ctx, kind).await,
            ScenarioKind::Reconnect => reconnect::run(&ctx, kind).await,
            ScenarioKind::Idle => idle::run(&ctx, kind).await,
            ScenarioKind::Ingest => ingest::run(&ctx, kind).await,
            ScenarioKind::Growth => growth::run(&ctx, kind).await,
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
            if scenario == ScenarioKind::Growth {
                if let Some(e) = &st.error {
                    bad.push(format!(
                        "{} at {} connections: failed: {}",
                        r.system,
                        st.connections,
                        e.lines().next().unwrap_or("")
                    ));
                }
            }
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

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.0))
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

/// Copies a measurement's latency percentiles and correctness tally into
/// its row.
fn record(r: &mut SystemResult, sample: &Sample, tally: &Tally) {
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
}

/// Ends a system's phase: closes the fleet, then stops the system; a
/// process that had died by then is the row's error.
async fn finish(fleet: Fleet, sys: &mut Running, r: &mut SystemResult) {
    fleet.shutdown(Duration::from_secs(10)).await;
    let alive = sys.check_alive();
    sys.stop();
    if let Err(e) = alive {
        r.error = Some(format!("{e:#}"));
    }
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
