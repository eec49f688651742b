//! The fleet worker: a child process of `switchyard-loadtest`
//! (`switchyard-loadtest fleet-worker`, hidden) that runs one slice of a
//! large fleet in its own [`LocalFleet`], so each process stays under the
//! open-files limit; and [`Worker`], the parent's handle on one.
//!
//! The protocol is JSON lines: the parent writes one [`Command`] per line
//! on the child's stdin, the child answers each with exactly one [`Reply`]
//! line on its stdout (stdout carries nothing else; diagnostics go to
//! stderr, whose tail the parent keeps). The first command is
//! [`Command::Start`] with the slice's client specs.
//!
//! Invariant: one command, one reply, in order; the parent bounds every
//! wait for a reply and every line's length, and treats end of output or a
//! timeout as the worker's death (killing it, reporting its stderr tail).
//! The child treats end of input as the parent's death and stops its
//! connections, so neither side can outlive or hang the other.

use crate::client::{ClientSpec, FleetOptions, LocalFleet, Mode};
use crate::fleet::{local_status, Query, Status};
use anyhow::{anyhow, bail, Context as _};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufRead, AsyncBufReadExt as _, AsyncRead, AsyncReadExt as _, AsyncWrite};
use tokio::io::{AsyncWriteExt as _, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout};

/// The hidden subcommand that runs a worker.
pub const SUBCOMMAND: &str = "fleet-worker";

/// Longest line either side accepts (a start command carries ~400 bytes
/// per client; a status with per-connection times ~80 bytes each).
const MAX_LINE: u64 = 256 << 20;

/// Lines of a worker's stderr kept for the error that reports its death.
const STDERR_TAIL_LINES: usize = 40;

/// Parent to worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Command {
    /// Spawn these connections (the worker's first command, only once).
    Start {
        clients: Vec<(ClientSpec, Vec<u32>)>,
        opts: FleetOptions,
    },
    Mode(Mode),
    ArmCatchUp(u64),
    /// Let this many more handshakes run at once.
    Widen(usize),
    Query(Query),
    /// Close every connection and exit.
    Stop {
        timeout: Duration,
    },
}

/// Worker to parent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Reply {
    Done,
    Status(Box<Status>),
    Failed(String),
}

/// Reads one line of at most [`MAX_LINE`] bytes; `None` at end of input.
async fn read_line<R: AsyncBufRead + Unpin>(r: &mut R) -> anyhow::Result<Option<Vec<u8>>> {
    let mut buf = Vec::new();
    let n = (&mut *r).take(MAX_LINE).read_until(b'\n', &mut buf).await?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() != Some(&b'\n') {
        if n as u64 >= MAX_LINE {
            bail!("line longer than {MAX_LINE} bytes");
        }
        bail!("input ended inside a line");
    }
    buf.pop();
    Ok(Some(buf))
}

async fn write_line<W: AsyncWrite + Unpin>(w: &mut W, v: &impl Serialize) -> anyhow::Result<()> {
    let mut line = serde_json::to_vec(v)?;
    line.push(b'\n');
    w.write_all(&line).await?;
    w.flush().await?;
    Ok(())
}

/// The worker's side: answers commands from `input` on `output` until
/// [`Command::Stop`] or the end of `input` (then it stops its connections
/// too, within `timeout` of the last Stop or 10 s).
pub async fn serve<R, W>(input: R, mut output: W) -> anyhow::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut input = BufReader::new(input);
    let mut fleet: Option<LocalFleet> = None;
    loop {
        let Some(line) = read_line(&mut input).await? else {
            // The parent is gone: close everything and end.
            if let Some(f) = fleet.take() {
                f.shutdown(Duration::from_secs(10)).await;
            }
            return Ok(());
        };
        let cmd: Command = serde_json::from_slice(&line).context("reading a command")?;
        let reply = match cmd {
            Command::Start { clients, opts } => {
                if fleet.is_some() {
                    Reply::Failed("already started".into())
                } else {
                    fleet = Some(LocalFleet::spawn(clients, opts));
                    Reply::Done
                }
            }
            Command::Stop { timeout } => {
                if let Some(f) = fleet.take() {
                    f.shutdown(timeout).await;
                }
                write_line(&mut output, &Reply::Done).await?;
                return Ok(());
            }
            cmd => match &fleet {
                None => Reply::Failed("not started".into()),
                Some(f) => apply(f, cmd),
            },
        };
        write_line(&mut output, &reply).await?;
    }
}

/// Carries out a command on a started fleet.
fn apply(f: &LocalFleet, cmd: Command) -> Reply {
    match cmd {
        Command::Mode(m) => f.set_mode(m),
        Command::ArmCatchUp(t) => f.arm_catch_up(t),
        Command::Widen(n) => f.widen_gate(n),
        Command::Query(q) => return Reply::Status(Box::new(local_status(f, &q))),
        Command::Start { .. } | Command::Stop { .. } => {
            return Reply::Failed("start and stop are handled by serve".into())
        }
    }
    Reply::Done
}

