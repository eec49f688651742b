//! Live fan-out on one gateway node: a few dispatcher shards (topics are
//! hashed onto them), each a single task that owns its state, fed by the Redis
//! live feed and by subscription commands.
//!
//! Per tracked channel a shard keeps `last_seen`, the highest sequence it has
//! delivered to its live subscribers, and makes that stream contiguous: a
//! live event whose sequence jumps past `last_seen + 1` first triggers a
//! backfill of the hole from PostgreSQL (a lost Redis publish); a Redis
//! reconnect or the periodic head check does the same for every channel.
//! A subscription is either catching up (a [`crate::catchup`] task replays
//! from PostgreSQL with its own positions) or live (its positions are the
//! channels' `last_seen`). It goes live only when its positions equal
//! `last_seen` on every channel, so the switch has no gap and no duplicate.
//!
//! Invariants:
//! - An event is delivered to a subscription at most once: when it is reached
//!   through several channels, an entry already at or below the position of
//!   another of the subscription's channels means it was delivered then.
//! - Nothing waits on a client: a full outbound queue demotes the
//!   subscription to catch-up from its exact positions instead of blocking.

use crate::catchup::{self, CatchupJob, Progress};
use crate::metrics as m;
use crate::protocol::{self, Protocol};
use crate::replay;
use crate::session::Outbound;
use bytes::Bytes;
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;
use switchyard_cursorlog::{CursorLog, LogEvent};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_util::sync::CancellationToken;

/// Identifies a subscription on this node.
pub type SubId = u64;

/// Per-channel positions `(channel id, last handled seq)`.
pub type Positions = Vec<(i64, i64)>;

/// Everything a shard needs to know about a subscription.
#[derive(Debug, Clone)]
pub struct SubSpec {
    pub id: SubId,
    pub user: Arc<str>,
    pub topic: String,
    /// Sorted, de-duplicated channel ids.
    pub channels: Vec<i64>,
    pub protocol: Protocol,
    pub tx: mpsc::Sender<Outbound>,
    /// Cancelled when the subscription ends (unsubscribe, close, refresh).
    pub cancel: CancellationToken,
}

/// Result of a catch-up task asking to go live.
#[derive(Debug, PartialEq, Eq)]
pub enum GoLive {
    Live,
    /// The node has delivered past these positions; read more first.
    NotYet,
    /// The positions are past what the node has delivered live (Redis is
    /// behind PostgreSQL): ask again shortly, or with `force` to backfill.
    Ahead,
    /// The subscription is gone.
    Gone,
}

pub(crate) enum Command {
    Live(Arc<LogEvent>),
    /// Redis reconnected: anything may have been missed.
    Resync,
    HeadCheck,
    Register {
        spec: SubSpec,
        positions: Vec<(i64, i64)>,
    },
    GoLive {
        id: SubId,
        positions: Vec<(i64, i64)>,
        /// Backfill the node from PostgreSQL when it is behind the positions.
        force: bool,
        reply: oneshot::Sender<GoLive>,
    },
    Remove {
        id: SubId,
        reply: Option<oneshot::Sender<Option<Positions>>>,
    },
}

/// Shared by shards and catch-up tasks.
#[derive(Debug)]
pub(crate) struct Shared {
    pub log: CursorLog,
    pub epoch: Arc<str>,
    pub catchup_permits: Semaphore,
    pub replay_page: i64,
}

/// Handle to the node's shards.
#[derive(Clone, Debug)]
pub struct Fanout {
    shards: Arc<Vec<mpsc::Sender<Command>>>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Command::Live(_) => "Live",
            Command::Resync => "Resync",
            Command::HeadCheck => "HeadCheck",
            Command::Register { .. } => "Register",
            Command::GoLive { .. } => "GoLive",
            Command::Remove { .. } => "Remove",
        })
    }
}

