//! `switchyard-livefeed`: the Redis live feed that carries committed events
//! from their writers (the bridge, and gateways for client publishes) to the
//! gateway fleet.
//!
//! Where things are:
//! - [`naming`]: Redis channel names ([`live_channel`], [`live_pattern`]).
//! - [`wire`]: the live-event wire format ([`encode`], [`decode`]), stamped
//!   with the log epoch.
//! - [`publisher`]: [`Publisher`], one pipelined publish per batch.
//! - [`subscriber`]: [`subscribe`], the reconnecting pattern subscription
//!   that hands events to a [`LiveSink`].
//! - [`control`]: orders between gateway nodes ([`Control`], e.g. a
//!   server-side disconnect) on their own channel, and their subscription.
//! - [`counter`]: fleet-wide counters per time window (quotas).
//! - [`presence`]: who is in each channel over the fleet (Redis entries
//!   with heartbeats and TTLs, atomic join/leave/sweep scripts) and the
//!   join/leave events between nodes.
//! - [`occupancy`]: connections per user and tenant over the fleet, for
//!   the connection quotas (same heartbeat/TTL scheme).
//! - [`metrics`]: the feed's metrics, as catalog parts for the binaries.
//!
//! The invariant a maintainer must not break: the feed is an accelerator,
//! never the truth. A publish that fails is counted, not retried into a
//! duplicate; a subscriber that (re)connects tells its sink to resync from
//! PostgreSQL only once its subscription is active, so nothing published
//! while it was away is lost between the two.

pub mod control;
pub mod counter;
pub mod metrics;
pub mod naming;
pub mod occupancy;
pub mod presence;
pub mod publisher;
pub mod subscriber;
pub mod wire;

pub use control::{
    decode_control, encode_control, subscribe_channel, subscribe_control, Control, ControlRefusal,
};
pub use naming::{control_channel, live_channel, live_pattern, presence_events_channel};
pub use publisher::Publisher;
pub use subscriber::{subscribe, LiveSink, SubscriberConfig};
pub use wire::{decode, decode_with, encode, encode_with, encode_with_at, open, seal, LiveKey};

/// What can go wrong at the live feed's boundary.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    /// Redis could not be reached (the publisher's start-up connection).
    #[error("connecting to Redis (SWITCHYARD_REDIS_URL): {0}")]
    Connect(#[from] redis::RedisError),
    /// A message on a live channel is not a live event.
    #[error("undecodable live event: {0}")]
    Decode(#[from] prost::DecodeError),
    /// A message without a valid MAC while live messages are authenticated.
    #[error("live message not authenticated with SWITCHYARD_LIVE_KEY")]
    Unauthenticated,
    /// A message on a feed channel that is not in its format.
    #[error("malformed feed message: {0}")]
    Malformed(String),
}
