//! Backfill and head check: bringing a shard's live stream up to date from
//! PostgreSQL when Redis may have missed something (a sequence gap, a Redis
//! reconnect, a catch-up ahead of the node, or a head check that sees the log
//! ahead of what was delivered).
//!
//! The reads run in their own tasks; each page goes to the shard through its
//! mailbox and the shard applies it ([`super::shard::Shard::apply_page`]),
//! against its *current* positions, which live delivery may have advanced
//! meanwhile. At most one backfill runs per shard; requests that arrive
//! meanwhile are merged into one that starts when it ends (with fresh heads,
//! so an event that revealed a gap after the running backfill read its
//! heads is still covered).
//!
//! Invariant: a backfill that cannot read the log demotes every live
//! subscription of the shard to catch-up (each recovers on its own once the
//! log answers); nothing is skipped because a read failed.

use super::shard::Shard;
use super::Command;
use crate::metrics as m;
use crate::subscription::Positions;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use switchyard_cursorlog::{CursorLog, LogError, LogEvent};
use switchyard_ops::backoff::Backoff;
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument as _;

/// Reads a backfill retries before it gives up.
const ATTEMPTS: u32 = 3;

/// What a shard's background reads report.
pub(crate) enum Report {
    /// Rows to apply; the reply carries the positions afterwards.
    Page {
        rows: Vec<(i64, i64, Arc<LogEvent>)>,
        channels: Vec<i64>,
        reply: oneshot::Sender<Positions>,
    },
    /// Everything up to these heads was deleted by retention.
    Trimmed(HashMap<i64, i64>),
    Done {
        reason: &'static str,
        outcome: Result<(), LogError>,
    },
    /// The heads a head check read.
    Heads(Result<HashMap<i64, i64>, LogError>),
}

#[derive(Debug)]
struct Pending {
    reason: &'static str,
    /// `None`: up to the log's current heads.
    bound: Option<HashMap<i64, i64>>,
}

/// A shard's backfill bookkeeping.
#[derive(Debug, Default)]
pub(super) struct BackfillState {
    running: bool,
    pending: Option<Pending>,
    heads_reading: bool,
    /// Heads seen by the previous head check.
    pending_heads: HashMap<i64, i64>,
}

impl BackfillState {
    pub(super) fn forget(&mut self, channel: i64) {
        self.pending_heads.remove(&channel);
    }
}

/// Asks for a backfill up to `bound` (the log's heads when `None`).
pub(super) fn request(shard: &mut Shard, reason: &'static str, bound: Option<HashMap<i64, i64>>) {
    if shard.backfill.running {
        let merged = match shard.backfill.pending.take() {
            None => Pending { reason, bound },
            Some(p) => Pending {
                reason: p.reason,
                bound: merge_bounds(p.bound, bound),
            },
        };
        shard.backfill.pending = Some(merged);
        return;
    }
    start(shard, reason, bound);
}

/// The wider of two bounds: `None` (the current heads) wins.
fn merge_bounds(
    a: Option<HashMap<i64, i64>>,
    b: Option<HashMap<i64, i64>>,
) -> Option<HashMap<i64, i64>> {
    let (mut a, b) = (a?, b?);
    for (ch, h) in b {
        let e = a.entry(ch).or_insert(h);
        *e = (*e).max(h);
    }
    Some(a)
}

fn start(shard: &mut Shard, reason: &'static str, bound: Option<HashMap<i64, i64>>) {
    let tracked = shard.tracked();
    if tracked.is_empty() {
        return;
    }
    shard.backfill.running = true;
    let log = shard.catchup.log.clone();
    let page = shard.catchup.replay_page;
    let me = shard.me.clone();
    let cancel = shard.cancel.clone();
    shard.tasks.spawn(async move {
        let outcome = tokio::select! {
            _ = cancel.cancelled() => return,
            r = run(&log, page, &me, tracked, bound, reason)
                .instrument(tracing::info_span!("gateway.backfill", reason)) => r,
        };
        let _ = me
            .send(Command::Backfill(Report::Done { reason, outcome }))
            .await;
    });
}

/// Starts a head check: reads the heads beside the shard.
pub(super) fn head_check(shard: &mut Shard) {
    if shard.backfill.heads_reading {
        return;
    }
    let channels: Vec<i64> = shard.tracked().into_iter().map(|p| p.0).collect();
    if channels.is_empty() {
        shard.backfill.pending_heads.clear();
        return;
    }
    shard.backfill.heads_reading = true;
    let log = shard.catchup.log.clone();
    let me = shard.me.clone();
    let cancel = shard.cancel.clone();
    shard.tasks.spawn(async move {
        let heads = tokio::select! {
            _ = cancel.cancelled() => return,
            h = log.heads(&channels) => h,
        };
        let heads = heads.map(|h| h.iter().map(|h| (h.channel, h.head)).collect());
        let _ = me.send(Command::Backfill(Report::Heads(heads))).await;
    });
}

