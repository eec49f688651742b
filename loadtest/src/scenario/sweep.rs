//! The rate sweep behind the fan-out and scoped scenarios: one step per
//! offered rate, each measuring latency, deliveries and resource use, until
//! a step hits a limit (p99, loss, or deliveries falling short).
//!
//! [`step`] is one measurement at one rate on a connected fleet; the growth
//! scenario reuses it. Switchyard steps also carry the per-stage breakdown
//! of where the time went ([`crate::stages`]), from the servers' histograms
//! scraped right before and right after the step.
//!
//! Invariant: a step's expected deliveries are the events produced per
//! stream times that stream's live subscribers when the step began, so
//! loss is judged against what each connection was entitled to receive.

use super::connect::connect_fleet;
use super::ctx::{produce, Ctx};
use super::meter::Meter;
use super::{base, finish, one_line, record, secs};
use crate::cli::ScenarioKind;
use crate::event::{FANOUT_TOPIC, SCOPED_TOPIC};
use crate::fleet::{Fleet, Query};
use crate::producer::{KeyBy, Plan, Progress, Streams};
use crate::report::SystemResult;
use crate::stages;
use crate::systems::{Parts, Running, SystemKind};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Waits until `want` deliveries were recorded, or nothing arrived for the
/// drain timeout (or an absolute cap).
async fn drain(ctx: &Ctx, fleet: &Fleet, want: u64) -> anyhow::Result<()> {
    let idle_limit = secs(ctx.args.drain_timeout_seconds);
    let cap = Instant::now() + Duration::from_secs(300);
    let poll = if fleet.processes() > 0 {
        Duration::from_millis(200)
    } else {
        Duration::from_millis(50)
    };
    let mut last = fleet.deliveries().await?;
    let mut last_change = Instant::now();
    loop {
        let got = fleet.deliveries().await?;
        if got >= want || Instant::now() > cap {
            return Ok(());
        }
        if got != last {
            last = got;
            last_change = Instant::now();
        } else if last_change.elapsed() > idle_limit {
            return Ok(());
        }
        tokio::time::sleep(poll).await;
    }
}

/// Fan-out (one topic) or scoped (products) sweep over offered rates.
pub(super) async fn sweep(
    ctx: &Ctx,
    kind: SystemKind,
    scoped: bool,
) -> anyhow::Result<SystemResult> {
    let a = &ctx.args;
    let scenario = if scoped {
        ScenarioKind::Scoped
    } else {
        ScenarioKind::Fanout
    };
    let n = a.connections_for(scenario);
    let topic = ctx.topic(scenario, kind, a.partitions).await?;
    let mut sys = ctx.start_system(kind, &topic, n, Parts::All).await?;
    let mut head = base(ctx, scenario, kind.name());
    let fleet = match connect_fleet(ctx, &mut sys, n, scoped, &mut head.notes).await {
        Ok(f) => f,
        Err(e) => {
            sys.stop();
            return Err(e);
        }
    };
    let streams = if scoped { a.products as usize } else { 1 };
    let mut next_n = vec![0u64; streams];
    let mut steps: Vec<SystemResult> = Vec::new();
    let mut failure = None;
    for rate in a.rates_for(scenario) {
        let spec = Step {
            scenario,
            kind,
            topic: &topic,
            phase: kind.name(),
            scoped,
            rate,
        };
        let st = match step(ctx, &sys, &fleet, &spec, &mut next_n).await {
            Ok(st) => st,
            Err(e) => {
                failure = Some(e);
                break;
            }
        };
        eprintln!("{}", one_line(&st));
        let stop = st.saturated || sys.check_alive().is_err();
        steps.push(st);
        if stop {
            break;
        }
    }
    let best = steps
        .iter()
        .filter(|s| !s.saturated)
        .max_by(|x, y| x.offered_rate.total_cmp(&y.offered_rate))
        .or_else(|| steps.first())
        .cloned()
        .unwrap_or_default();
    let mut out = SystemResult {
        notes: head.notes,
        steps,
        ..best
    };
    if !out.steps.iter().any(|s| !s.saturated) {
        out.notes
            .push("no rate was sustained; the row shows the first step".into());
    }
    finish(fleet, &mut sys, &mut out).await;
    match failure {
        Some(e) if out.steps.is_empty() => Err(e),
        Some(e) => {
            out.error = Some(format!("{e:#}"));
            Ok(out)
        }
        None => Ok(out),
    }
}

/// What one step measures.
pub(super) struct Step<'a> {
    pub(super) scenario: ScenarioKind,
    pub(super) kind: SystemKind,
    pub(super) topic: &'a str,
    /// Makes event ids unique in the run's cursor log: a system phase
    /// that starts its sequence numbers at 0 again needs its own (the
    /// bridge drops an id it already stored).
    pub(super) phase: &'a str,
    pub(super) scoped: bool,
    pub(super) rate: f64,
}

