//! Catch-up: replays a subscription's missed entries from PostgreSQL, then
//! asks its dispatcher shard to switch it to live delivery.
//!
//! The replay reads every channel of the subscription after the
//! subscription's own positions, in per-channel order, skipping events that
//! already reached it through another channel and user-targeted events for
//! other users (their positions still advance). It reads until it reaches the
//! log's head, then asks to go live; the shard accepts only when the positions
//! equal what it has delivered live, otherwise the task reads again.
//!
//! Invariant: the positions in [`Progress`] change only together with the
//! enqueueing of the frame that covers them, under one lock, so whoever stops
//! the task reads positions that match exactly what the client was sent.

use crate::fanout::{Command, GoLive, Shared, SubSpec};
use crate::metrics as m;
use crate::protocol;
use crate::session::Outbound;
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchyard_cursorlog::LogEvent;
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

fn pos_of(positions: &[(i64, i64)], ch: i64) -> Option<i64> {
    positions.iter().find(|p| p.0 == ch).map(|p| p.1)
}

/// Applies replay row `(ch, seq, ev)` to `positions` (advancing `ch`) and
/// says whether the event must be delivered: not when the row is already
/// behind the position, when the event reached the subscriber earlier through
/// another of its channels, or when it targets another user.
pub(crate) fn advance(
    positions: &mut [(i64, i64)],
    ch: i64,
    seq: i64,
    ev: &LogEvent,
    user: &str,
) -> bool {
    let Some(idx) = positions.iter().position(|p| p.0 == ch) else {
        return false;
    };
    if seq <= positions[idx].1 {
        return false;
    }
    let earlier = ev.entries.iter().any(|e| {
        e.channel != ch && e.seq > 0 && pos_of(positions, e.channel).is_some_and(|p| e.seq <= p)
    });
    positions[idx].1 = seq;
    let for_other_user = ev.user_id.as_deref().is_some_and(|u| u != user);
    !(earlier || for_other_user)
}

/// Runs a catch-up to completion (live), cancellation, or the connection's end.
pub(crate) async fn run(shared: Arc<Shared>, shard: mpsc::Sender<Command>, job: CatchupJob) {
    let started = Instant::now();
    let spec = &job.spec;
    let mut backoff = Duration::from_millis(50);
    let mut replayed = 0u64;
    loop {
        if spec.cancel.is_cancelled() {
            return;
        }
        // Read until the head.
        let permit = tokio::select! {
            _ = spec.cancel.cancelled() => return,
            p = shared.catchup_permits.acquire() => match p { Ok(p) => p, Err(_) => return },
        };
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
            let more = page.more;
            for (ch, seq, ev) in page.rows {
                let mut guard = job.progress.positions.lock().await;
                if spec.cancel.is_cancelled() {
                    return;
                }
                let Some(idx) = guard.iter().position(|p| p.0 == ch) else {
                    continue;
                };
                let before = guard[idx].1;
                if !advance(&mut guard, ch, seq, &ev, &spec.user) {
                    continue;
                }
                let cursor = switchyard_cursorlog::cursor::encode_parts(
                    &shared.epoch,
                    guard.iter().copied(),
                );
                let frame = protocol::encode_message(spec.protocol, &ev, &cursor);
                // Never hold the lock on a blocked client past cancellation:
                // the shard reads these positions when it removes us.
                tokio::select! {
                    r = spec.tx.send(Outbound::Frame(frame)) => {
                        if r.is_err() {
                            guard[idx].1 = before;
                            spec.cancel.cancel();
                            return;
                        }
                    }
                    _ = spec.cancel.cancelled() => {
                        guard[idx].1 = before;
                        return;
                    }
                }
                replayed += 1;
            }
            if !more {
                break;
            }
        }
        drop(permit);
        let (tx, rx) = oneshot::channel();
        let positions = job.progress.snapshot().await;
        if shard
            .send(Command::GoLive {
                id: spec.id,
                positions,
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
                tokio::task::yield_now().await;
            }
            Ok(GoLive::Gone) | Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use switchyard_cursorlog::Entry;

    fn ev(entries: &[(i64, i64)], user: Option<&str>) -> LogEvent {
        LogEvent {
            event_id: "e".into(),
            topic: "T".into(),
            tenant: String::new(),
            user_id: user.map(Into::into),
            payload: Bytes::new(),
            content_type: "application/json".into(),
            created_at_ms: 0,
            entries: entries
                .iter()
                .map(|&(channel, seq)| Entry { channel, seq })
                .collect(),
        }
    }

    #[test]
    fn an_event_in_two_channels_is_delivered_once() {
        let e = ev(&[(1, 5), (2, 9)], None);
        let mut pos = vec![(1, 4), (2, 8)];
        assert!(advance(&mut pos, 1, 5, &e, "u"));
        assert!(!advance(&mut pos, 2, 9, &e, "u"));
        assert_eq!(pos, vec![(1, 5), (2, 9)]);
        // Reached through channel 2 first while channel 1 lags.
        let mut pos = vec![(1, 3), (2, 8)];
        assert!(advance(&mut pos, 2, 9, &e, "u"));
        let other = ev(&[(1, 4)], None);
        assert!(advance(&mut pos, 1, 4, &other, "u"));
        assert!(!advance(&mut pos, 1, 5, &e, "u"));
        assert_eq!(pos, vec![(1, 5), (2, 9)]);
    }

    #[test]
    fn rows_behind_the_position_and_other_users_events_are_skipped() {
        let mut pos = vec![(1, 10)];
        assert!(!advance(&mut pos, 1, 10, &ev(&[(1, 10)], None), "u"));
        assert!(!advance(&mut pos, 1, 11, &ev(&[(1, 11)], Some("v")), "u"));
        assert_eq!(pos, vec![(1, 11)], "skipped events still advance the position");
        assert!(advance(&mut pos, 1, 12, &ev(&[(1, 12)], Some("u")), "u"));
        assert!(!advance(&mut pos, 7, 1, &ev(&[(7, 1)], None), "u"), "unknown channel");
    }
}
