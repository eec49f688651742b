//! [`CursorLog`]: the writer and reader side of the log over a deadpool of
//! PostgreSQL connections.
//!
//! Invariant (see the crate doc): sequences are assigned only inside
//! [`CursorLog::append_batch`]'s transaction, after locking the channel rows
//! in id order (so concurrent writers never deadlock), and the heads are
//! written in the same transaction. A failed transaction assigns nothing.

use crate::event::{Entry, LogEvent, NewEvent};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::str::FromStr;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};

const LOCK_HEADS: &str = include_str!("sql/lock_heads.sql");
const EXISTING_IDS: &str = include_str!("sql/existing_ids.sql");
const RESERVE_PKS: &str = include_str!("sql/reserve_pks.sql");
const COPY_EVENTS: &str = include_str!("sql/copy_events.sql");
const COPY_ENTRIES: &str = include_str!("sql/copy_entries.sql");
/// A query parameter.
type Param<'a> = dyn ToSql + Sync + 'a;
/// The column types of [`COPY_EVENTS`], in its order.
const EVENT_COLUMNS: &[Type] = &[
    Type::INT8,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::BYTEA,
    Type::TEXT,
    Type::INT8,
    Type::TIMESTAMPTZ,
    Type::TIMESTAMPTZ,
    Type::INT8_ARRAY,
    Type::INT8_ARRAY,
];
/// The column types of [`COPY_ENTRIES`], in its order.
const ENTRY_COLUMNS: &[Type] = &[Type::INT8, Type::INT8, Type::INT8, Type::TIMESTAMPTZ];
const UPDATE_HEADS: &str = include_str!("sql/update_heads.sql");
const UPSERT_CHANNELS: &str = include_str!("sql/upsert_channels.sql");
const CHANNEL_IDS: &str = include_str!("sql/channel_ids.sql");
const READ_AFTER: &str = include_str!("sql/read_after.sql");
const HEADS: &str = include_str!("sql/heads.sql");
const LOOKBACK_START: &str = include_str!("sql/lookback_start.sql");
const SWEEP: &str = include_str!("sql/sweep.sql");
const LOG_STATS: &str = include_str!("sql/log_stats.sql");

/// Errors of the cursor log.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("invalid PostgreSQL URL: {0}")]
    Config(String),
    #[error("PostgreSQL pool: {}", with_causes(.0))]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("PostgreSQL: {}", with_causes(.0))]
    Db(#[from] tokio_postgres::Error),
    #[error("the log has no epoch; migrations did not run")]
    NoEpoch,
    /// A channel id the database does not have: the id cache predates a
    /// restore or a failover to a replica that lacks the row. The cache is
    /// cleared when this is returned; resolve the ids again and retry.
    #[error("channel id {0} is not in the database (stale channel id cache)")]
    UnknownChannel(i64),
}

impl LogError {
    /// Whether retrying the same operation later may succeed (the database was
    /// unreachable, a serialization conflict, a concurrent duplicate insert).
    pub fn is_transient(&self) -> bool {
        match self {
            LogError::Config(_) | LogError::NoEpoch | LogError::UnknownChannel(_) => false,
            LogError::Pool(_) => true,
            LogError::Db(e) => match e.code() {
                None => true,
                Some(c) => {
                    *c == SqlState::UNIQUE_VIOLATION
                        || *c == SqlState::T_R_SERIALIZATION_FAILURE
                        || *c == SqlState::T_R_DEADLOCK_DETECTED
                        || *c == SqlState::ADMIN_SHUTDOWN
                        || *c == SqlState::CANNOT_CONNECT_NOW
                        || c.code().starts_with("08")
                        || c.code().starts_with("53")
                        || c.code().starts_with("57")
                }
            },
        }
    }

