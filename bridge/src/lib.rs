//! `switchyard-bridge`: consumes domain events from Kafka, resolves their
//! scoped channels, appends them to the PostgreSQL cursor log, publishes them
//! on Redis, then stores the Kafka offsets.
//!
//! Where things are:
//! - [`config`]: the typed configuration (environment variables).
//! - [`envelope`]: decoding and validating the Kafka event envelope.
//! - [`pipeline`]: the batch loop, backpressure and offset handling.
//! - [`pause`]: the one owner of the consumer's pause state, and the
//!   bounded carry of records read while paused.
//! - [`dlq`]: the dead-letter records (full copy, or metadata only).
//! - [`retention`]: the sweeper that deletes expired log entries and
//!   reports the log's size and oldest entry.
//! - [`statistics`]: librdkafka statistics → Kafka metrics (lag, assigned
//!   partitions, rebalances) and the consumer's part of readiness.
//! - [`metrics`]: the metric catalog (`--print-metrics`).
//!
//! The invariant a maintainer must not break: a Kafka offset is stored only
//! after the records it covers are committed in PostgreSQL or acknowledged by
//! the DLQ topic.

pub mod config;
mod dlq;
pub mod envelope;
pub mod metrics;
pub mod pause;
pub mod pipeline;
pub mod retention;
pub mod statistics;

use anyhow::Context as _;
use config::BridgeConfig;
use pause::PauseControl;
use pipeline::{BridgeContext, Pipeline};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::FutureProducer;
use statistics::ConsumerHealth;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchyard_channels::{Topology, TopologyHandle};
use switchyard_cursorlog::CursorLog;
use switchyard_livefeed::Publisher;
use switchyard_ops::admin::Readiness;
use tokio_util::sync::CancellationToken;

/// A running bridge's readiness. Not ready while PostgreSQL does not
/// answer within 2 s, while the pipeline is paused because PostgreSQL or
/// the DLQ topic keeps failing, or while the Kafka consumer is unhealthy
/// beyond its grace period (see [`statistics`]). Redis is an accelerator:
/// without it events still become durable and gateways read them from
/// PostgreSQL, so a Redis outage only makes the answer say `degraded`.
struct BridgeReadiness {
    log: CursorLog,
    publisher: Publisher,
    pause: Arc<PauseControl>,
    kafka: Arc<ConsumerHealth>,
}

const READY_TIMEOUT: Duration = Duration::from_secs(2);

impl Readiness for BridgeReadiness {
    fn check(&self) -> Pin<Box<dyn Future<Output = Result<String, String>> + Send + '_>> {
        Box::pin(async move {
            match tokio::time::timeout(READY_TIMEOUT, self.log.ping()).await {
                Err(_) => return Err("postgres: no answer within 2 s".into()),
                Ok(Err(e)) => return Err(format!("postgres: {e}")),
                Ok(Ok(())) => {}
            }
            if self.pause.stalled_on_dependency() {
                return Err(
                    "pipeline paused: PostgreSQL or the DLQ topic keeps failing (see the log)"
                        .into(),
                );
            }
            let kafka = self.kafka.verdict(Instant::now())?;
            match tokio::time::timeout(READY_TIMEOUT, self.publisher.ping()).await {
                Ok(Ok(())) => Ok(format!("ready; {kafka}")),
                Ok(Err(e)) => Ok(format!(
                    "ready, degraded: redis: {e} (gateways read from PostgreSQL); {kafka}"
                )),
                Err(_) => Ok(format!(
                    "ready, degraded: redis: no answer within 2 s (gateways read from PostgreSQL); {kafka}"
                )),
            }
        })
    }
}

/// librdkafka settings: ours first, then `SWITCHYARD_KAFKA_OPTIONS`, which
/// win (except the ones correctness depends on, set after).
fn kafka_config(cfg: &BridgeConfig, defaults: &[(&str, &str)]) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.kafka_brokers)
        .set("client.id", "switchyard-bridge");
    for (k, v) in defaults {
        c.set(*k, *v);
    }
    for (k, v) in &cfg.kafka_options {
        c.set(k, v);
    }
    c
}

