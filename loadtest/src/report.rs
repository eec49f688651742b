//! What a run leaves behind: `results/<scenario>.json` (one object per
//! system, with its rate steps), `results/<scenario>.md` (tables),
//! `results/<scenario>.svg` (plot) and the figures section of
//! `loadtest/README.md`.
//!
//! Invariant: the Markdown, the SVG and the README are derived from the
//! JSON alone (`switchyard-loadtest report` rebuilds them), so the figures
//! shown are always the figures measured.

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// CPU and memory of one process over a step.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ProcUsage {
    pub name: String,
    pub pid: u32,
    pub cpu_s: f64,
    pub rss_bytes: u64,
}

/// The figures of one system in one scenario (or one rate step of it).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SystemResult {
    pub system: String,
    pub scenario: String,
    /// Connections asked for.
    pub connections: usize,
    /// Connections live when measuring started.
    pub connected: usize,
    /// Offered (scheduled) events/s.
    pub offered_rate: f64,
    pub events: u64,
    /// Events/s actually handed to Kafka.
    pub events_per_s: f64,
    pub deliveries: u64,
    pub expected_deliveries: u64,
    pub deliveries_per_s: f64,
    pub p50_ms: Option<f64>,
    pub p90_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub p999_ms: Option<f64>,
    pub max_ms: Option<f64>,
    pub mean_ms: Option<f64>,
    /// CPU seconds of the system's own processes during the measurement.
    pub server_cpu_s: f64,
    /// The same as a share of one core over the measurement.
    pub server_cpu_pct: f64,
    /// Resident memory of the system's processes at the end (sum).
    pub server_rss_bytes: u64,
    /// Highest sampled sum during the measurement.
    pub server_rss_peak_bytes: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub unentitled: u64,
    pub connect_failures: u64,
    pub disconnects: u64,
    pub duration_s: f64,
    /// Sweep: this step (or a later one) hit a limit; the sweep stopped.
    pub saturated: bool,
    /// Reconnect storm: seconds from the reconnect until every client had
    /// received everything produced before it.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub catch_up_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub catch_up_p50_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub catch_up_p99_s: Option<f64>,
    /// Reconnect storm: seconds until every client was connected again.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub reconnect_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub caught_up: Option<usize>,
    /// Idle: server RSS before connecting, and the growth per connection.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub rss_before_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub rss_per_conn_bytes: Option<f64>,
    /// Ingest: rows durable in PostgreSQL, their rate, committed offsets.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub durable_events: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub durable_events_per_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub peak_1s_events_per_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub committed_offsets: Option<i64>,
    /// Growth: the system's CPU over the step per delivery, µs.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub cpu_us_per_delivery: Option<f64>,
    pub processes: Vec<ProcUsage>,
    /// Shared servers charged to this measurement (broker, Redis, PostgreSQL backends).
    pub infra: Vec<ProcUsage>,
    /// CPU of the load generator itself (it shares the machine).
    pub generator_cpu_s: f64,
    /// Busy share of all cores of the machine during the measurement.
    pub machine_busy_pct: f64,
    pub notes: Vec<String>,
    /// Sweep step of Switchyard: where the time went, stage by stage.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub stages: Option<crate::stages::Breakdown>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<String>,
    pub measured_at: String,
    /// Sweep: every rate step (the object itself repeats the headline step).
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub steps: Vec<SystemResult>,
}

/// The machine the figures come from.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Machine {
    pub cpus: usize,
    pub memory_bytes: u64,
    pub kernel: String,
    pub nofile_limit: u64,
}

impl Machine {
    pub fn detect() -> Machine {
        let mem = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find(|l| l.starts_with("MemTotal:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|v| v.parse::<u64>().ok())
            })
            .unwrap_or(0)
            * 1024;
        Machine {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_bytes: mem,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_owned(),
            nofile_limit: rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(0, |l| l.0),
        }
    }
}