    /// Whether the database refused *this data* (a value it cannot store or
    /// a constraint it violates), so the same events can never be appended
    /// and may go to the DLQ. Everything else (connectivity, a read-only
    /// transaction after a failover, permissions, a missing table, a stale
    /// channel id cache, resource limits) is about the database, not the
    /// event: the caller must stall and retry, never drop the event.
    pub fn rejects_data(&self) -> bool {
        match self {
            LogError::Db(e) => e.code().is_some_and(|c| sqlstate_rejects_data(c.code())),
            LogError::Config(_)
            | LogError::Pool(_)
            | LogError::NoEpoch
            | LogError::UnknownChannel(_) => false,
        }
    }
}

/// An error's message followed by those of its causes that it does not
/// already include (tokio-postgres leaves out, e.g., why a TLS handshake
/// failed).
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = c.source();
    }
    text
}

/// The SQLSTATEs that condemn the data rather than the database: class 22
/// (data exception: a value too long, an invalid byte sequence, a number
/// out of range) and class 23 (integrity constraint violation) except
/// `23505` unique violation, which the log's idempotency relies on (a
/// concurrent writer inserted the same event id; retrying finds it).
pub fn sqlstate_rejects_data(code: &str) -> bool {
    code.starts_with("22") || (code.starts_with("23") && code != "23505")
}

/// Pool settings.
#[derive(Debug, Clone)]
pub struct PoolOptions {
    pub max_size: usize,
    pub connect_timeout: Duration,
    pub wait_timeout: Duration,
}

impl Default for PoolOptions {
    fn default() -> Self {
        PoolOptions {
            max_size: 16,
            connect_timeout: Duration::from_secs(5),
            wait_timeout: Duration::from_secs(5),
        }
    }
}

/// What an append did.
#[derive(Debug, Default, Clone)]
pub struct AppendOutcome {
    /// Appended events with their entries, in batch order.
    pub appended: Vec<LogEvent>,
    /// Event ids that were already in the log (or repeated in the batch).
    pub duplicates: Vec<String>,
}

/// A channel's head and oldest retained sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelHead {
    pub channel: i64,
    pub head: i64,
    /// Oldest retained sequence, `None` when nothing is retained.
    pub floor: Option<i64>,
}

/// How much one replay read may return: at most `rows` entries per channel
/// and, across channels, rows whose payloads add up to about `bytes` (the
/// first row always, however large).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageLimit {
    pub rows: i64,
    pub bytes: i64,
}

impl PageLimit {
    /// `rows` per channel, without a byte budget.
    pub fn rows(rows: i64) -> Self {
        PageLimit {
            rows,
            bytes: i64::MAX,
        }
    }
}

/// One page of a replay read.
#[derive(Debug, Default)]
pub struct ReadPage {
    /// `(channel, seq, event)` in per-channel sequence order, merged across
    /// channels by append order.
    pub rows: Vec<(i64, i64, Arc<LogEvent>)>,
    /// Whether some channel hit the row limit or the byte budget cut the
    /// page (read again from the new positions).
    pub more: bool,
}

/// What [`CursorLog::stats`] reports.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LogStats {
    /// Tables, indexes and TOAST of events and entries, in bytes.
    pub bytes: u64,
    /// Age of the oldest event still in the log; `None` when it is empty.
    pub oldest_age: Option<Duration>,
}

/// The cursor log.
#[derive(Clone)]
pub struct CursorLog {
    pool: Pool,
    epoch: Arc<str>,
    channel_cache: Arc<RwLock<HashMap<String, i64>>>,
}

impl std::fmt::Debug for CursorLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CursorLog")
            .field("epoch", &self.epoch)
            .finish_non_exhaustive()
    }
}

const CHANNEL_CACHE_MAX: usize = 1_000_000;

