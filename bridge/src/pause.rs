//! Who holds the Kafka consumer paused, and the parked records the reader
//! drained while it was paused.
//!
//! [`PauseControl`] is the one owner of the pause state. Each pipeline stage
//! that cannot make progress ([`Stage`]) sets its own mark; the assigned
//! partitions are paused while any mark is set and resumed only when the
//! last one clears, so a stage that recovers cannot resume consumption under
//! another that still fails. A rebalance hands the consumer partitions whose
//! pause state librdkafka does not carry over (new ones start fetching, and
//! one paused before a revoke comes back paused), so every assignment gets
//! the current state applied.
//!
//! Invariant: the pause state changes only under the one lock, and both the
//! pipeline and the rebalance callback apply it through [`PauseControl`];
//! nothing else calls `pause`/`resume` on the consumer.

use crate::metrics as m;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::error::KafkaResult;
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::TopicPartitionList;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;

/// A reason to hold consumption.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    /// The reader cannot resolve channel ids (PostgreSQL).
    Reader,
    /// The writer cannot append, or the DLQ does not acknowledge.
    Writer,
    /// The reader's parked records reached their bound.
    Carry,
}

impl Stage {
    fn bit(self) -> u8 {
        match self {
            Stage::Reader => 1,
            Stage::Writer => 2,
            Stage::Carry => 4,
        }
    }
}

/// The partition operations the pause state needs, so the logic can be
/// tested without a broker.
pub(crate) trait Partitions {
    fn assignment(&self) -> KafkaResult<TopicPartitionList>;
    fn pause(&self, tpl: &TopicPartitionList) -> KafkaResult<()>;
    fn resume(&self, tpl: &TopicPartitionList) -> KafkaResult<()>;
}

macro_rules! partitions_of_consumer {
    ($t:ty) => {
        impl Partitions for $t {
            fn assignment(&self) -> KafkaResult<TopicPartitionList> {
                Consumer::assignment(self)
            }
            fn pause(&self, tpl: &TopicPartitionList) -> KafkaResult<()> {
                Consumer::pause(self, tpl)
            }
            fn resume(&self, tpl: &TopicPartitionList) -> KafkaResult<()> {
                Consumer::resume(self, tpl)
            }
        }
    };
}
partitions_of_consumer!(StreamConsumer<crate::pipeline::BridgeContext>);
partitions_of_consumer!(BaseConsumer<crate::pipeline::BridgeContext>);

/// The one owner of the consumer's pause state.
#[derive(Debug, Default)]
pub struct PauseControl {
    /// Marks of the stages holding consumption (a copy of the locked state
    /// for lock-free reads by `/readyz` and the reader's select loop).
    marks: AtomicU8,
    /// Whether the assigned partitions are paused; the lock orders pause
    /// and resume calls with the rebalance callback's.
    paused: Mutex<bool>,
}

impl PauseControl {
    /// Whether a dependency holds the pipeline (what `/readyz` reports).
    pub fn stalled_on_dependency(&self) -> bool {
        self.marks.load(Ordering::Relaxed) & (Stage::Reader.bit() | Stage::Writer.bit()) != 0
    }

    /// Whether consumption is paused, for whatever reason.
    pub(crate) fn is_paused(&self) -> bool {
        self.marks.load(Ordering::Relaxed) != 0
    }

    /// `stage` cannot progress: pause the assigned partitions (if they are
    /// not already).
    pub(crate) fn stall(&self, c: &impl Partitions, stage: Stage) {
        self.set(c, stage, true);
    }

    /// `stage` progresses again: resume once no other stage holds.
    pub(crate) fn recover(&self, c: &impl Partitions, stage: Stage) {
        if self.marks.load(Ordering::Relaxed) & stage.bit() != 0 {
            self.set(c, stage, false);
        }
    }

