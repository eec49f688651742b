//! The request a catch-up makes of its shard to switch its subscription to
//! live delivery, and the handle it makes it through. A leaf module, so
//! catch-up depends on this and not on the fan-out that answers.
//!
//! Invariant: the shard answers [`GoLive::Live`] only when the positions
//! equal what it has delivered live on every channel, so the switch has no
//! gap and no duplicate.

use crate::subscription::{Positions, SubId};
use tokio::sync::{mpsc, oneshot};

/// The shard's answer.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum GoLive {
    Live,
    /// The node has delivered past these positions; read more first.
    NotYet,
    /// The positions are past what the node has delivered live (Redis is
    /// behind PostgreSQL): ask again shortly, or with `force` so the node
    /// backfills.
    Ahead,
    /// The subscription is gone.
    Gone,
}

/// One go-live request.
#[derive(Debug)]
pub struct GoLiveRequest {
    pub id: SubId,
    pub positions: Positions,
    /// Backfill the node from PostgreSQL when it is behind the positions.
    pub force: bool,
    pub reply: oneshot::Sender<GoLive>,
}

/// Where catch-ups send their go-live requests (one per shard).
#[derive(Debug, Clone)]
pub struct GoLiveHandle(mpsc::Sender<GoLiveRequest>);

impl GoLiveHandle {
    pub fn new(tx: mpsc::Sender<GoLiveRequest>) -> Self {
        GoLiveHandle(tx)
    }

    /// Asks; [`GoLive::Gone`] when the shard is gone (shutdown).
    pub async fn ask(&self, id: SubId, positions: Positions, force: bool) -> GoLive {
        let (reply, rx) = oneshot::channel();
        let req = GoLiveRequest {
            id,
            positions,
            force,
            reply,
        };
        if self.0.send(req).await.is_err() {
            return GoLive::Gone;
        }
        rx.await.unwrap_or(GoLive::Gone)
    }
}
