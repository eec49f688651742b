//! The connection quotas across the fleet: the per-user and per-tenant
//! limits (`SWITCHYARD_MAX_USER_CONNECTIONS`,
//! `SWITCHYARD_MAX_TENANT_CONNECTIONS`) counted over every node through
//! Redis, after the per-node check of [`crate::connections`].
//!
//! Each node writes its own counts (one hash field per node, with an
//! expiry) when they change and every third of `SWITCHYARD_PRESENCE_TTL_SECONDS`;
//! a node that dies stops counting once its fields expire.
//!
//! Invariant: the fleet check fails open. When Redis does not answer within
//! [`CHECK_TIMEOUT`] the connection is admitted (the per-node limit still
//! holds), counted in `switchyard_gateway_quota_fail_open_total` and
//! logged — a Redis outage must not lock every user out.

use crate::connections::{QuotaRefusal, Registry};
use crate::metrics as m;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchyard_livefeed::occupancy::{Ask, Holder, Reservation};
use switchyard_livefeed::Publisher;
use tokio_util::sync::CancellationToken;

/// How long a connection waits for the fleet-wide check at most.
pub const CHECK_TIMEOUT: Duration = Duration::from_millis(500);
/// Longest wait for one batch of count writes.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// Counts per pipeline.
const BATCH: usize = 500;

/// The fleet-wide connection counts of this node.
#[derive(Debug)]
pub struct Occupancy {
    node: String,
    ttl: Duration,
    registry: Arc<Registry>,
    publisher: Publisher,
    /// When the last fail-open was logged (ms since `started`), so an
    /// outage during a connection storm logs once a second, not per
    /// connection.
    last_warning: AtomicU64,
    started: Instant,
}

impl Occupancy {
    pub fn new(node: String, ttl: Duration, registry: Arc<Registry>, publisher: Publisher) -> Self {
        Occupancy {
            node,
            ttl,
            registry,
            publisher,
            last_warning: AtomicU64::new(0),
            started: Instant::now(),
        }
    }

    fn enabled(&self) -> bool {
        let l = self.registry.limits();
        l.per_user > 0 || l.per_tenant > 0
    }

    /// Checks the fleet-wide limits for a connection whose per-node place
    /// is already reserved (so this node's counts include it).
    pub async fn check(&self, user: &str, tenant: Option<&str>) -> Result<(), QuotaRefusal> {
        if !self.enabled() {
            return Ok(());
        }
        let limits = self.registry.limits();
        let (user_here, tenant_here) = self.registry.held(user, tenant);
        let ask = Ask {
            user,
            user_here,
            user_limit: limits.per_user,
            tenant: tenant.filter(|_| limits.per_tenant > 0),
            tenant_here,
            tenant_limit: limits.per_tenant,
        };
        let answer = tokio::time::timeout(
            CHECK_TIMEOUT,
            self.publisher.occupancy_reserve(&self.node, &ask, self.ttl),
        )
        .await;
        match answer {
            Ok(Ok(Reservation::Admitted)) => Ok(()),
            Ok(Ok(Reservation::UserFull { .. })) => Err(QuotaRefusal::User(limits.per_user)),
            Ok(Ok(Reservation::TenantFull { .. })) => Err(QuotaRefusal::Tenant(limits.per_tenant)),
            Ok(Err(e)) => {
                self.fail_open(&e.to_string());
                Ok(())
            }
            Err(_) => {
                self.fail_open("no answer within 500 ms");
                Ok(())
            }
        }
    }

    fn fail_open(&self, why: &str) {
        metrics::counter!(m::QUOTA_FAIL_OPEN, "kind" => "connections").increment(1);
        let now = self.started.elapsed().as_millis() as u64 + 1000;
        let last = self.last_warning.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= 1000
            && self
                .last_warning
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(error = why, "fleet-wide connection quota unchecked (Redis); connection admitted on the per-node limit only");
        }
    }

    /// Writes changed counts at once and every count every third of the
    /// TTL, until `cancel` fires; then removes this node's counts.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        if !self.enabled() {
            return;
        }
        let mut tick = tokio::time::interval(self.ttl / 3);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = self.registry.changed() => {
                    let (users, tenants) = self.registry.take_changed();
                    self.write(users, tenants, true).await;
                }
                _ = tick.tick() => {
                    let (users, tenants) = self.registry.take_changed();
                    self.write(users, tenants, true).await;
                    let (users, tenants) = self.registry.counts();
                    self.write(users, tenants, false).await;
                }
            }
        }
        // The sessions have ended: what changed is the last word.
        let (users, tenants) = self.registry.take_changed();
        self.write(users, tenants, false).await;
    }

    async fn write(
        &self,
        users: Vec<(Arc<str>, usize)>,
        tenants: Vec<(String, usize)>,
        retry: bool,
    ) {
        let mut entries: Vec<(Holder, &str, usize)> = Vec::new();
        entries.extend(users.iter().map(|(u, n)| (Holder::User, &**u, *n)));
        entries.extend(
            tenants
                .iter()
                .map(|(t, n)| (Holder::Tenant, t.as_str(), *n)),
        );
        let mut failed = false;
        for chunk in entries.chunks(BATCH) {
            let mut pipe = redis::pipe();
            for (holder, name, n) in chunk {
                self.publisher
                    .occupancy_write(&mut pipe, &self.node, *holder, name, *n, self.ttl);
            }
            let r =
                tokio::time::timeout(WRITE_TIMEOUT, self.publisher.run_pipeline::<()>(&pipe)).await;
            if !matches!(r, Ok(Ok(()))) {
                metrics::counter!(m::PRESENCE_REDIS_ERRORS, "op" => "occupancy").increment(1);
                failed = true;
            }
        }
        if failed && retry {
            let u: Vec<Arc<str>> = users.into_iter().map(|x| x.0).collect();
            let t: Vec<String> = tenants.into_iter().map(|x| x.0).collect();
            self.registry.mark_changed(&u, &t);
        }
    }
}
