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
//! - [`retention`]: the sweeper that deletes expired log entries.
//!
//! The invariant a maintainer must not break: a Kafka offset is stored only
//! after the records it covers are committed in PostgreSQL or acknowledged by
//! the DLQ topic.

pub mod config;
mod dlq;
pub mod envelope;
mod metrics;
pub mod pause;
pub mod pipeline;
pub mod retention;

use anyhow::Context as _;
use config::BridgeConfig;
use pause::PauseControl;
use pipeline::{BridgeContext, Pipeline};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::FutureProducer;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use switchyard_channels::{Topology, TopologyHandle};
use switchyard_cursorlog::CursorLog;
use switchyard_livefeed::Publisher;
use switchyard_ops::admin::Readiness;
use tokio_util::sync::CancellationToken;

/// A running bridge's readiness: PostgreSQL and Redis answer and the
/// pipeline is not stalled on a dependency.
struct BridgeReadiness {
    log: CursorLog,
    publisher: Publisher,
    pause: Arc<PauseControl>,
}

impl Readiness for BridgeReadiness {
    fn check(&self) -> Pin<Box<dyn Future<Output = Result<String, String>> + Send + '_>> {
        Box::pin(async move {
            self.log
                .ping()
                .await
                .map_err(|e| format!("postgres: {e}"))?;
            self.publisher
                .ping()
                .await
                .map_err(|e| format!("redis: {e}"))?;
            if self.pause.stalled_on_dependency() {
                return Err("pipeline stalled on a dependency".into());
            }
            Ok("ready".into())
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
    }
    let pause = Arc::new(PauseControl::default());
    let consumer: StreamConsumer<BridgeContext> = consumer_cfg
        .set("group.id", &cfg.kafka_group)
        // Correctness: offsets are stored by the pipeline, never by librdkafka.
        .set("enable.auto.commit", "true")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .create_with_context(BridgeContext::new(pause.clone()))
        .context("creating the Kafka consumer (SWITCHYARD_KAFKA_BROKERS)")?;
    let topics: Vec<&str> = cfg.kafka_topics.iter().map(String::as_str).collect();
    consumer
        .subscribe(&topics)
        .context("subscribing to SWITCHYARD_KAFKA_TOPICS")?;
    let dlq: FutureProducer = kafka_config(&cfg, &[("linger.ms", "1")])
        .set("acks", "all")
        .set("message.timeout.ms", "10000")
        .create()
        .context("creating the DLQ producer")?;

    let metrics = switchyard_ops::telemetry::init_metrics();
    let ready = Arc::new(BridgeReadiness {
        log: log.clone(),
        publisher: publisher.clone(),
        pause: pause.clone(),
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
    Ok(())
}
