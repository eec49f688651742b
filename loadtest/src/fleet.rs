//! The generator's connections as the scenarios see them. A fleet of up to
//! `--conns-per-process` connections runs in this process (a
//! [`LocalFleet`]); a larger one is cut into contiguous slices, each run by
//! a child process of this binary ([`crate::worker`]), because one process
//! may hold at most 20,000 open files on this machine and that limit cannot
//! be raised.
//!
//! Every question the scenarios ask (live connections, probes seen,
//! deliveries, the latency sample, the correctness tally, catch-up) is one
//! [`Query`]; each place that holds connections answers it with a
//! [`Status`] computed by [`local_status`], and the answers are merged.
//!
//! Invariant: connection `i` lives in exactly one place, and slices keep
//! the global order, so per-connection answers concatenated in worker order
//! are in the same order as the client specs (source addresses were
//! assigned by global index before the split). Every call on a worker is
//! bounded in time, and a worker that died or hung fails the call with its
//! stderr tail; nothing waits on a worker forever.

use crate::client::{ClientSpec, FleetOptions, LocalFleet, Mode};
use crate::latency::{Sample, WireSample};
use crate::verify::Tally;
use crate::worker::{Command, Worker};
use futures::future::try_join_all;
use serde::{Deserialize, Serialize};
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

/// Connections per generator process unless `--conns-per-process` says
/// otherwise (leaves room under the 20,000 open-files limit).
pub const DEFAULT_CONNS_PER_PROCESS: usize = 15_000;

/// What the harness asks of every place holding connections.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Query {
    /// Count live connections that saw probe `probe_from` or a later one.
    pub probe_from: u64,
    /// Events produced so far per stream: tally against them (and count
    /// what is still missing).
    pub produced: Option<Vec<u64>>,
    /// Count live subscribers of streams `0..streams`.
    pub streams: usize,
    /// Take (and reset) the latency sample.
    pub take: bool,
    /// Return every connection's connect and catch-up times.
    pub times: bool,
    /// Distinct error texts to return, at most.
    pub errors: usize,
}

/// One connection's times, for the reconnect storm.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct ConnTimes {
    /// Whether it had been connected when catch-up was armed.
    pub armed: bool,
    pub connected_at_us: u64,
    pub caught_up_at_us: u64,
}

/// The answer to a [`Query`] (merged over processes by [`Status::merge`]).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Status {
    pub live: usize,
    pub probed: usize,
    /// Every connection is live or has used up its attempts.
    pub exhausted: bool,
    /// Deliveries recorded since the last take.
    pub deliveries: u64,
    pub sample: Option<WireSample>,
    /// Latest scheduled send time of any event received.
    pub latest_t_us: u64,
    pub tally: Option<Tally>,
    /// Entitled events produced but not (yet) received, summed.
    pub behind: u64,
    pub subscribers: Vec<u64>,
    /// Armed connections that caught up.
    pub caught: usize,
    pub errors: Vec<String>,
    pub times: Vec<ConnTimes>,
}

impl Status {
    /// Adds the answer of the next slice of connections.
    pub fn merge(&mut self, o: Status, max_errors: usize) {
        self.live += o.live;
        self.probed += o.probed;
        self.exhausted &= o.exhausted;
        self.deliveries += o.deliveries;
        match (&mut self.sample, o.sample) {
            (Some(a), Some(b)) => {
                a.counts.extend(b.counts);
                a.deliveries += b.deliveries;
                if b.first_us != 0 && (a.first_us == 0 || b.first_us < a.first_us) {
                    a.first_us = b.first_us;
                }
                a.last_us = a.last_us.max(b.last_us);
            }
            (a @ None, b) => *a = b,
            (Some(_), None) => {}
        }
        self.latest_t_us = self.latest_t_us.max(o.latest_t_us);
        match (&mut self.tally, o.tally) {
            (Some(a), Some(b)) => a.add(&b),
            (a @ None, b) => *a = b,
            (Some(_), None) => {}
        }
        self.behind += o.behind;
        if self.subscribers.len() < o.subscribers.len() {
            self.subscribers.resize(o.subscribers.len(), 0);
        }
        for (a, b) in self.subscribers.iter_mut().zip(o.subscribers) {
            *a += b;
        }
        self.caught += o.caught;
        for e in o.errors {
            if self.errors.len() < max_errors && !self.errors.contains(&e) {
                self.errors.push(e);
            }
        }
        self.times.extend(o.times);
    }
}

