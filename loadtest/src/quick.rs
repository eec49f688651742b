//! The quick regression run (`loadtest/run.sh quick`): a small fixed set of
//! Switchyard-only measurements — fan-out to 2,000 connections at two rates,
//! ingest of a 150,000-event backlog, memory of 2,000 idle connections, a
//! 2,000-client reconnect storm — printed as one table and compared with a
//! stored baseline (`results/quick-baseline.json`), each figure flagged
//! "WORSE" when it moved the wrong way by more than its tolerance. The
//! fan-out at 5 events/s also reports the mean of each Switchyard stage
//! (see [`crate::stages`]).
//!
//! Invariant: the set and its parameters are fixed here (not on the command
//! line), so a figure is only ever compared with the same measurement; a
//! baseline taken with other parameters is refused, not compared.

use crate::cli::{Cli, Cmd, RunArgs, ScenarioKind};
use crate::report::{now_rfc3339, Machine, RunReport, SystemResult};
use anyhow::{bail, Context as _};
use clap::Parser as _;
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Version of the fixed set; a baseline of another version is refused.
pub const SET_VERSION: u32 = 1;

/// Fan-out rates of the set, events/s.
const FANOUT_RATES: [f64; 2] = [5.0, 50.0];
/// Connections of the fan-out, idle and reconnect measurements.
const CONNECTIONS: usize = 2000;
/// The fan-out rate whose per-stage means are figures of the set.
const STAGES_AT: u32 = 5;
/// Backlog the bridge drains in the ingest measurement.
const INGEST_EVENTS: u64 = 150_000;

/// Options of `switchyard-loadtest quick`.
#[derive(Debug, Clone, clap::Args)]
pub struct QuickArgs {
    /// Baseline to compare with [default: loadtest/results/quick-baseline.json].
    #[arg(long)]
    pub baseline: Option<PathBuf>,
    /// Write this run as the new baseline (after printing the comparison).
    #[arg(long)]
    pub save_baseline: bool,
    /// Also write this run's figures to this file (JSON, baseline format).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Where switchyard-bridge and switchyard-gateway are
    /// [default: beside switchyard-loadtest when there, else target/release
    /// of the workspace].
    #[arg(long)]
    pub switchyard_bin_dir: Option<PathBuf>,
    /// Extra environment for Switchyard's processes, `K=V` (repeatable).
    #[arg(long = "switchyard-env")]
    pub switchyard_env: Vec<String>,
}

/// Which way a figure should move.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Better {
    Lower,
    Higher,
}

/// One measured figure of the set.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Figure {
    pub name: String,
    pub unit: String,
    pub value: f64,
    pub better: Better,
    /// Worse by more than this share (%) is flagged...
    pub tolerance_pct: f64,
    /// ...and by more than this much in the figure's unit (so 2 ms on a
    /// 10 ms latency is not called a 20 % regression).
    pub slack: f64,
}

/// One run of the set: what `quick-baseline.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QuickRun {
    pub set_version: u32,
    pub measured_at: String,
    pub machine: Machine,
    /// Other work on the machine makes CPU-bound figures noisy: its load
    /// average when the run started is kept beside them.
    pub load_avg_1m: f64,
    pub figures: Vec<Figure>,
    /// Events lost, duplicated or out of scope, summed over the set (must be 0).
    pub correctness_problems: Vec<String>,
}

/// How one figure compares with its baseline.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    NoBaseline,
    Same(f64),
    Better(f64),
    Worse(f64),
}

/// Compares `now` with `base`: the change in % (positive = the figure moved
/// the good way), flagged worse only past both the share and the slack.
pub fn compare(now: &Figure, base: &Figure) -> Verdict {
    let delta = now.value - base.value;
    let good = match now.better {
        Better::Lower => -delta,
        Better::Higher => delta,
    };
    let pct = if base.value.abs() > f64::EPSILON {
        good / base.value.abs() * 100.0
    } else if good == 0.0 {
        0.0
    } else {
        good.signum() * 100.0
    };
    if -pct > base.tolerance_pct && -good > base.slack {
        Verdict::Worse(-pct)
    } else if pct > base.tolerance_pct && good > base.slack {
        Verdict::Better(pct)
    } else {
        Verdict::Same(pct)
    }
}

