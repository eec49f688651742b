//! The PostgreSQL cursor log, shared by the bridge (writer) and the gateways
//! (readers). The Redis live feed that carries its committed events is the
//! `switchyard-livefeed` crate.
//!
//! - [`config`]: [`config::StoreConfig`], the storage settings both binaries share.
//! - [`migrate`]: numbered migrations from `migrations/`, applied at start-up
//!   under an advisory lock so several processes may start at once.
//! - [`log`]: [`CursorLog`]: batch append with dense per-channel sequences
//!   and idempotency on event id; replay reads; heads; retention sweep.
//! - [`event`]: [`LogEvent`], the one in-memory form of a durable event, and
//!   [`NewEvent`], what the writer appends.
//! - [`route`]: [`route::route`], which channels of an event are logged
//!   (and until when) and which are reached live only; the bridge and
//!   client publishes both route through it.
//! - [`shard`]: [`shard::shard`], a batch split into groups with disjoint
//!   channel sets, appended concurrently by the bridge.
//! - [`cursor`]: the opaque client cursor (log epoch + per-channel positions).
//! - [`metrics`]: the connection pool's gauges, as a catalog part both
//!   binaries add to theirs.
//!
//! The invariant everything rests on: a channel's sequence numbers are dense
//! (1, 2, 3, …) and a sequence is assigned under that channel's row lock
//! inside the appending transaction, so for every channel commit order equals
//! sequence order. Readers rely on it to detect gaps: seeing `n + 2` after `n`
//! means `n + 1` is committed and can be read back.

pub mod config;
pub mod cursor;
pub mod event;
pub mod log;
pub mod metrics;
pub mod migrate;
pub mod route;
pub mod shard;
mod tls;

pub use cursor::{Cursor, CursorError};
pub use event::{Entry, LiveStamp, LogEvent, NewEvent};
pub use log::{
    AppendOutcome, ChannelHead, CursorLog, LogError, LogStats, PageLimit, PoolOptions, ReadPage,
};
pub use route::{Draft, Route};
