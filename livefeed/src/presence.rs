//! Presence kept in Redis for the whole fleet: who is in each concrete
//! channel (by its log key, e.g. `acme/Content/Room-CHLT`), with how many
//! connections, and the join/leave events between nodes.
//!
//! Per channel, under `<prefix>:presence:<channel key>`:
//! - `…:users`, a sorted set: user → the latest expiry (ms) any node gave it;
//! - `…:u:<user>`, a hash: node id → `<expiry ms>:<connections>` and
//!   `~info` → the user's client info (JSON text);
//! - `…:nodes`, a hash: node id → `<expiry ms>:<connections>` (the node's
//!   connections in the channel, for the connection count).
//!
//! Each node rewrites its own entries every heartbeat (TTL/3), in one
//! pipelined round trip per batch; every key also expires (2 × TTL) so
//! nothing outlives a fleet that stopped. Readers count only entries whose
//! expiry is in the future, so a dead node's members disappear from answers
//! when their TTL passes, whoever is alive; counts are always computed from
//! these entries, never kept incrementally per node.
//!
//! Invariant: join, leave and sweep are Lua scripts, atomic in Redis, so
//! each presence change is announced by exactly one node: a join when a
//! user's first live entry in the channel appears, a leave when their last
//! one goes — removed by its node, or, for a node that stopped
//! heartbeating, by whichever node's sweep removes the expired user first
//! (`ZREM` decides; that leave says `expired`). The scripts build the
//! per-user key names themselves, so this layout needs a single Redis (or
//! one hash slot per channel), not a cluster spread of keys.

use crate::naming::{presence_events_channel, presence_key};
use crate::wire::{open, seal};
use crate::{FeedError, Publisher};
use serde::{Deserialize, Serialize};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The field of a user's hash holding their client info.
const INFO_FIELD: &str = "~info";

/// Milliseconds since the epoch (Redis scores of expiries).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

const JOIN: &str = r#"
local now = tonumber(ARGV[2])
local before = 0
local h = redis.call('HGETALL', KEYS[2])
for i = 1, #h, 2 do
  if h[i] ~= '~info' then
    local e = tonumber(string.match(h[i + 1], '^(%d+):'))
    if e and e > now then before = before + 1 end
  end
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3] .. ':' .. ARGV[4])
if ARGV[5] ~= '' then redis.call('HSET', KEYS[2], '~info', ARGV[5]) end
redis.call('PEXPIRE', KEYS[2], ARGV[6])
redis.call('ZADD', KEYS[1], 'GT', ARGV[3], ARGV[7])
redis.call('PEXPIRE', KEYS[1], ARGV[6])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[3] .. ':' .. ARGV[8])
redis.call('PEXPIRE', KEYS[3], ARGV[6])
if before == 0 then return 1 end
return 0
"#;

const LEAVE: &str = r#"
local now = tonumber(ARGV[2])
redis.call('HDEL', KEYS[2], ARGV[1])
local live = 0
local latest = 0
local h = redis.call('HGETALL', KEYS[2])
for i = 1, #h, 2 do
  if h[i] ~= '~info' then
    local e = tonumber(string.match(h[i + 1], '^(%d+):'))
    if e and e > now then
      live = live + 1
      if e > latest then latest = e end
    end
  end
end
if ARGV[4] == '0' then
  redis.call('HDEL', KEYS[3], ARGV[1])
else
  redis.call('HSET', KEYS[3], ARGV[1], ARGV[5] .. ':' .. ARGV[4])
end
if live == 0 then
  redis.call('DEL', KEYS[2])
  return redis.call('ZREM', KEYS[1], ARGV[3])
end
redis.call('ZADD', KEYS[1], 'XX', latest, ARGV[3])
return 0
"#;

const SWEEP: &str = r#"
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, u in ipairs(gone) do
  redis.call('ZREM', KEYS[1], u)
  redis.call('DEL', ARGV[2] .. u)
end
local h = redis.call('HGETALL', KEYS[2])
for i = 1, #h, 2 do
  local e = tonumber(string.match(h[i + 1], '^(%d+):'))
  if (not e) or e <= tonumber(ARGV[1]) then redis.call('HDEL', KEYS[2], h[i]) end
end
return gone
"#;

