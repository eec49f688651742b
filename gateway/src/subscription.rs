//! What a subscription is, as the fan-out and catch-up both see it: its
//! identity and channels ([`SubSpec`]), positions, and the replay
//! [`Progress`] a catch-up shares with its shard.
//!
//! Invariant: positions in [`Progress`] change only together with the
//! queueing of the frame that covers them, under one lock, so whoever stops
//! a catch-up reads positions that match exactly what the client was sent.

use crate::outbound::OutboundTx;
use crate::protocol::Protocol;
use std::sync::Arc;
use tokio::sync::{Mutex, MutexGuard};
use tokio_util::sync::CancellationToken;

/// Identifies a subscription on this node.
pub type SubId = u64;

/// Per-channel positions `(channel id, last handled seq)`.
pub type Positions = Vec<(i64, i64)>;

/// Everything the fan-out needs to know about a subscription.
#[derive(Debug, Clone)]
pub struct SubSpec {
    pub id: SubId,
    pub user: Arc<str>,
    pub topic: String,
    /// Sorted, de-duplicated channel ids.
    pub channels: Vec<i64>,
    pub protocol: Protocol,
    pub tx: OutboundTx,
    /// Cancelled when the subscription ends (unsubscribe, close, refresh).
    pub cancel: CancellationToken,
    /// Cancelled to close the whole connection (a client that does not
    /// drain its queue within the bound).
    pub connection: CancellationToken,
}

/// A subscription's replay positions, shared between its catch-up task and
/// its shard.
#[derive(Debug)]
pub struct Progress {
    positions: Mutex<Positions>,
}

impl Progress {
    pub fn new(positions: Positions) -> Self {
        Progress {
            positions: Mutex::new(positions),
        }
    }

    pub async fn snapshot(&self) -> Positions {
        self.positions.lock().await.clone()
    }

    pub(crate) async fn lock(&self) -> MutexGuard<'_, Positions> {
        self.positions.lock().await
    }
}

/// Sets `channel`'s position in `positions` (no-op for other channels).
pub fn set_position(positions: &mut [(i64, i64)], channel: i64, seq: i64) {
    if let Some(p) = positions.iter_mut().find(|p| p.0 == channel) {
        p.1 = seq;
    }
}
