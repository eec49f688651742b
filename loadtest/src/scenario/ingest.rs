//! The ingest scenario: a backlog is loaded into Kafka first, then the
//! bridge alone starts and drains it into PostgreSQL; measured is the rate
//! at which events become durable (rows in `events`), next to Kafka's own
//! read rate of the same backlog for scale.
//!
//! Invariant: durable means counted in the cursor log's `events` table; the
//! committed offsets are reported beside it, never instead of it.

use super::ctx::{produce, Ctx};
use super::meter::Meter;
use super::{base, secs};
use crate::cli::ScenarioKind;
use crate::event::SCOPED_TOPIC;
use crate::producer::{KeyBy, Plan, Progress, Streams};
use crate::report::SystemResult;
use crate::systems::{self, Parts, SystemKind};
use anyhow::{bail, Context as _};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Kafka's own read rate for the ingest backlog: the ceiling any consumer
/// of this broker has on this machine.
pub(super) async fn kafka_ceiling(ctx: &Ctx) -> anyhow::Result<SystemResult> {
    let a = &ctx.args;
    let topic = format!("sy_load_{}_ingest_ceiling", ctx.run_id);
    ctx.broker
        .create_topics(&[&topic], a.ingest_partitions)
        .await?;
    let (write_rate, sent) = preload(ctx, &topic).await?;
    let brokers = ctx.broker.addr.clone();
    let t = topic.clone();
    let want = sent;
    let (got, secs_taken) =
        tokio::task::spawn_blocking(move || read_all(&brokers, &t, want, Duration::from_secs(120)))
            .await
            .context("consumer thread")??;
    let mut r = base(ctx, ScenarioKind::Ingest, "kafka-read");
    r.events = got;
    r.events_per_s = got as f64 / secs_taken.max(1e-6);
    r.durable_events_per_s = Some(r.events_per_s);
    r.lost = want.saturating_sub(got);
    r.duration_s = secs_taken;
    r.notes.push(format!(
        "not a system: one rdkafka consumer reading the same backlog from the broker, for scale (the producer wrote it at {write_rate:.0} events/s)"
    ));
    Ok(r)
}

/// Pre-loads the ingest backlog at full speed; returns (events/s, count).
async fn preload(ctx: &Ctx, topic: &str) -> anyhow::Result<(f64, u64)> {
    let a = &ctx.args;
    let plan = Plan {
        kafka_topic: topic.to_owned(),
        run: format!("{}-{}", ctx.run_id, topic),
        client_topic: SCOPED_TOPIC,
        streams: Streams::Scoped {
            products: a.products,
            seed: 7,
        },
        key: KeyBy::Product,
        rate: 0.0,
        count: a.ingest_events,
        deadline: secs(a.ingest_timeout_seconds),
        payload_bytes: a.payload_bytes,
    };
    let t = Instant::now();
    let failed_before = ctx.producer.deliveries.failed.load(Relaxed);
    let (p, _) = produce(
        ctx,
        plan,
        vec![0; a.products as usize],
        Arc::new(Progress::default()),
    )
    .await?;
    let failed = ctx.producer.deliveries.failed.load(Relaxed) - failed_before;
    if failed > 0 {
        bail!("Kafka refused {failed} of {} backlog events", p.sent);
    }
    Ok((p.sent as f64 / t.elapsed().as_secs_f64().max(1e-6), p.sent))
}

