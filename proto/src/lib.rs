//! Wire types only, generated from `proto/*.proto` at build time; no I/O.
//!
//! - [`v1`]: the external contract: the Kafka [`v1::Event`] envelope and the
//!   client [`v1::ClientFrame`] / [`v1::ServerFrame`].
//! - [`internal`]: what the bridge publishes on Redis and what a cursor holds.
//!   Changing a field number here breaks cursors held by clients.

#![allow(unreachable_pub, missing_debug_implementations, clippy::all)]

/// The external wire contract (Kafka envelope and client frames).
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/switchyard.v1.rs"));
}

/// Internal types between bridge and gateways.
pub mod internal {
    include!(concat!(env!("OUT_DIR"), "/switchyard.internal.v1.rs"));
}
