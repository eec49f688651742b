//! The cost-growth scenario: how latency and server CPU per delivery grow
//! with the number of connections. For each count in
//! `--growth-connections` the system is started afresh (sized for the
//! count), the fleet connects, one fan-out step runs at `--growth-rate`
//! ([`super::sweep::step`]), and everything is torn down. Run for
//! Switchyard and raw TCP, the report sets the two side by side: the added
//! latency is Switchyard's minus raw TCP's at the same count in the same
//! run.
//!
//! Invariant: each count is measured on a fresh system, a fresh topic and
//! fresh event ids (the cursor log is the run's, and the bridge drops ids
//! it already stored), so no count inherits another's connections, events,
//! backlog or consumer lag;
//! CPU per delivery is the system's processes' CPU over the step divided
//! by the deliveries counted in it.

use super::connect::connect_fleet;
use super::ctx::Ctx;
use super::sweep::{step, Step};
use super::{base, finish, one_line};
use crate::cli::ScenarioKind;
use crate::report::SystemResult;
use crate::systems::{Parts, SystemKind};

/// Every connection count for one system; one step each.
pub(super) async fn run(ctx: &Ctx, kind: SystemKind) -> anyhow::Result<SystemResult> {
    let a = &ctx.args;
    let scenario = ScenarioKind::Growth;
    let mut steps = Vec::new();
    for &n in &a.growth_connections {
        eprintln!("  -- {kind} with {n} connections");
        let st = match one(ctx, kind, n).await {
            Ok(st) => st,
            Err(e) => {
                eprintln!("  {kind} at {n} connections failed: {e:#}");
                let mut st = base(ctx, scenario, kind.name());
                st.connections = n;
                st.offered_rate = a.growth_rate;
                st.error = Some(format!("{e:#}"));
                st
            }
        };
        eprintln!("{}", one_line(&st));
        steps.push(st);
    }
    let mut out = base(ctx, scenario, kind.name());
    if let Some(last) = steps.iter().rev().find(|s| s.error.is_none()) {
        out = SystemResult {
            steps: Vec::new(),
            notes: Vec::new(),
            ..last.clone()
        };
    }
    let failed: Vec<String> = steps
        .iter()
        .filter(|s| s.error.is_some())
        .map(|s| s.connections.to_string())
        .collect();
    if !failed.is_empty() {
        out.notes.push(format!(
            "failed at {} connections (see the steps)",
            failed.join(", ")
        ));
    }
    out.notes
        .push("the row repeats the largest count measured; every count is in steps".into());
    out.steps = steps;
    Ok(out)
}

/// One connection count: start, connect, one step, tear down.
async fn one(ctx: &Ctx, kind: SystemKind, n: usize) -> anyhow::Result<SystemResult> {
    let a = &ctx.args;
    let scenario = ScenarioKind::Growth;
    let topic = ctx
        .topic_tagged(scenario, kind, &format!("_{n}"), a.partitions)
        .await?;
    let mut sys = ctx.start_system(kind, &topic, n, Parts::All).await?;
    let mut notes = Vec::new();
    let fleet = match connect_fleet(ctx, &mut sys, n, false, &mut notes).await {
        Ok(f) => f,
        Err(e) => {
            sys.stop();
            return Err(e);
        }
    };
    let phase = format!("{}-{n}", kind.name());
    let spec = Step {
        scenario,
        kind,
        topic: &topic,
        phase: &phase,
        scoped: false,
        rate: a.growth_rate,
    };
    let res = step(ctx, &sys, &fleet, &spec, &mut vec![0]).await;
    let mut st = match res {
        Ok(st) => st,
        Err(e) => {
            fleet.shutdown(std::time::Duration::from_secs(10)).await;
            sys.stop();
            return Err(e);
        }
    };
    st.connections = n;
    st.cpu_us_per_delivery =
        (st.deliveries > 0).then(|| st.server_cpu_s * 1e6 / st.deliveries as f64);
    notes.append(&mut st.notes);
    st.notes = notes;
    finish(fleet, &mut sys, &mut st).await;
    Ok(st)
}
