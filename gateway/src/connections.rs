//! The node's open WebSocket connections by user and tenant: what the
//! server API's `disconnect` closes, what `/v1/info` counts, and where the
//! per-user and per-tenant connection quotas are enforced.
//!
//! Invariant: a connection holds a [`Slot`] from before its upgrade until its
//! session ends; the counts are exactly the slots alive (a slot gives its
//! place back when dropped, whatever ended the session), so a quota can
//! never leak places.
//!
//! The per-node counts are the first line of the quotas (no shared state,
//! they hold through a Redis outage); the fleet-wide check
//! (the `occupancy` module) comes after it. Users and tenants whose count
//! changed are marked for that module to write to Redis.
//!
//! Past a quota the *new* connection is refused (HTTP 429 before the
//! upgrade), rather than the oldest being closed: closing the oldest would
//! let anyone holding a copy of a user's token knock that user's working
//! sessions off by reconnecting in a loop, and the refused client gets a
//! clear answer it can act on.

use crate::outbound::{Outbound, OutboundTx};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Close code and reason of a connection ended by the server API.
pub const DISCONNECT_CODE: u16 = 4003;
pub const DISCONNECT_REASON: &str = "disconnected by the server";

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum QuotaRefusal {
    #[error("too many connections for this user (at most {0})")]
    User(usize),
    #[error("too many connections for this tenant (at most {0})")]
    Tenant(usize),
}

impl QuotaRefusal {
    /// The metric label of the refusal.
    pub fn kind(self) -> &'static str {
        match self {
            QuotaRefusal::User(_) => "user_connections",
            QuotaRefusal::Tenant(_) => "tenant_connections",
        }
    }
}

/// Connections per user and per tenant on this node.
pub type Counts = (Vec<(Arc<str>, usize)>, Vec<(String, usize)>);

/// Per-node connection limits (0: none).
#[derive(Debug, Clone, Copy, Default)]
pub struct Limits {
    pub per_user: usize,
    pub per_tenant: usize,
}

#[derive(Debug)]
struct Attached {
    id: u64,
    tx: OutboundTx,
    connection: CancellationToken,
}

#[derive(Debug, Default)]
struct State {
    /// Slots per user, with the sessions that can be closed.
    users: HashMap<Arc<str>, (usize, Vec<Attached>)>,
    tenants: HashMap<String, usize>,
    /// Users and tenants whose count changed since the fleet counts were
    /// last written (only while a limit is set).
    dirty_users: HashSet<Arc<str>>,
    dirty_tenants: HashSet<String>,
}

/// The node's connections.
#[derive(Debug, Default)]
pub struct Registry {
    limits: Limits,
    state: Mutex<State>,
    ids: AtomicU64,
    subscriptions: AtomicUsize,
    /// Woken when a count changed (dirty users or tenants).
    changed: Notify,
}

