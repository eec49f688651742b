//! The correctness check every run makes: each connection got every event it
//! was entitled to, once, in order.
//!
//! Each connection holds, per stream it is entitled to, the next sequence
//! number it expects. A higher number means the ones between were lost; a
//! lower one is a duplicate (or a reordering, which shows up as a loss and a
//! duplicate); a stream it is not entitled to is a scope leak. What is still
//! missing at the end (produced but never received) is added to the losses
//! by [`Tally::collect`].
//!
//! Invariant: only the connection's own task writes its [`ConnState`]
//! (relaxed atomics, plain moves on x86); the harness reads it after the
//! step has drained, so the counts are exact.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

/// One connection's expectations and findings.
#[derive(Debug)]
pub struct ConnState {
    /// Streams (product indices; `[0]` in fan-out) this connection may see.
    pub streams: Box<[u32]>,
    /// Next expected sequence number per entitled stream.
    next: Box<[AtomicU64]>,
    /// `next` when the current subscription began (see [`Self::begin_subscription`]).
    sub_start: Box<[AtomicU64]>,
    /// Whether an event from before the current subscription counts as a
    /// redelivery the client de-duplicates (the protocol allows it across
    /// subscriptions) rather than a duplicate.
    dedupe_across_subscriptions: AtomicBool,
    /// Events received again in a later subscription (dropped by id).
    redelivered: AtomicU64,
    /// Subscriptions with a cursor answered `recovered: false`.
    pub unrecovered: AtomicU64,
    /// Index of the node to connect to next (moves on after a failure).
    pub node: AtomicU64,
    /// A `reconnect` frame's `after_ms`, honoured before the next attempt.
    pub reconnect_after_ms: AtomicU64,
    /// Connections the client itself ended to reconnect with its cursor.
    pub churns: AtomicU64,
    pub received: AtomicU64,
    gaps: AtomicU64,
    dups: AtomicU64,
    unentitled: AtomicU64,
    /// Highest probe id seen.
    pub probe: AtomicU64,
    /// True while connected and subscribed.
    pub live: AtomicBool,
    /// Connection attempts that failed (refused, timed out, bad handshake).
    pub connect_failures: AtomicU64,
    /// Times the server closed or reset the connection unasked.
    pub disconnects: AtomicU64,
    /// µs since epoch when the connection was last (re)established.
    pub connected_at_us: AtomicU64,
    /// µs since epoch when it reached the catch-up target (reconnect storm).
    pub caught_up_at_us: AtomicU64,
    /// Switchyard only: cursor of the last message handled.
    pub cursor: Mutex<Option<String>>,
    /// Last error text, for the report.
    pub last_error: Mutex<Option<String>>,
}

/// What a received event means for a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    InOrder,
    /// Sequence numbers skipped.
    Gap(u64),
    Duplicate,
    /// Received again in a later subscription (see
    /// [`ConnState::dedupe_across_subscriptions`]).
    Redelivered,
    Unentitled,
}

impl ConnState {
    pub fn new(streams: Vec<u32>) -> Self {
        let next = streams.iter().map(|_| AtomicU64::new(0)).collect();
        let sub_start = streams.iter().map(|_| AtomicU64::new(0)).collect();
        ConnState {
            streams: streams.into_boxed_slice(),
            next,
            sub_start,
            dedupe_across_subscriptions: AtomicBool::new(false),
            redelivered: AtomicU64::new(0),
            unrecovered: AtomicU64::new(0),
            node: AtomicU64::new(0),
            reconnect_after_ms: AtomicU64::new(0),
            churns: AtomicU64::new(0),
            received: AtomicU64::new(0),
            gaps: AtomicU64::new(0),
            dups: AtomicU64::new(0),
            unentitled: AtomicU64::new(0),
            probe: AtomicU64::new(0),
            live: AtomicBool::new(false),
            connect_failures: AtomicU64::new(0),
            disconnects: AtomicU64::new(0),
            connected_at_us: AtomicU64::new(0),
            caught_up_at_us: AtomicU64::new(0),
            cursor: Mutex::new(None),
            last_error: Mutex::new(None),
        }
    }

    /// Checks event `n` of `stream`; called by the connection's task only.
    pub fn observe(&self, stream: u32, n: u64) -> Verdict {
        let Some(slot) = self.streams.iter().position(|s| *s == stream) else {
            self.unentitled.fetch_add(1, Relaxed);
            return Verdict::Unentitled;
        };
        self.received.fetch_add(1, Relaxed);
        let next = self.next[slot].load(Relaxed);
        if n == next {
            self.next[slot].store(n + 1, Relaxed);
            Verdict::InOrder
        } else if n > next {
            self.gaps.fetch_add(n - next, Relaxed);
            self.next[slot].store(n + 1, Relaxed);
            Verdict::Gap(n - next)
        } else if self.dedupe_across_subscriptions.load(Relaxed)
            && n < self.sub_start[slot].load(Relaxed)
        {
            // Handled in an earlier subscription: the client drops it by id.
            self.redelivered.fetch_add(1, Relaxed);
            Verdict::Redelivered
        } else {
            self.dups.fetch_add(1, Relaxed);
            Verdict::Duplicate
        }
    }

    /// Makes events handled before a new subscription redeliveries the
    /// client de-duplicates by id (the protocol allows them across
    /// subscriptions), while a repeat within one subscription stays a
    /// duplicate.
    pub fn dedupe_across_subscriptions(&self) {
        self.dedupe_across_subscriptions.store(true, Relaxed);
    }

    /// Marks the start of a new subscription (called by the connection's
    /// task when `subscribed` arrives).
    pub fn begin_subscription(&self) {
        for (start, next) in self.sub_start.iter().zip(self.next.iter()) {
            start.store(next.load(Relaxed), Relaxed);
        }
    }

