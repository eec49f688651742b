//! Presence on this node: which of its connections sit in which presence
//! channels (topics with `Presence: true`), who watches them for
//! `join`/`leave` frames, and the task that keeps the fleet's view in
//! Redis (`switchyard_livefeed::presence`) in step with it.
//!
//! A subscription to a presence topic makes its connection a member of the
//! subscription's presence channels for as long as it lives (a
//! [`Membership`], released on drop whatever ended it). Changes are marked
//! and written by one task, coalesced and pipelined: a user's first
//! connection in a channel on this node runs the join script, their last
//! one the leave script, and the script's answer says whether the fleet
//! saw a join or leave (the user may sit in the channel on other nodes).
//! Every third of the TTL the task rewrites this node's entries (one round
//! trip per batch, not per connection) and sweeps the channels it knows
//! for users whose TTL passed (a dead node's), announcing their leaves.
//!
//! Invariants:
//! - What this node holds is bounded by its connections: a membership per
//!   subscription, at most [`MAX_CHANNELS`] channels each.
//! - Counts and member lists are always read from Redis (entries whose
//!   expiry is in the future), never kept incrementally here.
//! - Frames to watchers never wait: a watcher whose queue is full misses
//!   the frame (counted); the `presence` request is the truth.

use crate::metrics as m;
use crate::outbound::{Outbound, OutboundTx};
use crate::protocol::{self, PresenceChange, Protocol};
use bytes::Bytes;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use switchyard_channels::ResolvedChannel;
use switchyard_livefeed::presence::{ChannelPresence, HeldUser, PresenceEvent};
use switchyard_livefeed::Publisher;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Presence channels of one subscription, at most (a topic resolving to
/// more tracks the first ones, in resolution order).
pub const MAX_CHANNELS: usize = 100;
/// Longest wait for one Redis round trip of the presence task or a read.
const REDIS_TIMEOUT: Duration = Duration::from_secs(2);
/// Scripts or commands per pipeline.
const BATCH: usize = 256;

/// A concrete presence channel.
#[derive(Debug, Clone)]
pub struct PresenceChannel {
    /// Its log key (`tenant/hub/name`): what Redis keys it by.
    pub key: Arc<str>,
    pub topic: Arc<str>,
    /// What clients see (`Room-CHLT`).
    pub name: Arc<str>,
}

impl PresenceChannel {
    /// The presence channels among `resolved`, at most [`MAX_CHANNELS`].
    pub fn of(resolved: Vec<ResolvedChannel>) -> Vec<PresenceChannel> {
        resolved
            .into_iter()
            .filter(|c| c.presence)
            .take(MAX_CHANNELS)
            .map(|c| PresenceChannel {
                key: c.key.into(),
                topic: c.topic.into(),
                name: c.name.into(),
            })
            .collect()
    }
}

#[derive(Debug)]
struct Held {
    connections: usize,
    info: Option<Arc<str>>,
}

#[derive(Debug)]
struct Watcher {
    id: u64,
    tx: OutboundTx,
    protocol: Protocol,
}

#[derive(Debug)]
struct Chan {
    topic: Arc<str>,
    name: Arc<str>,
    /// This node's connections per user.
    users: HashMap<Arc<str>, Held>,
    /// Connections per user as last written to Redis.
    written: HashMap<Arc<str>, usize>,
    watchers: Vec<Watcher>,
}

impl Chan {
    fn is_idle(&self) -> bool {
        self.users.is_empty() && self.written.is_empty() && self.watchers.is_empty()
    }

    fn written_total(&self) -> usize {
        self.written.values().sum()
    }
}

#[derive(Debug, Default)]
struct State {
    channels: HashMap<Arc<str>, Chan>,
    /// (channel, user) whose count differs from what Redis has, maybe.
    dirty: HashSet<(Arc<str>, Arc<str>)>,
}

/// This node's presence.
#[derive(Debug)]
pub struct Presence {
    node: String,
    ttl: Duration,
    max_members: usize,
    publisher: Publisher,
    state: Mutex<State>,
    changed: Notify,
    watcher_ids: AtomicU64,
}

/// One subscription's place in its presence channels; leaving them (and
/// stopping its frames) when dropped.
#[derive(Debug)]
pub struct Membership {
    presence: Arc<Presence>,
    channels: Vec<Arc<str>>,
    user: Arc<str>,
    watcher: Option<u64>,
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.presence
            .leave(&self.channels, &self.user, self.watcher);
    }
}