impl Registry {
    pub fn new(limits: Limits) -> Self {
        Registry {
            limits,
            ..Default::default()
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a place for a connection of `user` (in `tenant`), or refuses.
    pub fn reserve(
        self: &Arc<Self>,
        user: Arc<str>,
        tenant: Option<String>,
    ) -> Result<Slot, QuotaRefusal> {
        let mut st = self.lock();
        let held = st.users.get(&user).map(|u| u.0).unwrap_or(0);
        if self.limits.per_user > 0 && held >= self.limits.per_user {
            return Err(QuotaRefusal::User(self.limits.per_user));
        }
        if let Some(t) = &tenant {
            let held = st.tenants.get(t).copied().unwrap_or(0);
            if self.limits.per_tenant > 0 && held >= self.limits.per_tenant {
                return Err(QuotaRefusal::Tenant(self.limits.per_tenant));
            }
            *st.tenants.entry(t.clone()).or_default() += 1;
            if self.limits.per_tenant > 0 {
                st.dirty_tenants.insert(t.clone());
            }
        }
        st.users.entry(user.clone()).or_default().0 += 1;
        if self.limits.per_user > 0 {
            st.dirty_users.insert(user.clone());
        }
        drop(st);
        self.changed.notify_one();
        Ok(Slot {
            registry: self.clone(),
            id: self.ids.fetch_add(1, Ordering::Relaxed),
            user,
            tenant,
            subscriptions: 0,
        })
    }

    /// Closes every connection of `user` on this node with
    /// [`DISCONNECT_CODE`]; returns how many.
    pub fn disconnect(&self, user: &str) -> usize {
        let attached: Vec<(OutboundTx, CancellationToken)> = self
            .lock()
            .users
            .get(user)
            .map(|u| {
                u.1.iter()
                    .map(|a| (a.tx.clone(), a.connection.clone()))
                    .collect()
            })
            .unwrap_or_default();
        for (tx, connection) in &attached {
            // The close goes out after what is queued; a queue too full to
            // take it means the peer is not reading: end it at once.
            if tx
                .try_send(Outbound::Close(DISCONNECT_CODE, DISCONNECT_REASON))
                .is_err()
            {
                connection.cancel();
            }
        }
        attached.len()
    }

    /// The limits this registry enforces.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// This node's connections of `user` and of `tenant`.
    pub fn held(&self, user: &str, tenant: Option<&str>) -> (usize, usize) {
        let st = self.lock();
        (
            st.users.get(user).map(|u| u.0).unwrap_or(0),
            tenant.and_then(|t| st.tenants.get(t).copied()).unwrap_or(0),
        )
    }

    /// Waits until a count changed since the last [`Registry::take_changed`].
    pub async fn changed(&self) {
        self.changed.notified().await
    }

    /// The users and tenants whose count changed, with their counts now
    /// (0: gone), and forgets them.
    pub fn take_changed(&self) -> Counts {
        let mut st = self.lock();
        let users = std::mem::take(&mut st.dirty_users);
        let tenants = std::mem::take(&mut st.dirty_tenants);
        let users = users
            .into_iter()
            .map(|u| {
                let n = st.users.get(&u).map(|x| x.0).unwrap_or(0);
                (u, n)
            })
            .collect();
        let tenants = tenants
            .into_iter()
            .map(|t| {
                let n = st.tenants.get(&t).copied().unwrap_or(0);
                (t, n)
            })
            .collect();
        (users, tenants)
    }

    /// Every user and tenant counted on this node (those a limit applies
    /// to), for the heartbeat of the fleet counts.
    pub fn counts(&self) -> Counts {
        let st = self.lock();
        let users = if self.limits.per_user > 0 {
            st.users.iter().map(|(u, x)| (u.clone(), x.0)).collect()
        } else {
            Vec::new()
        };
        let tenants = if self.limits.per_tenant > 0 {
            st.tenants.iter().map(|(t, n)| (t.clone(), *n)).collect()
        } else {
            Vec::new()
        };
        (users, tenants)
    }

    /// Marks counts to be written again (their write failed).
    pub fn mark_changed(&self, users: &[Arc<str>], tenants: &[String]) {
        let mut st = self.lock();
        st.dirty_users.extend(users.iter().cloned());
        st.dirty_tenants.extend(tenants.iter().cloned());
    }

    /// Open connections (slots) on this node.
    pub fn connections(&self) -> usize {
        self.lock().users.values().map(|u| u.0).sum()
    }

    /// Distinct users connected to this node.
    pub fn users(&self) -> usize {
        self.lock().users.len()
    }

    /// Subscriptions of this node's WebSocket connections.
    pub fn subscriptions(&self) -> usize {
        self.subscriptions.load(Ordering::Relaxed)
    }
}

/// A connection's place in the registry; dropping it gives the place back.
#[derive(Debug)]
pub struct Slot {
    registry: Arc<Registry>,
    id: u64,
    user: Arc<str>,
    tenant: Option<String>,
    subscriptions: usize,
}

impl Slot {
    /// Makes the session closable by [`Registry::disconnect`].
    pub fn attach(&self, tx: OutboundTx, connection: CancellationToken) {
        let mut st = self.registry.lock();
        if let Some(u) = st.users.get_mut(&self.user) {
            u.1.push(Attached {
                id: self.id,
                tx,
                connection,
            });
        }
    }

    /// Records the session's current number of subscriptions.
    pub fn set_subscriptions(&mut self, n: usize) {
        if n >= self.subscriptions {
            let d = n - self.subscriptions;
            self.registry.subscriptions.fetch_add(d, Ordering::Relaxed);
        } else {
            let d = self.subscriptions - n;
            self.registry.subscriptions.fetch_sub(d, Ordering::Relaxed);
        }
        self.subscriptions = n;
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.set_subscriptions(0);
        let mut st = self.registry.lock();
        if let Some(u) = st.users.get_mut(&self.user) {
            u.0 = u.0.saturating_sub(1);
            u.1.retain(|a| a.id != self.id);
            if u.0 == 0 {
                st.users.remove(&self.user);
            }
        }
        if self.registry.limits.per_user > 0 {
            st.dirty_users.insert(self.user.clone());
        }
        if let Some(t) = &self.tenant {
            if let Some(n) = st.tenants.get_mut(t) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    st.tenants.remove(t);
                }
            }
            if self.registry.limits.per_tenant > 0 {
                st.dirty_tenants.insert(t.clone());
            }
        }
        drop(st);
        self.registry.changed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotas_refuse_the_new_connection_and_places_come_back() {
        let r = Arc::new(Registry::new(Limits {
            per_user: 2,
            per_tenant: 3,
        }));
        let a1 = r.reserve("a".into(), Some("t".into())).unwrap();
        let _a2 = r.reserve("a".into(), Some("t".into())).unwrap();
        assert_eq!(
            r.reserve("a".into(), Some("t".into())).unwrap_err(),
            QuotaRefusal::User(2)
        );
        let _b1 = r.reserve("b".into(), Some("t".into())).unwrap();
        assert_eq!(
            r.reserve("c".into(), Some("t".into())).unwrap_err(),
            QuotaRefusal::Tenant(3)
        );
        assert!(r.reserve("c".into(), Some("u".into())).is_ok());
        assert_eq!(r.connections(), 3);
        drop(a1);
        assert_eq!(r.connections(), 3 - 1);
        assert!(r.reserve("a".into(), Some("t".into())).is_ok());
    }

    #[tokio::test]
    async fn disconnect_closes_every_session_of_the_user_only() {
        let r = Arc::new(Registry::new(Limits::default()));
        let mut queues = Vec::new();
        let mut slots = Vec::new();
        for user in ["a", "a", "b"] {
            let (tx, rx) = crate::outbound::queue(8, 1 << 20);
            let mut slot = r.reserve(user.into(), None).unwrap();
            slot.attach(tx, CancellationToken::new());
            slot.set_subscriptions(2);
            queues.push(rx);
            slots.push(slot);
        }
        assert_eq!(r.subscriptions(), 6);
        assert_eq!(r.disconnect("a"), 2);
        assert_eq!(r.disconnect("nobody"), 0);
        for (i, q) in queues.iter_mut().enumerate() {
            let mut got = Vec::new();
            let wait = std::time::Duration::from_millis(20);
            let _ = tokio::time::timeout(wait, q.recv_many(&mut got, 4)).await;
            if i < 2 {
                assert!(
                    matches!(got.as_slice(), [Outbound::Close(DISCONNECT_CODE, _)]),
                    "{got:?}"
                );
            } else {
                assert!(got.is_empty(), "{got:?}");
            }
        }
        slots.clear();
        assert_eq!((r.connections(), r.users(), r.subscriptions()), (0, 0, 0));
    }
}