    fn set(&self, c: &impl Partitions, stage: Stage, on: bool) {
        let mut paused = self.paused.lock().unwrap_or_else(|p| p.into_inner());
        let marks = if on {
            self.marks.fetch_or(stage.bit(), Ordering::Relaxed) | stage.bit()
        } else {
            self.marks.fetch_and(!stage.bit(), Ordering::Relaxed) & !stage.bit()
        };
        let want = marks != 0;
        if want == *paused {
            return;
        }
        *paused = want;
        metrics::gauge!(m::PAUSED).set(if want { 1.0 } else { 0.0 });
        match c.assignment() {
            Ok(tpl) => apply(c, &tpl, want),
            Err(e) => tracing::warn!(error = %e, paused = want, "cannot read the assignment"),
        }
        if want {
            tracing::warn!(?stage, "consumption paused");
        } else {
            tracing::info!(?stage, "consumption resumed");
        }
    }

    /// Called after partitions are assigned: they get the current state
    /// (paused while any stage holds, resumed otherwise, which also clears
    /// a pause librdkafka kept from before they were revoked).
    pub(crate) fn on_assign(&self, c: &impl Partitions, tpl: &TopicPartitionList) {
        let paused = self.paused.lock().unwrap_or_else(|p| p.into_inner());
        if *paused {
            tracing::info!(
                partitions = tpl.count(),
                "new assignment while paused; pausing it"
            );
        }
        apply(c, tpl, *paused);
    }
}

fn apply(c: &impl Partitions, tpl: &TopicPartitionList, pause: bool) {
    if tpl.count() == 0 {
        return;
    }
    let r = if pause { c.pause(tpl) } else { c.resume(tpl) };
    if let Err(e) = r {
        tracing::warn!(error = %e, pause, "cannot change the partitions' pause state");
    }
}

/// Records the reader fetched while it could not hand a batch on (librdkafka
/// delivers what it prefetched before a pause took effect, and polling
/// continues so the consumer stays in its group). Bounded: when full, the
/// reader holds consumption with [`Stage::Carry`] until a batch drains it.
#[derive(Debug)]
pub(crate) struct Carry {
    records: Vec<OwnedMessage>,
    bytes: usize,
    max_records: usize,
    max_bytes: usize,
}

impl Carry {
    pub(crate) fn new(max_records: usize, max_bytes: usize) -> Self {
        Carry {
            records: Vec::new(),
            bytes: 0,
            max_records: max_records.max(1),
            max_bytes,
        }
    }

    /// Parks a record; returns whether the carry is now full.
    pub(crate) fn push(&mut self, msg: OwnedMessage) -> bool {
        self.bytes += record_bytes(&msg);
        self.records.push(msg);
        metrics::gauge!(m::CARRY).set(self.records.len() as f64);
        self.is_full()
    }

    pub(crate) fn is_full(&self) -> bool {
        self.records.len() >= self.max_records || self.bytes >= self.max_bytes
    }

    /// Takes up to `max` records, oldest first.
    pub(crate) fn take(&mut self, max: usize) -> Vec<OwnedMessage> {
        let rest = if self.records.len() > max {
            self.records.split_off(max)
        } else {
            Vec::new()
        };
        let taken = std::mem::replace(&mut self.records, rest);
        self.bytes = self.records.iter().map(record_bytes).sum();
        metrics::gauge!(m::CARRY).set(self.records.len() as f64);
        taken
    }
}

