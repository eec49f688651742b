//! One dispatcher shard: its channels' stream positions, its subscriptions,
//! and live delivery to them.
//!
//! Per tracked channel the shard keeps `last_seen`, the highest sequence it
//! has delivered to its live subscribers, and keeps that stream contiguous: a
//! live event whose sequence jumps past `last_seen + 1` is not delivered; it
//! starts a backfill ([`super::backfill`]) that brings the hole, that event
//! included, from PostgreSQL in log order. A subscription is either catching
//! up (a [`crate::catchup`] task replays from PostgreSQL with its own
//! positions) or live (its positions are the channels' `last_seen`). It goes
//! live only when its positions equal `last_seen` on every channel, so the
//! switch has no gap and no duplicate.
//!
//! Invariants:
//! - An event is delivered to a subscription at most once: when it is reached
//!   through several channels, an entry already at or below the position of
//!   another of the subscription's channels means it was delivered then.
//! - Nothing here awaits PostgreSQL or a client.

use super::backfill::{self, BackfillState, Report};
use super::Command;
use crate::catchup::{self, CatchupContext, CatchupJob};
use crate::golive::{GoLive, GoLiveHandle, GoLiveRequest};
use crate::metrics as m;
use crate::outbound::{Outbound, Path, QueueError, Stamp};
use crate::protocol::{self, Protocol};
use crate::replay;
use crate::subscription::{Positions, Progress, SubId, SubSpec};
use bytes::Bytes;
use opentelemetry::trace::TraceContextExt as _;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use switchyard_cursorlog::LogEvent;
use switchyard_ops::tracecontext;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

pub(super) struct ChanState {
    /// Highest sequence delivered to live subscribers; `None` until known.
    pub(super) last_seen: Option<i64>,
    live: HashSet<SubId>,
    /// Subscriptions (live or catching up) that use the channel.
    refs: usize,
}

struct Sub {
    spec: SubSpec,
    channels: Arc<[i64]>,
    live: bool,
    stamp: u64,
    /// Positions of the running catch-up task (exact once it is cancelled).
    progress: Arc<Progress>,
}

pub(super) struct Shard {
    pub(super) catchup: Arc<CatchupContext>,
    pub(super) me: mpsc::Sender<Command>,
    golive: GoLiveHandle,
    pub(super) tasks: TaskTracker,
    pub(super) cancel: CancellationToken,
    pub(super) channels: HashMap<i64, ChanState>,
    subs: HashMap<SubId, Sub>,
    interned: HashMap<Vec<i64>, Arc<[i64]>>,
    stamp: u64,
    pub(super) backfill: BackfillState,
}

impl Shard {
    pub(super) fn new(
        catchup: Arc<CatchupContext>,
        me: mpsc::Sender<Command>,
        golive: GoLiveHandle,
        tasks: TaskTracker,
        cancel: CancellationToken,
    ) -> Self {
        Shard {
            catchup,
            me,
            golive,
            tasks,
            cancel,
            channels: HashMap::new(),
            subs: HashMap::new(),
            interned: HashMap::new(),
            stamp: 0,
            backfill: BackfillState::default(),
        }
    }