/// A change to write: channel, user, connections here now.
struct Change {
    channel: Arc<str>,
    user: Arc<str>,
    now: usize,
    info: Option<Arc<str>>,
    node_total: usize,
}

impl Presence {
    pub fn new(node: String, ttl: Duration, max_members: usize, publisher: Publisher) -> Self {
        Presence {
            node,
            ttl,
            max_members,
            publisher,
            state: Mutex::new(State::default()),
            changed: Notify::new(),
            watcher_ids: AtomicU64::new(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Members listed per request, at most (over all its channels).
    pub fn max_members(&self) -> usize {
        self.max_members
    }

    /// Makes one connection of `user` a member of `channels`; with
    /// `watch`, its queue also gets their `join`/`leave` frames.
    pub fn enter(
        self: &Arc<Self>,
        channels: Vec<PresenceChannel>,
        user: Arc<str>,
        info: Option<Arc<str>>,
        watch: Option<(OutboundTx, Protocol)>,
    ) -> Membership {
        let watcher = watch
            .as_ref()
            .map(|_| self.watcher_ids.fetch_add(1, Ordering::Relaxed));
        let mut st = self.lock();
        let mut keys = Vec::with_capacity(channels.len());
        for c in channels {
            let chan = st.channels.entry(c.key.clone()).or_insert_with(|| Chan {
                topic: c.topic.clone(),
                name: c.name.clone(),
                users: HashMap::new(),
                written: HashMap::new(),
                watchers: Vec::new(),
            });
            let held = chan.users.entry(user.clone()).or_insert(Held {
                connections: 0,
                info: None,
            });
            held.connections += 1;
            if info.is_some() {
                held.info = info.clone();
            }
            if let (Some(id), Some((tx, protocol))) = (watcher, &watch) {
                chan.watchers.push(Watcher {
                    id,
                    tx: tx.clone(),
                    protocol: *protocol,
                });
            }
            st.dirty.insert((c.key.clone(), user.clone()));
            keys.push(c.key);
        }
        drop(st);
        self.changed.notify_one();
        Membership {
            presence: self.clone(),
            channels: keys,
            user,
            watcher,
        }
    }

    fn leave(&self, channels: &[Arc<str>], user: &Arc<str>, watcher: Option<u64>) {
        let mut st = self.lock();
        for key in channels {
            let Some(chan) = st.channels.get_mut(key) else {
                continue;
            };
            if let Some(held) = chan.users.get_mut(user) {
                held.connections = held.connections.saturating_sub(1);
                if held.connections == 0 {
                    chan.users.remove(user);
                }
            }
            if let Some(id) = watcher {
                chan.watchers.retain(|w| w.id != id);
            }
            if chan.is_idle() {
                st.channels.remove(key);
            } else {
                st.dirty.insert((key.clone(), user.clone()));
            }
        }
        drop(st);
        self.changed.notify_one();
    }

    /// Hands a join or leave from any node to this node's watchers of its
    /// channel.
    pub fn deliver(&self, event: &PresenceEvent) {
        let st = self.lock();
        let Some(chan) = st.channels.get(event.channel.as_str()) else {
            return;
        };
        let change = PresenceChange {
            join: event.join,
            topic: &chan.topic,
            channel: &chan.name,
            user: &event.user,
            info: event.info.as_deref(),
            expired: event.expired,
        };
        let mut encoded: [Option<Bytes>; 2] = [None, None];
        for w in &chan.watchers {
            let slot = match w.protocol {
                Protocol::Json => 0,
                Protocol::Proto => 1,
            };
            let frame = encoded[slot]
                .get_or_insert_with(|| protocol::encode_presence_change(w.protocol, &change))
                .clone();
            if w.tx.try_send(Outbound::Frame(frame)).is_err() {
                metrics::counter!(m::PRESENCE_FRAMES_DROPPED).increment(1);
            }
        }
    }

    /// Presence of `channels` (counts over the fleet, members up to the
    /// cap over all of them), read from Redis.
    pub async fn read(
        &self,
        channels: &[PresenceChannel],
        members: bool,
    ) -> Result<Vec<(String, ChannelPresence)>, String> {
        let keys: Vec<&str> = channels.iter().map(|c| &*c.key).collect();
        let read = async {
            if members {
                self.publisher.presence_read(&keys, self.max_members).await
            } else {
                self.publisher.presence_counts(&keys).await
            }
        };
        match tokio::time::timeout(REDIS_TIMEOUT, read).await {
            Ok(Ok(list)) => Ok(channels
                .iter()
                .map(|c| c.name.to_string())
                .zip(list)
                .collect()),
            Ok(Err(e)) => {
                metrics::counter!(m::PRESENCE_REDIS_ERRORS, "op" => "read").increment(1);
                Err(format!("presence is unavailable: {e}"))
            }
            Err(_) => {
                metrics::counter!(m::PRESENCE_REDIS_ERRORS, "op" => "read").increment(1);
                Err("presence is unavailable: Redis did not answer".into())
            }
        }
    }

    /// Keeps Redis in step with this node until `cancel` fires: changes at
    /// once, heartbeats and sweeps every third of the TTL; then writes the
    /// last changes (the sessions' leaves on a drain).
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(self.ttl / 3);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = self.changed.notified() => self.sync().await,
                _ = tick.tick() => {
                    self.sync().await;
                    self.heartbeat().await;
                    self.sweep().await;
                }
            }
        }
        self.sync().await;
    }

