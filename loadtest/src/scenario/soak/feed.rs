//! The soak's producer: one task per product (stream) that sends events at
//! a steady rate into the stack's Kafka topic, keyed by product, each event
//! numbered densely within its product (`payload.n`), so the check at the
//! end is exact.
//!
//! Invariant: event `n` of a product counts as produced only once Kafka
//! acknowledged it, and a failed send is retried with the same event id
//! until it is (the bridge de-duplicates by id), so each product's events
//! are in Kafka in order and without holes whatever the broker does; a
//! product's next event is sent only after the previous one was taken.

use crate::event::{encode_event, product_code, EventSpec, SCOPED_TOPIC};
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// What has been produced, per product, and the switch that stops it.
#[derive(Debug)]
pub(super) struct Feed {
    /// Events Kafka acknowledged, per product (= the next `n`).
    produced: Vec<AtomicU64>,
    /// Sends that failed and were retried.
    pub(super) retries: AtomicU64,
    stop: AtomicBool,
    /// Past this, a send that still fails is abandoned (its event is then
    /// not counted as produced).
    give_up: AtomicBool,
}

impl Feed {
    pub(super) fn new(products: u32) -> Arc<Feed> {
        Arc::new(Feed {
            produced: (0..products).map(|_| AtomicU64::new(0)).collect(),
            retries: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            give_up: AtomicBool::new(false),
        })
    }

    /// Stops after each product's event in flight is acknowledged.
    pub(super) fn stop(&self) {
        self.stop.store(true, Relaxed);
    }

    pub(super) fn give_up(&self) {
        self.give_up.store(true, Relaxed);
    }

    pub(super) fn produced(&self) -> Vec<u64> {
        self.produced.iter().map(|p| p.load(Relaxed)).collect()
    }
}

/// What every stream task needs.
#[derive(Clone)]
pub(super) struct FeedPlan {
    pub(super) producer: FutureProducer,
    pub(super) kafka_topic: String,
    /// Event ids are `<run>-<product>-<n>`.
    pub(super) run: String,
    pub(super) products: u32,
    /// Events per second over all products.
    pub(super) rate: f64,
    pub(super) payload_bytes: usize,
}

/// Starts one task per product.
pub(super) fn spawn(plan: FeedPlan, feed: Arc<Feed>) -> JoinSet<()> {
    let mut set = JoinSet::new();
    for p in 0..plan.products {
        set.spawn(stream(plan.clone(), p, feed.clone()));
    }
    set
}

async fn stream(plan: FeedPlan, p: u32, feed: Arc<Feed>) {
    let interval = Duration::from_secs_f64(f64::from(plan.products.max(1)) / plan.rate.max(0.01));
    // Products start spread over one interval.
    let offset = interval.mul_f64(f64::from(p) / f64::from(plan.products.max(1)));
    let start = Instant::now() + offset;
    let t0_us = crate::now_us() + offset.as_micros() as u64;
    let key = product_code(p);
    let mut buf = Vec::with_capacity(plan.payload_bytes + 256);
    let mut n = 0u64;
    while !feed.stop.load(Relaxed) {
        let due = interval.mul_f64(n as f64);
        tokio::time::sleep_until(start + due).await;
        buf.clear();
        encode_event(
            &mut buf,
            &EventSpec {
                run: &plan.run,
                topic: SCOPED_TOPIC,
                product: Some(p),
                stream: p,
                n,
                t_us: t0_us + due.as_micros() as u64,
                payload_bytes: plan.payload_bytes,
            },
        );
        loop {
            let record = FutureRecord::to(&plan.kafka_topic).key(&key).payload(&buf);
            match plan.producer.send(record, Duration::from_secs(5)).await {
                Ok(_) => break,
                Err(_) if feed.give_up.load(Relaxed) => return,
                Err(_) => {
                    feed.retries.fetch_add(1, Relaxed);
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        }
        n += 1;
        feed.produced[p as usize].store(n, Relaxed);
    }
}