    pub(super) async fn run(
        mut self,
        mut rx: mpsc::Receiver<Command>,
        mut golive: mpsc::Receiver<GoLiveRequest>,
    ) {
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                c = rx.recv() => match c {
                    Some(c) => self.on_command(c),
                    None => return,
                },
                r = golive.recv() => match r {
                    Some(r) => {
                        let answer = self.on_go_live(r.id, &r.positions, r.force);
                        let _ = r.reply.send(answer);
                    }
                    None => return,
                },
            }
        }
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Live(ev) => self.on_live(ev),
            Command::Resync => self.request_backfill("resync", None),
            Command::HeadCheck => self.head_check(),
            Command::Register { spec, positions } => self.on_register(spec, positions),
            Command::Remove { id, reply } => self.on_remove(id, reply),
            Command::Backfill(report) => self.on_backfill(report),
        }
    }

    fn intern(&mut self, channels: &[i64]) -> Arc<[i64]> {
        if let Some(a) = self.interned.get(channels) {
            return a.clone();
        }
        if self.interned.len() > 10_000 {
            self.interned.retain(|_, a| Arc::strong_count(a) > 1);
        }
        let a: Arc<[i64]> = channels.into();
        self.interned.insert(channels.to_vec(), a.clone());
        a
    }

    fn spawn_catchup(&self, spec: SubSpec, progress: Arc<Progress>) {
        let span = tracing::info_span!("gateway.catchup", topic = %spec.topic);
        let job = CatchupJob { spec, progress };
        let run = catchup::run(self.catchup.clone(), self.golive.clone(), job).instrument(span);
        let shutdown = self.cancel.clone();
        self.tasks.spawn(async move {
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = run => {}
            }
        });
    }

    fn on_register(&mut self, spec: SubSpec, positions: Positions) {
        let channels = self.intern(&spec.channels);
        for ch in channels.iter() {
            let st = self.channels.entry(*ch).or_insert_with(|| ChanState {
                last_seen: None,
                live: HashSet::new(),
                refs: 0,
            });
            st.refs += 1;
        }
        metrics::gauge!(m::SUBSCRIPTIONS).increment(1.0);
        let progress = Arc::new(Progress::new(positions));
        self.spawn_catchup(spec.clone(), progress.clone());
        self.subs.insert(
            spec.id,
            Sub {
                spec,
                channels,
                live: false,
                stamp: 0,
                progress,
            },
        );
    }

    fn on_go_live(&mut self, id: SubId, positions: &[(i64, i64)], force: bool) -> GoLive {
        let Some(sub) = self.subs.get(&id) else {
            return GoLive::Gone;
        };
        if sub.live || sub.spec.cancel.is_cancelled() {
            return GoLive::Gone;
        }
        let mut ahead = false;
        for &(ch, pos) in positions {
            let Some(st) = self.channels.get_mut(&ch) else {
                continue;
            };
            match st.last_seen {
                None => st.last_seen = Some(pos),
                Some(ls) if pos < ls => return GoLive::NotYet,
                Some(ls) if pos > ls => ahead = true,
                Some(_) => {}
            }
        }
        if ahead {
            if force {
                // Redis has not brought what PostgreSQL already has: bring
                // the node's live subscribers up to date from the log; the
                // catch-up asks again.
                self.request_backfill("catchup", None);
            }
            return GoLive::Ahead;
        }
        let Some(sub) = self.subs.get_mut(&id) else {
            return GoLive::Gone;
        };
        sub.live = true;
        for ch in sub.channels.iter() {
            if let Some(st) = self.channels.get_mut(ch) {
                st.live.insert(id);
            }
        }
        GoLive::Live
    }

    fn on_remove(&mut self, id: SubId, reply: Option<oneshot::Sender<Option<Positions>>>) {
        let Some(sub) = self.subs.remove(&id) else {
            if let Some(reply) = reply {
                let _ = reply.send(None);
            }
            return;
        };
        sub.spec.cancel.cancel();
        metrics::gauge!(m::SUBSCRIPTIONS).decrement(1.0);
        if let Some(reply) = reply {
            if sub.live {
                let _ = reply.send(Some(self.positions_of(&sub.channels)));
            } else {
                // The catch-up task stops at its next step; its progress is
                // exact once it has let go of the lock. Wait for that beside
                // the shard, not in it.
                let progress = sub.progress.clone();
                self.tasks.spawn(async move {
                    let _ = reply.send(Some(progress.snapshot().await));
                });
            }
        }
        for ch in sub.channels.iter() {
            if let Some(st) = self.channels.get_mut(ch) {
                st.live.remove(&id);
                st.refs = st.refs.saturating_sub(1);
                if st.refs == 0 {
                    self.channels.remove(ch);
                    self.backfill.forget(*ch);
                }
            }
        }
    }

    fn positions_of(&self, channels: &[i64]) -> Positions {
        channels
            .iter()
            .map(|ch| {
                let ls = self.channels.get(ch).and_then(|s| s.last_seen).unwrap_or(0);
                (*ch, ls)
            })
            .collect()
    }

    /// Classifies a live event's entries against `last_seen`: the channels
    /// where it is next, and whether it is ahead in some channel (a gap).
    fn classify(&mut self, ev: &LogEvent) -> (Vec<i64>, bool) {
        let mut fresh = Vec::with_capacity(ev.entries.len());
        let mut gap = false;
        for e in ev.entries.iter().filter(|e| e.seq > 0) {
            let Some(st) = self.channels.get_mut(&e.channel) else {
                continue;
            };
            match st.last_seen {
                // No subscriber is live here yet; remember where the stream
                // is so catch-ups know how far to read.
                None => st.last_seen = Some(e.seq),
                Some(ls) if e.seq == ls + 1 => fresh.push(e.channel),
                Some(ls) if e.seq > ls + 1 => gap = true,
                Some(_) => {}
            }
        }
        (fresh, gap)
    }

    fn on_live(&mut self, ev: Arc<LogEvent>) {
        let ephemeral: Vec<i64> = ev
            .entries
            .iter()
            .filter(|e| e.seq == 0 && self.channels.contains_key(&e.channel))
            .map(|e| e.channel)
            .collect();
        if !ephemeral.is_empty() {
            self.deliver(&ev, &ephemeral, Path::Live);
        }
        let (fresh, gap) = self.classify(&ev);
        if gap {
            // A lost or reordered publish: the backfill brings the hole and
            // this event from the log, in log order.
            self.request_backfill("gap", None);
            return;
        }
        if fresh.is_empty() {
            return;
        }
        self.deliver(&ev, &fresh, Path::Live);
        self.advance(&ev, &fresh);
    }

    /// Moves `last_seen` of `via` to `ev`'s entries there.
    pub(super) fn advance(&mut self, ev: &LogEvent, via: &[i64]) {
        for e in &ev.entries {
            if via.contains(&e.channel) {
                if let Some(st) = self.channels.get_mut(&e.channel) {
                    st.last_seen = Some(e.seq);
                }
            }
        }
    }

    /// Delivers `ev` to the live subscribers of `via` (channels whose entry of
    /// `ev` is the next in sequence). `last_seen` is not yet advanced.
    ///
    /// A live event that carries a trace context gets one `gateway.fanout`
    /// span (its recipient count an attribute), and the first recipient's
    /// message a `gateway.write` span: tracing costs one span per event and
    /// node, not one per socket.
    pub(super) fn deliver(&mut self, ev: &LogEvent, via: &[i64], path: Path) {
        self.stamp += 1;
        let stamp = self.stamp;
        let span = fanout_span(ev, path);
        let mut sampled = span.as_ref().and_then(|s| {
            let sc = s.context().span().span_context().clone();
            sc.is_valid().then(|| Arc::new(sc))
        });
        let mut frames: HashMap<(usize, Protocol), Bytes> = HashMap::new();
        let mut demote: Vec<SubId> = Vec::new();
        let mut gone: Vec<SubId> = Vec::new();
        let mut delivered = 0u64;
        for ch in via {
            let Some(st) = self.channels.get(ch) else {
                continue;
            };
            for sid in &st.live {
                let Some(sub) = self.subs.get_mut(sid) else {
                    continue;
                };
                if sub.stamp == stamp {
                    continue;
                }
                sub.stamp = stamp;
                if let Some(u) = &ev.user_id {
                    if **u != *sub.spec.user {
                        continue;
                    }
                }
                // Reached earlier through another of its channels?
                let earlier = ev.entries.iter().any(|e| {
                    e.seq > 0
                        && !via.contains(&e.channel)
                        && sub.channels.binary_search(&e.channel).is_ok()
                        && self
                            .channels
                            .get(&e.channel)
                            .and_then(|s| s.last_seen)
                            .is_some_and(|ls| e.seq <= ls)
                });
                if earlier {
                    continue;
                }
                let key = (
                    Arc::as_ptr(&sub.channels) as *const i64 as usize,
                    sub.spec.protocol,
                );
                let frame = match frames.get(&key) {
                    Some(f) => f.clone(),
                    None => {
                        let channels = &self.channels;
                        let cursor = self.catchup.cursors.encode(sub.channels.iter().map(|c| {
                            let pos = if via.contains(c) {
                                ev.seq_in(*c).filter(|s| *s > 0)
                            } else {
                                None
                            };
                            let pos = pos.unwrap_or_else(|| {
                                channels.get(c).and_then(|s| s.last_seen).unwrap_or(0)
                            });
                            (*c, pos)
                        }));
                        let f = protocol::encode_message(sub.spec.protocol, ev, &cursor);
                        frames.insert(key, f.clone());
                        f
                    }
                };
                let st = Stamp {
                    created_at_ms: ev.created_at_ms,
                    received_at_ms: ev.live.node_received_at_ms,
                    path,
                    trace: sampled.take(),
                };
                match sub.spec.tx.try_send(Outbound::Message(frame, st)) {
                    Ok(()) => delivered += 1,
                    Err(QueueError::Full) => demote.push(*sid),
                    Err(QueueError::Closed) => gone.push(*sid),
                }
            }
        }
        if delivered > 0 {
            metrics::counter!(m::DELIVERED, "topic" => ev.topic.clone(), "mode" => "live")
                .increment(delivered);
        }
        if let Some(span) = span {
            span.record("recipients", delivered);
        }
        for sid in demote {
            self.demote(sid);
        }
        for sid in gone {
            if let Some(sub) = self.subs.get(&sid) {
                sub.spec.cancel.cancel();
            }
            self.demote(sid);
        }
    }

    /// Moves a live subscription back to catch-up from its exact positions
    /// (it did not get the event being delivered).
    fn demote(&mut self, sid: SubId) {
        let Some(sub) = self.subs.get(&sid) else {
            return;
        };
        if !sub.live {
            return;
        }
        let positions = self.positions_of(&sub.channels);
        let channels = sub.channels.clone();
        for ch in channels.iter() {
            if let Some(st) = self.channels.get_mut(ch) {
                st.live.remove(&sid);
            }
        }
        let Some(sub) = self.subs.get_mut(&sid) else {
            return;
        };
        sub.live = false;
        if sub.spec.cancel.is_cancelled() {
            return;
        }
        metrics::counter!(m::SLOW_CONSUMERS).increment(1);
        tracing::debug!(sub = sid, topic = %sub.spec.topic, "subscriber fell behind; replaying from the log");
        let progress = Arc::new(Progress::new(positions));
        sub.progress = progress.clone();
        let spec = sub.spec.clone();
        self.spawn_catchup(spec, progress);
    }

    /// Channels whose stream position is known, with it.
    pub(super) fn tracked(&self) -> Positions {
        self.channels
            .iter()
            .filter_map(|(c, s)| s.last_seen.map(|ls| (*c, ls)))
            .collect()
    }

    pub(super) fn demote_all(&mut self) {
        let live: Vec<SubId> = self
            .subs
            .iter()
            .filter(|(_, s)| s.live)
            .map(|(id, _)| *id)
            .collect();
        for sid in live {
            self.demote(sid);
        }
    }

    /// Applies a page of log rows read by a backfill: delivers, in log order,
    /// what is next in each tracked channel and advances `last_seen`.
    /// Returns the channels' positions afterwards.
    pub(super) fn apply_page(
        &mut self,
        rows: &[(i64, i64, Arc<LogEvent>)],
        channels: &[i64],
    ) -> Positions {
        let mut pos: HashMap<i64, i64> = channels
            .iter()
            .filter_map(|ch| {
                self.channels
                    .get(ch)
                    .and_then(|s| s.last_seen)
                    .map(|ls| (*ch, ls))
            })
            .collect();
        for action in replay::plan_page(rows, &mut pos) {
            match action {
                replay::Action::Jump { channel, to } => {
                    if let Some(st) = self.channels.get_mut(&channel) {
                        st.last_seen = Some(st.last_seen.map_or(to, |ls| ls.max(to)));
                    }
                }
                replay::Action::Event { event, fresh, .. } => {
                    let via: Vec<i64> = fresh.iter().map(|f| f.0).collect();
                    self.deliver(&event, &via, Path::Backfill);
                    for (ch, seq) in fresh {
                        if let Some(st) = self.channels.get_mut(&ch) {
                            st.last_seen = Some(seq);
                        }
                    }
                }
            }
        }
        pos.into_iter().collect()
    }

    /// Everything up to `heads` was deleted by retention.
    pub(super) fn skip_to(&mut self, heads: &HashMap<i64, i64>) {
        for (ch, head) in heads {
            if let Some(st) = self.channels.get_mut(ch) {
                if let Some(ls) = st.last_seen {
                    st.last_seen = Some(ls.max(*head));
                }
            }
        }
    }

    fn on_backfill(&mut self, report: Report) {
        backfill::on_report(self, report);
    }

    fn head_check(&mut self) {
        backfill::head_check(self);
    }

    pub(super) fn request_backfill(
        &mut self,
        reason: &'static str,
        bound: Option<HashMap<i64, i64>>,
    ) {
        backfill::request(self, reason, bound);
    }
}

/// The `gateway.fanout` span of a live event with a trace context, a child
/// of the bridge span it names; `None` when tracing is off or the event
/// carries none.
fn fanout_span(ev: &LogEvent, path: Path) -> Option<tracing::Span> {
    if path != Path::Live || !tracecontext::enabled() {
        return None;
    }
    let parent = tracecontext::parse(&ev.live.traceparent)?;
    let span = tracing::info_span!(
        "gateway.fanout",
        topic = %ev.topic,
        event_id = %ev.event_id,
        recipients = tracing::field::Empty
    );
    let _ = span.set_parent(tracecontext::remote_parent(parent));
    Some(span)
}
