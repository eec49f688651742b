//! A connection's outbound queue: what the fan-out, catch-up and the session
//! hand to the connection's writer, bounded in frames *and* in bytes.
//!
//! Every frame takes one frame permit and its size from a byte budget (two
//! semaphores) when it is queued and gives both back when the writer has
//! written it, so a connection can hold at most `frames` frames and about
//! `bytes` bytes of them however large each is.
//!
//! The frames travel in futures' linked-list channel, which allocates a node
//! per frame and holds nothing while empty; the semaphores, not the
//! channel, bound it. tokio's bounded channel preallocated a 32-slot block
//! (2 KiB with [`Outbound`]'s 64 bytes) plus a cache-padded header in every
//! connection, busy or idle: at 100,000 idle connections that was 250 MiB.
//!
//! Invariant: a sender either gets room or is told the queue is full
//! ([`OutboundTx::try_send`]) / waits for room ([`OutboundTx::send`]); the
//! queue never grows past its bounds, whatever the client does.

use bytes::Bytes;
use fastwebsockets::OpCode;
use futures::channel::mpsc;
use futures::StreamExt as _;
use std::sync::Arc;
use tokio::sync::Semaphore;

/// A frame queued for the writer.
#[derive(Debug)]
pub enum Outbound {
    /// A data frame (text for JSON, binary for protobuf).
    Frame(Bytes),
    /// A data frame carrying an event's message, with what the writer
    /// measures once it is on the socket.
    Message(Bytes, Stamp),
    /// A control frame the reader owes the peer (pong, close reply).
    Control(OpCode, Vec<u8>),
    /// Close the connection with this code and reason.
    Close(u16, &'static str),
}

impl Outbound {
    fn bytes(&self) -> usize {
        match self {
            Outbound::Frame(b) | Outbound::Message(b, _) => b.len(),
            Outbound::Control(_, p) => p.len(),
            Outbound::Close(_, r) => r.len() + 2,
        }
    }
}

/// How a message reached its client (the `path` label of the delivery lag).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// The fan-out, from the Redis live feed.
    Live,
    /// A subscription's catch-up from PostgreSQL.
    Replay,
    /// The fan-out, from a node backfill out of PostgreSQL.
    Backfill,
    /// A long-poll response.
    Poll,
}

impl Path {
    /// The `path` label (declared in [`crate::metrics::DELIVERY_PATHS`]).
    pub fn as_str(self) -> &'static str {
        match self {
            Path::Live => "live",
            Path::Replay => "replay",
            Path::Backfill => "backfill",
            Path::Poll => "poll",
        }
    }
}

/// What the writer measures when a message is on the socket: the delivery
/// lag by path, the node's receive-to-write stage, and (for the one
/// recipient per fan-out that is sampled) a `gateway.write` span.
#[derive(Debug, Clone)]
pub struct Stamp {
    /// The event's `created_at` (ms since the epoch).
    pub created_at_ms: i64,
    /// When this node received it live (ms since the epoch; 0: not live).
    pub received_at_ms: i64,
    pub path: Path,
    /// The span the write span is a child of; `None` for all but a sampled
    /// recipient (no allocation per recipient).
    pub trace: Option<Arc<opentelemetry::trace::SpanContext>>,
}

impl Stamp {
    pub fn new(created_at_ms: i64, path: Path) -> Self {
        Stamp {
            created_at_ms,
            received_at_ms: 0,
            path,
            trace: None,
        }
    }
}

/// Why a frame was not queued.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QueueError {
    #[error("the outbound queue is full")]
    Full,
    #[error("the connection is closed")]
    Closed,
}

/// The two bounds a queue shares between its ends.
#[derive(Debug)]
struct Budget {
    /// One permit per queued, not yet written frame.
    frames: Semaphore,
    /// One permit per queued, not yet written byte.
    bytes: Semaphore,
    max_frames: usize,
    max_cost: u32,
}

impl Budget {
    fn close(&self) {
        self.frames.close();
        self.bytes.close();
    }
}

/// The sending side; cheap to clone.
#[derive(Debug, Clone)]
pub struct OutboundTx {
    tx: mpsc::UnboundedSender<Outbound>,
    budget: Arc<Budget>,
}

/// The writer's side.
#[derive(Debug)]
pub struct OutboundRx {
    rx: mpsc::UnboundedReceiver<Outbound>,
    budget: Arc<Budget>,
}

/// A queue of at most `frames` frames and `bytes` bytes (a frame larger than
/// the whole budget takes all of it).
pub fn queue(frames: usize, bytes: usize) -> (OutboundTx, OutboundRx) {
    let (tx, rx) = mpsc::unbounded();
    let max_frames = frames.clamp(1, Semaphore::MAX_PERMITS);
    let max_cost = u32::try_from(bytes.clamp(1, Semaphore::MAX_PERMITS)).unwrap_or(u32::MAX);
    let budget = Arc::new(Budget {
        frames: Semaphore::new(max_frames),
        bytes: Semaphore::new(max_cost as usize),
        max_frames,
        max_cost,
    });
    (
        OutboundTx {
            tx,
            budget: budget.clone(),
        },
        OutboundRx { rx, budget },
    )
}

/// The bytes a frame takes from the budget.
fn cost(o: &Outbound, max_cost: u32) -> u32 {
    u32::try_from(o.bytes())
        .unwrap_or(u32::MAX)
        .clamp(1, max_cost)
}