fn read_all(
    brokers: &str,
    topic: &str,
    want: u64,
    timeout: Duration,
) -> anyhow::Result<(u64, f64)> {
    use rdkafka::consumer::{BaseConsumer, Consumer as _};
    let c: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("ceiling-{}", crate::infra::suffix()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()?;
    c.subscribe(&[topic])?;
    let deadline = Instant::now() + timeout;
    let mut got = 0u64;
    let mut first: Option<Instant> = None;
    let mut last = Instant::now();
    while got < want && Instant::now() < deadline {
        if let Some(m) = c.poll(Duration::from_millis(200)) {
            m?;
            got += 1;
            last = Instant::now();
            first.get_or_insert(last);
        }
    }
    Ok((got, first.map_or(0.0, |f| (last - f).as_secs_f64())))
}

async fn committed(brokers: String, group: String, topic: String) -> Option<i64> {
    tokio::task::spawn_blocking(move || {
        switchyard_testkit::committed_offsets(&brokers, &group, &topic).ok()
    })
    .await
    .ok()
    .flatten()
}

/// Events/s the bridge makes durable: a backlog is loaded into Kafka first,
/// then the bridge starts and drains it into PostgreSQL.
pub(super) async fn run(ctx: &Ctx, kind: SystemKind) -> anyhow::Result<SystemResult> {
    let a = &ctx.args;
    let db = ctx.db.as_ref().context("ingest needs the database")?;
    let client = db.client().await?;
    let topic = ctx
        .topic(ScenarioKind::Ingest, kind, a.ingest_partitions)
        .await?;
    eprintln!("  loading {} events into {topic}", a.ingest_events);
    let (write_rate, sent) = preload(ctx, &topic).await?;
    eprintln!("  backlog written at {write_rate:.0} events/s; starting the bridge");
    let mut r = base(ctx, ScenarioKind::Ingest, kind.name());
    r.events = sent;
    r.notes.push(format!(
        "backlog of {sent} events ({} B payloads, {} products, keyed by product over {} partitions) written to Kafka at {write_rate:.0} events/s before the bridge started",
        a.payload_bytes, a.products, a.ingest_partitions
    ));
    let t_start = Instant::now();
    let mut sys =
        systems::start(kind, ctx.infra(), &ctx.sys_opts, &topic, Parts::BridgeOnly).await?;
    let mut meter = Meter::begin(ctx, &sys).await;
    // The bridge may have drained part of the backlog before it reported
    // ready: charge it all the CPU it used since it started.
    meter.server.clear();
    let deadline = t_start + secs(a.ingest_timeout_seconds);
    let mut samples: Vec<(Instant, u64)> = Vec::new();
    let mut count_error = None;
    loop {
        match count_rows(&client).await {
            Ok(v) => samples.push((Instant::now(), v)),
            Err(e) => count_error = Some(e.to_string()),
        }
        let last = samples.last().map_or(0, |s| s.1);
        if last >= sent || Instant::now() > deadline {
            break;
        }
        if let Err(e) = sys.check_alive() {
            sys.stop();
            return Err(e);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let usage = meter.end(ctx, &sys).await;
    let durable = samples.last().map_or(0, |s| s.1);
    if let Some(e) = count_error.filter(|_| samples.is_empty()) {
        r.notes.push(format!(
            "could not count rows in `events` ({e}); committed offsets only"
        ));
    }
    // Rate from the first sample that saw rows to the one that saw them all.
    let first = samples.iter().position(|s| s.1 > 0);
    if let (Some(i), Some(last)) = (first, samples.last()) {
        let (t0, c0) = samples[i.saturating_sub(1)];
        let dt = (last.0 - t0).as_secs_f64();
        if dt > 0.0 {
            r.durable_events_per_s = Some((last.1 - c0) as f64 / dt);
        }
        r.duration_s = dt;
        let mut peak: f64 = 0.0;
        for (j, s) in samples.iter().enumerate() {
            if let Some(prev) = samples[..j]
                .iter()
                .rev()
                .find(|p| (s.0 - p.0) >= Duration::from_secs(1))
            {
                peak = peak.max((s.1 - prev.1) as f64 / (s.0 - prev.0).as_secs_f64());
            }
        }
        r.peak_1s_events_per_s = Some(peak);
    }
    r.durable_events = Some(durable);
    r.events_per_s = r.durable_events_per_s.unwrap_or(0.0);
    // Offsets are committed after the rows: give the auto-commit a moment.
    let mut offsets = None;
    for _ in 0..20 {
        offsets = committed(
            ctx.broker.addr.clone(),
            sys.kafka_group.clone(),
            topic.clone(),
        )
        .await;
        if offsets.is_some_and(|o| o as u64 >= sent) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    r.committed_offsets = offsets;
    if durable < sent {
        r.lost = sent - durable;
        r.notes.push(format!(
            "only {durable} of {sent} events durable after {:.0}s",
            t_start.elapsed().as_secs_f64()
        ));
    }
    if durable > sent {
        r.duplicated = durable - sent;
    }
    if offsets.is_some_and(|o| (o as u64) < sent) {
        r.notes.push(format!(
            "committed offsets {} < {sent}",
            offsets.unwrap_or(0)
        ));
    }
    usage.apply(&mut r);
    let alive = sys.check_alive();
    sys.stop();
    if let Err(e) = alive {
        r.error = Some(format!("{e:#}"));
    }
    Ok(r)
}

/// Rows in the cursor log's `events` table (one per durable event).
async fn count_rows(c: &tokio_postgres::Client) -> Result<u64, tokio_postgres::Error> {
    c.query_one("SELECT count(*) FROM events", &[])
        .await
        .map(|row| row.get::<_, i64>(0) as u64)
}
