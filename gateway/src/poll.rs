//! `GET /v1/poll`: the long-poll fallback for networks that block
//! WebSockets. Stateless on the node: every request carries its cursor, reads
//! the log after it, and, when nothing is there yet, waits until a live event
//! of one of *its* channels arrives (re-checking the log every
//! `recheck`, which heals a lost Redis publish like the head check does).
//!
//! Invariants:
//! - The same replay rules as a WebSocket catch-up
//!   ([`crate::replay::plan_page`]), so the guarantees (complete, once,
//!   ordered, scoped) hold across both transports and a client may switch.
//! - At most `max_polls` requests wait on a node at once, and at most
//!   `max_polls_per_user` of one user; the rest are refused (503, 429
//!   `rate_limited`) before touching PostgreSQL.
//! - Polls read PostgreSQL only under a `read_permits` permit, a share
//!   sized below the connection pool: however many polls run, catch-ups and
//!   backfills always find connections. The permit covers a read, never the
//!   wait for the next event.

use crate::auth::Authenticator;
use crate::error::RequestError;
use crate::http::{authenticate, json_error, messages_response, query_param, required_topic, Body};
use crate::metrics as m;
use crate::outbound::Path;
use crate::replay::read_messages;
use crate::subscribe::Planner;
use crate::wakers::ChannelWakers;
use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

const MAX_TIMEOUT_MS: u64 = 60_000;
const MAX_MESSAGES: usize = 1000;

/// What a long-poll needs from the node.
#[derive(Debug)]
pub(crate) struct PollContext<'a> {
    pub(crate) auth: &'a Authenticator,
    pub(crate) planner: Planner<'a>,
    pub(crate) wakers: &'a Arc<ChannelWakers>,
    pub(crate) slots: &'a Semaphore,
    pub(crate) per_user: &'a PollsPerUser,
    /// The polls' share of the PostgreSQL pool.
    pub(crate) read_permits: &'a Semaphore,
    pub(crate) replay_page: switchyard_cursorlog::PageLimit,
    /// Longest wait between two reads of the log.
    pub(crate) recheck: Duration,
    pub(crate) drain: CancellationToken,
}

fn status_of(e: &RequestError) -> StatusCode {
    match e {
        RequestError::NoChannels(_) => StatusCode::FORBIDDEN,
        RequestError::Log(_) | RequestError::NotStored => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::BAD_REQUEST,
    }
}

fn refuse(e: RequestError) -> Response<Body> {
    e.log("long-poll");
    json_error(status_of(&e), e.code().as_str(), &e.to_string())
}

/// Long-polls each user holds on this node, against a cap.
#[derive(Debug)]
pub(crate) struct PollsPerUser {
    limit: usize,
    held: Mutex<HashMap<Arc<str>, usize>>,
}

/// One of a user's polls; released on drop.
#[derive(Debug)]
pub(crate) struct UserPoll<'a> {
    owner: &'a PollsPerUser,
    user: Arc<str>,
}

impl PollsPerUser {
    /// At most `limit` polls per user (0: no limit).
    pub(crate) fn new(limit: usize) -> Self {
        PollsPerUser {
            limit,
            held: Mutex::default(),
        }
    }

    /// A poll for `user`, or `None` when the user already holds `limit`.
    pub(crate) fn try_take(&self, user: &str) -> Option<UserPoll<'_>> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let user: Arc<str> = match held.get_key_value(user) {
            Some((k, n)) => {
                if self.limit > 0 && *n >= self.limit {
                    return None;
                }
                k.clone()
            }
            None => user.into(),
        };
        *held.entry(user.clone()).or_insert(0) += 1;
        Some(UserPoll { owner: self, user })
    }
}

impl Drop for UserPoll<'_> {
    fn drop(&mut self) {
        let mut held = self.owner.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = held.get_mut(&*self.user) {
            *n -= 1;
            if *n == 0 {
                held.remove(&*self.user);
            }
        }
    }
}

pub(crate) async fn handle(req: Request<Incoming>, ctx: PollContext<'_>) -> Response<Body> {
    let identity = match authenticate(ctx.auth, &req) {
        Ok(i) => i,
        Err(resp) => return *resp,
    };
    let Some(_user_slot) = ctx.per_user.try_take(&identity.user) else {
        metrics::counter!(m::CLIENT_ERRORS, "code" => "rate_limited").increment(1);
        return json_error(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many long-polls of this user on this node (SWITCHYARD_MAX_POLLS_PER_USER); finish one first",
        );
    };
    let Ok(_slot) = ctx.slots.try_acquire() else {
        metrics::counter!(m::CLIENT_ERRORS, "code" => "rate_limited").increment(1);
        return json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "rate_limited",
            "too many long-polls on this node; retry shortly",
        );
    };
    let query = req.uri().query().unwrap_or("");
    let topic = match required_topic(query) {
        Ok(t) => t,
        Err(refusal) => return *refusal,
    };
    let cursor = query_param(query, "cursor").filter(|c| !c.is_empty());
    let timeout_ms = match query_param(query, "timeout_ms").map(|t| t.parse::<u64>()) {
        None => 25_000,
        Some(Ok(t)) => t.min(MAX_TIMEOUT_MS),
        Some(Err(_)) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "timeout_ms must be a number of milliseconds",
            )
        }
    };
    // A poll does not outlive its token.
    let token_left = identity.exp.saturating_sub(now_secs()).saturating_mul(1000);
    let timeout_ms = timeout_ms.min(token_left);
    let plan = {
        let Ok(_read) = ctx.read_permits.acquire().await else {
            return refuse(RequestError::NotStored);
        };
        match ctx
            .planner
            .plan(&identity, &topic, cursor.as_deref(), None)
            .await
        {
            Ok(p) => p,
            Err(e) => return refuse(e),
        }
    };
    let log = ctx.planner.log;
    let watch = ctx.wakers.watch(&plan.channels);
    let mut positions = plan.positions;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(timeout_ms);
    let mut messages: Vec<Bytes>;
    let mut created: Vec<i64> = Vec::new();
    loop {
        created.clear();
        let user = Some(&*identity.user);
        let Ok(read) = ctx.read_permits.acquire().await else {
            return refuse(RequestError::NotStored);
        };
        let page = read_messages(
            log,
            ctx.planner.cursors,
            &mut positions,
            user,
            ctx.replay_page,
            MAX_MESSAGES,
            Some(&mut created),
        )
        .await;
        drop(read);
        messages = match page {
            Ok((m, _)) => m,
            Err(e) => return refuse(RequestError::Log(e)),
        };
        if !messages.is_empty() || tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::select! {
            _ = watch.woken() => {
                metrics::counter!(m::POLL_WAKEUPS).increment(1);
            }
            _ = tokio::time::sleep(ctx.recheck) => {}
            _ = tokio::time::sleep_until(deadline) => {}
            _ = ctx.drain.cancelled() => break,
        }
    }
    drop(watch);
    let cursor = ctx.planner.cursors.encode(positions.iter().copied());
    let response = messages_response(&messages, &cursor, plan.recovered, None);
    // The response is complete here (its body is written without waiting).
    let now_ms = chrono::Utc::now().timestamp_millis();
    for at in created {
        metrics::histogram!(m::DELIVERY_LAG, "path" => Path::Poll.as_str())
            .record((now_ms - at).max(0) as f64 / 1000.0);
    }
    response
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