/// One run of one scenario.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunReport {
    pub scenario: String,
    pub generated_at: String,
    /// The command that reproduces it.
    pub command: String,
    pub machine: Machine,
    pub params: serde_json::Value,
    pub results: Vec<SystemResult>,
    /// False when anything was lost, duplicated or leaked, or a system failed.
    pub ok: bool,
    pub problems: Vec<String>,
}

pub fn now_rfc3339() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// The default results directory, `loadtest/results`.
pub fn default_out_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("results")
}

/// `loadtest/README.md`.
pub fn readme_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("–".into(), |v| format!("{v:.digits$}"))
}

fn mib(b: u64) -> String {
    format!("{:.1}", b as f64 / (1024.0 * 1024.0))
}

fn kfmt(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.0}k", v / 1000.0)
    } else if v >= 1000.0 {
        format!("{:.1}k", v / 1000.0)
    } else {
        format!("{v:.0}")
    }
}

/// The headline table of a report (one row per measured system), then the
/// systems not measured and why.
pub fn summary_table(r: &RunReport) -> String {
    let measured = RunReport {
        results: r
            .results
            .iter()
            .filter(|x| x.error.is_none())
            .cloned()
            .collect(),
        ..r.clone()
    };
    let mut s = rows(&measured);
    let skipped: Vec<String> = r
        .results
        .iter()
        .filter_map(|x| {
            let e = x.error.as_ref()?;
            Some(format!(
                "{} ({})",
                x.system,
                e.lines()
                    .next()
                    .unwrap_or("")
                    .trim_start_matches("not measured: ")
            ))
        })
        .collect();
    if !skipped.is_empty() {
        let _ = writeln!(s, "\nNot measured: {}.", skipped.join("; "));
    }
    s
}

fn rows(r: &RunReport) -> String {
    let mut s = String::new();
    match r.scenario.as_str() {
        "ingest" => {
            s.push_str("| system | events | durable events/s | peak 1 s | server CPU s | server RSS MiB | lost | dup |\n");
            s.push_str("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
            for x in &r.results {
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} | {:.1} | {} | {} | {} |",
                    x.system,
                    x.events,
                    opt(x.durable_events_per_s.or(Some(x.events_per_s)), 0),
                    opt(x.peak_1s_events_per_s, 0),
                    x.server_cpu_s,
                    mib(x.server_rss_bytes),
                    x.lost,
                    x.duplicated
                );
            }
        }
        "idle" => {
            s.push_str("| system | connections | RSS before MiB | RSS after MiB | bytes / connection | server CPU % idle |\n");
            s.push_str("| --- | ---: | ---: | ---: | ---: | ---: |\n");
            for x in &r.results {
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} | {} | {:.1} |",
                    x.system,
                    x.connected,
                    x.rss_before_bytes.map_or("–".into(), mib),
                    mib(x.server_rss_bytes),
                    opt(x.rss_per_conn_bytes, 0),
                    x.server_cpu_pct
                );
            }
        }
        "growth" => growth_rows(&mut s, r),
        "reconnect" => {
            s.push_str("| system | connections | all reconnected s | all caught up s | catch-up p50 s | p99 s | deliveries | p99 ms | lost | dup | server CPU s | peak RSS MiB |\n");
            s.push_str("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
            for x in &r.results {
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.1} | {} |",
                    x.system,
                    x.connected,
                    opt(x.reconnect_s, 2),
                    opt(x.catch_up_s, 2),
                    opt(x.catch_up_p50_s, 2),
                    opt(x.catch_up_p99_s, 2),
                    x.deliveries,
                    opt(x.p99_ms, 1),
                    x.lost,
                    x.duplicated,
                    x.server_cpu_s,
                    mib(x.server_rss_peak_bytes)
                );
            }
        }
        _ => {
            s.push_str("| system | connections | sustained events/s | deliveries/s | p50 ms | p99 ms | p99.9 ms | max ms | server CPU % | server RSS MiB | lost | dup |\n");
            s.push_str("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
            for x in &r.results {
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {:.0} | {} | {} | {} |",
                    x.system,
                    x.connected,
                    kfmt(x.events_per_s),
                    kfmt(x.deliveries_per_s),
                    opt(x.p50_ms, 1),
                    opt(x.p99_ms, 1),
                    opt(x.p999_ms, 1),
                    opt(x.max_ms, 1),
                    x.server_cpu_pct,
                    mib(x.server_rss_bytes),
                    x.lost,
                    x.duplicated
                );
            }
        }
    }
    s
}