fn record_bytes(msg: &OwnedMessage) -> usize {
    msg.payload().map_or(0, <[u8]>::len) + msg.key().map_or(0, <[u8]>::len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::Timestamp;
    use std::cell::RefCell;

    /// Records what the pause state asked of the consumer.
    #[derive(Default)]
    struct Fake {
        assigned: RefCell<Vec<i32>>,
        paused: RefCell<Vec<i32>>,
    }

    fn tpl(parts: &[i32]) -> TopicPartitionList {
        let mut t = TopicPartitionList::new();
        for p in parts {
            t.add_partition("events", *p);
        }
        t
    }

    fn parts(t: &TopicPartitionList) -> Vec<i32> {
        t.elements().iter().map(|e| e.partition()).collect()
    }

    impl Partitions for Fake {
        fn assignment(&self) -> KafkaResult<TopicPartitionList> {
            Ok(tpl(&self.assigned.borrow()))
        }
        fn pause(&self, t: &TopicPartitionList) -> KafkaResult<()> {
            let mut p = self.paused.borrow_mut();
            for x in parts(t) {
                if !p.contains(&x) {
                    p.push(x);
                }
            }
            Ok(())
        }
        fn resume(&self, t: &TopicPartitionList) -> KafkaResult<()> {
            let r = parts(t);
            self.paused.borrow_mut().retain(|x| !r.contains(x));
            Ok(())
        }
    }

    #[test]
    fn one_stage_recovering_does_not_resume_under_another() {
        let c = Fake::default();
        c.assigned.borrow_mut().extend([0, 1]);
        let pc = PauseControl::default();
        pc.stall(&c, Stage::Writer);
        pc.stall(&c, Stage::Reader);
        assert_eq!(*c.paused.borrow(), [0, 1]);
        pc.recover(&c, Stage::Reader);
        assert_eq!(*c.paused.borrow(), [0, 1], "the writer still fails");
        assert!(pc.stalled_on_dependency());
        pc.recover(&c, Stage::Writer);
        assert!(c.paused.borrow().is_empty());
        assert!(!pc.is_paused());
        // A recovery of a stage that never stalled changes nothing.
        pc.recover(&c, Stage::Writer);
        assert!(c.paused.borrow().is_empty());
    }

    #[test]
    fn partitions_assigned_while_paused_are_paused() {
        let c = Fake::default();
        c.assigned.borrow_mut().push(0);
        let pc = PauseControl::default();
        pc.stall(&c, Stage::Writer);
        // Another member left: partitions 1 and 2 arrive while paused.
        c.assigned.borrow_mut().extend([1, 2]);
        pc.on_assign(&c, &tpl(&[0, 1, 2]));
        assert_eq!(*c.paused.borrow(), [0, 1, 2]);
        pc.recover(&c, Stage::Writer);
        assert!(c.paused.borrow().is_empty());
    }

    #[test]
    fn a_partition_revoked_while_paused_comes_back_resumed() {
        let c = Fake::default();
        c.assigned.borrow_mut().extend([0, 1]);
        let pc = PauseControl::default();
        pc.stall(&c, Stage::Writer);
        // Partition 1 moves to another member while paused (librdkafka
        // keeps its pause flag), the writer recovers, and it comes back.
        c.assigned.borrow_mut().retain(|p| *p == 0);
        pc.recover(&c, Stage::Writer);
        assert_eq!(*c.paused.borrow(), [1]);
        c.assigned.borrow_mut().push(1);
        pc.on_assign(&c, &tpl(&[0, 1]));
        assert!(c.paused.borrow().is_empty());
    }

    fn msg(offset: i64, bytes: usize) -> OwnedMessage {
        OwnedMessage::new(
            Some(vec![b'x'; bytes]),
            None,
            "events".into(),
            Timestamp::NotAvailable,
            0,
            offset,
            None,
        )
    }

    #[test]
    fn the_carry_is_bounded_in_records_and_bytes_and_keeps_order() {
        let mut carry = Carry::new(3, 1 << 20);
        assert!(!carry.push(msg(0, 10)));
        assert!(!carry.push(msg(1, 10)));
        assert!(carry.push(msg(2, 10)), "three records fill it");
        let first: Vec<i64> = carry.take(2).iter().map(|m| m.offset()).collect();
        assert_eq!(first, [0, 1]);
        assert!(!carry.is_full());
        let rest: Vec<i64> = carry.take(10).iter().map(|m| m.offset()).collect();
        assert_eq!(rest, [2]);

        let mut carry = Carry::new(100, 1000);
        assert!(!carry.push(msg(0, 600)));
        assert!(carry.push(msg(1, 600)), "1200 bytes fill a 1000-byte carry");
        assert_eq!(carry.take(10).len(), 2);
        assert!(!carry.is_full());
    }
}