/// Applies a report in the shard.
pub(super) fn on_report(shard: &mut Shard, report: Report) {
    match report {
        Report::Page {
            rows,
            channels,
            reply,
        } => {
            let positions = shard.apply_page(&rows, &channels);
            let _ = reply.send(positions);
        }
        Report::Trimmed(heads) => shard.skip_to(&heads),
        Report::Done { reason, outcome } => {
            shard.backfill.running = false;
            if let Err(e) = outcome {
                metrics::counter!(m::BACKFILL_FAILURES, "reason" => reason).increment(1);
                tracing::warn!(error = %e, reason, "backfill failed; live subscribers switch to catch-up");
                shard.demote_all();
            }
            if let Some(p) = shard.backfill.pending.take() {
                start(shard, p.reason, p.bound);
            }
        }
        Report::Heads(Ok(heads)) => {
            shard.backfill.heads_reading = false;
            // Heal up to the heads seen by the previous check, not the
            // current ones, so a publish still in flight is not raced.
            let previous = std::mem::replace(&mut shard.backfill.pending_heads, heads);
            if !previous.is_empty() {
                request(shard, "head_check", Some(previous));
            }
        }
        Report::Heads(Err(e)) => {
            shard.backfill.heads_reading = false;
            tracing::debug!(error = %e, "head check could not read the heads");
        }
    }
}

/// Reads from `positions` up to the heads (or `bound`), page by page, each
/// applied by the shard before the next is read.
async fn run(
    log: &CursorLog,
    page_rows: switchyard_cursorlog::PageLimit,
    shard: &mpsc::Sender<Command>,
    mut positions: Positions,
    bound: Option<HashMap<i64, i64>>,
    reason: &'static str,
) -> Result<(), LogError> {
    let channels: Vec<i64> = positions.iter().map(|p| p.0).collect();
    let heads: HashMap<i64, i64> = match bound {
        Some(b) => b,
        None => retry("heads", || log.heads(&channels))
            .await?
            .iter()
            .map(|h| (h.channel, h.head))
            .collect(),
    };
    let mut counted = false;
    loop {
        positions.sort_unstable();
        let mut uptos = Vec::with_capacity(positions.len());
        let mut behind = false;
        for (ch, ls) in &positions {
            let head = heads.get(ch).copied().unwrap_or(*ls).max(*ls);
            behind |= head > *ls;
            uptos.push(head);
        }
        if !behind {
            return Ok(());
        }
        if !counted {
            counted = true;
            metrics::counter!(m::BACKFILLS, "reason" => reason).increment(1);
            tracing::debug!(
                reason,
                channels = positions.len(),
                "backfilling from the log"
            );
        }
        let page = retry("backfill_read", || {
            log.read_after(&positions, Some(&uptos), page_rows)
        })
        .await?;
        if page.rows.is_empty() {
            let trimmed = positions.iter().map(|p| p.0).zip(uptos).collect();
            let _ = shard
                .send(Command::Backfill(Report::Trimmed(trimmed)))
                .await;
            return Ok(());
        }
        let (reply, answer) = oneshot::channel();
        let channels = positions.iter().map(|p| p.0).collect();
        let sent = shard
            .send(Command::Backfill(Report::Page {
                rows: page.rows,
                channels,
                reply,
            }))
            .await;
        let Ok(()) = sent else { return Ok(()) };
        let Ok(mut after) = answer.await else {
            return Ok(());
        };
        after.sort_unstable();
        if after == positions {
            tracing::warn!(
                reason,
                "backfill made no progress; leaving it to the next head check"
            );
            return Ok(());
        }
        positions = after;
    }
}

async fn retry<T, F, Fut>(op: &'static str, mut f: F) -> Result<T, LogError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, LogError>>,
{
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_millis(500));
    let mut attempt = 1;
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if attempt >= ATTEMPTS => return Err(e),
            Err(e) => {
                metrics::counter!(m::RETRIES, "op" => op).increment(1);
                tracing::debug!(error = %e, attempt, op, "log read failed; retrying");
                tokio::time::sleep(backoff.next_delay()).await;
                attempt += 1;
            }
        }
    }
}
