//! The open-loop producer: events go to Kafka on a fixed schedule, whatever
//! the system under test does, from a thread of its own.
//!
//! Invariant (no coordinated omission): event `i` of a step is *scheduled*
//! at `start + i / rate` and stamped with that time (`payload.t`,
//! `created_at_ms`), not with the moment it was handed to Kafka, so a
//! producer that falls behind makes latency worse, never better. Delivery
//! failures are counted, because an event Kafka never took would otherwise
//! be reported as lost by the system under test.

use crate::event::{encode_event, encode_probe, EventSpec};
use anyhow::Context as _;
use rand::{Rng as _, SeedableRng as _};
use rdkafka::config::ClientConfig;
use rdkafka::producer::{
    BaseRecord, DeliveryResult, Producer as _, ProducerContext, ThreadedProducer,
};
use rdkafka::ClientContext;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Counts Kafka's delivery reports.
#[derive(Debug, Default)]
pub struct Deliveries {
    pub ok: AtomicU64,
    pub failed: AtomicU64,
}

#[derive(Debug, Clone, Default)]
struct Counting(Arc<Deliveries>);

impl ClientContext for Counting {}

impl ProducerContext for Counting {
    type DeliveryOpaque = ();
    fn delivery(&self, r: &DeliveryResult<'_>, _: ()) {
        match r {
            Ok(_) => self.0.ok.fetch_add(1, Relaxed),
            Err(_) => self.0.failed.fetch_add(1, Relaxed),
        };
    }
}

/// How events spread over streams and partitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Streams {
    /// One stream (0), no scopes: every subscriber gets every event.
    Fanout,
    /// `products` streams; each event is scoped to one product chosen at
    /// random (seeded, so a run is repeatable).
    Scoped { products: u32, seed: u64 },
}

/// Record key: the client topic (contract default) or the product (a finer
/// key that spreads the ingest scenario over partitions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyBy {
    Topic,
    Product,
}

/// One open-loop production step.
#[derive(Debug, Clone)]
pub struct Plan {
    pub kafka_topic: String,
    pub run: String,
    pub client_topic: &'static str,
    pub streams: Streams,
    pub key: KeyBy,
    /// Events per second; 0 means as fast as Kafka takes them.
    pub rate: f64,
    pub count: u64,
    /// Hard stop, whatever is left of `count`.
    pub deadline: Duration,
    pub payload_bytes: usize,
}

/// What a step produced.
#[derive(Debug, Clone, Default)]
pub struct Produced {
    pub sent: u64,
    pub elapsed: Duration,
    /// Largest lag behind the schedule when an event was handed over (µs).
    pub max_behind_us: u64,
}

impl Produced {
    /// Events/s handed to Kafka. An open-loop step of `count` events at
    /// `offered`/s spans `count / offered` seconds, its last event is sent
    /// one interval before that ends.
    pub fn rate(&self, offered: f64) -> f64 {
        let tail = if offered > 0.0 { 1.0 / offered } else { 0.0 };
        self.sent as f64 / (self.elapsed.as_secs_f64() + tail).max(1e-6)
    }
}

/// Live progress of a running step (read by the reconnect storm).
#[derive(Debug, Default)]
pub struct Progress {
    pub sent: AtomicU64,
    pub stop: AtomicBool,
}

/// A Kafka producer with delivery accounting.
pub struct KafkaProducer {
    inner: ThreadedProducer<Counting>,
    pub deliveries: Arc<Deliveries>,
}

impl std::fmt::Debug for KafkaProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaProducer").finish_non_exhaustive()
    }
}

impl KafkaProducer {
    pub fn new(brokers: &str, linger_ms: u32) -> anyhow::Result<Self> {
        let deliveries = Arc::new(Deliveries::default());
        let inner: ThreadedProducer<Counting> = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("linger.ms", linger_ms.to_string())
            .set("message.timeout.ms", "60000")
            .set("queue.buffering.max.messages", "1000000")
            .set("queue.buffering.max.kbytes", "1048576")
            // No idempotent producer on every broker: keep order on retries.
            .set("max.in.flight.requests.per.connection", "1")
            .set("batch.num.messages", "10000")
            .create_with_context(Counting(deliveries.clone()))
            .context("creating the Kafka producer")?;
        Ok(KafkaProducer { inner, deliveries })
    }