fn run_args(scenario: &str, extra: &[&str], q: &QuickArgs) -> anyhow::Result<RunArgs> {
    let mut argv: Vec<String> = vec![
        "switchyard-loadtest".into(),
        "run".into(),
        scenario.into(),
        "--systems".into(),
        "switchyard".into(),
        "--allow-loss".into(),
        "--no-readme".into(),
    ];
    argv.extend(extra.iter().map(|s| (*s).to_owned()));
    if let Some(d) = &q.switchyard_bin_dir {
        argv.push("--switchyard-bin-dir".into());
        argv.push(d.display().to_string());
    }
    for kv in &q.switchyard_env {
        argv.push("--switchyard-env".into());
        argv.push(kv.clone());
    }
    match Cli::try_parse_from(argv)?.cmd {
        Cmd::Run(a) => Ok(*a),
        _ => bail!("internal: not a run command"),
    }
}

fn switchyard_row(r: &RunReport) -> anyhow::Result<&SystemResult> {
    let row = r
        .results
        .iter()
        .find(|x| x.system == "switchyard")
        .with_context(|| format!("{}: no switchyard result", r.scenario))?;
    if let Some(e) = &row.error {
        bail!("{}: switchyard failed: {e}", r.scenario);
    }
    Ok(row)
}

fn fig(name: &str, unit: &str, value: f64, better: Better, tol: f64, slack: f64) -> Figure {
    Figure {
        name: name.into(),
        unit: unit.into(),
        value,
        better,
        tolerance_pct: tol,
        slack,
    }
}

/// The stage means of a fan-out step ([`crate::stages`]). A stage moves a
/// few milliseconds with the machine's load, so only a change past 50 %
/// and 5 ms is flagged; a baseline without them shows "no baseline".
fn stage_figures(rate: u32, st: &SystemResult) -> Vec<Figure> {
    let Some(b) = &st.stages else {
        return Vec::new();
    };
    b.stages
        .iter()
        .map(|s| {
            fig(
                &format!("fan-out {rate}/s stage {} mean", s.stage),
                "ms",
                s.mean_ms,
                Better::Lower,
                50.0,
                5.0,
            )
        })
        .collect()
}

fn load_avg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

