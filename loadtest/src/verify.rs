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
    Unentitled,
}

impl ConnState {
    pub fn new(streams: Vec<u32>) -> Self {
        let next = streams.iter().map(|_| AtomicU64::new(0)).collect();
        ConnState {
            streams: streams.into_boxed_slice(),
            next,
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
        } else {
            self.dups.fetch_add(1, Relaxed);
            Verdict::Duplicate
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
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
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
}
