//! Switchyard's load test: a generator that drives a real deployment end to
//! end (Kafka in, WebSocket out), the scenarios it runs, and the peers it is
//! measured against in the same run.
//!
//! Where things are:
//!
//! | module | owns |
//! | --- | --- |
//! | [`cli`] | the command line of `switchyard-loadtest` |
//! | [`event`] | the events produced to Kafka and the cheap scan of what clients receive |
//! | [`producer`] | the open-loop Kafka producer (no coordinated omission) |
//! | [`client`] | one lightweight task per connection, for every wire protocol |
//! | [`fleet`] | the scenarios' view of all connections, in this process or spread over worker processes |
//! | [`worker`] | the fleet worker process and the line protocol the generator steers it with |
//! | [`verify`] | per-connection completeness / once / order checks |
//! | [`latency`] | sharded HdrHistograms of end-to-end latency |
//! | [`procstat`] | CPU and memory of server processes from `/proc` |
//! | [`infra`] | the run's Redis prefix and name suffix (broker, database and processes are `switchyard_testkit`'s) |
//! | [`systems`] | how each system under test is started: Switchyard, Socket.IO, naive, raw TCP |
//! | [`scenario`] | fan-out, scoped, reconnect storm, ingest, idle: one module each, and the run that drives them |
//! | [`stages`] | Switchyard's per-stage latency breakdown of a sweep step, from the servers' `/metrics` |
//! | [`report`] | JSON, Markdown, README figures; [`plot`] draws the SVG |
//! | [`quick`] | the quick regression set and its comparison with a stored baseline |
//! | [`preflight`] | file limits, sysctls and tools a large run needs |
//! | [`broadcaster`] | the naive tokio-tungstenite broadcaster (peer binary) |
//! | [`rawfanout`] | the raw TCP fan-out ceiling (peer binary) |
//!
//! Invariant: every load loop is bounded in count and time, and only
//! loopback addresses (127.0.0.0/8) are ever targets.
//!
//! Errors: this library is the inside of the three binaries, not an API a
//! caller acts on, so it reports errors with `anyhow` and context.

pub mod broadcaster;
pub mod cli;
pub mod client;
pub mod event;
pub mod fleet;
pub mod infra;
pub mod latency;
pub mod plot;
pub mod preflight;
pub mod procstat;
pub mod producer;
pub mod quick;
pub mod rawfanout;
pub mod report;
pub mod scenario;
pub mod stages;
pub mod systems;
pub mod verify;
pub mod worker;

/// Microseconds since the Unix epoch (wall clock, shared by producer and
/// clients on the same machine).
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// The loopback guard: every address the harness connects to or lets a
/// server bind must be in 127.0.0.0/8 (testkit's probes apply it too).
pub use switchyard_testkit::ensure_loopback;