/// Runs the set and returns its figures.
pub async fn measure(q: &QuickArgs) -> anyhow::Result<QuickRun> {
    let conns = CONNECTIONS.to_string();
    let rates = FANOUT_RATES.map(|r| r.to_string()).join(",");
    let ingest_events = INGEST_EVENTS.to_string();
    let load = load_avg();
    let mut figures = Vec::new();
    let mut problems = Vec::new();
    let mut note = |r: &RunReport| {
        problems.extend(r.problems.iter().map(|p| format!("{}: {p}", r.scenario)));
    };

    eprintln!("\n== quick: fan-out, {conns} connections at {rates} events/s");
    let a = run_args(
        "fanout",
        &[
            "--connections",
            &conns,
            "--rates",
            &rates,
            "--step-seconds",
            "6",
            "--max-p99-ms",
            "5000",
        ],
        q,
    )?;
    let r = crate::scenario::run(a, ScenarioKind::Fanout, "quick".into()).await?;
    note(&r);
    let row = switchyard_row(&r)?;
    for rate in FANOUT_RATES {
        let st = row
            .steps
            .iter()
            .find(|s| (s.offered_rate - rate).abs() < 1e-9)
            .with_context(|| format!("fan-out: no step at {rate} events/s"))?;
        let rate = rate as u32;
        figures.push(fig(
            &format!("fan-out {rate}/s p50"),
            "ms",
            st.p50_ms.unwrap_or(f64::NAN),
            Better::Lower,
            25.0,
            5.0,
        ));
        figures.push(fig(
            &format!("fan-out {rate}/s p99"),
            "ms",
            st.p99_ms.unwrap_or(f64::NAN),
            Better::Lower,
            25.0,
            10.0,
        ));
        figures.push(fig(
            &format!("fan-out {rate}/s server CPU per delivery"),
            "µs",
            st.server_cpu_s * 1e6 / (st.deliveries.max(1) as f64),
            Better::Lower,
            25.0,
            0.5,
        ));
        if rate == STAGES_AT {
            figures.extend(stage_figures(rate, st));
        }
    }

    eprintln!("\n== quick: ingest, {ingest_events}-event backlog");
    let a = run_args("ingest", &["--ingest-events", &ingest_events], q)?;
    let r = crate::scenario::run(a, ScenarioKind::Ingest, "quick".into()).await?;
    note(&r);
    let row = switchyard_row(&r)?;
    figures.push(fig(
        "ingest durable events/s",
        "events/s",
        row.durable_events_per_s.unwrap_or(0.0),
        Better::Higher,
        20.0,
        1000.0,
    ));

    eprintln!("\n== quick: idle, {conns} connections");
    let a = run_args(
        "idle",
        &["--connections", &conns, "--idle-settle-seconds", "3"],
        q,
    )?;
    let r = crate::scenario::run(a, ScenarioKind::Idle, "quick".into()).await?;
    note(&r);
    let row = switchyard_row(&r)?;
    figures.push(fig(
        "idle memory per connection",
        "bytes",
        row.rss_per_conn_bytes.unwrap_or(f64::NAN),
        Better::Lower,
        10.0,
        512.0,
    ));

    eprintln!("\n== quick: reconnect storm, {conns} clients");
    let a = run_args(
        "reconnect",
        &[
            "--connections",
            &conns,
            "--storm-warm-seconds",
            "3",
            "--storm-offline-seconds",
            "2",
            "--storm-after-seconds",
            "4",
        ],
        q,
    )?;
    let r = crate::scenario::run(a, ScenarioKind::Reconnect, "quick".into()).await?;
    note(&r);
    let row = switchyard_row(&r)?;
    figures.push(fig(
        "reconnect storm all caught up",
        "s",
        row.catch_up_s.unwrap_or(f64::NAN),
        Better::Lower,
        25.0,
        0.5,
    ));

    Ok(QuickRun {
        set_version: SET_VERSION,
        measured_at: now_rfc3339(),
        machine: Machine::detect(),
        load_avg_1m: load,
        figures,
        correctness_problems: problems,
    })
}

fn fmt_value(v: f64, unit: &str) -> String {
    if v.is_nan() {
        "–".into()
    } else if unit == "events/s" || unit == "bytes" {
        format!("{v:.0} {unit}")
    } else {
        format!("{v:.2} {unit}")
    }
}

/// The table printed at the end of a quick run; `worse` counts flagged figures.
pub fn table(now: &QuickRun, base: Option<&QuickRun>) -> (String, usize) {
    let mut out = String::new();
    let mut worse = 0;
    let _ = writeln!(out, "| figure | baseline | now | change | verdict |");
    let _ = writeln!(out, "| --- | ---: | ---: | ---: | --- |");
    for f in &now.figures {
        let b = base.and_then(|b| b.figures.iter().find(|x| x.name == f.name));
        let verdict = match b {
            None => Verdict::NoBaseline,
            Some(_) if f.value.is_nan() => Verdict::Worse(f64::NAN),
            Some(b) => compare(f, b),
        };
        let (change, text) = match verdict {
            Verdict::NoBaseline => ("–".to_owned(), "no baseline".to_owned()),
            Verdict::Same(p) => (format!("{p:+.1}%"), "ok".to_owned()),
            Verdict::Better(p) => (format!("{p:+.1}%"), format!("better by {p:.1}%")),
            Verdict::Worse(p) => {
                worse += 1;
                (
                    format!("{:+.1}%", -p),
                    format!(
                        "!!! WORSE by {p:.1}% (tolerance {}%)",
                        b.map_or(0.0, |b| b.tolerance_pct)
                    ),
                )
            }
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} |",
            f.name,
            b.map_or("–".into(), |b| fmt_value(b.value, &b.unit)),
            fmt_value(f.value, &f.unit),
            change,
            text
        );
    }
    if let Some(b) = base {
        let _ = writeln!(
            out,
            "\nbaseline measured {} (load average {:.1}); this run {} (load average {:.1}). \
             CPU-bound figures (latency, CPU, ingest) move with other work on the machine: \
             re-run before believing a flag on them; memory per connection does not.",
            b.measured_at, b.load_avg_1m, now.measured_at, now.load_avg_1m
        );
    }
    if now.correctness_problems.is_empty() {
        let _ = writeln!(out, "correctness: nothing lost, duplicated or out of scope");
    } else {
        worse += 1;
        let _ = writeln!(out, "!!! correctness problems:");
        for p in &now.correctness_problems {
            let _ = writeln!(out, "!!!   {p}");
        }
    }
    (out, worse)
}