/// The growth table: one row per connection count, Switchyard and raw TCP
/// side by side, and what Switchyard adds.
fn growth_rows(s: &mut String, r: &RunReport) {
    let find = |system: &str, n: usize| {
        r.results
            .iter()
            .filter(|x| x.system == system)
            .flat_map(|x| x.steps.iter())
            .find(|st| st.connections == n && st.error.is_none())
    };
    let mut counts: Vec<usize> = r
        .results
        .iter()
        .flat_map(|x| x.steps.iter().map(|st| st.connections))
        .collect();
    counts.sort_unstable();
    counts.dedup();
    s.push_str("| connections | switchyard p50 ms | p99 ms | rawtcp p50 ms | p99 ms | added p50 ms | added p99 ms | switchyard CPU µs/delivery | rawtcp CPU µs/delivery | switchyard RSS MiB | lost |\n");
    s.push_str("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
    for n in counts {
        let sy = find("switchyard", n);
        let raw = find("rawtcp", n);
        let diff = |f: fn(&SystemResult) -> Option<f64>| match (sy.and_then(f), raw.and_then(f)) {
            (Some(a), Some(b)) => Some(a - b),
            _ => None,
        };
        let lost: u64 = [sy, raw].iter().flatten().map(|x| x.lost).sum();
        let _ = writeln!(
            s,
            "| {n} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {lost} |",
            opt(sy.and_then(|x| x.p50_ms), 1),
            opt(sy.and_then(|x| x.p99_ms), 1),
            opt(raw.and_then(|x| x.p50_ms), 1),
            opt(raw.and_then(|x| x.p99_ms), 1),
            opt(diff(|x| x.p50_ms), 1),
            opt(diff(|x| x.p99_ms), 1),
            opt(sy.and_then(|x| x.cpu_us_per_delivery), 2),
            opt(raw.and_then(|x| x.cpu_us_per_delivery), 2),
            sy.map_or("–".into(), |x| mib(x.server_rss_bytes)),
        );
    }
    let failed: Vec<String> = r
        .results
        .iter()
        .flat_map(|x| x.steps.iter())
        .filter_map(|st| {
            Some(format!(
                "{} at {}: {}",
                st.system,
                st.connections,
                st.error.as_ref()?.lines().next().unwrap_or("")
            ))
        })
        .collect();
    if !failed.is_empty() {
        let _ = writeln!(s, "\nFailed: {}.", failed.join("; "));
    }
}

/// "Where the time goes": one stage table per Switchyard step that has a
/// breakdown, with how the percentiles and the client stage were obtained.
fn stage_section(r: &RunReport) -> String {
    let mut s = String::new();
    let with: Vec<(&SystemResult, &SystemResult)> = r
        .results
        .iter()
        .flat_map(|x| x.steps.iter().map(move |st| (x, st)))
        .filter(|(_, st)| st.stages.is_some())
        .collect();
    if with.is_empty() {
        return s;
    }
    s.push_str("\n## Where the time goes\n\n");
    s.push_str("Per stage, from the servers' own histograms (`switchyard_bridge_stage_seconds`, `switchyard_gateway_stage_seconds`, summed over the nodes) scraped right before and right after each step. Means are exact (sum / count); p50 and p99 are **interpolated inside histogram buckets**, and the servers stamp stages in whole milliseconds, so a sub-millisecond stage reads 0–1 ms. Bridge stages count events, gateway stages deliveries. `publish` ends when Redis acknowledges the publish while `feed` starts when it is sent, so the two overlap by up to the Redis round trip, and `(producer)` — the delivery lag the five server stages leave unexplained — can come out negative.\n");
    let mut how: Vec<&str> = Vec::new();
    for (x, st) in with {
        let Some(b) = &st.stages else { continue };
        let _ = writeln!(
            s,
            "\n### {} at {} events/s (end to end: mean {}, p50 {}, p99 {} ms)\n",
            x.system,
            st.offered_rate,
            opt(st.mean_ms, 1),
            opt(st.p50_ms, 1),
            opt(st.p99_ms, 1)
        );
        s.push_str(&crate::stages::table(b));
        if !b.client_stage.is_empty() && !how.contains(&b.client_stage.as_str()) {
            how.push(&b.client_stage);
        }
    }
    for h in how {
        let _ = writeln!(s, "\n`client`: {h}.");
    }
    s
}

/// The full Markdown page of a report.
pub fn markdown(r: &RunReport) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Load test: {}\n", r.scenario);
    let _ = writeln!(
        s,
        "Measured {} on {} cores, {:.0} GiB, Linux {}. Reproduce with:\n\n```\n{}\n```\n",
        r.generated_at,
        r.machine.cpus,
        r.machine.memory_bytes as f64 / f64::from(1u32 << 30),
        r.machine.kernel,
        r.command
    );
    if r.ok {
        s.push_str(
            "Correctness: every connection got every event it was entitled to, once, in order.\n\n",
        );
    } else {
        s.push_str("**Correctness problems:**\n\n");
        for p in &r.problems {
            let _ = writeln!(s, "- {p}");
        }
        s.push('\n');
    }
    s.push_str(&summary_table(r));
    if matches!(r.scenario.as_str(), "fanout" | "scoped") {
        s.push_str("\n\"Sustained\" is the highest offered rate a system delivered completely with p99 under the limit; the row repeats that step.\n");
        let _ = writeln!(s, "\n![latency against offered rate]({}.svg)\n", r.scenario);
        s.push_str("## Every step\n\n");
        s.push_str("| system | offered events/s | sent events/s | deliveries/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | server CPU % | machine busy % | generator CPU s | lost | dup | limit hit |\n");
        s.push_str("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |\n");
        for x in &r.results {
            for st in &x.steps {
                let _ = writeln!(
                    s,
                    "| {} | {} | {:.1} | {} | {} | {} | {} | {} | {} | {:.0} | {:.0} | {:.1} | {} | {} | {} |",
                    x.system,
                    st.offered_rate,
                    st.events_per_s,
                    kfmt(st.deliveries_per_s),
                    opt(st.p50_ms, 1),
                    opt(st.p90_ms, 1),
                    opt(st.p99_ms, 1),
                    opt(st.p999_ms, 1),
                    opt(st.max_ms, 1),
                    st.server_cpu_pct,
                    st.machine_busy_pct,
                    st.generator_cpu_s,
                    st.lost,
                    st.duplicated,
                    if st.saturated { "yes" } else { "" }
                );
            }
        }
        s.push_str(&stage_section(r));
    } else {
        let _ = writeln!(s, "\n![{}]({}.svg)\n", r.scenario, r.scenario);
    }
    s.push_str(
        "\n## Processes\n\n| system | process | CPU s | RSS MiB |\n| --- | --- | ---: | ---: |\n",
    );
    for x in &r.results {
        for p in x.processes.iter().chain(x.infra.iter()) {
            let _ = writeln!(
                s,
                "| {} | {} | {:.1} | {} |",
                x.system,
                p.name,
                p.cpu_s,
                mib(p.rss_bytes)
            );
        }
    }
    let notes: Vec<String> = r
        .results
        .iter()
        .flat_map(|x| {
            x.notes
                .iter()
                .map(move |n| format!("{}: {n}", x.system))
                .chain(
                    x.error
                        .iter()
                        .map(move |e| format!("{}: **error**: {e}", x.system)),
                )
        })
        .collect();
    if !notes.is_empty() {
        s.push_str("\n## Notes\n\n");
        for n in notes {
            let _ = writeln!(s, "- {}", n.replace('\n', " "));
        }
    }
    s
}

