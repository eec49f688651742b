//! The reconnect storm: every client drops at once while events keep
//! coming, stays away, and comes back at once (with its cursor where the
//! system has one); measured are the time to reconnect and to catch up,
//! and what was lost.
//!
//! Invariant: "caught up" means a client has the last event produced before
//! the reconnect, and only clients that were live before the storm count.

use super::connect::connect_fleet;
use super::ctx::Ctx;
use super::meter::Meter;
use super::{base, finish, record, secs};
use crate::cli::ScenarioKind;
use crate::client::Mode;
use crate::event::FANOUT_TOPIC;
use crate::fleet::Fleet;
use crate::producer::{KeyBy, Plan, Progress, Streams};
use crate::report::SystemResult;
use crate::systems::{Parts, Running, SystemKind};
use anyhow::Context as _;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The reconnect storm.
pub(super) async fn run(ctx: &Ctx, kind: SystemKind) -> anyhow::Result<SystemResult> {
    let a = &ctx.args;
    let scenario = ScenarioKind::Reconnect;
    let n = a.connections_for(scenario);
    let topic = ctx.topic(scenario, kind, a.partitions).await?;
    let mut sys = ctx.start_system(kind, &topic, n, Parts::All).await?;
    let mut r = base(ctx, scenario, kind.name());
    let fleet = match connect_fleet(ctx, &mut sys, n, false, &mut r.notes).await {
        Ok(f) => f,
        Err(e) => {
            sys.stop();
            return Err(e);
        }
    };
    let res = storm(ctx, kind, &sys, &fleet, &topic, &mut r).await;
    finish(fleet, &mut sys, &mut r).await;
    res.map(|()| r)
}

/// Drops every connection, brings them back, and measures into `r`.
async fn storm(
    ctx: &Ctx,
    kind: SystemKind,
    sys: &Running,
    fleet: &Fleet,
    topic: &str,
    r: &mut SystemResult,
) -> anyhow::Result<()> {
    let a = &ctx.args;
    let live = fleet.live().await?;
    r.connected = live;
    r.offered_rate = a.storm_rate;
    fleet.take_sample().await?;
    let meter = Meter::begin(ctx, sys).await;
    let total_s = a.storm_warm_seconds + a.storm_offline_seconds + a.storm_after_seconds;
    let plan = Plan {
        kafka_topic: topic.to_owned(),
        run: format!("{}-{}", ctx.run_id, kind.name()),
        client_topic: FANOUT_TOPIC,
        streams: Streams::Fanout,
        key: KeyBy::Topic,
        rate: a.storm_rate,
        count: (a.storm_rate * total_s).round().max(1.0) as u64,
        deadline: secs(total_s * 1.5 + 1.0),
        payload_bytes: a.payload_bytes,
    };
    let progress = Arc::new(Progress::default());
    let t_start = Instant::now();
    let producing = {
        let producer = ctx.producer.clone();
        let progress = progress.clone();
        tokio::task::spawn_blocking(move || {
            let mut next = vec![0u64];
            let p = producer.run(&plan, &mut next, &progress);
            let _ = producer.flush(Duration::from_secs(30));
            (p, next)
        })
    };
    tokio::time::sleep(secs(a.storm_warm_seconds)).await;
    eprintln!("  dropping {live} connections at once");
    fleet.set_mode(Mode::Offline).await?;
    tokio::time::sleep(secs(a.storm_offline_seconds)).await;
    let sent = progress.sent.load(Relaxed);
    // Caught up = has the last event produced before the reconnect.
    let target = sent.saturating_sub(1);
    fleet.arm_catch_up(target).await?;
    fleet.widen_gate_to_all().await?;
    let t_reconnect = crate::now_us();
    eprintln!("  reconnecting all at once (catch-up target: event {target})");
    fleet.set_mode(Mode::Run).await?;
    let deadline = Instant::now() + secs(a.storm_timeout_seconds);
    // Polling a spread fleet costs its workers a scan each time: less often.
    let poll = if fleet.processes() > 0 {
        Duration::from_millis(100)
    } else {
        Duration::from_millis(20)
    };
    loop {
        if fleet.caught_up().await? >= live || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(poll).await;
    }
    let (produced, next_n) = producing.await.context("producer thread")?;
    let produced_total = next_n[0];
    // Drain: until every connection has the last event, or nothing moves.
    let idle_limit = secs(a.drain_timeout_seconds.min(5.0));
    let mut last = u64::MAX;
    let mut last_change = Instant::now();
    loop {
        let (_, behind) = fleet.tally(&[produced_total]).await?;
        if behind == 0 || last_change.elapsed() > idle_limit {
            break;
        }
        if behind != last {
            last = behind;
            last_change = Instant::now();
        }
        tokio::time::sleep(poll.max(Duration::from_millis(50))).await;
    }
    let sample = fleet.take_sample().await?;
    let (tally, _) = fleet.tally(&next_n).await?;
    let times = fleet.conn_times().await?;
    let usage = meter.end(ctx, sys).await;
    let mut catch = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)?;
    let mut caught = 0;
    let mut worst = 0u64;
    let mut reconnected_worst = 0u64;
    let mut reconnected = 0;
    for c in times.iter().filter(|c| c.armed) {
        let at = c.caught_up_at_us;
        if at > 0 {
            caught += 1;
            let d = at.saturating_sub(t_reconnect).max(1);
            worst = worst.max(d);
            catch.saturating_record(d);
        }
        let con = c.connected_at_us;
        if con >= t_reconnect {
            reconnected += 1;
            reconnected_worst = reconnected_worst.max(con - t_reconnect);
        }
    }
    r.caught_up = Some(caught);
    r.catch_up_s = (caught == live).then_some(worst as f64 / 1e6);
    if caught < live {
        r.notes.push(format!(
            "only {caught} of {live} clients caught up within {}s",
            a.storm_timeout_seconds
        ));
    }
    if !catch.is_empty() {
        r.catch_up_p50_s = Some(catch.value_at_quantile(0.5) as f64 / 1e6);
        r.catch_up_p99_s = Some(catch.value_at_quantile(0.99) as f64 / 1e6);
    }
    r.reconnect_s = (reconnected == live).then_some(reconnected_worst as f64 / 1e6);
    if reconnected < live {
        r.notes
            .push(format!("only {reconnected} of {live} clients reconnected"));
    }
    r.events = produced.sent;
    r.events_per_s = produced.rate(a.storm_rate);
    r.deliveries = sample.deliveries;
    r.expected_deliveries = produced_total * live as u64;
    r.duration_s = t_start.elapsed().as_secs_f64();
    r.deliveries_per_s = sample.deliveries as f64 / r.duration_s.max(1e-6);
    record(r, &sample, &tally);
    usage.apply(r);
    if tally.lost > 0 && kind != SystemKind::Switchyard {
        r.notes.push(
            "no cursor to resume from: events sent while a client was away are lost by design"
                .into(),
        );
    }
    if tally.connect_failures > 0 {
        r.notes.push(format!(
            "{} failed connection attempts (retried): {}",
            tally.connect_failures,
            fleet.sample_errors(2).await.join(" | ")
        ));
    }
    Ok(())
}
