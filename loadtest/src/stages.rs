//! Where Switchyard's milliseconds go: the per-stage breakdown of a sweep
//! step, from the servers' own histograms. Right before and right after a
//! step the bridge's and every gateway's admin `/metrics` are scraped; the
//! difference of `switchyard_bridge_stage_seconds` (receive, commit,
//! publish) and `switchyard_gateway_stage_seconds` (feed, write, summed over
//! the nodes) gives each stage's count, mean and bucket-interpolated
//! p50/p99 over exactly that step. `switchyard_gateway_delivery_lag_seconds`
//! of live deliveries (created_at to socket write) against the clients'
//! end-to-end mean gives the last stage, socket write to client receipt.
//! The bridge's `publish` ends at Redis's reply and the gateways' `feed`
//! starts at the send, so those two overlap by up to one Redis round trip.
//!
//! Invariant: a breakdown only ever comes from two scrapes of the same
//! processes around one step, and a stage missing from either scrape is
//! left out rather than guessed; percentiles are estimated from bucket
//! counts (linear inside a bucket) and said to be so wherever shown.

use anyhow::{bail, Context as _};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const BRIDGE_STAGES: &str = "switchyard_bridge_stage_seconds";
const GATEWAY_STAGES: &str = "switchyard_gateway_stage_seconds";
const DELIVERY_LAG: &str = "switchyard_gateway_delivery_lag_seconds";

/// The stages in the order an event passes them: (metric, label, name shown).
const ORDER: [(&str, &str, &str); 5] = [
    (BRIDGE_STAGES, "receive", "Kafka → bridge receive"),
    (BRIDGE_STAGES, "commit", "receive → PostgreSQL commit"),
    (BRIDGE_STAGES, "publish", "commit → Redis publish"),
    (GATEWAY_STAGES, "feed", "publish → gateway receive"),
    (GATEWAY_STAGES, "write", "gateway receive → socket write"),
];

/// Largest `/metrics` body read (the admin endpoint's is a few hundred KiB
/// at most).
const MAX_BODY: usize = 8 << 20;
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(3);

/// One stage of one step.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Stage {
    /// `receive`, `commit`, `publish`, `feed`, `write` or `client`.
    pub stage: String,
    /// What the stage spans.
    pub what: String,
    /// Samples in the step (per event on the bridge, per delivery on the
    /// gateways); 0 for the derived `client` stage.
    pub count: u64,
    pub mean_ms: f64,
    /// Interpolated linearly inside the histogram bucket (resolution: the
    /// bucket bounds, and the servers' millisecond timestamps).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub p50_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub p99_ms: Option<f64>,
}

/// The breakdown of one step.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Breakdown {
    pub stages: Vec<Stage>,
    /// Mean of created_at → socket write of live deliveries (gateways).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub server_lag_mean_ms: Option<f64>,
    /// How the `client` stage was obtained.
    pub client_stage: String,
}

/// A histogram as exposed: cumulative bucket counts by upper bound, sum
/// and count.
#[derive(Debug, Clone, Default, PartialEq)]
struct Hist {
    buckets: BTreeMap<Bound, f64>,
    sum: f64,
    count: f64,
}

/// A bucket's upper bound, ordered (`+Inf` last).
#[derive(Debug, Clone, Copy)]
struct Bound(f64);
impl PartialEq for Bound {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o).is_eq()
    }
}
impl Eq for Bound {}
impl PartialOrd for Bound {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Bound {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&o.0)
    }
}

/// Histograms of one or more scrapes, by (metric, label value).
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    hists: BTreeMap<(String, String), Hist>,
    /// Processes that could not be scraped (the breakdown is then omitted).
    failed: Vec<String>,
}

/// The value of label `name` in a `{a="x",b="y"}` label set.
fn label<'a>(labels: &'a str, name: &str) -> Option<&'a str> {
    labels.split(',').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k.trim() == name).then(|| v.trim().trim_matches('"'))
    })
}