const READ: &str = r#"
local now = tonumber(ARGV[1])
local limit = tonumber(ARGV[3])
local users = redis.call('ZCOUNT', KEYS[1], '(' .. ARGV[1], '+inf')
local conns = 0
local h = redis.call('HGETALL', KEYS[2])
for i = 1, #h, 2 do
  local e, c = string.match(h[i + 1], '^(%d+):(%d+)$')
  if e and tonumber(e) > now then conns = conns + tonumber(c) end
end
local out = {users, conns}
if limit > 0 then
  local list = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ARGV[1], '+inf', 'LIMIT', 0, limit)
  for _, u in ipairs(list) do
    local n = 0
    local info = ''
    local f = redis.call('HGETALL', ARGV[2] .. u)
    for j = 1, #f, 2 do
      if f[j] == '~info' then
        info = f[j + 1]
      else
        local e, c = string.match(f[j + 1], '^(%d+):(%d+)$')
        if e and tonumber(e) > now then n = n + tonumber(c) end
      end
    end
    if n > 0 then
      table.insert(out, u)
      table.insert(out, n)
      table.insert(out, info)
    end
  end
end
return out
"#;

/// Expired users removed per channel per sweep, at most (the next sweep
/// takes the rest).
const SWEEP_BATCH: usize = 1000;

fn users_key(base: &str) -> String {
    format!("{base}:users")
}

fn user_key(base: &str, user: &str) -> String {
    format!("{base}:u:{user}")
}

fn nodes_key(base: &str) -> String {
    format!("{base}:nodes")
}

/// A join or leave, as nodes tell each other on `<prefix>:presence`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceEvent {
    /// `true` for a join, `false` for a leave.
    pub join: bool,
    /// The channel's log key.
    pub channel: String,
    pub user: String,
    /// The user's client info (JSON text), on joins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<String>,
    /// A leave found by a sweep: the user's node stopped heartbeating.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub expired: bool,
}

impl PresenceEvent {
    /// The message text, authenticated under `key` when given.
    pub fn encode(&self, key: Option<&crate::LiveKey>) -> Vec<u8> {
        seal(serde_json::to_vec(self).unwrap_or_default(), key)
    }

    /// Parses a message; with a key, only one authenticated with it.
    pub fn decode(bytes: &[u8], key: Option<&crate::LiveKey>) -> Result<Self, FeedError> {
        let body = open(bytes, key)?;
        serde_json::from_slice(body).map_err(|e| FeedError::Malformed(e.to_string()))
    }
}

/// One member of a channel, as a reader sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub user: String,
    /// Live connections of the user in the channel, over every node.
    pub connections: u64,
    /// Client info (JSON text), when the user's token carried one.
    pub info: Option<String>,
}

/// A channel's presence: counts over everyone, members up to a cap.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ChannelPresence {
    /// Distinct users present.
    pub users: u64,
    /// Their connections, over every node.
    pub connections: u64,
    /// Members, at most the cap asked for (sorted by user id).
    pub members: Vec<Member>,
    /// More users than `members` lists.
    pub truncated: bool,
}

/// One of this node's entries, as a heartbeat rewrites it.
#[derive(Debug, Clone)]
pub struct HeldUser<'a> {
    pub user: &'a str,
    pub connections: usize,
    pub info: Option<&'a str>,
}

/// A command that runs `script` (EVAL: Redis keeps the compiled script by
/// its hash, so this costs bandwidth, not compilation).
fn eval(script: &str, keys: &[&str], args: &[&str]) -> redis::Cmd {
    let mut c = redis::cmd("EVAL");
    c.arg(script).arg(keys.len());
    for k in keys {
        c.arg(*k);
    }
    for a in args {
        c.arg(*a);
    }
    c
}

impl Publisher {
    fn presence_base(&self, channel: &str) -> String {
        presence_key(&self.prefix, channel)
    }