/// Answers `q` for the connections of this process.
pub fn local_status(f: &LocalFleet, q: &Query) -> Status {
    let mut s = Status {
        live: f.live(),
        exhausted: f.exhausted(),
        deliveries: f.shared.recorder.deliveries(),
        latest_t_us: f.shared.latest_t_us.load(Relaxed),
        caught: f.caught_up(),
        subscribers: vec![0; q.streams],
        errors: if q.errors > 0 {
            f.sample_errors(q.errors)
        } else {
            Vec::new()
        },
        ..Status::default()
    };
    for c in &f.conns {
        if c.live.load(Relaxed) {
            if q.probe_from > 0 && c.probe.load(Relaxed) >= q.probe_from {
                s.probed += 1;
            }
            for st in c.streams.iter() {
                if let Some(x) = s.subscribers.get_mut(*st as usize) {
                    *x += 1;
                }
            }
        }
    }
    if let Some(produced) = &q.produced {
        s.tally = Some(Tally::collect(&f.conns, produced));
        s.behind = f
            .conns
            .iter()
            .flat_map(|c| {
                c.streams.iter().map(|st| {
                    produced
                        .get(*st as usize)
                        .copied()
                        .unwrap_or(0)
                        .saturating_sub(c.next_of(*st))
                })
            })
            .sum();
    }
    if q.take {
        s.sample = Some(f.shared.recorder.take().to_wire());
    }
    if q.times {
        let armed = f.armed();
        s.times = f
            .conns
            .iter()
            .enumerate()
            .map(|(i, c)| ConnTimes {
                armed: armed.get(i).copied().unwrap_or(false),
                connected_at_us: c.connected_at_us.load(Relaxed),
                caught_up_at_us: c.caught_up_at_us.load(Relaxed),
            })
            .collect();
    }
    s
}

/// The `switchyard-loadtest` binary to start workers from: this one, or
/// (when this is a test harness in `target/<profile>/deps`) the one a
/// level up.
fn worker_exe() -> anyhow::Result<std::path::PathBuf> {
    let me = std::env::current_exe()?;
    if me.file_stem().is_some_and(|s| s == "switchyard-loadtest") {
        return Ok(me);
    }
    me.ancestors()
        .skip(1)
        .take(2)
        .map(|d| d.join("switchyard-loadtest"))
        .find(|p| p.exists())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "{} is not switchyard-loadtest and none is beside it: cannot start fleet workers",
                me.display()
            )
        })
}

/// All connections of one system phase, wherever they run.
#[derive(Debug)]
pub struct Fleet {
    inner: Inner,
    /// Connections asked for.
    size: usize,
}

#[derive(Debug)]
enum Inner {
    Local(LocalFleet),
    Remote(Vec<Worker>),
}

/// How long one call on a worker may take (a query over 15,000
/// connections takes milliseconds; starting one parses a few MB).
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

impl Fleet {
    /// Starts the connections: in this process when there are at most
    /// `per_process`, else in ⌈n / per_process⌉ worker processes of equal
    /// share. The connect concurrency is split among the workers so the
    /// servers see the same handshake pressure either way.
    pub async fn spawn(
        clients: Vec<(ClientSpec, Vec<u32>)>,
        opts: FleetOptions,
        per_process: usize,
    ) -> anyhow::Result<Fleet> {
        let size = clients.len();
        let per_process = per_process.max(1);
        if size <= per_process {
            return Ok(Fleet {
                inner: Inner::Local(LocalFleet::spawn(clients, opts)),
                size,
            });
        }
        let procs = size.div_ceil(per_process);
        let share = size.div_ceil(procs);
        let worker_opts = FleetOptions {
            connect_concurrency: opts.connect_concurrency.div_ceil(procs).max(1),
            ..opts
        };
        let exe = worker_exe()?;
        let mut rest = clients;
        let mut starting = Vec::with_capacity(procs);
        let mut index = 0;
        while !rest.is_empty() {
            let tail = rest.split_off(share.min(rest.len()));
            let slice = std::mem::replace(&mut rest, tail);
            starting.push(Worker::spawn(&exe, index, slice, worker_opts, CALL_TIMEOUT));
            index += 1;
        }
        let workers = try_join_all(starting).await?;
        eprintln!(
            "  generator: {size} connections in {} worker processes",
            workers.len()
        );
        Ok(Fleet {
            inner: Inner::Remote(workers),
            size,
        })
    }

    /// Worker processes (0 when the connections run in this process).
    pub fn processes(&self) -> usize {
        match &self.inner {
            Inner::Local(_) => 0,
            Inner::Remote(w) => w.len(),
        }
    }

    /// The in-process fleet, when that is where the connections are.
    pub fn local(&self) -> Option<&LocalFleet> {
        match &self.inner {
            Inner::Local(f) => Some(f),
            Inner::Remote(_) => None,
        }
    }

    /// Asks every place that holds connections, and merges the answers.
    pub async fn query(&self, q: &Query) -> anyhow::Result<Status> {
        match &self.inner {
            Inner::Local(f) => Ok(local_status(f, q)),
            Inner::Remote(workers) => {
                let cmd = Command::Query(q.clone());
                let all =
                    try_join_all(workers.iter().map(|w| w.status(&cmd, CALL_TIMEOUT))).await?;
                let mut out = Status {
                    exhausted: true,
                    ..Status::default()
                };
                for s in all {
                    out.merge(s, q.errors);
                }
                Ok(out)
            }
        }
    }