/// The default baseline path.
pub fn default_baseline() -> PathBuf {
    crate::report::default_out_dir().join("quick-baseline.json")
}

/// Reads a baseline; `None` when there is none yet.
pub fn read_baseline(path: &Path) -> anyhow::Result<Option<QuickRun>> {
    match std::fs::read(path) {
        Ok(b) => {
            let run: QuickRun = serde_json::from_slice(&b)
                .with_context(|| format!("reading baseline {}", path.display()))?;
            if run.set_version != SET_VERSION {
                bail!(
                    "baseline {} is of set version {}, this run is {}: take a new one with --save-baseline",
                    path.display(),
                    run.set_version,
                    SET_VERSION
                );
            }
            Ok(Some(run))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading baseline {}", path.display())),
    }
}

/// Writes a run as JSON.
pub fn write(path: &Path, run: &QuickRun) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(run)? + "\n";
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_only_past_share_and_slack() {
        let base = fig("p50", "ms", 20.0, Better::Lower, 25.0, 5.0);
        let now = |v| fig("p50", "ms", v, Better::Lower, 25.0, 5.0);
        assert_eq!(compare(&now(24.0), &base), Verdict::Same(-20.0));
        assert!(matches!(compare(&now(26.0), &base), Verdict::Worse(p) if (p - 30.0).abs() < 1e-9));
        assert!(
            matches!(compare(&now(10.0), &base), Verdict::Better(p) if (p - 50.0).abs() < 1e-9)
        );
        // 2 ms -> 4 ms is +100 % but within the 5 ms slack.
        let small = fig("p50", "ms", 2.0, Better::Lower, 25.0, 5.0);
        assert!(matches!(
            compare(&fig("p50", "ms", 4.0, Better::Lower, 25.0, 5.0), &small),
            Verdict::Same(_)
        ));
        let ingest = fig("ingest", "events/s", 20_000.0, Better::Higher, 20.0, 1000.0);
        let got = |v| fig("ingest", "events/s", v, Better::Higher, 20.0, 1000.0);
        assert!(
            matches!(compare(&got(15_000.0), &ingest), Verdict::Worse(p) if (p - 25.0).abs() < 1e-9)
        );
        assert!(matches!(
            compare(&got(30_000.0), &ingest),
            Verdict::Better(_)
        ));
    }

    #[test]
    fn table_counts_regressions_and_loss() {
        let run = |v: f64, problems: Vec<String>| QuickRun {
            set_version: SET_VERSION,
            measured_at: "t".into(),
            machine: Machine::default(),
            load_avg_1m: 0.0,
            figures: vec![fig("idle", "bytes", v, Better::Lower, 10.0, 512.0)],
            correctness_problems: problems,
        };
        let base = run(10_000.0, vec![]);
        let (text, worse) = table(&run(12_000.0, vec![]), Some(&base));
        assert_eq!(worse, 1, "{text}");
        assert!(text.contains("WORSE by 20.0%"), "{text}");
        let (_, worse) = table(&run(10_100.0, vec![]), Some(&base));
        assert_eq!(worse, 0);
        let (text, worse) = table(&run(10_000.0, vec!["lost 3".into()]), Some(&base));
        assert_eq!(worse, 1);
        assert!(text.contains("lost 3"));
        let (text, worse) = table(&run(10_000.0, vec![]), None);
        assert_eq!(worse, 0);
        assert!(text.contains("no baseline"));
    }
}
