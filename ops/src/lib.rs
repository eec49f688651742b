//! Operational plumbing both binaries share, so `main.rs` stays thin:
//!
//! - [`config`]: a [`config::Source`] of configuration values (process
//!   environment, optional `KEY=value` file, or a map in tests) and typed
//!   getters whose errors name the variable.
//! - [`admin`]: the `/healthz`, `/readyz`, `/metrics` HTTP endpoint.
//! - [`catalog`]: the metric catalog type each binary declares its metrics
//!   with (HELP, type, bounded labels), registration at zero, and the
//!   rendering and drift check of `deploy/metrics.txt`.
//! - [`telemetry`]: tracing (text or JSON logs, optional OTLP export), the
//!   Prometheus recorder and its upkeep.
//! - [`tracecontext`]: W3C trace context from Kafka headers and in the
//!   live event, and whether tracing is on at all.
//! - [`backoff`]: the one retry delay policy (exponential, full jitter)
//!   every retry loop of both binaries uses.
//! - [`shutdown`]: waiting for SIGTERM / SIGINT.
//!
//! Invariant: nothing here may block a binary's data path; the admin endpoint
//! answers `/healthz` even when every dependency is down.

pub mod admin;
pub mod backoff;
pub mod catalog;
pub mod config;
pub mod shutdown;
pub mod telemetry;
pub mod tracecontext;
