//! End-to-end latency: a few HdrHistogram shards that every connection task
//! records into (connection `i` uses shard `i % shards`), so two worker
//! threads rarely meet on one lock and 10,000 connections do not each carry
//! a histogram.
//!
//! Invariant: a value is the receipt time minus the event's *scheduled* send
//! time, so a producer that fell behind shows up as latency (no coordinated
//! omission); values are microseconds, saturated at one hour.

use hdrhistogram::Histogram;
use std::sync::Mutex;

const MAX_US: u64 = 3_600_000_000;

#[derive(Debug)]
struct Shard {
    hist: Histogram<u64>,
    deliveries: u64,
    first_us: u64,
    last_us: u64,
}

impl Shard {
    fn new() -> Self {
        Shard {
            hist: Histogram::new_with_bounds(1, MAX_US, 3)
                .expect("static histogram bounds are valid"),
            deliveries: 0,
            first_us: 0,
            last_us: 0,
        }
    }
}

/// The shared recorder of one system phase.
#[derive(Debug)]
pub struct Recorder {
    shards: Box<[Mutex<Shard>]>,
}

/// What the recorder saw since the last [`Recorder::take`].
#[derive(Debug, Clone)]
pub struct Sample {
    pub hist: Histogram<u64>,
    pub deliveries: u64,
    /// Receipt time of the first and last counted delivery (µs since epoch).
    pub first_us: u64,
    pub last_us: u64,
}

/// Latency summary in milliseconds.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize)]
pub struct Percentiles {
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

/// A [`Sample`] as it crosses a process boundary: the histogram's
/// recorded values with their counts (each value lands in its own bucket
/// again on the other side, so merging is exact).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct WireSample {
    pub counts: Vec<(u64, u64)>,
    pub deliveries: u64,
    pub first_us: u64,
    pub last_us: u64,
}

impl Sample {
    /// A sample with nothing recorded.
    pub fn empty() -> Sample {
        Sample {
            hist: Histogram::new_with_bounds(1, MAX_US, 3)
                .expect("static histogram bounds are valid"),
            deliveries: 0,
            first_us: 0,
            last_us: 0,
        }
    }

    pub fn to_wire(&self) -> WireSample {
        WireSample {
            counts: self
                .hist
                .iter_recorded()
                .map(|v| (v.value_iterated_to(), v.count_at_value()))
                .collect(),
            deliveries: self.deliveries,
            first_us: self.first_us,
            last_us: self.last_us,
        }
    }

    /// Adds another process's sample to this one.
    pub fn merge_wire(&mut self, w: &WireSample) {
        for (v, n) in &w.counts {
            self.hist.saturating_record_n((*v).clamp(1, MAX_US), *n);
        }
        self.deliveries += w.deliveries;
        if w.first_us != 0 && (self.first_us == 0 || w.first_us < self.first_us) {
            self.first_us = w.first_us;
        }
        self.last_us = self.last_us.max(w.last_us);
    }

    pub fn percentiles(&self) -> Option<Percentiles> {
        if self.hist.is_empty() {
            return None;
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Some(Percentiles {
            p50_ms: ms(self.hist.value_at_quantile(0.50)),
            p90_ms: ms(self.hist.value_at_quantile(0.90)),
            p99_ms: ms(self.hist.value_at_quantile(0.99)),
            p999_ms: ms(self.hist.value_at_quantile(0.999)),
            max_ms: ms(self.hist.max()),
            mean_ms: self.hist.mean() / 1000.0,
        })
    }
}

impl Recorder {
    pub fn new(shards: usize) -> Self {
        Recorder {
            shards: (0..shards.max(1))
                .map(|_| Mutex::new(Shard::new()))
                .collect(),
        }
    }

    /// Records one delivery of an event scheduled at `sent_us`, received at
    /// `now_us`, by connection `conn`.
    pub fn record(&self, conn: usize, sent_us: u64, now_us: u64) {
        let lat = now_us.saturating_sub(sent_us).clamp(1, MAX_US);
        let mut s = self.shards[conn % self.shards.len()]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        s.hist.saturating_record(lat);
        s.deliveries += 1;
        if s.first_us == 0 {
            s.first_us = now_us;
        }
        s.last_us = s.last_us.max(now_us);
    }

    /// Deliveries counted since the last take (cheap enough to poll).
    pub fn deliveries(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).deliveries)
            .sum()
    }

    /// Merges and resets all shards.
    pub fn take(&self) -> Sample {
        let mut out = Sample::empty();
        for shard in self.shards.iter() {
            let mut s = shard.lock().unwrap_or_else(|p| p.into_inner());
            let _ = out.hist.add(&s.hist);
            out.deliveries += s.deliveries;
            if s.first_us != 0 && (out.first_us == 0 || s.first_us < out.first_us) {
                out.first_us = s.first_us;
            }
            out.last_us = out.last_us.max(s.last_us);
            *s = Shard::new();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn take_merges_shards_and_resets() {
        let r = Recorder::new(4);
        for i in 0..1000u64 {
            r.record(i as usize, 1_000_000, 1_000_000 + 1000 + i);
        }
        assert_eq!(r.deliveries(), 1000);
        let s = r.take();
        assert_eq!(s.deliveries, 1000);
        let p = s.percentiles().expect("non-empty");
        assert!((p.p50_ms - 1.5).abs() < 0.01, "{p:?}");
        assert!(p.max_ms >= 1.99 && p.max_ms < 2.01, "{p:?}");
        assert_eq!(r.deliveries(), 0);
        assert!(r.take().percentiles().is_none());
    }

    #[test]
    fn a_sample_survives_the_wire_and_merges_exactly() {
        let a = Recorder::new(2);
        let b = Recorder::new(2);
        for i in 0..500u64 {
            a.record(i as usize, 1_000, 1_000 + 100 + i);
            b.record(i as usize, 1_000, 1_000 + 10_000 + 7 * i);
        }
        let (sa, sb) = (a.take(), b.take());
        let mut whole = sa.clone();
        let _ = whole.hist.add(&sb.hist);
        let mut merged = Sample::empty();
        let wire: WireSample =
            serde_json::from_str(&serde_json::to_string(&sa.to_wire()).expect("serialises"))
                .expect("parses");
        merged.merge_wire(&wire);
        merged.merge_wire(&sb.to_wire());
        assert_eq!(merged.deliveries, 1000);
        assert_eq!(merged.hist.len(), whole.hist.len());
        for q in [0.5, 0.9, 0.99, 1.0] {
            assert_eq!(
                merged.hist.value_at_quantile(q),
                whole.hist.value_at_quantile(q)
            );
        }
        assert_eq!(merged.first_us, sa.first_us.min(sb.first_us));
        assert_eq!(merged.last_us, sa.last_us.max(sb.last_us));
    }
}
