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
use crate::producer::{KeyBy, Plan, Progress, Streams};
use crate::report::SystemResult;
use crate::systems::{self, Parts, SystemKind};
use crate::verify::Tally;
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
    let mut sys = systems::start(kind, ctx.infra(), &ctx.sys_opts, &topic, Parts::All).await?;
    let mut r = base(ctx, scenario, kind.name());
    let fleet = match connect_fleet(ctx, &mut sys, n, false, &mut r.notes).await {
        Ok(f) => f,
        Err(e) => {
            sys.stop();
            return Err(e);
        }
    };
    let live = fleet.live();
    r.connected = live;
    r.offered_rate = a.storm_rate;
    fleet.shared.recorder.take();
    let meter = Meter::begin(ctx, &sys).await;
    let total_s = a.storm_warm_seconds + a.storm_offline_seconds + a.storm_after_seconds;
    let plan = Plan {
        kafka_topic: topic.clone(),
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
    fleet.set_mode(Mode::Offline);
    tokio::time::sleep(secs(a.storm_offline_seconds)).await;
    let sent = progress.sent.load(Relaxed);
    // Caught up = has the last event produced before the reconnect.
    let target = sent.saturating_sub(1);
    fleet.shared.catch_up_target.store(target, Relaxed);
    for c in &fleet.conns {
        c.caught_up_at_us.store(0, Relaxed);
    }
    fleet.widen_gate(n);
    let t_reconnect = crate::now_us();
    eprintln!("  reconnecting all at once (catch-up target: event {target})");
    fleet.set_mode(Mode::Run);
    let deadline = Instant::now() + secs(a.storm_timeout_seconds);
    let was_live: Vec<bool> = fleet
        .conns
        .iter()
        .map(|c| c.connected_at_us.load(Relaxed) > 0)
        .collect();
    loop {
        let caught = fleet
            .conns
            .iter()
            .zip(&was_live)
            .filter(|(c, w)| **w && c.caught_up_at_us.load(Relaxed) > 0)
            .count();
        if caught >= live || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (produced, next_n) = producing.await.context("producer thread")?;
    let produced_total = next_n[0];
    // Drain: until every connection has the last event, or nothing moves.
    let idle_limit = secs(a.drain_timeout_seconds.min(5.0));
    let mut last = u64::MAX;
    let mut last_change = Instant::now();
    loop {
        let behind: u64 = fleet
            .conns
            .iter()
            .map(|c| produced_total.saturating_sub(c.next_of(0)))
            .sum();
        if behind == 0 || last_change.elapsed() > idle_limit {
            break;
        }
        if behind != last {
            last = behind;
            last_change = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let sample = fleet.shared.recorder.take();
    let tally = Tally::collect(&fleet.conns, &next_n);
    let usage = meter.end(ctx, &sys).await;
    let mut catch = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)?;
    let mut caught = 0;
    let mut worst = 0u64;
    let mut reconnected_worst = 0u64;
    let mut reconnected = 0;
    for (c, w) in fleet.conns.iter().zip(&was_live) {
        if !*w {
            continue;
        }
        let at = c.caught_up_at_us.load(Relaxed);
        if at > 0 {
            caught += 1;
            let d = at.saturating_sub(t_reconnect).max(1);
            worst = worst.max(d);
            catch.saturating_record(d);
        }
        let con = c.connected_at_us.load(Relaxed);
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
    record(&mut r, &sample, &tally);
    usage.apply(&mut r);
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
            fleet.sample_errors(2).join(" | ")
        ));
    }
    finish(fleet, &mut sys, &mut r).await;
    Ok(r)
}