/// Adds the histograms of one `/metrics` text that the breakdown uses.
fn parse_into(text: &str, into: &mut BTreeMap<(String, String), Hist>) {
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.trim().parse::<f64>() else {
            continue;
        };
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (n, l.trim_end_matches('}')),
            None => (series, ""),
        };
        for metric in [BRIDGE_STAGES, GATEWAY_STAGES, DELIVERY_LAG] {
            let Some(suffix) = name.strip_prefix(metric) else {
                continue;
            };
            let key_label = if metric == DELIVERY_LAG {
                "path"
            } else {
                "stage"
            };
            let Some(stage) = label(labels, key_label) else {
                continue;
            };
            let h = into
                .entry((metric.to_owned(), stage.to_owned()))
                .or_default();
            match suffix {
                "_bucket" => {
                    let Some(le) = label(labels, "le") else {
                        continue;
                    };
                    let bound = if le == "+Inf" {
                        f64::INFINITY
                    } else {
                        match le.parse() {
                            Ok(b) => b,
                            Err(_) => continue,
                        }
                    };
                    *h.buckets.entry(Bound(bound)).or_default() += value;
                }
                "_sum" => h.sum += value,
                "_count" => h.count += value,
                _ => {}
            }
        }
    }
}

impl Hist {
    /// `self - before` (the step's own samples); `None` when the bucket
    /// bounds differ or a counter went backwards (a process restarted).
    fn since(&self, before: Option<&Hist>) -> Option<Hist> {
        let Some(b) = before else {
            return Some(self.clone());
        };
        if b.count > self.count || (!b.buckets.is_empty() && b.buckets.len() != self.buckets.len())
        {
            return None;
        }
        let mut buckets = BTreeMap::new();
        for (k, v) in &self.buckets {
            let prev = b.buckets.get(k).copied().unwrap_or(0.0);
            buckets.insert(*k, (v - prev).max(0.0));
        }
        Some(Hist {
            buckets,
            sum: self.sum - b.sum,
            count: self.count - b.count,
        })
    }

    fn mean(&self) -> Option<f64> {
        if self.count > 0.0 {
            Some(self.sum / self.count)
        } else {
            None
        }
    }

    /// Quantile `q` interpolated linearly inside its bucket (the first
    /// bucket starts at 0; in `+Inf` the last finite bound is returned).
    fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.buckets.get(&Bound(f64::INFINITY)).copied()?;
        if total <= 0.0 {
            return None;
        }
        let rank = q * total;
        let mut lower = 0.0;
        let mut below = 0.0;
        for (Bound(upper), cum) in &self.buckets {
            if *cum >= rank {
                if upper.is_infinite() {
                    return Some(lower);
                }
                let inside = cum - below;
                let frac = if inside > 0.0 {
                    (rank - below) / inside
                } else {
                    1.0
                };
                return Some(lower + (upper - lower) * frac);
            }
            lower = *upper;
            below = *cum;
        }
        Some(lower)
    }
}

/// GET `/metrics` from an admin listener (HTTP/1.0: the body ends with the
/// connection, never chunked).
async fn fetch_metrics(addr: SocketAddr) -> anyhow::Result<String> {
    let get = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: loadtest\r\n\r\n")
            .await?;
        let mut body = Vec::new();
        (&mut s)
            .take(MAX_BODY as u64)
            .read_to_end(&mut body)
            .await?;
        anyhow::Ok(body)
    };
    let raw = tokio::time::timeout(SCRAPE_TIMEOUT, get)
        .await
        .context("timed out")??;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("no end of the HTTP header")?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        bail!("{}", head.lines().next().unwrap_or(""));
    }
    Ok(body.to_owned())
}

/// The admin address a Switchyard process was started with, from its
/// environment (`SWITCHYARD_ADMIN_LISTEN`): the process list is all the
/// sweep has, and the variable is what the harness set.
fn admin_addr(pid: u32) -> anyhow::Result<SocketAddr> {
    let env = std::fs::read(format!("/proc/{pid}/environ"))
        .with_context(|| format!("reading the environment of pid {pid}"))?;
    env.split(|b| *b == 0)
        .find_map(|kv| kv.strip_prefix(b"SWITCHYARD_ADMIN_LISTEN="))
        .context("no SWITCHYARD_ADMIN_LISTEN")
        .and_then(|v| Ok(std::str::from_utf8(v)?.parse()?))
}

