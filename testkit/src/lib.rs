//! Test harness for Switchyard's integration tests. It runs the real
//! servers: a tansu Kafka-protocol broker on a free port (in-memory storage),
//! a fresh PostgreSQL database per stack, Redis (the machine's, under a
//! unique key prefix, or a private `redis-server` when a test restarts it),
//! and the real `switchyard-bridge` / `switchyard-gateway` binaries as child
//! processes, so tests can SIGKILL them. The load test (`switchyard-loadtest`)
//! starts its servers with the same processes, probes, broker and databases.
//!
//! Where things are (everything is re-exported at the crate root):
//!
//! | module | owns |
//! | --- | --- |
//! | `process` | child processes ([`Proc`]), workspace binaries, scratch directories |
//! | `probe` | free ports, "is it listening", `GET`, "is it ready" (blocking, and `async` for the load test) |
//! | `broker` | the tansu broker: start, restart, topics, producer |
//! | `database` | fresh PostgreSQL databases, a private PostgreSQL server |
//! | `redis` | the test Redis, a private `redis-server` |
//! | `stack` | a whole deployment: broker, database, bridge, gateways |
//! | `tls` | a throwaway CA and server certificate (openssl) for TLS tests |
//! | `token` | JWTs signed with the test secret |
//! | `event` | the events tests produce |
//! | `client` | the WebSocket test client speaking the JSON protocol |
//! | `api` | the gateways' server API: the test key, one JSON request |
//! | `attack` | hostile clients (fragment floods, slowloris, malformed frames, stalled readers, bad tokens and cursors, poll floods) |
//! | `fuzz` | corpus-driven fuzz targets on stable Rust: the corpus in `fuzz/corpus/`, mutating input strategies, the case count |
//! | `otlp` | an OTLP/HTTP trace receiver that keeps the spans it is sent |
//!
//! Invariant: every stack uses its own database, topics, Redis prefix and
//! ports, so tests run in parallel and repeated runs never collide; every
//! child process is killed when its handle drops.

mod api;
pub mod attack;
mod broker;
mod client;
mod database;
mod event;
pub mod fuzz;
mod otlp;
mod probe;
mod process;
mod redis;
mod stack;
mod tls;
mod token;

pub use api::{api_request, API_KEY};
pub use attack::Outcome;
pub use broker::{committed_offsets, tansu_bin, Broker};
pub use client::{ids, ns, Client, Connect};
pub use database::{pg_base, Database, PgServer};
pub use event::{news, now_ms};
pub use otlp::{OtlpReceiver, ReceivedSpan};
pub use probe::{
    ensure_loopback, free_addr, free_port, http_get, http_get_async, metric_sum, wait_port_async,
    wait_ready, wait_serving,
};
pub use process::{binary, scratch_dir, Proc};
pub use redis::{redis_base, RedisServer};
pub use stack::{default_stack, require_servers, seed_topology, GatewayNode, Stack, StackOptions};
pub use tls::test_certificates;
pub use token::{mint_hs256, token, token_with, SECRET};

/// `<prefix>_<12 random hex digits>`: the fresh names that keep tests apart.
pub(crate) fn unique(prefix: &str) -> String {
    format!(
        "{prefix}_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}