    /// Next expected number of `stream` (0 when not entitled).
    pub fn next_of(&self, stream: u32) -> u64 {
        self.streams
            .iter()
            .position(|s| *s == stream)
            .map_or(0, |slot| self.next[slot].load(Relaxed))
    }

    pub fn set_error(&self, e: impl ToString) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
    }
}

/// Totals over all connections, against what was produced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Tally {
    pub received: u64,
    /// Entitled events never received (gaps plus the missing tail).
    pub lost: u64,
    pub duplicated: u64,
    /// Events a connection was not entitled to.
    pub unentitled: u64,
    pub connect_failures: u64,
    pub disconnects: u64,
    /// Connections that lost at least one event.
    pub conns_with_loss: u64,
    /// Events received again in a later subscription and dropped by id.
    pub redelivered: u64,
    /// Resumptions with a cursor answered `recovered: false`.
    pub unrecovered: u64,
}

impl Tally {
    /// Sums the connections' findings. `produced[s]` is how many events of
    /// stream `s` were produced so far (all delivered, or given up on).
    pub fn collect(conns: &[std::sync::Arc<ConnState>], produced: &[u64]) -> Tally {
        let mut t = Tally::default();
        for c in conns {
            t.received += c.received.load(Relaxed);
            t.duplicated += c.dups.load(Relaxed);
            t.unentitled += c.unentitled.load(Relaxed);
            t.connect_failures += c.connect_failures.load(Relaxed);
            t.disconnects += c.disconnects.load(Relaxed);
            t.redelivered += c.redelivered.load(Relaxed);
            t.unrecovered += c.unrecovered.load(Relaxed);
            let mut lost = c.gaps.load(Relaxed);
            for (slot, s) in c.streams.iter().enumerate() {
                let want = produced.get(*s as usize).copied().unwrap_or(0);
                lost += want.saturating_sub(c.next[slot].load(Relaxed));
            }
            t.lost += lost;
            t.conns_with_loss += u64::from(lost > 0);
        }
        t
    }

    /// Adds another process's tally (its connections are disjoint).
    pub fn add(&mut self, o: &Tally) {
        self.received += o.received;
        self.lost += o.lost;
        self.duplicated += o.duplicated;
        self.unentitled += o.unentitled;
        self.connect_failures += o.connect_failures;
        self.disconnects += o.disconnects;
        self.conns_with_loss += o.conns_with_loss;
        self.redelivered += o.redelivered;
        self.unrecovered += o.unrecovered;
    }

    /// The difference since an earlier tally (for one step of a sweep).
    pub fn since(&self, before: &Tally) -> Tally {
        Tally {
            received: self.received - before.received.min(self.received),
            lost: self.lost.saturating_sub(before.lost),
            duplicated: self.duplicated.saturating_sub(before.duplicated),
            unentitled: self.unentitled.saturating_sub(before.unentitled),
            connect_failures: self
                .connect_failures
                .saturating_sub(before.connect_failures),
            disconnects: self.disconnects.saturating_sub(before.disconnects),
            conns_with_loss: self.conns_with_loss.saturating_sub(before.conns_with_loss),
            redelivered: self.redelivered.saturating_sub(before.redelivered),
            unrecovered: self.unrecovered.saturating_sub(before.unrecovered),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn gaps_duplicates_leaks_and_tail_are_counted() {
        let c = Arc::new(ConnState::new(vec![1, 4]));
        assert_eq!(c.observe(1, 0), Verdict::InOrder);
        assert_eq!(c.observe(1, 1), Verdict::InOrder);
        assert_eq!(c.observe(1, 4), Verdict::Gap(2));
        assert_eq!(c.observe(1, 4), Verdict::Duplicate);
        assert_eq!(c.observe(4, 0), Verdict::InOrder);
        assert_eq!(c.observe(2, 0), Verdict::Unentitled);
        // produced: stream 1 had 6 events (5 missing at the tail), stream 4 had 1.
        let t = Tally::collect(std::slice::from_ref(&c), &[0, 6, 9, 0, 1]);
        assert_eq!(t.lost, 2 + 1);
        assert_eq!(t.duplicated, 1);
        assert_eq!(t.unentitled, 1);
        assert_eq!(t.received, 5);
        let clean = Arc::new(ConnState::new(vec![0]));
        for n in 0..10 {
            clean.observe(0, n);
        }
        assert_eq!(Tally::collect(&[clean], &[10]).lost, 0);
    }

    #[test]
    fn a_repeat_is_a_redelivery_only_across_subscriptions_when_deduplicating() {
        let c = Arc::new(ConnState::new(vec![0]));
        c.dedupe_across_subscriptions();
        c.begin_subscription();
        for n in 0..5 {
            assert_eq!(c.observe(0, n), Verdict::InOrder);
        }
        // A new subscription replays 3 and 4 (its cursor was a little late).
        c.begin_subscription();
        assert_eq!(c.observe(0, 3), Verdict::Redelivered);
        assert_eq!(c.observe(0, 4), Verdict::Redelivered);
        assert_eq!(c.observe(0, 5), Verdict::InOrder);
        // Within the subscription a repeat is a duplicate.
        assert_eq!(c.observe(0, 5), Verdict::Duplicate);
        let t = Tally::collect(std::slice::from_ref(&c), &[6]);
        assert_eq!((t.lost, t.duplicated, t.redelivered), (0, 1, 2));
        // Without de-duplication every repeat is a duplicate.
        let strict = Arc::new(ConnState::new(vec![0]));
        strict.begin_subscription();
        strict.observe(0, 0);
        strict.begin_subscription();
        assert_eq!(strict.observe(0, 0), Verdict::Duplicate);
    }
}