impl Fanout {
    /// Starts `n` shards.
    pub fn start(
        n: usize,
        log: CursorLog,
        replay_page: i64,
        catchup_concurrency: usize,
        head_check: Duration,
        cancel: CancellationToken,
    ) -> Fanout {
        let shared = Arc::new(Shared {
            epoch: log.epoch().into(),
            log,
            catchup_permits: Semaphore::new(catchup_concurrency.max(1)),
            replay_page: replay_page.max(1),
        });
        let mut shards = Vec::with_capacity(n.max(1));
        for i in 0..n.max(1) {
            let (tx, rx) = mpsc::channel(16 * 1024);
            let shard = Shard {
                shared: shared.clone(),
                me: tx.clone(),
                channels: HashMap::new(),
                subs: HashMap::new(),
                interned: HashMap::new(),
                stamp: 0,
                pending_heads: HashMap::new(),
            };
            tokio::spawn(shard.run(rx, cancel.clone()));
            shards.push(tx);
            let _ = i;
        }
        let fanout = Fanout {
            shards: Arc::new(shards),
        };
        let ticker = fanout.clone();
        tokio::spawn(async move {
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
    pub async fn register(&self, spec: SubSpec, positions: Vec<(i64, i64)>) {
        let shard = self.shard(&spec.topic).clone();
        let _ = shard.send(Command::Register { spec, positions }).await;
    }

    /// Removes a subscription; returns its positions when they are known.
    pub async fn remove(
        &self,
        topic: &str,
        id: SubId,
        want_positions: bool,
    ) -> Option<Vec<(i64, i64)>> {
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

struct ChanState {
    /// Highest sequence delivered to live subscribers; `None` until known.
    last_seen: Option<i64>,
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

struct Shard {
    shared: Arc<Shared>,
    me: mpsc::Sender<Command>,
    channels: HashMap<i64, ChanState>,
    subs: HashMap<SubId, Sub>,
    interned: HashMap<Vec<i64>, Arc<[i64]>>,
    stamp: u64,
    /// Heads seen by the previous head check.
    pending_heads: HashMap<i64, i64>,
}

const BACKFILL_ATTEMPTS: u32 = 3;

impl Shard {
    async fn run(mut self, mut rx: mpsc::Receiver<Command>, cancel: CancellationToken) {
        loop {
            let cmd = tokio::select! {
                _ = cancel.cancelled() => return,
                c = rx.recv() => match c { Some(c) => c, None => return },
            };
            match cmd {
                Command::Live(ev) => self.on_live(ev).await,
                Command::Resync => {
                    let _ = self.node_backfill("resync", None).await;
                }
                Command::HeadCheck => self.head_check().await,
                Command::Register { spec, positions } => self.on_register(spec, positions),
                Command::GoLive {
                    id,
                    positions,
                    force,
                    reply,
                } => {
                    let r = self.on_go_live(id, positions, force).await;
                    let _ = reply.send(r);
                }
                Command::Remove { id, reply } => {
                    let positions = self.on_remove(id).await;
                    if let Some(reply) = reply {
                        let _ = reply.send(positions);
                    }
                }
            }
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

    fn on_register(&mut self, spec: SubSpec, positions: Vec<(i64, i64)>) {
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
        let progress = Arc::new(Progress::new(positions.clone()));
        let job = CatchupJob {
            spec: spec.clone(),
            progress: progress.clone(),
        };
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
        tokio::spawn(catchup::run(self.shared.clone(), self.me.clone(), job));
    }

    async fn on_go_live(&mut self, id: SubId, positions: Vec<(i64, i64)>, force: bool) -> GoLive {
        let Some(sub) = self.subs.get(&id) else {
            return GoLive::Gone;
        };
        if sub.live || sub.spec.cancel.is_cancelled() {
            return GoLive::Gone;
        }
        let mut ahead = false;
        for &(ch, pos) in &positions {
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
            if !force {
                return GoLive::Ahead;
            }
            // Redis has not brought what PostgreSQL already has: bring the
            // node's live subscribers up to date from the log, then compare
            // again.
            if self.node_backfill("catchup", None).await.is_err() {
                return GoLive::NotYet;
            }
            for &(ch, pos) in &positions {
                if self.channels.get(&ch).and_then(|s| s.last_seen) != Some(pos) {
                    return GoLive::NotYet;
                }
            }
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

    async fn on_remove(&mut self, id: SubId) -> Option<Vec<(i64, i64)>> {
        let sub = self.subs.remove(&id)?;
        sub.spec.cancel.cancel();
        metrics::gauge!(m::SUBSCRIPTIONS).decrement(1.0);
        let positions = if sub.live {
            Some(self.positions_of(&sub.channels))
        } else {
            // The catch-up task stops at its next step; its progress is exact
            // once it has let go of the lock.
            Some(sub.progress.snapshot().await)
        };
        for ch in sub.channels.iter() {
            if let Some(st) = self.channels.get_mut(ch) {
                st.live.remove(&id);
                st.refs = st.refs.saturating_sub(1);
                if st.refs == 0 {
                    self.channels.remove(ch);
                    self.pending_heads.remove(ch);
                }
            }
        }
        positions
    }

    fn positions_of(&self, channels: &[i64]) -> Vec<(i64, i64)> {
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

    async fn on_live(&mut self, ev: Arc<LogEvent>) {
        let ephemeral: Vec<i64> = ev
            .entries
            .iter()
            .filter(|e| e.seq == 0 && self.channels.contains_key(&e.channel))
            .map(|e| e.channel)
            .collect();
        if !ephemeral.is_empty() {
            self.deliver(&ev, &ephemeral);
        }
        let (mut fresh, gap) = self.classify(&ev);
        if gap {
            // A lost or reordered publish: catch the whole shard up from the
            // log (which includes this event), in log order.
            if self.node_backfill("gap", None).await.is_err() {
                return;
            }
            let (f, still_gap) = self.classify(&ev);
            if still_gap {
                return;
            }
            fresh = f;
        }
        if fresh.is_empty() {
            return;
        }
        self.deliver(&ev, &fresh);
        for e in &ev.entries {
            if fresh.contains(&e.channel) {
                if let Some(st) = self.channels.get_mut(&e.channel) {
                    st.last_seen = Some(e.seq);
                }
            }
        }
    }

    /// Delivers `ev` to the live subscribers of `via` (channels whose entry of
    /// `ev` is the next in sequence). `last_seen` is not yet advanced.
    fn deliver(&mut self, ev: &LogEvent, via: &[i64]) {
        self.stamp += 1;
        let stamp = self.stamp;
        let mut frames: HashMap<(usize, Protocol), Bytes> = HashMap::new();
        let mut demote: Vec<SubId> = Vec::new();
        let mut gone: Vec<SubId> = Vec::new();
        let lag = (chrono::Utc::now().timestamp_millis() - ev.created_at_ms).max(0) as f64 / 1000.0;
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
                        let cursor = switchyard_cursorlog::cursor::encode_parts(
                            &self.shared.epoch,
                            sub.channels.iter().map(|c| {
                                let pos = if via.contains(c) {
                                    ev.seq_in(*c).filter(|s| *s > 0)
                                } else {
                                    None
                                };
                                let pos = pos.unwrap_or_else(|| {
                                    channels.get(c).and_then(|s| s.last_seen).unwrap_or(0)
                                });
                                (*c, pos)
                            }),
                        );
                        let f = protocol::encode_message(sub.spec.protocol, ev, &cursor);
                        frames.insert(key, f.clone());
                        f
                    }
                };
                match sub.spec.tx.try_send(Outbound::Frame(frame)) {
                    Ok(()) => delivered += 1,
                    Err(mpsc::error::TrySendError::Full(_)) => demote.push(*sid),
                    Err(mpsc::error::TrySendError::Closed(_)) => gone.push(*sid),
                }
            }
        }
        if delivered > 0 {
            metrics::counter!(m::DELIVERED, "topic" => ev.topic.clone(), "mode" => "live")
                .increment(delivered);
            metrics::histogram!(m::DELIVERY_LAG).record(lag);
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
        let job = CatchupJob {
            spec: sub.spec.clone(),
            progress,
        };
        tokio::spawn(catchup::run(self.shared.clone(), self.me.clone(), job));
    }

    /// Channels whose stream position is known.
    fn tracked(&self) -> Vec<i64> {
        self.channels
            .iter()
            .filter(|(_, s)| s.last_seen.is_some())
            .map(|(c, _)| *c)
            .collect()
    }

    fn demote_all(&mut self) {
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

    /// Brings every tracked channel up to `bound` (the log's current heads
    /// when `None`), delivering the missed entries to live subscribers in log
    /// order. When PostgreSQL cannot be read, every live subscription of the
    /// shard is demoted to catch-up (each recovers on its own once the log
    /// answers) and an error is returned.
    async fn node_backfill(
        &mut self,
        reason: &'static str,
        bound: Option<HashMap<i64, i64>>,
    ) -> Result<(), ()> {
        let tracked = self.tracked();
        if tracked.is_empty() {
            return Ok(());
        }
        let heads = match bound {
            Some(b) => b,
            None => match self.read_heads(&tracked).await {
                Ok(h) => h,
                Err(()) => {
                    self.demote_all();
                    return Err(());
                }
            },
        };
        let mut counted = false;
        let mut attempts = 0u32;
        loop {
            let mut reads: Vec<(i64, i64)> = Vec::new();
            let mut uptos: Vec<i64> = Vec::new();
            let mut behind = false;
            for ch in &tracked {
                let Some(ls) = self.channels.get(ch).and_then(|s| s.last_seen) else {
                    continue;
                };
                let head = heads.get(ch).copied().unwrap_or(ls).max(ls);
                behind |= head > ls;
                reads.push((*ch, ls));
                uptos.push(head);
            }
            if !behind {
                return Ok(());
            }
            if !counted {
                counted = true;
                metrics::counter!(m::BACKFILLS, "reason" => reason).increment(1);
                tracing::debug!(reason, channels = reads.len(), "backfilling from the log");
            }
            let page = match self
                .shared
                .log
                .read_after(&reads, Some(&uptos), self.shared.replay_page)
                .await
            {
                Ok(p) => p,
                Err(e) => {
                    attempts += 1;
                    if attempts >= BACKFILL_ATTEMPTS {
                        tracing::warn!(error = %e, reason, "backfill failed; live subscribers switch to catch-up");
                        self.demote_all();
                        return Err(());
                    }
                    tokio::time::sleep(Duration::from_millis(50 * u64::from(attempts))).await;
                    continue;
                }
            };
            if page.rows.is_empty() {
                // Everything up to the heads was deleted by retention.
                for (ch, head) in reads.iter().map(|r| r.0).zip(uptos) {
                    if let Some(st) = self.channels.get_mut(&ch) {
                        st.last_seen = Some(head);
                    }
                }
                return Ok(());
            }
            let mut pos: HashMap<i64, i64> = reads.iter().copied().collect();
            let actions = replay::plan_page(&page.rows, &mut pos);
            if actions.is_empty() {
                tracing::warn!(
                    reason,
                    "backfill made no progress; leaving it to the next head check"
                );
                return Ok(());
            }
            for action in actions {
                match action {
                    replay::Action::Jump { channel, to } => {
                        if let Some(st) = self.channels.get_mut(&channel) {
                            st.last_seen = Some(to);
                        }
                    }
                    replay::Action::Event { event, fresh, .. } => {
                        let via: Vec<i64> = fresh.iter().map(|f| f.0).collect();
                        self.deliver(&event, &via);
                        for (ch, seq) in fresh {
                            if let Some(st) = self.channels.get_mut(&ch) {
                                st.last_seen = Some(seq);
                            }
                        }
                    }
                }
            }
        }
    }

    async fn read_heads(&self, channels: &[i64]) -> Result<HashMap<i64, i64>, ()> {
        for attempt in 1..=BACKFILL_ATTEMPTS {
            match self.shared.log.heads(channels).await {
                Ok(h) => return Ok(h.iter().map(|h| (h.channel, h.head)).collect()),
                Err(e) => {
                    tracing::debug!(error = %e, attempt, "cannot read heads");
                    tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt))).await;
                }
            }
        }
        Err(())
    }

    /// Heals lost Redis publishes: backfills up to the heads seen by the
    /// previous check (not the current ones, so a publish still in flight is
    /// not raced).
    async fn head_check(&mut self) {
        let previous = std::mem::take(&mut self.pending_heads);
        if !previous.is_empty() {
            let _ = self.node_backfill("head_check", Some(previous)).await;
        }
        let tracked = self.tracked();
        if tracked.is_empty() {
            return;
        }
        if let Ok(heads) = self.shared.log.heads(&tracked).await {
            self.pending_heads = heads.iter().map(|h| (h.channel, h.head)).collect();
        }
    }
}
