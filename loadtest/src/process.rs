//! Child processes the harness starts (broker, systems under test), free
//! ports, and readiness probes.
//!
//! Invariant: every child is killed when its handle drops, including when
//! the harness fails half-way, so a run never leaves servers behind; output
//! goes to a log file in the run's directory.

use anyhow::{anyhow, bail, Context as _};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// A child process, SIGKILLed on drop unless it already exited.
#[derive(Debug)]
pub struct Proc {
    pub name: String,
    child: Option<Child>,
    pid: u32,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(name: &str, mut cmd: Command, dir: &Path) -> anyhow::Result<Proc> {
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("opening {}", log.display()))?;
        let err = out.try_clone()?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {name} ({:?})", cmd.get_program()))?;
        Ok(Proc {
            name: name.to_owned(),
            pid: child.id(),
            child: Some(child),
            log,
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// SIGTERM, then SIGKILL after `grace`.
    pub fn stop(&mut self, grace: Duration) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = c.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        let _ = c.wait();
    }

    /// The last `n` bytes of the log, for error messages.
    pub fn log_tail(&self, n: usize) -> String {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        let mut start = s.len().saturating_sub(n);
        while !s.is_char_boundary(start) {
            start += 1;
        }
        s[start..].to_owned()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A free loopback address with port.
pub fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(SocketAddr::from(([127, 0, 0, 1], free_port()?)))
}

/// Waits until something accepts connections on `addr`.
pub async fn wait_port(
    addr: SocketAddr,
    timeout: Duration,
    proc: Option<&mut Proc>,
) -> anyhow::Result<()> {
    crate::ensure_loopback(&addr)?;
    let deadline = Instant::now() + timeout;
    let mut proc = proc;
    while Instant::now() < deadline {
        if tokio::time::timeout(
            Duration::from_millis(500),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        .is_ok_and(|r| r.is_ok())
        {
            return Ok(());
        }
        if let Some(p) = proc.as_deref_mut() {
            if !p.running() {
                bail!(
                    "{} exited before listening on {addr}:\n{}",
                    p.name,
                    p.log_tail(3000)
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("nothing listens on {addr} after {timeout:?}")
}

/// `GET path` over HTTP/1.0; returns (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    crate::ensure_loopback(&addr)?;
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
            .await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        anyhow::Ok(String::from_utf8_lossy(&buf).into_owned())
    };
    let text = tokio::time::timeout(Duration::from_secs(5), fut)
        .await
        .map_err(|_| anyhow!("GET {addr}{path} timed out"))??;
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow!("no HTTP status from {addr}{path}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|x| x.1)
        .unwrap_or("")
        .to_owned();
    Ok((status, body))
}

/// Waits until `GET /readyz` on `admin` answers 200.
pub async fn wait_ready(
    admin: SocketAddr,
    timeout: Duration,
    proc: &mut Proc,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    while Instant::now() < deadline {
        match http_get(admin, "/readyz").await {
            Ok((200, _)) => return Ok(()),
            Ok((code, body)) => last = format!("{code} {}", body.trim()),
            Err(e) => last = e.to_string(),
        }
        if !proc.running() {
            bail!(
                "{} exited before it was ready:\n{}",
                proc.name,
                proc.log_tail(3000)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!(
        "{} ({admin}) not ready after {timeout:?}: {last}\n{}",
        proc.name,
        proc.log_tail(2000)
    )
}
