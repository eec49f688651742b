//! Connections per user and per tenant across the fleet, for the
//! connection quotas: per key (`<prefix>:occupancy:user:<user>`,
//! `<prefix>:occupancy:tenant:<tenant>`) a hash node id →
//! `<expiry ms>:<connections>` that each node rewrites on every change and
//! every heartbeat, with the key itself expiring after two TTLs.
//!
//! Invariant: a node's counts stop counting once their expiry passes, so a
//! node killed without a goodbye holds no places after the TTL; a
//! reservation checks and writes in one Lua script, so two nodes admitting
//! the same user at the same moment cannot both take the last place.

use crate::naming::occupancy_key;
use crate::presence::now_ms;
use crate::Publisher;
use std::time::Duration;

const RESERVE: &str = r#"
local node = ARGV[1]
local now = tonumber(ARGV[2])
local function others(key)
  local n = 0
  local h = redis.call('HGETALL', key)
  for i = 1, #h, 2 do
    if h[i] ~= node then
      local e, c = string.match(h[i + 1], '^(%d+):(%d+)$')
      if e and tonumber(e) > now then n = n + tonumber(c) end
    end
  end
  return n
end
local held = others(KEYS[1])
if tonumber(ARGV[5]) > 0 and held + tonumber(ARGV[4]) > tonumber(ARGV[5]) then return {1, held} end
if ARGV[9] == '1' then
  local t = others(KEYS[2])
  if tonumber(ARGV[7]) > 0 and t + tonumber(ARGV[6]) > tonumber(ARGV[7]) then return {2, t} end
  redis.call('HSET', KEYS[2], node, ARGV[3] .. ':' .. ARGV[6])
  redis.call('PEXPIRE', KEYS[2], ARGV[8])
end
redis.call('HSET', KEYS[1], node, ARGV[3] .. ':' .. ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[8])
return {0, held}
"#;

/// What a fleet-wide reservation answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reservation {
    /// Admitted; this node's counts are recorded.
    Admitted,
    /// The user already holds this many connections on other nodes.
    UserFull { elsewhere: u64 },
    /// The tenant already holds this many connections on other nodes.
    TenantFull { elsewhere: u64 },
}

/// Which count a key holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Holder {
    User,
    Tenant,
}

impl Holder {
    fn as_str(self) -> &'static str {
        match self {
            Holder::User => "user",
            Holder::Tenant => "tenant",
        }
    }
}

/// A reservation request: this node's counts if admitted, and the limits.
#[derive(Debug, Clone, Copy)]
pub struct Ask<'a> {
    pub user: &'a str,
    /// This node's connections of the user, the new one included.
    pub user_here: usize,
    pub user_limit: usize,
    pub tenant: Option<&'a str>,
    pub tenant_here: usize,
    pub tenant_limit: usize,
}

impl Publisher {
    /// Checks the fleet-wide limits for one more connection and, when
    /// admitted, records this node's counts, atomically.
    pub async fn occupancy_reserve(
        &self,
        node: &str,
        ask: &Ask<'_>,
        ttl: Duration,
    ) -> redis::RedisResult<Reservation> {
        let user_key = occupancy_key(&self.prefix, Holder::User.as_str(), ask.user);
        let tenant_key = ask
            .tenant
            .map(|t| occupancy_key(&self.prefix, Holder::Tenant.as_str(), t));
        let now = now_ms();
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(RESERVE)
            .arg(2)
            .arg(&user_key)
            .arg(tenant_key.as_deref().unwrap_or(&user_key))
            .arg(node)
            .arg(now)
            .arg(now + ttl.as_millis() as u64)
            .arg(ask.user_here)
            .arg(ask.user_limit)
            .arg(ask.tenant_here)
            .arg(ask.tenant_limit)
            .arg(2 * ttl.as_millis() as u64)
            .arg(if tenant_key.is_some() { "1" } else { "0" });
        let mut conn = self.conn.clone();
        let (verdict, elsewhere): (u8, u64) = cmd.query_async(&mut conn).await?;
        Ok(match verdict {
            0 => Reservation::Admitted,
            1 => Reservation::UserFull { elsewhere },
            _ => Reservation::TenantFull { elsewhere },
        })
    }

    /// Adds to `pipe` this node's current count for `name` (0 removes it).
    pub fn occupancy_write(
        &self,
        pipe: &mut redis::Pipeline,
        node: &str,
        holder: Holder,
        name: &str,
        count: usize,
        ttl: Duration,
    ) {
        let key = occupancy_key(&self.prefix, holder.as_str(), name);
        if count == 0 {
            pipe.hdel(&key, node).ignore();
        } else {
            let exp = now_ms() + ttl.as_millis() as u64;
            pipe.hset(&key, node, format!("{exp}:{count}")).ignore();
            pipe.pexpire(&key, 2 * ttl.as_millis() as i64).ignore();
        }
    }
}
