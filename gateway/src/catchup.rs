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
//! Invariants:
//! - A read permit (`SWITCHYARD_CATCHUP_CONCURRENCY`) covers the read of one
//!   page and nothing else: delivery waits for room in the client's queue
//!   with no permit held, so clients that stop reading cannot hold up anyone
//!   else's catch-up.
//! - A client whose queue has no room for `stall_timeout` is closed.
//! - The positions in [`Progress`] change only together with the queueing
//!   of the frame that covers them (see [`crate::subscription`]).

use crate::golive::{GoLive, GoLiveHandle};
use crate::metrics as m;
use crate::outbound::{Outbound, Path, Stamp};
use crate::protocol;
use crate::replay::{plan_page, Action};
use crate::subscription::{set_position, Progress, SubSpec};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchyard_cursorlog::cursor::CursorCodec;
use switchyard_cursorlog::CursorLog;
use switchyard_ops::backoff::Backoff;
use tokio::sync::Semaphore;

/// What every catch-up of the node shares.
#[derive(Debug)]
pub struct CatchupContext {
    pub log: CursorLog,
    /// Encodes the cursors of replayed messages.
    pub cursors: CursorCodec,
    /// Bounds concurrent page reads against PostgreSQL.
    pub read_permits: Semaphore,
    /// Rows per channel and bytes per replay read.
    pub replay_page: switchyard_cursorlog::PageLimit,
    /// How long a client's full queue may block delivery before the
    /// connection is closed.
    pub stall_timeout: Duration,
}

/// One catch-up to run.
#[derive(Debug)]
pub struct CatchupJob {
    pub spec: SubSpec,
    pub progress: Arc<Progress>,
}

/// Attempts at going live while Redis lags before forcing a node backfill.
const AHEAD_TRIES: u32 = 20;

/// Runs a catch-up to completion (live), cancellation, or the connection's end.
pub async fn run(ctx: Arc<CatchupContext>, golive: GoLiveHandle, job: CatchupJob) {
    let started = Instant::now();
    let spec = &job.spec;
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
    let mut replayed = 0u64;
    let mut ahead_tries = 0u32;
    let mut read = true;
    loop {
        if spec.cancel.is_cancelled() {
            return;
        }
        if read {
            // Read until the head.
            loop {
                let positions = job.progress.snapshot().await;
                let page = {
                    let _permit = {
                        let _queued = m::InFlight::new(m::CATCHUPS_QUEUED);
                        tokio::select! {
                            _ = spec.cancel.cancelled() => return,
                            p = ctx.read_permits.acquire() => match p { Ok(p) => p, Err(_) => return },
                        }
                    };
                    let _running = m::InFlight::new(m::CATCHUPS_RUNNING);
                    ctx.log.read_after(&positions, None, ctx.replay_page).await
                };
                let page = match page {
                    Ok(p) => p,
                    Err(e) => {
                        let delay = backoff.next_delay();
                        metrics::counter!(m::RETRIES, "op" => "catchup_read").increment(1);
                        tracing::debug!(error = %e, topic = %spec.topic, retry_in_ms = delay.as_millis() as u64, "replay read failed; retrying");
                        tokio::select! {
                            _ = spec.cancel.cancelled() => return,
                            _ = tokio::time::sleep(delay) => {}
                        }
                        continue;
                    }
                };
                backoff.reset();
                let mut pos: HashMap<i64, i64> = positions.iter().copied().collect();
                let actions = plan_page(&page.rows, &mut pos);
                let progressed = !actions.is_empty();
                for action in actions {
                    match deliver(&ctx, spec, &job.progress, action).await {
                        Flow::Sent => replayed += 1,
                        Flow::Skipped => {}
                        Flow::Stop => return,
                    }
                }
                if !page.more || !progressed {
                    break;
                }
            }
        }
        let positions = job.progress.snapshot().await;
        let force = ahead_tries >= AHEAD_TRIES;
        match golive.ask(spec.id, positions, force).await {
            GoLive::Live => {
                if replayed > 0 {
                    metrics::counter!(m::DELIVERED, "topic" => spec.topic.clone(), "mode" => "replay")
                        .increment(replayed);
                }
                metrics::histogram!(m::CATCHUP_SECONDS).record(started.elapsed().as_secs_f64());
                return;
            }
            GoLive::NotYet => {
                read = true;
                ahead_tries = 0;
                tokio::task::yield_now().await;
            }
            GoLive::Ahead => {
                // Redis is behind what we read from PostgreSQL; give it a
                // moment before making the node backfill.
                read = false;
                ahead_tries += 1;
                tokio::select! {
                    _ = spec.cancel.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(10)) => {}
                }
            }
            GoLive::Gone => return,
        }
    }
}

enum Flow {
    Sent,
    Skipped,
    Stop,
}

/// Applies one planned action to the subscription's progress, queueing the
/// message when the subscriber should see it.
async fn deliver(
    ctx: &CatchupContext,
    spec: &SubSpec,
    progress: &Progress,
    action: Action,
) -> Flow {
    let mut guard = progress.lock().await;
    if spec.cancel.is_cancelled() {
        return Flow::Stop;
    }
    let (event, fresh, earlier) = match action {
        Action::Jump { channel, to } => {
            set_position(&mut guard, channel, to);
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
        set_position(&mut guard, *ch, *seq);
    }
    let for_other_user = event.user_id.as_deref().is_some_and(|u| u != &*spec.user);
    if earlier || for_other_user {
        return Flow::Skipped;
    }
    let cursor = ctx.cursors.encode(guard.iter().copied());
    let frame = protocol::encode_message(spec.protocol, &event, &cursor);
    // Never hold the lock on a blocked client past cancellation: the shard
    // reads these positions when it removes the subscription. No read permit
    // is held here.
    tokio::select! {
        r = tokio::time::timeout(ctx.stall_timeout, spec.tx.send(Outbound::Message(frame, Stamp::new(event.created_at_ms, Path::Replay)))) => match r {
            Ok(Ok(())) => Flow::Sent,
            Ok(Err(_)) => {
                *guard = before;
                spec.cancel.cancel();
                Flow::Stop
            }
            Err(_) => {
                *guard = before;
                metrics::counter!(m::STALLED_CLOSES, "where" => "queue").increment(1);
                tracing::info!(topic = %spec.topic, stall_ms = ctx.stall_timeout.as_millis() as u64, "client did not drain its queue; closing the connection");
                spec.cancel.cancel();
                spec.connection.cancel();
                Flow::Stop
            }
        },
        _ = spec.cancel.cancelled() => {
            *guard = before;
            Flow::Stop
        }
    }
}