    /// The command that records `user`'s arrival on `node` in `channel`
    /// (answers 1 when it is the user's first live entry: announce a join).
    pub fn presence_join_cmd(
        &self,
        channel: &str,
        node: &str,
        held: &HeldUser<'_>,
        node_total: usize,
        ttl: Duration,
    ) -> redis::Cmd {
        let base = self.presence_base(channel);
        let now = now_ms();
        let exp = (now + ttl.as_millis() as u64).to_string();
        eval(
            JOIN,
            &[
                &users_key(&base),
                &user_key(&base, held.user),
                &nodes_key(&base),
            ],
            &[
                node,
                &now.to_string(),
                &exp,
                &held.connections.to_string(),
                held.info.unwrap_or(""),
                &(2 * ttl.as_millis() as u64).to_string(),
                held.user,
                &node_total.to_string(),
            ],
        )
    }

    /// The command that removes `user`'s entry of `node` from `channel`
    /// (answers 1 when it was their last live one: announce a leave).
    pub fn presence_leave_cmd(
        &self,
        channel: &str,
        node: &str,
        user: &str,
        node_total: usize,
        ttl: Duration,
    ) -> redis::Cmd {
        let base = self.presence_base(channel);
        let now = now_ms();
        eval(
            LEAVE,
            &[&users_key(&base), &user_key(&base, user), &nodes_key(&base)],
            &[
                node,
                &now.to_string(),
                user,
                &node_total.to_string(),
                &(now + ttl.as_millis() as u64).to_string(),
            ],
        )
    }

    /// Adds to `pipe` the heartbeat of this node's entries in `channel`:
    /// four commands for the channel and two per user, whatever their
    /// connections.
    pub fn presence_heartbeat(
        &self,
        pipe: &mut redis::Pipeline,
        channel: &str,
        node: &str,
        users: &[HeldUser<'_>],
        node_total: usize,
        ttl: Duration,
    ) {
        let base = self.presence_base(channel);
        let exp = now_ms() + ttl.as_millis() as u64;
        let keep = 2 * ttl.as_millis() as i64;
        let users_k = users_key(&base);
        let nodes_k = nodes_key(&base);
        if !users.is_empty() {
            let mut zadd = redis::cmd("ZADD");
            zadd.arg(&users_k).arg("GT");
            for u in users {
                zadd.arg(exp).arg(u.user);
            }
            pipe.add_command(zadd).ignore();
            pipe.pexpire(&users_k, keep).ignore();
        }
        for u in users {
            let k = user_key(&base, u.user);
            let mut hset = redis::cmd("HSET");
            hset.arg(&k)
                .arg(node)
                .arg(format!("{exp}:{}", u.connections));
            if let Some(info) = u.info {
                hset.arg(INFO_FIELD).arg(info);
            }
            pipe.add_command(hset).ignore();
            pipe.pexpire(&k, keep).ignore();
        }
        if node_total > 0 {
            pipe.hset(&nodes_k, node, format!("{exp}:{node_total}"))
                .ignore();
            pipe.pexpire(&nodes_k, keep).ignore();
        }
    }

    /// The command that removes `channel`'s expired users and answers them
    /// (each is removed, and so announced, by one sweeper only).
    pub fn presence_sweep_cmd(&self, channel: &str) -> redis::Cmd {
        let base = self.presence_base(channel);
        eval(
            SWEEP,
            &[&users_key(&base), &nodes_key(&base)],
            &[
                &now_ms().to_string(),
                &format!("{base}:u:"),
                &SWEEP_BATCH.to_string(),
            ],
        )
    }

    /// Publishes presence events to every node, in one round trip.
    pub async fn presence_publish(&self, events: &[PresenceEvent]) -> redis::RedisResult<()> {
        if events.is_empty() {
            return Ok(());
        }
        let channel = presence_events_channel(&self.prefix);
        let mut pipe = redis::pipe();
        for e in events {
            pipe.publish(&channel, e.encode(self.key.as_ref())).ignore();
        }
        let mut conn = self.conn.clone();
        pipe.query_async::<()>(&mut conn).await
    }

    /// Runs `pipe` on this publisher's connection.
    pub async fn run_pipeline<T: redis::FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
    ) -> redis::RedisResult<T> {
        let mut conn = self.conn.clone();
        pipe.query_async(&mut conn).await
    }

    /// One channel's presence, read atomically by a script: counts, and up
    /// to `limit` members with their connections and info.
    fn presence_read_cmd(&self, channel: &str, limit: usize) -> redis::Cmd {
        let base = self.presence_base(channel);
        eval(
            READ,
            &[&users_key(&base), &nodes_key(&base)],
            &[
                &now_ms().to_string(),
                &format!("{base}:u:"),
                &limit.to_string(),
            ],
        )
    }