/// Scrapes the bridge and every gateway of `procs` ((name, pid) of the
/// running Switchyard). Failures are kept in the snapshot, not raised: the
/// breakdown is an extra, the step's figures stand without it.
pub async fn scrape(procs: &[(String, u32)]) -> Snapshot {
    let mut snap = Snapshot::default();
    for (name, pid) in procs {
        if !name.starts_with("switchyard-") {
            continue;
        }
        let text = match admin_addr(*pid) {
            Ok(addr) => fetch_metrics(addr).await,
            Err(e) => Err(e),
        };
        match text {
            Ok(t) => parse_into(&t, &mut snap.hists),
            Err(e) => snap.failed.push(format!("{name}: {e:#}")),
        }
    }
    snap
}

/// The breakdown of the samples between `before` and `after`;
/// `e2e_mean_ms` is the clients' end-to-end mean of the same step. `None`
/// (with the reason) when a scrape failed or nothing was recorded.
pub fn breakdown(
    before: &Snapshot,
    after: &Snapshot,
    e2e_mean_ms: Option<f64>,
) -> Result<Breakdown, String> {
    if let Some(f) = before.failed.iter().chain(&after.failed).next() {
        return Err(format!("no stage breakdown: scraping {f}"));
    }
    let diff = |metric: &str, stage: &str| {
        let key = (metric.to_owned(), stage.to_owned());
        after.hists.get(&key)?.since(before.hists.get(&key))
    };
    let mut out = Breakdown::default();
    for (metric, stage, what) in ORDER {
        let Some(h) = diff(metric, stage) else {
            continue;
        };
        let Some(mean) = h.mean() else {
            continue;
        };
        out.stages.push(Stage {
            stage: stage.into(),
            what: what.into(),
            count: h.count as u64,
            mean_ms: mean * 1e3,
            p50_ms: h.quantile(0.5).map(|v| v * 1e3),
            p99_ms: h.quantile(0.99).map(|v| v * 1e3),
        });
    }
    if out.stages.is_empty() {
        return Err("no stage breakdown: the servers recorded no stage samples in the step".into());
    }
    out.server_lag_mean_ms = diff(DELIVERY_LAG, "live")
        .and_then(|h| h.mean())
        .map(|v| v * 1e3);
    let server_sum: f64 = out.stages.iter().map(|s| s.mean_ms).sum();
    let (client, how) = match (e2e_mean_ms, out.server_lag_mean_ms) {
        (Some(e2e), Some(lag)) => (
            Some(e2e - lag),
            "mean of client receipt − socket write: the clients' end-to-end mean minus the gateways' delivery-lag mean (created_at → socket write) over the same live deliveries",
        ),
        (Some(e2e), None) => (
            Some(e2e - server_sum),
            "the clients' end-to-end mean minus the sum of the server stages' means (includes the producer's time before the Kafka timestamp)",
        ),
        _ => (None, ""),
    };
    if let Some(c) = client {
        out.client_stage = how.into();
        out.stages.push(Stage {
            stage: "client".into(),
            what: "socket write → client receipt".into(),
            count: 0,
            mean_ms: c,
            p50_ms: None,
            p99_ms: None,
        });
    }
    Ok(out)
}

impl Breakdown {
    /// A stage by name.
    pub fn stage(&self, name: &str) -> Option<&Stage> {
        self.stages.iter().find(|s| s.stage == name)
    }

    /// The rest of the delivery lag the five server stages do not cover:
    /// the producer's time from the scheduled send to the Kafka record
    /// timestamp, plus millisecond rounding.
    pub fn before_kafka_ms(&self) -> Option<f64> {
        let lag = self.server_lag_mean_ms?;
        let server: f64 = self
            .stages
            .iter()
            .filter(|s| s.stage != "client")
            .map(|s| s.mean_ms)
            .sum();
        Some(lag - server)
    }
}

/// The breakdown on one line, for the run's progress output.
pub fn one_line(b: &Breakdown) -> String {
    let parts: Vec<String> = b
        .stages
        .iter()
        .map(|s| format!("{} {:.1}", s.stage, s.mean_ms))
        .collect();
    format!("     stages (mean ms): {}", parts.join(" | "))
}

fn ms(v: Option<f64>) -> String {
    v.map_or("–".into(), |v| format!("{v:.1}"))
}