/// Builds every component and runs until `cancel` fires.
pub async fn run(cfg: BridgeConfig, cancel: CancellationToken) -> anyhow::Result<()> {
    let topology = Topology::load(&cfg.topology)
        .with_context(|| format!("SWITCHYARD_TOPOLOGY={}", cfg.topology.display()))?;
    // Describe and zero every metric before anything can increment one.
    let metrics = switchyard_ops::telemetry::init_metrics();
    metrics::register(&topology);
    let topology = TopologyHandle::new(topology);
    let log = cfg.store.connect().await?;
    let publisher = Publisher::connect(
        &cfg.store.redis_url,
        &cfg.store.redis_prefix,
        log.epoch(),
        cfg.store
            .live_key
            .as_deref()
            .map(|k| switchyard_livefeed::LiveKey::new(k.as_bytes())),
    )
    .await?;

    let session_timeout = cfg.kafka_session_timeout.as_millis().to_string();
    let heartbeat = cfg.kafka_heartbeat_interval.as_millis().to_string();
    let mut consumer_cfg = kafka_config(
        &cfg,
        &[
            // A broker answers a fetch as soon as data arrives; brokers that
            // hold it for the whole wait (tansu) would otherwise add up to
            // 500 ms (librdkafka's default) to every event's latency.
            ("fetch.wait.max.ms", "10"),
            // A crashed bridge's partitions move to its replacement once the
            // broker gives up on its session: keep that short (8 s by
            // default; Kafka allows down to 6 s, but brokers that send no
            // heartbeat replies while a join is pending, such as tansu's 6 s
            // join and sync, would then expire live members).
            ("session.timeout.ms", &session_timeout),
            ("heartbeat.interval.ms", &heartbeat),
            ("queued.max.messages.kbytes", "16384"),
            ("auto.commit.interval.ms", "500"),
        ],
    );
    if let Some(id) = &cfg.kafka_instance_id {
        consumer_cfg.set("group.instance.id", id);
    } else if !cfg
        .kafka_options
        .iter()
        .any(|(k, _)| k == "partition.assignment.strategy")
    {
        // Dynamic membership (the Deployment's default, pod names change on
        // every rollout): a stopping bridge leaves the group at once, and
        // cooperative rebalancing moves only its partitions while the other
        // members keep consuming theirs.
        consumer_cfg.set("partition.assignment.strategy", "cooperative-sticky");
    }
    let pause = Arc::new(PauseControl::default());
    consumer_cfg.set(
        "statistics.interval.ms",
        cfg.kafka_statistics_interval.as_millis().to_string(),
    );
    let kafka_health = Arc::new(ConsumerHealth::new(
        &cfg.kafka_topics,
        &cfg.kafka_group,
        cfg.kafka_ready_grace,
        !cfg.kafka_statistics_interval.is_zero(),
    ));
    let consumer: StreamConsumer<BridgeContext> = consumer_cfg
        .set("group.id", &cfg.kafka_group)
        // Correctness: offsets are stored by the pipeline, never by librdkafka.
        .set("enable.auto.commit", "true")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .create_with_context(BridgeContext::new(pause.clone(), kafka_health.clone()))
        .context("creating the Kafka consumer (SWITCHYARD_KAFKA_BROKERS)")?;
    let topics: Vec<&str> = cfg.kafka_topics.iter().map(String::as_str).collect();
    consumer
        .subscribe(&topics)
        .context("subscribing to SWITCHYARD_KAFKA_TOPICS")?;
    let dlq: FutureProducer = kafka_config(&cfg, &[("linger.ms", "1")])
        .set("acks", "all")
        .set("message.timeout.ms", "10000")
        // Statistics are the consumer's; the producer would only log them.
        .set("statistics.interval.ms", "0")
        .create()
        .context("creating the DLQ producer")?;

    let ready = Arc::new(BridgeReadiness {
        log: log.clone(),
        publisher: publisher.clone(),
        pause: pause.clone(),
        kafka: kafka_health,
    });
    let upkeep = tokio::spawn({
        let log = log.clone();
        switchyard_ops::telemetry::run_upkeep(
            metrics.clone(),
            switchyard_ops::telemetry::UPKEEP_PERIOD,
            cancel.clone(),
            move || switchyard_cursorlog::metrics::record_pool(&log),
        )
    });
    let admin = switchyard_ops::admin::spawn(cfg.admin_listen, metrics, ready, cancel.clone())
        .await
        .with_context(|| format!("binding SWITCHYARD_ADMIN_LISTEN={}", cfg.admin_listen))?;
    tracing::info!(%admin, topics = ?cfg.kafka_topics, group = %cfg.kafka_group, epoch = log.epoch(), "bridge started");

    let watcher = topology.spawn_watcher(cfg.topology.clone(), cancel.clone());
    let sweeper = tokio::spawn(retention::run(
        log.clone(),
        cfg.sweep_interval,
        cancel.clone(),
    ));
    let pipeline = Pipeline {
        consumer,
        dlq,
        log,
        publisher,
        topology,
        cfg,
        pause,
    };
    pipeline.run(cancel.clone()).await;
    cancel.cancel();
    let _ = sweeper.await;
    let _ = watcher.await;
    let _ = upkeep.await;
    Ok(())
}
