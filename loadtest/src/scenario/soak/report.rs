//! The soak's report: what was injected and when, what was produced and
//! delivered, what was lost or duplicated, how long each kind of fault took
//! to recover from, the peak memory of every process, and what the
//! attackers met; written as `soak.json` and `soak.md`.
//!
//! Invariant: `ok` is false whenever anything was lost or duplicated, a
//! valid event reached the DLQ, the log does not hold exactly the events
//! produced, a forged cursor was trusted, or a process passed its memory
//! bound, and `problems` says which.

use super::faults::{FaultKind, FaultRecord};
use super::hostile::AttackTally;
use crate::report::Machine;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

/// Recovery figures of one kind of fault.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RecoveryRow {
    pub kind: FaultKind,
    pub count: usize,
    pub failed: usize,
    pub down_max_s: f64,
    pub delivery_max_s: Option<f64>,
    pub delivery_mean_s: Option<f64>,
    pub reconnected_max_s: Option<f64>,
}

/// Peak memory of one process (over its restarts).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct MemoryRow {
    pub process: String,
    pub peak_rss_mib: f64,
    /// Bound it was checked against (Switchyard's processes), MiB.
    pub bound_mib: Option<f64>,
}

/// The whole soak report.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SoakReport {
    pub generated_at: String,
    pub command: String,
    pub machine: Machine,
    pub params: serde_json::Value,
    pub planned_s: f64,
    pub ran_s: f64,
    pub well_behaved: usize,
    pub reconnecting: usize,
    pub hostile: usize,
    pub events_produced: u64,
    pub produce_retries: u64,
    pub deliveries: u64,
    pub expected_deliveries: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub out_of_scope: u64,
    /// Events received again after a reconnect and dropped by id (allowed).
    pub redelivered: u64,
    /// Resumptions with a cursor answered `recovered: false`.
    pub unrecovered: u64,
    pub conns_with_loss: u64,
    pub disconnects: u64,
    pub churn_reconnects: u64,
    pub stored_events: Option<i64>,
    pub dlq_records: Option<i64>,
    pub faults: Vec<FaultRecord>,
    /// Scheduled faults not injected: slow recoveries had used the time.
    #[serde(default)]
    pub faults_skipped: usize,
    pub recovery: Vec<RecoveryRow>,
    pub memory: Vec<MemoryRow>,
    pub attacks: BTreeMap<String, AttackTally>,
    pub problems: Vec<String>,
    pub ok: bool,
}

/// Recovery figures per kind, in schedule order.
pub(super) fn recovery(faults: &[FaultRecord]) -> Vec<RecoveryRow> {
    let max = |v: &[f64]| {
        v.iter()
            .copied()
            .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))))
    };
    FaultKind::CYCLE
        .iter()
        .filter_map(|k| {
            let of: Vec<&FaultRecord> = faults.iter().filter(|f| f.kind == *k).collect();
            if of.is_empty() {
                return None;
            }
            let delivery: Vec<f64> = of.iter().filter_map(|f| f.delivery_s).collect();
            let reconnected: Vec<f64> = of.iter().filter_map(|f| f.reconnected_s).collect();
            let down: Vec<f64> = of.iter().map(|f| f.down_s).collect();
            Some(RecoveryRow {
                kind: *k,
                count: of.len(),
                failed: of
                    .iter()
                    .filter(|f| f.error.is_some() || f.delivery_s.is_none())
                    .count(),
                down_max_s: max(&down).unwrap_or(0.0),
                delivery_max_s: max(&delivery),
                delivery_mean_s: (!delivery.is_empty())
                    .then(|| delivery.iter().sum::<f64>() / delivery.len() as f64),
                reconnected_max_s: max(&reconnected),
            })
        })
        .collect()
}

fn opt(v: Option<f64>) -> String {
    v.map_or("–".into(), |v| format!("{v:.1}"))
}