/// The parent's handle on one worker process.
#[derive(Debug)]
pub struct Worker {
    index: usize,
    io: tokio::sync::Mutex<Io>,
    stderr_tail: Arc<Mutex<VecDeque<String>>>,
}

#[derive(Debug)]
struct Io {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    /// Set once the worker failed: later calls fail at once.
    dead: Option<String>,
}

impl Worker {
    /// Starts `exe fleet-worker` and hands it `clients`.
    pub async fn spawn(
        exe: &Path,
        index: usize,
        clients: Vec<(ClientSpec, Vec<u32>)>,
        opts: FleetOptions,
        timeout: Duration,
    ) -> anyhow::Result<Worker> {
        let mut child = tokio::process::Command::new(exe)
            .arg(SUBCOMMAND)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting fleet worker {index} ({})", exe.display()))?;
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            bail!("fleet worker {index}: no pipes");
        };
        let stderr_tail = Arc::new(Mutex::new(VecDeque::new()));
        {
            let tail = stderr_tail.clone();
            tokio::spawn(async move {
                let mut r = BufReader::new(stderr);
                while let Ok(Some(line)) = read_line(&mut r).await {
                    let mut t = tail.lock().unwrap_or_else(|p| p.into_inner());
                    if t.len() >= STDERR_TAIL_LINES {
                        t.pop_front();
                    }
                    t.push_back(String::from_utf8_lossy(&line).chars().take(500).collect());
                }
            });
        }
        let w = Worker {
            index,
            io: tokio::sync::Mutex::new(Io {
                child,
                stdin,
                stdout: BufReader::new(stdout),
                dead: None,
            }),
            stderr_tail,
        };
        w.done(&Command::Start { clients, opts }, timeout * 2)
            .await?;
        Ok(w)
    }

    /// Sends `cmd` and waits (at most `timeout`) for its reply; a worker
    /// that does not answer is killed and the error carries its stderr.
    pub async fn call(&self, cmd: &Command, timeout: Duration) -> anyhow::Result<Reply> {
        let mut io = self.io.lock().await;
        if let Some(why) = &io.dead {
            bail!("fleet worker {} is dead: {why}", self.index);
        }
        let exchange = async {
            write_line(&mut io.stdin, cmd).await?;
            match read_line(&mut io.stdout).await? {
                Some(line) => {
                    serde_json::from_slice::<Reply>(&line).context("reading the worker's reply")
                }
                None => Err(anyhow!("its output ended")),
            }
        };
        let err = match tokio::time::timeout(timeout, exchange).await {
            Ok(Ok(Reply::Failed(e))) => anyhow!("refused {}: {e}", command_name(cmd)),
            Ok(Ok(r)) => return Ok(r),
            Ok(Err(e)) => e,
            Err(_) => anyhow!("no reply within {timeout:?}"),
        };
        // Dead or hung: make sure it is gone, then say why.
        let _ = io.child.start_kill();
        let status = tokio::time::timeout(Duration::from_secs(5), io.child.wait())
            .await
            .ok()
            .and_then(Result::ok)
            .map_or_else(|| "still running".to_owned(), |s| s.to_string());
        // Give the stderr reader a moment to take in the last lines.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let tail: Vec<String> = self
            .stderr_tail
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect();
        let why = format!("{err:#} (exit: {status})");
        io.dead = Some(why.clone());
        bail!(
            "fleet worker {} failed on {}: {why}; its stderr:\n{}",
            self.index,
            command_name(cmd),
            if tail.is_empty() {
                "(empty)".to_owned()
            } else {
                tail.join("\n")
            }
        )
    }

    /// [`Self::call`] for a command answered with `Done`.
    pub async fn done(&self, cmd: &Command, timeout: Duration) -> anyhow::Result<()> {
        match self.call(cmd, timeout).await? {
            Reply::Done => Ok(()),
            r => bail!("fleet worker {}: unexpected reply {r:?}", self.index),
        }
    }

    /// [`Self::call`] for a query.
    pub async fn status(&self, cmd: &Command, timeout: Duration) -> anyhow::Result<Status> {
        match self.call(cmd, timeout).await? {
            Reply::Status(s) => Ok(*s),
            r => bail!("fleet worker {}: expected a status, got {r:?}", self.index),
        }
    }

    /// Stops the worker's connections and waits for it to exit (killing it
    /// after `timeout` plus a margin).
    pub async fn stop(self, timeout: Duration) {
        let margin = timeout + Duration::from_secs(5);
        if let Err(e) = self.done(&Command::Stop { timeout }, margin).await {
            eprintln!("  {e:#}");
        }
        let mut io = self.io.into_inner();
        if tokio::time::timeout(Duration::from_secs(5), io.child.wait())
            .await
            .is_err()
        {
            let _ = io.child.start_kill();
            let _ = io.child.wait().await;
        }
    }

    /// The worker's process id (while it runs).
    pub async fn pid(&self) -> Option<u32> {
        self.io.lock().await.child.id()
    }
}

