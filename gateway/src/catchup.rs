//! Catch-up: replays a subscription's missed entries from PostgreSQL, then
//! asks its dispatcher shard to switch it to live delivery.
//!
//! The replay reads every channel of the subscription after the
//! subscription's own positions and orders the rows with
//! [`crate::replay::plan_page`]; events that already reached the subscriber
//! through another channel, and user-targeted events for other users, are
//! skipped (their positions still advance). It reads until it reaches the
//! log's head, then asks to go live; the shard accepts only when the positions
//! equal what it has delivered live, otherwise the task reads again.
//!
//! Invariant: the positions in [`Progress`] change only together with the
//! enqueueing of the frame that covers them, under one lock, so whoever stops
//! the task reads positions that match exactly what the client was sent.

use crate::fanout::{Command, GoLive, Shared, SubSpec};
use crate::metrics as m;
use crate::protocol;
use crate::replay::{plan_page, Action};
use crate::session::Outbound;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, Mutex};

/// A subscription's replay positions, shared with its shard.
#[derive(Debug)]
pub struct Progress {
    positions: Mutex<Vec<(i64, i64)>>,
}

impl Progress {
    pub fn new(positions: Vec<(i64, i64)>) -> Self {
        Progress {
            positions: Mutex::new(positions),
        }
    }

    pub async fn snapshot(&self) -> Vec<(i64, i64)> {
        self.positions.lock().await.clone()
    }
}

/// One catch-up to run.
#[derive(Debug)]
pub(crate) struct CatchupJob {
    pub spec: SubSpec,
    pub progress: Arc<Progress>,
}

/// Runs a catch-up to completion (live), cancellation, or the connection's end.
pub(crate) async fn run(shared: Arc<Shared>, shard: mpsc::Sender<Command>, job: CatchupJob) {
    let started = Instant::now();
    let spec = &job.spec;
    let mut backoff = Duration::from_millis(50);
    let mut replayed = 0u64;
    let mut ahead_tries = 0u32;
    let mut read = true;
    loop {
        if spec.cancel.is_cancelled() {
            return;
        }
        if read {
            let permit = tokio::select! {
                _ = spec.cancel.cancelled() => return,
                p = shared.catchup_permits.acquire() => match p { Ok(p) => p, Err(_) => return },
            };
            // Read until the head.
            loop {
                let positions = job.progress.snapshot().await;
                let page = match shared
                    .log
                    .read_after(&positions, None, shared.replay_page)
                    .await
                {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::debug!(error = %e, topic = %spec.topic, "replay read failed; retrying");
                        tokio::select! {
                            _ = spec.cancel.cancelled() => return,
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(2));
                        continue;
                    }
                };
                backoff = Duration::from_millis(50);
                let mut pos: HashMap<i64, i64> = positions.iter().copied().collect();
                let actions = plan_page(&page.rows, &mut pos);
                let progressed = !actions.is_empty();
                for action in actions {
                    match deliver(&shared, spec, &job.progress, action).await {
                        Flow::Sent => replayed += 1,
                        Flow::Skipped => {}
                        Flow::Stop => return,
                    }
                }
                if !page.more || !progressed {
                    break;
                }
            }
            drop(permit);
        }
        let (tx, rx) = oneshot::channel();
        let positions = job.progress.snapshot().await;
        let force = ahead_tries >= AHEAD_TRIES;
        if shard
            .send(Command::GoLive {
                id: spec.id,
                positions,
                force,
                reply: tx,
            })
            .await
            .is_err()
        {
            return;
        }
        match rx.await {
            Ok(GoLive::Live) => {
                if replayed > 0 {
                    metrics::counter!(m::DELIVERED, "topic" => spec.topic.clone(), "mode" => "replay")
                        .increment(replayed);
                }
                metrics::histogram!(m::CATCHUP_SECONDS).record(started.elapsed().as_secs_f64());
                return;
            }
            Ok(GoLive::NotYet) => {
                read = true;
                ahead_tries = 0;
                tokio::task::yield_now().await;
            }
            Ok(GoLive::Ahead) => {
                // Redis is behind what we read from PostgreSQL; give it a
                // moment before making the node backfill.
                read = false;
                ahead_tries += 1;
                tokio::select! {
                    _ = spec.cancel.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(10)) => {}
                }
            }
            Ok(GoLive::Gone) | Err(_) => return,
        }
    }
}

/// Attempts at going live while Redis lags before forcing a node backfill.
const AHEAD_TRIES: u32 = 20;

enum Flow {
    Sent,
    Skipped,
    Stop,
}

/// Applies one planned action to the subscription's progress, sending the
/// message when the subscriber should see it.
async fn deliver(shared: &Shared, spec: &SubSpec, progress: &Progress, action: Action) -> Flow {
    let mut guard = progress.positions.lock().await;
    if spec.cancel.is_cancelled() {
        return Flow::Stop;
    }
    let (event, fresh, earlier) = match action {
        Action::Jump { channel, to } => {
            if let Some(p) = guard.iter_mut().find(|p| p.0 == channel) {
                p.1 = to;
            }
            return Flow::Skipped;
        }
        Action::Event {
            event,
            fresh,
            earlier,
        } => (event, fresh, earlier),
    };
    let before = guard.clone();
    for (ch, seq) in &fresh {
        if let Some(p) = guard.iter_mut().find(|p| p.0 == *ch) {
            p.1 = *seq;
        }
    }
    let for_other_user = event.user_id.as_deref().is_some_and(|u| u != &*spec.user);
    if earlier || for_other_user {
        return Flow::Skipped;
    }
    let cursor = switchyard_cursorlog::cursor::encode_parts(&shared.epoch, guard.iter().copied());
    let frame = protocol::encode_message(spec.protocol, &event, &cursor);
    // Never hold the lock on a blocked client past cancellation: the shard
    // reads these positions when it removes the subscription.
    tokio::select! {
        r = spec.tx.send(Outbound::Frame(frame)) => {
            if r.is_err() {
                *guard = before;
                spec.cancel.cancel();
                return Flow::Stop;
            }
            Flow::Sent
        }
        _ = spec.cancel.cancelled() => {
            *guard = before;
            Flow::Stop
        }
    }
}