/// Writes `<scenario>.json`, `.md` and `.svg` into `out_dir`.
pub fn write_run(out_dir: &Path, r: &RunReport) -> anyhow::Result<()> {
    std::fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let base = out_dir.join(&r.scenario);
    std::fs::write(base.with_extension("json"), serde_json::to_vec_pretty(r)?)?;
    write_views(out_dir, r)
}

/// Writes the Markdown table and the SVG plot of a run.
fn write_views(out_dir: &Path, r: &RunReport) -> anyhow::Result<()> {
    let base = out_dir.join(&r.scenario);
    std::fs::write(base.with_extension("md"), markdown(r))?;
    std::fs::write(base.with_extension("svg"), crate::plot::svg(r))?;
    Ok(())
}

/// Reads every `<scenario>.json` in `out_dir`, in scenario order.
pub fn read_all(out_dir: &Path) -> Vec<RunReport> {
    crate::cli::ScenarioKind::EACH
        .iter()
        .filter_map(|s| {
            let p = out_dir.join(format!("{}.json", s.name()));
            let text = std::fs::read_to_string(&p).ok()?;
            match serde_json::from_str(&text) {
                Ok(r) => Some(r),
                Err(e) => {
                    eprintln!("skipping {}: {e}", p.display());
                    None
                }
            }
        })
        .collect()
}