    async fn tell(&self, cmd: Command, local: impl FnOnce(&LocalFleet)) -> anyhow::Result<()> {
        match &self.inner {
            Inner::Local(f) => {
                local(f);
                Ok(())
            }
            Inner::Remote(workers) => {
                try_join_all(workers.iter().map(|w| w.done(&cmd, CALL_TIMEOUT))).await?;
                Ok(())
            }
        }
    }

    pub async fn live(&self) -> anyhow::Result<usize> {
        Ok(self.query(&Query::default()).await?.live)
    }

    /// Live connections that have seen probe `k` (or a later one).
    pub async fn probed(&self, k: u64) -> anyhow::Result<(usize, usize)> {
        let s = self
            .query(&Query {
                probe_from: k.max(1),
                ..Query::default()
            })
            .await?;
        Ok((s.probed, s.live))
    }

    /// Deliveries recorded since the last [`Self::take_sample`].
    pub async fn deliveries(&self) -> anyhow::Result<u64> {
        Ok(self.query(&Query::default()).await?.deliveries)
    }

    /// Takes (and resets) the latency sample of every connection.
    pub async fn take_sample(&self) -> anyhow::Result<Sample> {
        let s = self
            .query(&Query {
                take: true,
                ..Query::default()
            })
            .await?;
        let mut out = Sample::empty();
        if let Some(w) = &s.sample {
            out.merge_wire(w);
        }
        Ok(out)
    }

    /// The correctness tally against `produced` events per stream, and how
    /// many entitled events are still missing.
    pub async fn tally(&self, produced: &[u64]) -> anyhow::Result<(Tally, u64)> {
        let s = self
            .query(&Query {
                produced: Some(produced.to_vec()),
                ..Query::default()
            })
            .await?;
        Ok((s.tally.unwrap_or_default(), s.behind))
    }

    /// Live subscribers per stream.
    pub async fn subscribers(&self, streams: usize) -> anyhow::Result<Vec<u64>> {
        Ok(self
            .query(&Query {
                streams,
                ..Query::default()
            })
            .await?
            .subscribers)
    }

    /// A few distinct error texts, for the report (empty when the workers
    /// cannot be asked any more).
    pub async fn sample_errors(&self, max: usize) -> Vec<String> {
        self.query(&Query {
            errors: max,
            ..Query::default()
        })
        .await
        .map(|s| s.errors)
        .unwrap_or_else(|e| vec![format!("{e:#}")])
    }

    /// Connections armed by [`Self::arm_catch_up`] that caught up.
    pub async fn caught_up(&self) -> anyhow::Result<usize> {
        Ok(self.query(&Query::default()).await?.caught)
    }

    /// Every connection's connect and catch-up times, in global order.
    pub async fn conn_times(&self) -> anyhow::Result<Vec<ConnTimes>> {
        Ok(self
            .query(&Query {
                times: true,
                ..Query::default()
            })
            .await?
            .times)
    }

    pub async fn set_mode(&self, mode: Mode) -> anyhow::Result<()> {
        self.tell(Command::Mode(mode), |f| f.set_mode(mode)).await
    }

    /// Lets every connection handshake at once (the storm's "all at once").
    pub async fn widen_gate_to_all(&self) -> anyhow::Result<()> {
        let n = self.size;
        self.tell(Command::Widen(n), |f| f.widen_gate(n)).await
    }

    /// Arms the reconnect storm's catch-up target (see
    /// [`LocalFleet::arm_catch_up`]).
    pub async fn arm_catch_up(&self, target: u64) -> anyhow::Result<()> {
        self.tell(Command::ArmCatchUp(target), |f| f.arm_catch_up(target))
            .await
    }

    /// Waits until `want` connections are live, every connection has given
    /// up, or `timeout`; returns how many are live.
    pub async fn wait_live(&self, want: usize, timeout: Duration) -> anyhow::Result<usize> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut last_report = tokio::time::Instant::now();
        let poll = if self.processes() > 0 {
            Duration::from_millis(250)
        } else {
            Duration::from_millis(50)
        };
        loop {
            let s = self.query(&Query::default()).await?;
            if s.live >= want || s.exhausted || tokio::time::Instant::now() >= deadline {
                return Ok(s.live);
            }
            if last_report.elapsed() > Duration::from_secs(2) {
                eprintln!("    {}/{want} connections live", s.live);
                last_report = tokio::time::Instant::now();
            }
            tokio::time::sleep(poll).await;
        }
    }

    /// Stops every connection (closing its socket) and waits for them, and
    /// for the worker processes to exit (killing those that do not).
    pub async fn shutdown(self, timeout: Duration) {
        match self.inner {
            Inner::Local(f) => f.shutdown(timeout).await,
            Inner::Remote(workers) => {
                futures::future::join_all(workers.into_iter().map(|w| w.stop(timeout))).await;
            }
        }
    }
}