    /// Counts of `channels` (log keys), without members, in one round trip.
    pub async fn presence_counts(
        &self,
        channels: &[&str],
    ) -> redis::RedisResult<Vec<ChannelPresence>> {
        let mut pipe = redis::pipe();
        for c in channels {
            pipe.add_command(self.presence_read_cmd(c, 0));
        }
        let mut conn = self.conn.clone();
        let raw: Vec<Vec<redis::Value>> = pipe.query_async(&mut conn).await?;
        raw.iter().map(|r| parse_read(r)).collect()
    }

    /// Presence of `channels` with up to `budget` members in all (each
    /// channel takes what the previous ones left), one atomic read per
    /// channel: counts and members of a channel always agree.
    pub async fn presence_read(
        &self,
        channels: &[&str],
        budget: usize,
    ) -> redis::RedisResult<Vec<ChannelPresence>> {
        let mut out = Vec::with_capacity(channels.len());
        let mut left = budget;
        let mut conn = self.conn.clone();
        for c in channels {
            let raw: Vec<redis::Value> = self
                .presence_read_cmd(c, left)
                .query_async(&mut conn)
                .await?;
            let p = parse_read(&raw)?;
            left = left.saturating_sub(p.members.len());
            out.push(p);
        }
        Ok(out)
    }
}

/// Parses the read script's answer: users, connections, then (user,
/// connections, info) triples.
fn parse_read(raw: &[redis::Value]) -> redis::RedisResult<ChannelPresence> {
    let bad = || redis::RedisError::from((redis::ErrorKind::TypeError, "unexpected presence read"));
    let (Some(users), Some(connections)) = (raw.first(), raw.get(1)) else {
        return Err(bad());
    };
    let users: u64 = redis::from_redis_value(users)?;
    let connections: u64 = redis::from_redis_value(connections)?;
    let mut members = Vec::new();
    for m in raw[2..].chunks(3) {
        let [user, n, info] = m else {
            return Err(bad());
        };
        let info: String = redis::from_redis_value(info)?;
        members.push(Member {
            user: redis::from_redis_value(user)?,
            connections: redis::from_redis_value(n)?,
            info: (!info.is_empty()).then_some(info),
        });
    }
    members.sort_by(|a, b| a.user.cmp(&b.user));
    Ok(ChannelPresence {
        users,
        connections,
        truncated: (members.len() as u64) < users,
        members,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_roundtrip_and_need_the_key() {
        let e = PresenceEvent {
            join: false,
            channel: "acme/C/Room-1".into(),
            user: "u:1".into(),
            info: None,
            expired: true,
        };
        let key = crate::LiveKey::new(&[7u8; 32]);
        let sealed = e.encode(Some(&key));
        assert_eq!(PresenceEvent::decode(&sealed, Some(&key)).unwrap(), e);
        assert!(matches!(
            PresenceEvent::decode(&e.encode(None), Some(&key)),
            Err(FeedError::Unauthenticated)
        ));
        assert_eq!(PresenceEvent::decode(&e.encode(None), None).unwrap(), e);
        assert!(PresenceEvent::decode(b"{}", None).is_err());
    }

    #[test]
    fn reads_parse_counts_and_members() {
        use redis::Value as V;
        let bs = |s: &str| V::BulkString(s.as_bytes().to_vec());
        let p = parse_read(&[
            V::Int(3),
            V::Int(5),
            bs("b"),
            V::Int(2),
            bs(""),
            bs("a"),
            V::Int(1),
            bs(r#"{"n":1}"#),
        ])
        .unwrap();
        assert_eq!((p.users, p.connections, p.truncated), (3, 5, true));
        assert_eq!(p.members[0].user, "a");
        assert_eq!(p.members[0].info.as_deref(), Some(r#"{"n":1}"#));
        assert_eq!(
            (p.members[1].connections, p.members[1].info.clone()),
            (2, None)
        );
        assert!(parse_read(&[V::Int(1)]).is_err());
        assert!(parse_read(&[V::Int(1), V::Int(1), bs("a")]).is_err());
    }
}