    fn take_changes(&self) -> Vec<Change> {
        let mut st = self.lock();
        let dirty = std::mem::take(&mut st.dirty);
        let mut out = Vec::new();
        for (channel, user) in dirty {
            let Some(chan) = st.channels.get(&channel) else {
                continue;
            };
            let now = chan.users.get(&user).map(|h| h.connections).unwrap_or(0);
            let written = chan.written.get(&user).copied().unwrap_or(0);
            if now == written {
                continue;
            }
            let node_total = chan.written_total() - written + now;
            out.push(Change {
                info: chan.users.get(&user).and_then(|h| h.info.clone()),
                channel,
                user,
                now,
                node_total,
            });
        }
        let members: usize = st.channels.values().map(|c| c.users.len()).sum();
        metrics::gauge!(m::PRESENCE_MEMBERS).set(members as f64);
        out
    }

    /// Writes what changed: joins, leaves and count changes.
    async fn sync(&self) {
        let changes = self.take_changes();
        for batch in changes.chunks(BATCH) {
            let mut pipe = redis::pipe();
            for c in batch {
                let cmd = if c.now > 0 {
                    self.publisher.presence_join_cmd(
                        &c.channel,
                        &self.node,
                        &HeldUser {
                            user: &c.user,
                            connections: c.now,
                            info: c.info.as_deref(),
                        },
                        c.node_total,
                        self.ttl,
                    )
                } else {
                    self.publisher.presence_leave_cmd(
                        &c.channel,
                        &self.node,
                        &c.user,
                        c.node_total,
                        self.ttl,
                    )
                };
                pipe.add_command(cmd);
            }
            let r = tokio::time::timeout(
                REDIS_TIMEOUT,
                self.publisher.run_pipeline::<Vec<i64>>(&pipe),
            )
            .await;
            let answers = match r {
                Ok(Ok(a)) if a.len() == batch.len() => a,
                other => {
                    if let Ok(Err(e)) = other {
                        tracing::warn!(error = %e, "presence changes not written; retrying at the next heartbeat");
                    }
                    metrics::counter!(m::PRESENCE_REDIS_ERRORS, "op" => "sync").increment(1);
                    let mut st = self.lock();
                    for c in batch {
                        st.dirty.insert((c.channel.clone(), c.user.clone()));
                    }
                    continue;
                }
            };
            let mut events = Vec::new();
            {
                let mut st = self.lock();
                for (c, announced) in batch.iter().zip(answers) {
                    if announced == 1 {
                        events.push(PresenceEvent {
                            join: c.now > 0,
                            channel: c.channel.to_string(),
                            user: c.user.to_string(),
                            info: c.info.as_deref().filter(|_| c.now > 0).map(str::to_owned),
                            expired: false,
                        });
                    }
                    if let Some(chan) = st.channels.get_mut(&c.channel) {
                        if c.now > 0 {
                            chan.written.insert(c.user.clone(), c.now);
                        } else {
                            chan.written.remove(&c.user);
                        }
                        if chan.is_idle() {
                            st.channels.remove(&c.channel);
                        }
                    }
                }
            }
            self.announce(&events).await;
        }
    }