impl CursorLog {
    /// Connects, applies migrations and loads the log epoch.
    pub async fn connect(url: &str, opts: PoolOptions) -> Result<CursorLog, LogError> {
        let (url, tls) = crate::tls::split_url(url);
        let mut pg =
            tokio_postgres::Config::from_str(&url).map_err(|e| LogError::Config(e.to_string()))?;
        let (mode, connector) = crate::tls::connector(&tls)?;
        if let Some(mode) = mode {
            pg.ssl_mode(mode);
        }
        pg.connect_timeout(opts.connect_timeout);
        pg.application_name("switchyard");
        let mgr = Manager::from_config(
            pg,
            connector,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(mgr)
            .max_size(opts.max_size)
            .wait_timeout(Some(opts.wait_timeout))
            .create_timeout(Some(opts.connect_timeout))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| LogError::Config(e.to_string()))?;
        {
            let mut client = pool.get().await?;
            crate::migrate::run(&mut client).await?;
        }
        let client = pool.get().await?;
        let epoch: String = client
            .query_opt("SELECT epoch FROM log_meta", &[])
            .await?
            .ok_or(LogError::NoEpoch)?
            .get(0);
        Ok(CursorLog {
            pool,
            epoch: epoch.into(),
            channel_cache: Arc::default(),
        })
    }

    /// The log's identity; changes when the database is reset or restored.
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    /// Cheap liveness check of the database.
    pub async fn ping(&self) -> Result<(), LogError> {
        let client = self.pool.get().await?;
        client.simple_query("SELECT 1").await?;
        Ok(())
    }

    /// Ids of the channels with these keys, creating missing ones.
    /// Returned in the order of `keys`.
    pub async fn channel_ids(&self, keys: &[String]) -> Result<Vec<i64>, LogError> {
        let mut missing: Vec<String> = Vec::new();
        {
            let cache = self.channel_cache.read().unwrap_or_else(|p| p.into_inner());
            for k in keys {
                if !cache.contains_key(k) {
                    missing.push(k.clone());
                }
            }
        }
        if !missing.is_empty() {
            missing.sort();
            missing.dedup();
            let client = self.pool.get().await?;
            let found = client
                .query(&client.prepare_cached(CHANNEL_IDS).await?, &[&missing])
                .await?;
            let mut fetched: HashMap<String, i64> =
                found.iter().map(|r| (r.get(1), r.get(0))).collect();
            let absent: Vec<String> = missing
                .iter()
                .filter(|k| !fetched.contains_key(*k))
                .cloned()
                .collect();
            if !absent.is_empty() {
                client
                    .execute(&client.prepare_cached(UPSERT_CHANNELS).await?, &[&absent])
                    .await?;
                let rows = client
                    .query(&client.prepare_cached(CHANNEL_IDS).await?, &[&absent])
                    .await?;
                fetched.extend(rows.iter().map(|r| (r.get(1), r.get(0))));
            }
            let mut cache = self
                .channel_cache
                .write()
                .unwrap_or_else(|p| p.into_inner());
            if cache.len() + fetched.len() > CHANNEL_CACHE_MAX {
                cache.clear();
            }
            cache.extend(fetched);
        }
        let cache = self.channel_cache.read().unwrap_or_else(|p| p.into_inner());
        keys.iter()
            .map(|k| {
                cache.get(k).copied().ok_or_else(|| {
                    LogError::Config(format!("channel {k:?} vanished while being created"))
                })
            })
            .collect()
    }

