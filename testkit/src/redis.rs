//! Redis for tests: the machine's server (stacks keep apart by key prefix),
//! or a private `redis-server` for tests that kill and restart Redis.
//!
//! Invariant: a private server persists nothing (`--save ""`, no AOF), so a
//! restart starts empty, and it dies with its handle.

use crate::probe::wait_port;
use crate::process::Proc;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// Redis for tests (`SWITCHYARD_TEST_REDIS`, default the machine's).
pub fn redis_base() -> String {
    std::env::var("SWITCHYARD_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A private redis-server (for tests that restart Redis).
#[derive(Debug)]
pub struct RedisServer {
    pub port: u16,
    pub proc: Proc,
}

impl RedisServer {
    pub fn start(dir: &Path, port: u16) -> anyhow::Result<RedisServer> {
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &port.to_string()]);
        Self::spawn(cmd, &format!("redis-{port}"), dir, port)
    }

    /// A redis-server that speaks only TLS on `port`, with this certificate
    /// and key (PEM files); clients are not asked for certificates.
    pub fn start_tls(
        dir: &Path,
        port: u16,
        cert: &Path,
        key: &Path,
    ) -> anyhow::Result<RedisServer> {
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", "0", "--tls-port", &port.to_string()])
            .arg("--tls-cert-file")
            .arg(cert)
            .arg("--tls-key-file")
            .arg(key)
            .args(["--tls-auth-clients", "no"]);
        Self::spawn(cmd, &format!("redis-tls-{port}"), dir, port)
    }

    /// Starts `cmd` (its listening options given) on loopback, keeping
    /// nothing on disk, and waits until `port` accepts connections.
    fn spawn(mut cmd: Command, name: &str, dir: &Path, port: u16) -> anyhow::Result<RedisServer> {
        cmd.args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]);
        let proc = Proc::spawn(name, cmd, dir)?;
        wait_port(
            format!("127.0.0.1:{port}").parse()?,
            Duration::from_secs(10),
        )?;
        Ok(RedisServer { port, proc })
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}