    async fn announce(&self, events: &[PresenceEvent]) {
        if events.is_empty() {
            return;
        }
        for e in events {
            let kind = match (e.join, e.expired) {
                (true, _) => "join",
                (false, false) => "leave",
                (false, true) => "expired",
            };
            metrics::counter!(m::PRESENCE_EVENTS, "kind" => kind).increment(1);
        }
        let r = tokio::time::timeout(REDIS_TIMEOUT, self.publisher.presence_publish(events)).await;
        if !matches!(r, Ok(Ok(()))) {
            metrics::counter!(m::PRESENCE_REDIS_ERRORS, "op" => "publish").increment(1);
        }
    }

    /// Rewrites this node's entries with a fresh expiry, in batches.
    async fn heartbeat(&self) {
        type Snapshot = Vec<(Arc<str>, Vec<(Arc<str>, usize, Option<Arc<str>>)>)>;
        let snapshot: Snapshot = {
            let st = self.lock();
            st.channels
                .iter()
                .filter(|(_, c)| !c.written.is_empty())
                .map(|(k, c)| {
                    let users = c
                        .written
                        .iter()
                        .map(|(u, n)| {
                            let info = c.users.get(u).and_then(|h| h.info.clone());
                            (u.clone(), *n, info)
                        })
                        .collect();
                    (k.clone(), users)
                })
                .collect()
        };
        let mut pipe = redis::pipe();
        let mut queued = 0;
        for (channel, users) in &snapshot {
            let held: Vec<HeldUser<'_>> = users
                .iter()
                .map(|(u, n, info)| HeldUser {
                    user: u,
                    connections: *n,
                    info: info.as_deref(),
                })
                .collect();
            let total = held.iter().map(|h| h.connections).sum();
            self.publisher
                .presence_heartbeat(&mut pipe, channel, &self.node, &held, total, self.ttl);
            queued += held.len() + 1;
            if queued >= BATCH {
                self.flush(&pipe).await;
                pipe = redis::pipe();
                queued = 0;
            }
        }
        if queued > 0 {
            self.flush(&pipe).await;
        }
    }

    async fn flush(&self, pipe: &redis::Pipeline) {
        let r = tokio::time::timeout(REDIS_TIMEOUT, self.publisher.run_pipeline::<()>(pipe)).await;
        if !matches!(r, Ok(Ok(()))) {
            metrics::counter!(m::PRESENCE_REDIS_ERRORS, "op" => "heartbeat").increment(1);
        }
    }

    /// Removes expired users from the channels this node knows and
    /// announces their leaves (each by the one sweeper that removed it).
    /// An expired user still held here (this node's heartbeats failed for a
    /// whole TTL) is written again, as a join.
    async fn sweep(&self) {
        let channels: Vec<Arc<str>> = self.lock().channels.keys().cloned().collect();
        for batch in channels.chunks(BATCH) {
            let mut pipe = redis::pipe();
            for c in batch {
                pipe.add_command(self.publisher.presence_sweep_cmd(c));
            }
            let r = tokio::time::timeout(
                REDIS_TIMEOUT,
                self.publisher.run_pipeline::<Vec<Vec<String>>>(&pipe),
            )
            .await;
            let Ok(Ok(gone)) = r else {
                metrics::counter!(m::PRESENCE_REDIS_ERRORS, "op" => "sweep").increment(1);
                continue;
            };
            let mut events = Vec::new();
            let mut rejoin = false;
            {
                let mut guard = self.lock();
                let st = &mut *guard;
                for (channel, users) in batch.iter().zip(gone) {
                    for user in users {
                        let user: Arc<str> = user.into();
                        if let Some(chan) = st.channels.get_mut(channel) {
                            if chan.written.remove(&user).is_some() {
                                rejoin = true;
                                st.dirty.insert((channel.clone(), user.clone()));
                            }
                        }
                        events.push(PresenceEvent {
                            join: false,
                            channel: channel.to_string(),
                            user: user.to_string(),
                            info: None,
                            expired: true,
                        });
                    }
                }
            }
            self.announce(&events).await;
            if rejoin {
                self.changed.notify_one();
            }
        }
    }
}