/// One step: produce at `spec.rate` for `--step-seconds`, drain, and
/// measure latency, deliveries, loss and the servers' CPU and memory.
/// `next_n` (events produced so far per stream) moves on by what was
/// produced.
pub(super) async fn step(
    ctx: &Ctx,
    sys: &Running,
    fleet: &Fleet,
    spec: &Step<'_>,
    next_n: &mut Vec<u64>,
) -> anyhow::Result<SystemResult> {
    let a = &ctx.args;
    let (scenario, kind, rate, scoped) = (spec.scenario, spec.kind, spec.rate, spec.scoped);
    let streams = next_n.len();
    let now = fleet
        .query(&Query {
            streams,
            ..Query::default()
        })
        .await?;
    let (subs, live) = (now.subscribers, now.live);
    let (before, _) = fleet.tally(next_n).await?;
    let failed_before = ctx.producer.deliveries.failed.load(Relaxed);
    let stages_before = match kind {
        SystemKind::Switchyard => Some(stages::scrape(&sys.pids()).await),
        _ => None,
    };
    fleet.take_sample().await?;
    let meter = Meter::begin(ctx, sys).await;
    let t0 = crate::now_us();
    let plan = Plan {
        kafka_topic: spec.topic.to_owned(),
        run: format!("{}-{}", ctx.run_id, spec.phase),
        client_topic: if scoped { SCOPED_TOPIC } else { FANOUT_TOPIC },
        streams: if scoped {
            Streams::Scoped {
                products: a.products,
                seed: 42,
            }
        } else {
            Streams::Fanout
        },
        key: KeyBy::Topic,
        rate,
        count: (rate * a.step_seconds).round().max(1.0) as u64,
        deadline: secs(a.step_seconds * 1.5 + 1.0),
        payload_bytes: a.payload_bytes,
    };
    eprintln!(
        "  step {rate} events/s x {}s ({} live connections)",
        a.step_seconds, live
    );
    let before_n = next_n.clone();
    let (produced, after_n) = produce(
        ctx,
        plan,
        std::mem::take(next_n),
        Arc::new(Progress::default()),
    )
    .await?;
    *next_n = after_n;
    let expected: u64 = next_n
        .iter()
        .zip(&before_n)
        .zip(&subs)
        .map(|((a, b), s)| (a - b) * s)
        .sum();
    drain(ctx, fleet, expected).await?;
    let stages_after = match stages_before {
        Some(_) => Some(stages::scrape(&sys.pids()).await),
        None => None,
    };
    let sample = fleet.take_sample().await?;
    let (tally, _) = fleet.tally(next_n).await?;
    let tally = tally.since(&before);
    let usage = meter.end(ctx, sys).await;
    let mut st = base(ctx, scenario, kind.name());
    st.connected = live;
    st.offered_rate = rate;
    st.events = produced.sent;
    st.events_per_s = produced.rate(rate);
    st.deliveries = sample.deliveries;
    st.expected_deliveries = expected;
    let span_us = sample.last_us.saturating_sub(t0).max(1);
    st.deliveries_per_s = sample.deliveries as f64 * 1e6 / span_us as f64;
    st.duration_s = span_us as f64 / 1e6;
    record(&mut st, &sample, &tally);
    if let (Some(b), Some(a)) = (&stages_before, &stages_after) {
        match stages::breakdown(b, a, st.mean_ms) {
            Ok(bd) => {
                eprintln!("{}", stages::one_line(&bd));
                st.stages = Some(bd);
            }
            Err(why) => st.notes.push(why),
        }
    }
    usage.apply(&mut st);
    let failed = ctx.producer.deliveries.failed.load(Relaxed) - failed_before;
    if failed > 0 {
        st.notes
            .push(format!("Kafka refused {failed} events: they count as lost"));
    }
    if produced.max_behind_us > 100_000 {
        st.notes.push(format!(
            "the producer fell {:.0} ms behind its schedule (the machine is saturated; latency includes it)",
            produced.max_behind_us as f64 / 1000.0
        ));
    }
    if st.disconnects > 0 {
        st.notes.push(format!(
            "{} disconnects during the step: {}",
            st.disconnects,
            fleet.sample_errors(2).await.join(" | ")
        ));
    }
    if tally.lost > 0 {
        st.notes
            .push(format!("{} connections lost events", tally.conns_with_loss));
        if let (Some(local), true) = (fleet.local(), std::env::var_os("LOADTEST_DEBUG").is_some()) {
            for (i, c) in local
                .conns
                .iter()
                .enumerate()
                .filter(|(_, c)| c.next_of(0) < next_n[0])
                .take(10)
            {
                eprintln!(
                    "    conn {i}: next {} received {} probe {} live {} err {:?}",
                    c.next_of(0),
                    c.received.load(Relaxed),
                    c.probe.load(Relaxed),
                    c.live.load(Relaxed),
                    c.last_error.lock().ok().and_then(|e| e.clone())
                );
            }
        }
    }
    let mut limit = Vec::new();
    if st.p99_ms.unwrap_or(f64::MAX) > a.max_p99_ms {
        limit.push(format!("p99 above {} ms", a.max_p99_ms));
    }
    if st.lost > 0 || st.duplicated > 0 {
        limit.push("lost or duplicated events".into());
    }
    if (st.deliveries as f64) < 0.99 * expected as f64 {
        limit.push(format!(
            "delivered {} of {} expected",
            st.deliveries, expected
        ));
    }
    st.saturated = !limit.is_empty();
    if st.saturated {
        st.notes.push(format!("limit hit: {}", limit.join(", ")));
    }
    Ok(st)
}
