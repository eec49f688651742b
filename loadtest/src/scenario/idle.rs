//! The idle scenario: memory per idle connection, from the RSS of the
//! system's processes before any connection and after the fleet settled.
//!
//! Invariant: the "after" sample is taken only once every connection is
//! live and probed and start-up work had time to finish, so the figure is
//! the connections' cost, not the system's start-up.

use super::connect::connect_fleet;
use super::ctx::Ctx;
use super::meter::Meter;
use super::{base, finish, secs};
use crate::cli::ScenarioKind;
use crate::fleet::{Fleet, Query};
use crate::procstat;
use crate::report::SystemResult;
use crate::systems::{Parts, Running, SystemKind};
use crate::verify::Tally;
use std::time::Duration;

/// Memory per idle connection.
pub(super) async fn run(ctx: &Ctx, kind: SystemKind) -> anyhow::Result<SystemResult> {
    let a = &ctx.args;
    let scenario = ScenarioKind::Idle;
    let n = a.connections_for(scenario);
    let topic = ctx.topic(scenario, kind, a.partitions).await?;
    let mut sys = ctx.start_system(kind, &topic, n, Parts::All).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss = |sys: &Running| -> u64 {
        sys.pids()
            .iter()
            .filter_map(|(_, p)| procstat::sample(*p))
            .map(|s| s.rss_bytes)
            .sum()
    };
    let before = rss(&sys);
    let mut r = base(ctx, scenario, kind.name());
    let fleet = match connect_fleet(ctx, &mut sys, n, false, &mut r.notes).await {
        Ok(f) => f,
        Err(e) => {
            sys.stop();
            return Err(e);
        }
    };
    // Let start-up work finish before the idle window.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let meter = Meter::begin(ctx, &sys).await;
    tokio::time::sleep(secs(a.idle_settle_seconds)).await;
    let after = rss(&sys);
    let usage = meter.end(ctx, &sys).await;
    let (live, tally) = match idle_counts(&fleet).await {
        Ok(x) => x,
        Err(e) => {
            fleet.shutdown(Duration::from_secs(10)).await;
            sys.stop();
            return Err(e);
        }
    };
    r.connected = live;
    r.rss_before_bytes = Some(before);
    r.rss_per_conn_bytes = Some(after.saturating_sub(before) as f64 / live.max(1) as f64);
    r.duration_s = a.idle_settle_seconds;
    r.connect_failures = tally.connect_failures;
    r.disconnects = tally.disconnects;
    usage.apply(&mut r);
    r.server_rss_bytes = after;
    r.notes.push(format!(
        "RSS of the system's processes with {live} connections, minus before any (all processes summed)"
    ));
    finish(fleet, &mut sys, &mut r).await;
    Ok(r)
}

/// Live connections and the tally after the idle window.
async fn idle_counts(fleet: &Fleet) -> anyhow::Result<(usize, Tally)> {
    let s = fleet
        .query(&Query {
            produced: Some(vec![0]),
            ..Query::default()
        })
        .await?;
    Ok((s.live, s.tally.unwrap_or_default()))
}