    /// Appends a batch in one transaction. Events whose id is already in the
    /// log (or earlier in the batch) are reported as duplicates and get no
    /// entries. Returns after the commit.
    pub async fn append_batch(&self, batch: &[NewEvent]) -> Result<AppendOutcome, LogError> {
        let mut outcome = AppendOutcome::default();
        // De-duplicate inside the batch, keeping the first occurrence.
        let mut seen = HashSet::with_capacity(batch.len());
        let mut unique: Vec<&NewEvent> = Vec::with_capacity(batch.len());
        for ev in batch {
            if seen.insert(ev.event_id.as_str()) {
                unique.push(ev);
            } else {
                outcome.duplicates.push(ev.event_id.clone());
            }
        }
        if unique.is_empty() {
            return Ok(outcome);
        }
        let mut channels: Vec<i64> = unique
            .iter()
            .flat_map(|e| e.channels.iter().copied())
            .collect();
        channels.sort_unstable();
        channels.dedup();
        let ids: Vec<&str> = unique.iter().map(|e| e.event_id.as_str()).collect();

        let mut client = self.pool.get().await?;
        let lock_heads = client.prepare_cached(LOCK_HEADS).await?;
        let existing_ids = client.prepare_cached(EXISTING_IDS).await?;
        let reserve = client.prepare_cached(RESERVE_PKS).await?;
        let copy_events = client.prepare_cached(COPY_EVENTS).await?;
        let copy_entries = client.prepare_cached(COPY_ENTRIES).await?;
        let update_heads = client.prepare_cached(UPDATE_HEADS).await?;
        let tx = client.transaction().await?;
        // One round trip for three queries (tokio-postgres pipelines them;
        // the server runs them in order): lock every channel row this batch
        // touches, in id order; find the ids already logged; reserve a pk
        // per event (gaps are fine) and read the transaction's timestamp.
        let wanted = i64::try_from(unique.len()).unwrap_or(i64::MAX);
        let lock_args: [&Param<'_>; 1] = [&channels];
        let existing_args: [&Param<'_>; 1] = [&ids];
        let reserve_args: [&Param<'_>; 1] = [&wanted];
        let (locked, existing, reserved) = tokio::try_join!(
            tx.query(&lock_heads, &lock_args),
            tx.query(&existing_ids, &existing_args),
            tx.query_one(&reserve, &reserve_args),
        )?;
        let mut heads: BTreeMap<i64, i64> = locked.iter().map(|r| (r.get(0), r.get(1))).collect();
        let existing: HashSet<String> = existing.iter().map(|r| r.get(0)).collect();
        let pks: Vec<i64> = reserved.get(0);
        let appended_at: DateTime<Utc> = reserved.get(1);

        // A channel id the database lacks means the id cache is stale: drop
        // it so the caller's next `channel_ids` asks the database again.
        if let Some(ch) = channels.iter().find(|c| !heads.contains_key(c)) {
            self.channel_cache
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .clear();
            return Err(LogError::UnknownChannel(*ch));
        }
        let mut fresh: Vec<(&NewEvent, i64)> = Vec::with_capacity(unique.len());
        for (ev, pk) in unique.into_iter().zip(pks) {
            if existing.contains(&ev.event_id) {
                outcome.duplicates.push(ev.event_id.clone());
            } else {
                fresh.push((ev, pk));
            }
        }
        if fresh.is_empty() {
            tx.rollback().await?;
            return Ok(outcome);
        }

        // Binary COPY: no SQL expression per row, no arrays to unnest, no
        // CTE to materialise — the least PostgreSQL CPU per appended event.
        let events_sink = tx.copy_in(&copy_events).await?;
        let mut events_rows = std::pin::pin!(BinaryCopyInWriter::new(events_sink, EVENT_COLUMNS));
        let n_entries = fresh.iter().map(|(ev, _)| ev.channels.len()).sum();
        let mut entry_keys: Vec<(i64, i64, i64)> = Vec::with_capacity(n_entries);
        for (ev, pk) in fresh {
            let mut entries = Vec::with_capacity(ev.channels.len());
            let mut channel_ids = Vec::with_capacity(ev.channels.len());
            let mut seqs = Vec::with_capacity(ev.channels.len());
            for ch in &ev.channels {
                let head = heads.entry(*ch).or_default();
                *head += 1;
                entries.push(Entry {
                    channel: *ch,
                    seq: *head,
                });
                channel_ids.push(*ch);
                seqs.push(*head);
                entry_keys.push((*ch, *head, pk));
            }
            events_rows
                .as_mut()
                .write(&[
                    &pk,
                    &ev.event_id,
                    &ev.topic,
                    &ev.tenant,
                    &ev.user_id,
                    &ev.payload.as_ref(),
                    &ev.content_type,
                    &ev.created_at_ms,
                    &appended_at,
                    &ev.expires_at,
                    &channel_ids,
                    &seqs,
                ])
                .await?;
            outcome.appended.push(LogEvent {
                live: Default::default(),
                event_id: ev.event_id.clone(),
                topic: ev.topic.clone(),
                tenant: ev.tenant.clone(),
                user_id: ev.user_id.clone(),
                payload: ev.payload.clone(),
                content_type: ev.content_type.clone(),
                created_at_ms: ev.created_at_ms,
                entries,
            });
        }
        events_rows.finish().await?;
        let entries_sink = tx.copy_in(&copy_entries).await?;
        let mut entry_rows = std::pin::pin!(BinaryCopyInWriter::new(entries_sink, ENTRY_COLUMNS));
        for (ch, seq, pk) in &entry_keys {
            entry_rows
                .as_mut()
                .write(&[ch, seq, pk, &appended_at])
                .await?;
        }
        entry_rows.finish().await?;
        let (h_ids, h_heads): (Vec<i64>, Vec<i64>) = heads.into_iter().unzip();
        tx.execute(&update_heads, &[&h_ids, &h_heads]).await?;
        tx.commit().await?;
        Ok(outcome)
    }

    /// Reads entries after `positions[i].1` in channel `positions[i].0`, at
    /// most `limit.rows` per channel, none past `upto` (when given for that
    /// channel), and cut in append order once the payloads pass
    /// `limit.bytes` (each channel keeps a prefix; the first row always
    /// comes). Rows come in per-channel order, merged by append order.
    pub async fn read_after(
        &self,
        positions: &[(i64, i64)],
        upto: Option<&[i64]>,
        limit: PageLimit,
    ) -> Result<ReadPage, LogError> {
        let (limit, max_bytes) = (limit.rows.max(1), limit.bytes.max(1));
        if positions.is_empty() {
            return Ok(ReadPage::default());
        }
        let chs: Vec<i64> = positions.iter().map(|p| p.0).collect();
        let afters: Vec<i64> = positions.iter().map(|p| p.1).collect();
        let uptos: Vec<i64> = match upto {
            Some(u) => u.to_vec(),
            None => vec![i64::MAX; positions.len()],
        };
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(READ_AFTER).await?;
        let rows = client
            .query(&stmt, &[&chs, &afters, &uptos, &limit, &max_bytes])
            .await?;
        let total: i64 = rows.first().map(|r| r.get(12)).unwrap_or(0);
        let mut by_pk: HashMap<i64, Arc<LogEvent>> = HashMap::new();
        let mut lists: BTreeMap<i64, Vec<(i64, i64, Arc<LogEvent>)>> = BTreeMap::new();
        for r in &rows {
            let ch: i64 = r.get(0);
            let seq: i64 = r.get(1);
            let pk: i64 = r.get(2);
            let ev = by_pk
                .entry(pk)
                .or_insert_with(|| {
                    let chans: Vec<i64> = r.get(10);
                    let seqs: Vec<i64> = r.get(11);
                    Arc::new(LogEvent {
                        live: Default::default(),
                        event_id: r.get(3),
                        topic: r.get(4),
                        tenant: r.get(5),
                        user_id: r.get(6),
                        payload: Bytes::from(r.get::<_, Vec<u8>>(7)),
                        content_type: r.get(8),
                        created_at_ms: r.get(9),
                        entries: chans
                            .into_iter()
                            .zip(seqs)
                            .map(|(channel, seq)| Entry { channel, seq })
                            .collect(),
                    })
                })
                .clone();
            lists.entry(ch).or_default().push((pk, seq, ev));
        }
        let more = (rows.len() as i64) < total || lists.values().any(|l| l.len() as i64 >= limit);
        // k-way merge by append order (pk), keeping each list's own order.
        type Row = (i64, i64, Arc<LogEvent>);
        let mut queues: Vec<(i64, std::collections::VecDeque<Row>)> =
            lists.into_iter().map(|(ch, l)| (ch, l.into())).collect();
        let mut out = Vec::with_capacity(rows.len());
        loop {
            let next = queues
                .iter()
                .enumerate()
                .filter_map(|(i, (_, q))| q.front().map(|r| (r.0, i)))
                .min();
            let Some((_, i)) = next else { break };
            let ch = queues[i].0;
            if let Some((_, seq, ev)) = queues[i].1.pop_front() {
                out.push((ch, seq, ev));
            }
        }
        Ok(ReadPage { rows: out, more })
    }

    /// Heads and retention floors of these channels (missing ids are omitted).
    pub async fn heads(&self, channels: &[i64]) -> Result<Vec<ChannelHead>, LogError> {
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(HEADS).await?;
        let rows = client.query(&stmt, &[&channels]).await?;
        Ok(rows
            .iter()
            .map(|r| ChannelHead {
                channel: r.get(0),
                head: r.get(1),
                floor: r.get(2),
            })
            .collect())
    }

    /// For each `(channel, since)`, the position just before the first entry
    /// appended at or after `since` (`None` when there is none: start at head).
    pub async fn lookback_starts(
        &self,
        windows: &[(i64, DateTime<Utc>)],
    ) -> Result<HashMap<i64, Option<i64>>, LogError> {
        if windows.is_empty() {
            return Ok(HashMap::new());
        }
        let chs: Vec<i64> = windows.iter().map(|w| w.0).collect();
        let since: Vec<DateTime<Utc>> = windows.iter().map(|w| w.1).collect();
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(LOOKBACK_START).await?;
        let rows = client.query(&stmt, &[&chs, &since]).await?;
        Ok(rows
            .iter()
            .map(|r| {
                let first: Option<i64> = r.get(1);
                (r.get::<_, i64>(0), first.map(|s| s - 1))
            })
            .collect())
    }

    /// Deletes up to `limit` expired events and their entries; returns how
    /// many events were deleted.
    pub async fn sweep_expired(&self, limit: i64) -> Result<u64, LogError> {
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(SWEEP).await?;
        let row = client.query_one(&stmt, &[&limit]).await?;
        Ok(row.get::<_, i64>(0) as u64)
    }

    /// The log's size on disk and the age of its oldest event (what the
    /// retention sweep reports).
    pub async fn stats(&self) -> Result<LogStats, LogError> {
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(LOG_STATS).await?;
        let row = client.query_one(&stmt, &[]).await?;
        Ok(LogStats {
            bytes: row.get::<_, i64>(0).max(0) as u64,
            oldest_age: row
                .get::<_, Option<f64>>(1)
                .map(|s| Duration::from_secs_f64(s.max(0.0))),
        })
    }

    /// The pool's usage right now.
    pub fn pool_status(&self) -> deadpool_postgres::Status {
        self.pool.status()
    }

    /// The underlying pool (tests and tooling).
    pub fn pool(&self) -> &Pool {
        &self.pool
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_data_and_constraint_errors_reject_the_data() {
        for code in [
            "22001", // string data right truncation
            "22021", // invalid byte sequence (a NUL in text)
            "22P02", // invalid text representation
            "22003", // numeric value out of range
            "23502", // not null violation
            "23503", // foreign key violation
            "23514", // check violation
        ] {
            assert!(sqlstate_rejects_data(code), "{code} rejects the data");
        }
        for code in [
            "23505", // unique violation: a concurrent writer, retry finds it
            "25006", // read-only transaction (after a failover)
            "25P02", // in failed transaction
            "42501", // insufficient privilege
            "42P01", // undefined table
            "40001", // serialization failure
            "40P01", // deadlock
            "08006", // connection failure
            "53300", // too many connections
            "54000", // program limit exceeded
            "57P01", // admin shutdown
            "57014", // query canceled (statement timeout)
            "XX000", // internal error
            "",
        ] {
            assert!(!sqlstate_rejects_data(code), "{code} is about the database");
        }
    }

    #[test]
    fn errors_without_a_sqlstate_never_reject_the_data() {
        assert!(!LogError::UnknownChannel(7).rejects_data());
        assert!(!LogError::Config("x".into()).rejects_data());
        assert!(!LogError::NoEpoch.rejects_data());
    }
}