fn try_acquire(s: &Semaphore, n: u32) -> Result<tokio::sync::SemaphorePermit<'_>, QueueError> {
    s.try_acquire_many(n).map_err(|e| match e {
        tokio::sync::TryAcquireError::NoPermits => QueueError::Full,
        tokio::sync::TryAcquireError::Closed => QueueError::Closed,
    })
}

impl OutboundTx {
    fn cost(&self, o: &Outbound) -> u32 {
        cost(o, self.budget.max_cost)
    }

    /// Queues without waiting.
    pub fn try_send(&self, o: Outbound) -> Result<(), QueueError> {
        let frame = try_acquire(&self.budget.frames, 1)?;
        let bytes = try_acquire(&self.budget.bytes, self.cost(&o))?;
        self.tx.unbounded_send(o).map_err(|_| QueueError::Closed)?;
        frame.forget();
        bytes.forget();
        Ok(())
    }

    /// Queues, waiting for room. Not cancel-safe with respect to ordering
    /// guarantees beyond "nothing was queued" when cancelled.
    pub async fn send(&self, o: Outbound) -> Result<(), QueueError> {
        let cost = self.cost(&o);
        let frame = self
            .budget
            .frames
            .acquire()
            .await
            .map_err(|_| QueueError::Closed)?;
        let bytes = self
            .budget
            .bytes
            .acquire_many(cost)
            .await
            .map_err(|_| QueueError::Closed)?;
        self.tx.unbounded_send(o).map_err(|_| QueueError::Closed)?;
        frame.forget();
        bytes.forget();
        Ok(())
    }

    /// True once the writer is gone.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

impl OutboundRx {
    /// Waits for a frame, then takes up to `limit` (at least one) into
    /// `out`; 0 when every sender is gone and nothing is left. Their frame
    /// and bytes return to the budget when [`OutboundRx::release`] is called
    /// after writing.
    pub async fn recv_many(&mut self, out: &mut Vec<Outbound>, limit: usize) -> usize {
        let Some(first) = self.rx.next().await else {
            return 0;
        };
        out.push(first);
        let mut n = 1;
        while n < limit.max(1) {
            match self.rx.try_recv() {
                Ok(o) => {
                    out.push(o);
                    n += 1;
                }
                Err(_) => break,
            }
        }
        n
    }

    /// The bytes `o` took from the budget when it was queued.
    pub fn cost(&self, o: &Outbound) -> u32 {
        cost(o, self.budget.max_cost)
    }

    /// Gives `frames` written frames of `bytes` bytes in all back to the
    /// budget.
    pub fn release(&self, frames: usize, bytes: u32) {
        self.budget.frames.add_permits(frames);
        self.budget.bytes.add_permits(bytes as usize);
    }

    /// True when nothing is queued and everything received was released.
    pub fn is_empty(&self) -> bool {
        self.budget.frames.available_permits() == self.budget.max_frames
    }
}

impl Drop for OutboundRx {
    fn drop(&mut self) {
        // Wakes senders waiting for room: the connection is gone.
        self.budget.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(n: usize) -> Outbound {
        Outbound::Frame(Bytes::from(vec![b'x'; n]))
    }

    #[test]
    fn every_path_is_a_declared_label_value() {
        for p in [Path::Live, Path::Replay, Path::Backfill, Path::Poll] {
            assert!(
                crate::metrics::DELIVERY_PATHS.contains(&p.as_str()),
                "{p:?}"
            );
        }
    }

    #[tokio::test]
    async fn bounded_in_bytes_and_frames() {
        let (tx, mut rx) = queue(100, 1000);
        tx.try_send(frame(600)).unwrap();
        assert_eq!(tx.try_send(frame(600)), Err(QueueError::Full));
        tx.try_send(frame(300)).unwrap();
        let mut got = Vec::new();
        assert_eq!(rx.recv_many(&mut got, 10).await, 2);
        for o in got.drain(..) {
            rx.release(1, rx.cost(&o));
        }
        tx.try_send(frame(900)).unwrap();

        let (tx, _rx) = queue(2, 1_000_000);
        tx.try_send(frame(1)).unwrap();
        tx.try_send(frame(1)).unwrap();
        assert_eq!(tx.try_send(frame(1)), Err(QueueError::Full));
    }

    #[tokio::test]
    async fn a_frame_larger_than_the_budget_takes_all_of_it() {
        let (tx, mut rx) = queue(10, 100);
        tx.try_send(frame(10_000)).unwrap();
        assert_eq!(tx.try_send(frame(1)), Err(QueueError::Full));
        let mut got = Vec::new();
        rx.recv_many(&mut got, 10).await;
        rx.release(1, rx.cost(&got[0]));
        tx.try_send(frame(1)).unwrap();
    }

    #[tokio::test]
    async fn senders_waiting_for_room_learn_the_connection_closed() {
        let (tx, rx) = queue(10, 10);
        tx.try_send(frame(10)).unwrap();
        let waiter = tokio::spawn({
            let tx = tx.clone();
            async move { tx.send(frame(5)).await }
        });
        tokio::task::yield_now().await;
        drop(rx);
        assert_eq!(waiter.await.unwrap(), Err(QueueError::Closed));
    }
}