/// The Markdown table of one step's breakdown.
pub fn table(b: &Breakdown) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    s.push_str("| stage | spans | samples | mean ms | p50 ms | p99 ms |\n");
    s.push_str("| --- | --- | ---: | ---: | ---: | ---: |\n");
    if let Some(v) = b.before_kafka_ms() {
        let _ = writeln!(
            s,
            "| (producer) | scheduled send → Kafka record timestamp, and ms rounding | | {v:.1} | | |"
        );
    }
    for st in &b.stages {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.1} | {} | {} |",
            st.stage,
            st.what,
            if st.count > 0 {
                st.count.to_string()
            } else {
                String::new()
            },
            st.mean_ms,
            ms(st.p50_ms),
            ms(st.p99_ms)
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEFORE: &str = r#"# TYPE switchyard_bridge_stage_seconds histogram
switchyard_bridge_stage_seconds_bucket{stage="commit",le="0.001"} 1
switchyard_bridge_stage_seconds_bucket{stage="commit",le="0.005"} 2
switchyard_bridge_stage_seconds_bucket{stage="commit",le="+Inf"} 2
switchyard_bridge_stage_seconds_sum{stage="commit"} 0.004
switchyard_bridge_stage_seconds_count{stage="commit"} 2
"#;
    const AFTER: &str = r#"switchyard_bridge_stage_seconds_bucket{stage="commit",le="0.001"} 1
switchyard_bridge_stage_seconds_bucket{stage="commit",le="0.005"} 102
switchyard_bridge_stage_seconds_bucket{stage="commit",le="+Inf"} 102
switchyard_bridge_stage_seconds_sum{stage="commit"} 0.304
switchyard_bridge_stage_seconds_count{stage="commit"} 102
switchyard_gateway_delivery_lag_seconds_bucket{path="live",le="+Inf"} 100
switchyard_gateway_delivery_lag_seconds_sum{path="live"} 2.0
switchyard_gateway_delivery_lag_seconds_count{path="live"} 100
"#;

    fn snap(texts: &[&str]) -> Snapshot {
        let mut s = Snapshot::default();
        for t in texts {
            parse_into(t, &mut s.hists);
        }
        s
    }

    #[test]
    fn step_is_the_difference_of_two_scrapes() {
        let b = breakdown(&snap(&[BEFORE]), &snap(&[AFTER]), Some(25.0)).unwrap();
        let c = b.stage("commit").unwrap();
        assert_eq!(c.count, 100);
        assert!((c.mean_ms - 3.0).abs() < 1e-9, "{c:?}");
        // All 100 new samples are in (1 ms, 5 ms]: the median is its middle.
        assert!((c.p50_ms.unwrap() - 3.0).abs() < 1e-9, "{c:?}");
        assert!((c.p99_ms.unwrap() - 4.96).abs() < 1e-9, "{c:?}");
        assert!((b.server_lag_mean_ms.unwrap() - 20.0).abs() < 1e-9);
        let client = b.stage("client").unwrap();
        assert!((client.mean_ms - 5.0).abs() < 1e-9, "{client:?}");
        assert!((b.before_kafka_ms().unwrap() - 17.0).abs() < 1e-9);
    }

    #[test]
    fn nodes_add_up_and_a_failed_scrape_gives_no_breakdown() {
        let two = snap(&[AFTER, AFTER]);
        let b = breakdown(&Snapshot::default(), &two, None).unwrap();
        assert_eq!(b.stage("commit").unwrap().count, 204);
        assert!(b.stage("client").is_none());
        let mut failed = two.clone();
        failed.failed.push("switchyard-gateway-1: refused".into());
        assert!(breakdown(&Snapshot::default(), &failed, None).is_err());
    }

    #[test]
    fn restarted_process_is_not_diffed() {
        // Counts went backwards: the stage is left out, not made negative.
        let r = breakdown(&snap(&[AFTER]), &snap(&[BEFORE]), None);
        assert!(r.is_err(), "{r:?}");
    }

    #[test]
    fn quantile_in_overflow_bucket_is_the_last_bound() {
        let s = snap(&[
            r#"switchyard_gateway_stage_seconds_bucket{stage="write",le="0.01"} 0
switchyard_gateway_stage_seconds_bucket{stage="write",le="+Inf"} 4
switchyard_gateway_stage_seconds_sum{stage="write"} 4
switchyard_gateway_stage_seconds_count{stage="write"} 4
"#,
        ]);
        let b = breakdown(&Snapshot::default(), &s, None).unwrap();
        assert_eq!(b.stage("write").unwrap().p50_ms, Some(10.0));
    }
}