fn command_name(c: &Command) -> &'static str {
    match c {
        Command::Start { .. } => "start",
        Command::Mode(_) => "mode",
        Command::ArmCatchUp(_) => "arm-catch-up",
        Command::Widen(_) => "widen",
        Command::Query(_) => "query",
        Command::Stop { .. } => "stop",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn ask<W: AsyncWrite + Unpin, R: AsyncBufRead + Unpin>(
        w: &mut W,
        r: &mut R,
        cmd: &Command,
    ) -> Reply {
        write_line(w, cmd).await.expect("write");
        let line = read_line(r).await.expect("read").expect("a reply");
        serde_json::from_slice(&line).expect("a reply parses")
    }

    #[tokio::test]
    async fn a_worker_answers_each_command_and_stops() {
        let (parent, child) = tokio::io::duplex(1 << 16);
        let (child_in, child_out) = tokio::io::split(child);
        let serving = tokio::spawn(serve(child_in, child_out));
        let (pr, mut pw) = tokio::io::split(parent);
        let mut pr = BufReader::new(pr);
        let q = Command::Query(Query {
            streams: 1,
            produced: Some(vec![3]),
            take: true,
            times: true,
            ..Query::default()
        });
        assert!(matches!(
            ask(&mut pw, &mut pr, &q).await,
            Reply::Failed(e) if e == "not started"
        ));
        let opts = FleetOptions {
            connect_concurrency: 4,
            connect_timeout: Duration::from_secs(1),
            max_attempts: 1,
            shards: 1,
        };
        // Two clients of a server that is not there: they fail, are counted.
        let spec = ClientSpec {
            protocol: crate::client::Protocol::RawTcp,
            server: "127.0.0.1:9".parse().expect("addr"),
            source_ip: std::net::Ipv4Addr::LOCALHOST,
            token: String::new(),
            topic: crate::event::FANOUT_TOPIC,
            products: Vec::new(),
            alternates: Vec::new(),
            churn_ms: None,
        };
        let start = Command::Start {
            clients: vec![(spec.clone(), vec![0]), (spec, vec![0])],
            opts,
        };
        // The start command survives the trip as JSON.
        let start: Command =
            serde_json::from_str(&serde_json::to_string(&start).expect("ser")).expect("de");
        assert!(matches!(ask(&mut pw, &mut pr, &start).await, Reply::Done));
        tokio::time::sleep(Duration::from_millis(300)).await;
        let Reply::Status(s) = ask(&mut pw, &mut pr, &q).await else {
            panic!("expected a status");
        };
        assert_eq!(s.live, 0);
        assert!(s.exhausted, "{s:?}");
        assert_eq!(s.times.len(), 2);
        assert_eq!(s.subscribers, vec![0]);
        let t = s.tally.expect("a tally");
        // Nothing received of 3 produced, on each of 2 connections.
        assert_eq!((t.lost, t.connect_failures), (6, 2));
        assert_eq!(s.behind, 6);
        assert_eq!(s.sample.expect("a sample").deliveries, 0);
        assert!(matches!(
            ask(&mut pw, &mut pr, &Command::Mode(Mode::Offline)).await,
            Reply::Done
        ));
        let stop = Command::Stop {
            timeout: Duration::from_secs(1),
        };
        assert!(matches!(ask(&mut pw, &mut pr, &stop).await, Reply::Done));
        serving.await.expect("joins").expect("serves");
    }

    #[tokio::test]
    async fn a_worker_ends_when_its_input_ends() {
        let (parent, child) = tokio::io::duplex(1 << 16);
        let (child_in, child_out) = tokio::io::split(child);
        let serving = tokio::spawn(serve(child_in, child_out));
        drop(parent);
        tokio::time::timeout(Duration::from_secs(5), serving)
            .await
            .expect("ends")
            .expect("joins")
            .expect("clean end");
    }

    #[test]
    fn merged_statuses_add_up() {
        let a = Status {
            live: 2,
            exhausted: true,
            subscribers: vec![2],
            errors: vec!["x".into()],
            ..Status::default()
        };
        let b = Status {
            live: 3,
            exhausted: false,
            subscribers: vec![1, 4],
            errors: vec!["x".into(), "y".into()],
            ..Status::default()
        };
        let mut m = Status {
            exhausted: true,
            ..Status::default()
        };
        m.merge(a, 5);
        m.merge(b, 5);
        assert_eq!(m.live, 5);
        assert!(!m.exhausted);
        assert_eq!(m.subscribers, vec![3, 4]);
        assert_eq!(m.errors, vec!["x".to_owned(), "y".to_owned()]);
    }
}
