//! Operational plumbing both binaries share, so `main.rs` stays thin:
//!
//! - [`config`]: a [`config::Source`] of configuration values (process
//!   environment, optional `KEY=value` file, or a map in tests) and typed
//!   getters whose errors name the variable.
//! - [`admin`]: the `/healthz`, `/readyz`, `/metrics` HTTP endpoint.
//! - [`telemetry`]: tracing (text or JSON logs, optional OTLP export) and the
//!   Prometheus recorder.
//! - [`backoff`]: the one retry delay policy (exponential, full jitter)
//!   every retry loop of both binaries uses.
//! - [`shutdown`]: waiting for SIGTERM / SIGINT.
//!
//! Invariant: nothing here may block a binary's data path; the admin endpoint
//! answers `/healthz` even when every dependency is down.

pub mod admin;
pub mod backoff;
pub mod config;
pub mod shutdown;
pub mod telemetry;
