//! The retry delay policy of every retry loop in Switchyard: exponential
//! growth between a floor and a ceiling with jitter, so a fleet that lost a
//! dependency at the same instant does not come back at the same instant.
//!
//! Built on `backon`'s exponential builder; this module only fixes the
//! policy in one place. Invariant: a delay never exceeds the ceiling (plus
//! its jitter) and never retries without waiting.

use backon::{BackoffBuilder as _, ExponentialBuilder};
use std::time::Duration;

/// Delays for one retry loop. `next_delay` grows the delay; `reset` starts
/// over after a success.
#[derive(Debug)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    inner: backon::ExponentialBackoff,
}

impl Backoff {
    /// Delays from `min` doubling up to `max`, each with jitter.
    pub fn new(min: Duration, max: Duration) -> Self {
        let min = min.max(Duration::from_millis(1));
        let max = max.max(min);
        Backoff {
            min,
            max,
            inner: build(min, max),
        }
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        // The builder has no attempt limit, so the iterator never ends; the
        // ceiling is the fallback all the same.
        self.inner.next().unwrap_or(self.max)
    }

    /// Starts over from the floor (after a success).
    pub fn reset(&mut self) {
        self.inner = build(self.min, self.max);
    }
}

fn build(min: Duration, max: Duration) -> backon::ExponentialBackoff {
    ExponentialBuilder::default()
        .with_min_delay(min)
        .with_max_delay(max)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_to_the_ceiling_with_jitter_and_reset() {
        let mut b = Backoff::new(Duration::from_millis(10), Duration::from_millis(80));
        let delays: Vec<Duration> = (0..20).map(|_| b.next_delay()).collect();
        // Jitter adds up to one more delay on top of the exponential value.
        assert!(delays
            .iter()
            .all(|d| *d >= Duration::from_millis(10) && *d <= Duration::from_millis(160)));
        assert!(delays[10..].iter().all(|d| *d >= Duration::from_millis(80)));
        let distinct: std::collections::HashSet<_> = delays[10..].iter().collect();
        assert!(distinct.len() > 1, "jitter makes delays differ: {delays:?}");
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(20));
    }
}
