//! Switchyard's smart channels: a client subscribes to a plain topic and the
//! server decides, from configuration and the user's entitlements, which
//! scoped channels it sits in; an event's scopes decide which channels it
//! goes to. One resolution function serves both directions.
//!
//! Where things are:
//! - [`model`]: the topology file as written (the seed's JSON shape, or YAML).
//! - [`topology`]: loading, validation (errors name file, JSON path and fix)
//!   and the compiled, immutable [`Topology`].
//! - [`resolve`]: [`Topology::resolve`] and its inputs ([`Scope`],
//!   [`Entitlements`], [`Purpose`]) and output ([`ResolvedChannel`]).
//! - [`lookback`]: `CalendarDay` / `Minutes` replay windows and expiry.
//! - [`reload`]: [`TopologyHandle`], atomic hot reload on file change or SIGHUP.
//! - `src/bin/switchyard-topology.rs`: the `check` / `explain` CLI.
//! - `README.md`: the file format, the rules and the extensions, for authors.
//!
//! The invariant a maintainer must not break: subscribe and publish go
//! through the same [`Topology::resolve`], so a user receives an event if and
//! only if their channel keys and the event's intersect.
//!
//! Extensions beyond the seed's shape (all optional; a file in exactly the
//! seed's shape loads unchanged):
//! - `FilterCollections: ["Name", ...]` (or `FilterCollection: "Name"`) on a
//!   channel merges the hub's named collections' filters with its own;
//! - `Ephemeral: true`: best-effort channel, delivered live only, never
//!   stored in the cursor log (no replay, no catch-up);
//! - `RetentionMinutes: N`: keep the channel's entries at least N minutes for
//!   cursor catch-up, beyond the lookback window;
//! - tenants: resolution with a tenant (the `tenant` claim or event field)
//!   prefixes every channel key (`tenant/hub/name`), so equal product codes in
//!   two tenants never share a channel.

pub mod lookback;
pub mod model;
pub mod reload;
pub mod resolve;
pub mod topology;

pub use lookback::LookBack;
pub use reload::{TopologyHandle, RELOADS, RELOADS_HELP, RELOAD_RESULTS};
pub use resolve::{Entitlements, Purpose, ResolvedChannel, Scope, FEATURE_NAMES, PRODUCT_CODES};
pub use topology::{Issue, Topology, TopologyError, PLACEHOLDER, WILDCARD};