const BEGIN: &str =
    "<!-- figures:begin (generated by `switchyard-loadtest report`; edit outside the markers) -->";
const END: &str = "<!-- figures:end -->";

/// The README's figures section from the reports.
pub fn figures_section(reports: &[RunReport]) -> String {
    let mut s = String::new();
    s.push_str(BEGIN);
    s.push('\n');
    if reports.is_empty() {
        s.push_str("\nNo results yet: run `loadtest/run.sh all`.\n");
    }
    for r in reports {
        let _ = writeln!(
            s,
            "\n### {} — {}\n\n```\n{}\n```\n",
            r.scenario, r.generated_at, r.command
        );
        s.push_str(&summary_table(r));
        if !r.ok {
            s.push_str("\nCorrectness problems:\n");
            for p in &r.problems {
                let _ = writeln!(s, "- {}", p.replace('\n', " "));
            }
        }
        let _ = writeln!(
            s,
            "\nDetails: [results/{0}.md](results/{0}.md), [results/{0}.json](results/{0}.json), ![{0}](results/{0}.svg)",
            r.scenario
        );
    }
    s.push('\n');
    s.push_str(END);
    s
}

/// Replaces the figures section of the README (appends one if missing).
pub fn update_readme(readme: &Path, reports: &[RunReport]) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(readme).unwrap_or_default();
    let section = figures_section(reports);
    let out = match (text.find("<!-- figures:begin"), text.find(END)) {
        (Some(a), Some(b)) if b > a => {
            format!("{}{}{}", &text[..a], section, &text[b + END.len()..])
        }
        _ => format!("{text}\n## Latest figures\n\n{section}\n"),
    };
    std::fs::write(readme, out).with_context(|| format!("writing {}", readme.display()))
}

/// Rebuilds Markdown, SVG and README figures from the JSON in `out_dir`
/// (the JSON itself is left exactly as measured).
pub fn regenerate(out_dir: &Path, readme: Option<&Path>) -> anyhow::Result<()> {
    let reports = read_all(out_dir);
    for r in &reports {
        write_views(out_dir, r)?;
    }
    if let Some(readme) = readme {
        update_readme(readme, &reports)?;
    }
    Ok(())
}