/// The Markdown report.
pub fn markdown(r: &SoakReport) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Chaos soak — {}\n", r.generated_at);
    let _ = writeln!(s, "```\n{}\n```\n", r.command);
    let _ = writeln!(
        s,
        "Machine: {} CPUs, {:.1} GiB; shared with other work while it ran.\n",
        r.machine.cpus,
        r.machine.memory_bytes as f64 / (1u64 << 30) as f64
    );
    let _ = writeln!(
        s,
        "**{}** — {:.0} s of load ({:.0} s planned), {} well-behaved clients, {} reconnecting with their cursors, {} attackers.\n",
        if r.ok { "PASS" } else { "FAIL" },
        r.ran_s,
        r.planned_s,
        r.well_behaved,
        r.reconnecting,
        r.hostile
    );
    let _ = writeln!(s, "| events produced | deliveries | expected | lost | duplicated | out of scope | redelivered after reconnect (dropped by id) | `recovered: false` on resume | stored in the log | in the DLQ |");
    let _ = writeln!(
        s,
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    let _ = writeln!(
        s,
        "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
        r.events_produced,
        r.deliveries,
        r.expected_deliveries,
        r.lost,
        r.duplicated,
        r.out_of_scope,
        r.redelivered,
        r.unrecovered,
        r.stored_events.map_or("–".into(), |v| v.to_string()),
        r.dlq_records.map_or("–".into(), |v| v.to_string()),
    );
    let _ = writeln!(
        s,
        "Producer retries (failed sends, retried with the same id): {}. Server-closed or broken connections: {}. Churn reconnects: {}.\n",
        r.produce_retries, r.disconnects, r.churn_reconnects
    );
    if !r.problems.is_empty() {
        let _ = writeln!(s, "## Problems\n");
        for p in &r.problems {
            let _ = writeln!(s, "- {p}");
        }
        let _ = writeln!(s);
    }
    let _ = writeln!(s, "## Recovery per fault kind (seconds, worst case)\n");
    let _ = writeln!(s, "| fault | injected | failed | down | delivering again (max) | (mean) | all clients back (max) |");
    let _ = writeln!(s, "| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    for row in &r.recovery {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.1} | {} | {} | {} |",
            row.kind.name(),
            row.count,
            row.failed,
            row.down_max_s,
            opt(row.delivery_max_s),
            opt(row.delivery_mean_s),
            opt(row.reconnected_max_s)
        );
    }
    let _ = writeln!(
        s,
        "\n*down*: injection until the component was ready again (or the read-only window closed); *delivering again*: injection until a client received an event produced after that; *all clients back*: injection until as many well-behaved clients were connected as before.\n"
    );
    let _ = writeln!(s, "## Peak memory per process\n");
    let _ = writeln!(s, "| process | peak RSS MiB | bound MiB |");
    let _ = writeln!(s, "| --- | ---: | ---: |");
    for m in &r.memory {
        let _ = writeln!(
            s,
            "| {} | {:.1} | {} |",
            m.process,
            m.peak_rss_mib,
            m.bound_mib.map_or("–".into(), |b| format!("{b:.0}"))
        );
    }
    let _ = writeln!(
        s,
        "\nPostgreSQL rows: the postmaster and its backends together.\n"
    );
    let _ = writeln!(s, "## Attacks\n");
    let _ = writeln!(
        s,
        "| attack | runs | answered as expected | unexpected | node unreachable |"
    );
    let _ = writeln!(s, "| --- | ---: | ---: | ---: | ---: |");
    for (k, t) in &r.attacks {
        let _ = writeln!(
            s,
            "| {k} | {} | {} | {} | {} |",
            t.runs, t.expected, t.unexpected, t.unreachable
        );
    }
    let samples: Vec<String> = r
        .attacks
        .iter()
        .flat_map(|(k, t)| t.samples.iter().map(move |x| format!("{k}: {x}")))
        .collect();
    if !samples.is_empty() {
        let _ = writeln!(s, "\nUnexpected answers (first few):\n");
        for x in samples {
            let _ = writeln!(s, "- `{x}`");
        }
    }
    let _ = writeln!(s, "\n## Faults injected\n");
    if r.faults_skipped > 0 {
        let _ = writeln!(
            s,
            "{} scheduled faults were not injected: slow recoveries had used the time.\n",
            r.faults_skipped
        );
    }
    let _ = writeln!(
        s,
        "| at s | fault | target | down s | delivering again s | clients back s | error |"
    );
    let _ = writeln!(s, "| ---: | --- | --- | ---: | ---: | ---: | --- |");
    for f in &r.faults {
        let _ = writeln!(
            s,
            "| {:.1} | {} | {} | {:.1} | {} | {} | {} |",
            f.at_s,
            f.kind.name(),
            f.target,
            f.down_s,
            opt(f.delivery_s),
            opt(f.reconnected_s),
            f.error.as_deref().unwrap_or("")
        );
    }
    s
}

/// Writes `soak.json` and `soak.md` into `out_dir`.
pub fn write(out_dir: &Path, r: &SoakReport) -> anyhow::Result<()> {
    std::fs::create_dir_all(out_dir)?;
    std::fs::write(out_dir.join("soak.json"), serde_json::to_vec_pretty(r)?)?;
    std::fs::write(out_dir.join("soak.md"), markdown(r))?;
    Ok(())
}