    fn send(&self, topic: &str, key: &[u8], value: &[u8]) {
        let mut record = BaseRecord::to(topic).key(key).payload(value);
        loop {
            match self.inner.send(record) {
                Ok(()) => return,
                Err((_, r)) => {
                    // Queue full (or transient): let librdkafka drain, retry.
                    self.inner.poll(Duration::from_millis(1));
                    record = r;
                }
            }
        }
    }

    /// Sends probe `k` (reaches every subscriber; not counted).
    pub fn probe(&self, topic: &str, run: &str, client_topic: &str, products: Option<u32>, k: u64) {
        let mut buf = Vec::with_capacity(256);
        encode_probe(&mut buf, run, client_topic, products, k);
        self.send(topic, client_topic.as_bytes(), &buf);
    }

    /// Runs one step on the calling thread (blocking). `next_n[s]` is the
    /// next sequence number of stream `s` and is advanced; returns what was
    /// sent. Stops early when `progress.stop` is set.
    pub fn run(&self, plan: &Plan, next_n: &mut [u64], progress: &Progress) -> Produced {
        let mut rng = match plan.streams {
            Streams::Scoped { seed, .. } => {
                rand::rngs::StdRng::seed_from_u64(seed ^ next_n.iter().sum::<u64>())
            }
            Streams::Fanout => rand::rngs::StdRng::seed_from_u64(0),
        };
        let mut buf = Vec::with_capacity(plan.payload_bytes + 256);
        let mut key = String::new();
        let start = Instant::now();
        let t0_us = crate::now_us();
        let mut out = Produced::default();
        for i in 0..plan.count {
            if progress.stop.load(Relaxed) {
                break;
            }
            let due = if plan.rate > 0.0 {
                Duration::from_secs_f64(i as f64 / plan.rate)
            } else {
                start.elapsed()
            };
            if due > plan.deadline {
                break;
            }
            wait_until(start, due);
            let behind = start.elapsed().saturating_sub(due).as_micros() as u64;
            out.max_behind_us = out.max_behind_us.max(behind);
            let (stream, product) = match plan.streams {
                Streams::Fanout => (0, None),
                Streams::Scoped { products, .. } => {
                    let p = rng.random_range(0..products.max(1));
                    (p, Some(p))
                }
            };
            let n = next_n[stream as usize];
            next_n[stream as usize] += 1;
            buf.clear();
            encode_event(
                &mut buf,
                &EventSpec {
                    run: &plan.run,
                    topic: plan.client_topic,
                    product,
                    stream,
                    n,
                    t_us: t0_us + due.as_micros() as u64,
                    payload_bytes: plan.payload_bytes,
                },
            );
            key.clear();
            match (plan.key, product) {
                (KeyBy::Product, Some(p)) => key.push_str(&crate::event::product_code(p)),
                _ => key.push_str(plan.client_topic),
            }
            self.send(&plan.kafka_topic, key.as_bytes(), &buf);
            out.sent += 1;
            progress.sent.fetch_add(1, Relaxed);
        }
        out.elapsed = start.elapsed();
        out
    }

    /// Waits until everything sent so far is acknowledged (or `timeout`).
    pub fn flush(&self, timeout: Duration) -> anyhow::Result<()> {
        self.inner
            .flush(timeout)
            .context("flushing the Kafka producer")
    }
}

/// Sleeps (coarsely, then briefly) until `start + due`.
fn wait_until(start: Instant, due: Duration) {
    loop {
        let now = start.elapsed();
        if now >= due {
            return;
        }
        let left = due - now;
        if left > Duration::from_micros(1500) {
            std::thread::sleep(left - Duration::from_micros(500));
        } else if left > Duration::from_micros(100) {
            std::thread::sleep(Duration::from_micros(50));
        } else {
            std::hint::spin_loop();
        }
    }
}
