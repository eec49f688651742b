//! Live fan-out on one gateway node: a few dispatcher shards (topics are
//! hashed onto them), each a single task that owns its state, fed through
//! its mailbox by the Redis live feed, by sessions (register, remove) and by
//! the tasks it starts itself (backfills, head reads), and through a second
//! mailbox by catch-ups asking to go live.
//!
//! - [`Fanout`] (here): the handle and the mailbox protocol.
//! - [`shard`]: a shard's state and live delivery.
//! - [`backfill`]: reading what the node missed (gaps, Redis reconnects,
//!   head checks) from PostgreSQL *beside* the shard.
//!
//! Invariants:
//! - The shard loop never awaits PostgreSQL or a client: reads run in
//!   their own tasks and report back through the mailbox; a full outbound
//!   queue demotes the subscription to catch-up instead of blocking.
//! - Every task the fan-out starts is spawned on the node's task tracker and
//!   ends on its cancellation token.

mod backfill;
mod shard;

use crate::catchup::CatchupContext;
use crate::golive::{GoLiveHandle, GoLiveRequest};
use crate::subscription::{Positions, SubId, SubSpec};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;
use switchyard_cursorlog::LogEvent;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub(crate) enum Command {
    Live(Arc<LogEvent>),
    /// Redis reconnected: anything may have been missed.
    Resync,
    HeadCheck,
    Register {
        spec: SubSpec,
        positions: Positions,
    },
    Remove {
        id: SubId,
        reply: Option<oneshot::Sender<Option<Positions>>>,
    },
    /// From the shard's own background tasks.
    Backfill(backfill::Report),
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Command::Live(_) => "Live",
            Command::Resync => "Resync",
            Command::HeadCheck => "HeadCheck",
            Command::Register { .. } => "Register",
            Command::Remove { .. } => "Remove",
            Command::Backfill(_) => "Backfill",
        })
    }
}

/// How the fan-out runs.
#[derive(Debug)]
pub struct FanoutConfig {
    pub shards: usize,
    pub head_check: Duration,
}

/// Handle to the node's shards.
#[derive(Clone, Debug)]
pub struct Fanout {
    shards: Arc<Vec<mpsc::Sender<Command>>>,
}

impl Fanout {
    /// Starts the shards and the head-check ticker on `tasks`.
    pub fn start(
        cfg: FanoutConfig,
        catchup: Arc<CatchupContext>,
        tasks: TaskTracker,
        cancel: CancellationToken,
    ) -> Fanout {
        let n = cfg.shards.max(1);
        let mut shards = Vec::with_capacity(n);
        for _ in 0..n {
            let (tx, rx) = mpsc::channel(16 * 1024);
            let (golive_tx, golive_rx) = mpsc::channel::<GoLiveRequest>(1024);
            let shard = shard::Shard::new(
                catchup.clone(),
                tx.clone(),
                GoLiveHandle::new(golive_tx),
                tasks.clone(),
                cancel.clone(),
            );
            tasks.spawn(shard.run(rx, golive_rx));
            shards.push(tx);
        }
        let fanout = Fanout {
            shards: Arc::new(shards),
        };
        let ticker = fanout.clone();
        let head_check = cfg.head_check;
        tasks.spawn(async move {
            let mut t = tokio::time::interval(head_check);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = t.tick() => ticker.broadcast(|| Command::HeadCheck).await,
                }
            }
        });
        fanout
    }

    fn shard(&self, topic: &str) -> &mpsc::Sender<Command> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        topic.hash(&mut h);
        &self.shards[(h.finish() % self.shards.len() as u64) as usize]
    }

    async fn broadcast(&self, cmd: impl Fn() -> Command) {
        for s in self.shards.iter() {
            let _ = s.send(cmd()).await;
        }
    }

    /// Feeds a live event from Redis.
    pub async fn live(&self, ev: LogEvent) {
        let _ = self
            .shard(&ev.topic)
            .send(Command::Live(Arc::new(ev)))
            .await;
    }

    /// Redis reconnected: every shard backfills from PostgreSQL.
    pub async fn resync(&self) {
        self.broadcast(|| Command::Resync).await;
    }

    /// Registers a subscription starting at `positions`; it catches up, then
    /// goes live.
    pub async fn register(&self, spec: SubSpec, positions: Positions) {
        let shard = self.shard(&spec.topic).clone();
        let _ = shard.send(Command::Register { spec, positions }).await;
    }

    /// Removes a subscription; returns its positions when asked and known.
    pub async fn remove(&self, topic: &str, id: SubId, want_positions: bool) -> Option<Positions> {
        if want_positions {
            let (tx, rx) = oneshot::channel();
            let _ = self
                .shard(topic)
                .send(Command::Remove {
                    id,
                    reply: Some(tx),
                })
                .await;
            rx.await.ok().flatten()
        } else {
            let _ = self
                .shard(topic)
                .send(Command::Remove { id, reply: None })
                .await;
            None
        }
    }
}
