//! The metric catalog: every metric a binary exports, declared once with its
//! type, HELP text and labels. At start-up a binary describes every metric
//! and registers it at zero with its known label values
//! ([`Catalog::register`]), so counters exist before their first increment
//! (`increase()` sees the first failure) and `/metrics` carries HELP and
//! TYPE for all of them. `deploy/metrics.txt`, which the dashboard and the
//! alerts are checked against, is rendered from the catalogs
//! ([`Catalog::render`]); each binary has a unit test that fails when the
//! file drifts ([`Catalog::check_file`]) and one that scans its sources for
//! metric names and label values the catalog does not declare
//! ([`Catalog::scan_sources`]).
//!
//! Invariant: a label takes its values from a bounded set: a fixed list
//! declared here, or a set the binary has validated (its topology's topics,
//! its configured Kafka topics' partitions) — never raw input.

use std::collections::{BTreeSet, HashSet};
use std::fmt::Write as _;
use std::path::Path;

/// Prometheus metric types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    /// Rendered with buckets: the name must end with a suffix that
    /// [`crate::telemetry::init_metrics`] configures buckets for
    /// ([`HISTOGRAM_SUFFIXES`]); any other would be rendered as a summary.
    Histogram,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// Histogram name suffixes that have buckets (see `telemetry::init_metrics`).
pub const HISTOGRAM_SUFFIXES: &[&str] = &["_seconds", "_size"];

/// Labels Prometheus and the Kubernetes service discovery attach to every
/// series; a metric must not use them itself.
pub const RESERVED_LABELS: &[&str] = &[
    "le",
    "quantile",
    "job",
    "instance",
    "namespace",
    "pod",
    "container",
    "service",
    "endpoint",
    "node",
];

/// Where a label's values come from.
#[derive(Debug, Clone, Copy)]
pub enum Values {
    /// The only values the label takes.
    Fixed(&'static [&'static str]),
    /// A bounded set known at run time. `set` names it for
    /// [`Catalog::register`]'s lookup; `doc` says what it is (rendered into
    /// `deploy/metrics.txt`).
    Runtime {
        set: &'static str,
        doc: &'static str,
    },
}

/// One label of a metric.
#[derive(Debug, Clone, Copy)]
pub struct Label {
    pub name: &'static str,
    pub values: Values,
}

impl Label {
    pub const fn fixed(name: &'static str, values: &'static [&'static str]) -> Label {
        Label {
            name,
            values: Values::Fixed(values),
        }
    }

    pub const fn runtime(name: &'static str, set: &'static str, doc: &'static str) -> Label {
        Label {
            name,
            values: Values::Runtime { set, doc },
        }
    }
}

/// One metric.
#[derive(Debug, Clone, Copy)]
pub struct Metric {
    pub name: &'static str,
    pub kind: Kind,
    pub help: &'static str,
    pub labels: &'static [Label],
}

impl Metric {
    pub const fn counter(
        name: &'static str,
        help: &'static str,
        labels: &'static [Label],
    ) -> Metric {
        Metric {
            name,
            kind: Kind::Counter,
            help,
            labels,
        }
    }

    pub const fn gauge(name: &'static str, help: &'static str, labels: &'static [Label]) -> Metric {
        Metric {
            name,
            kind: Kind::Gauge,
            help,
            labels,
        }
    }

    pub const fn histogram(
        name: &'static str,
        help: &'static str,
        labels: &'static [Label],
    ) -> Metric {
        Metric {
            name,
            kind: Kind::Histogram,
            help,
            labels,
        }
    }

    fn label(&self, name: &str) -> Option<&Label> {
        self.labels.iter().find(|l| l.name == name)
    }
}

/// The build-info gauge both binaries export (value 1).
pub const BUILD_INFO: Metric = Metric::gauge(
    "switchyard_build_info",
    "Always 1; the labels say which build runs.",
    &[Label::runtime(
        "version",
        "version",
        "the binary's version (one value per build)",
    )],
);

/// Every metric one binary exports.
#[derive(Debug, Clone)]
pub struct Catalog {
    /// The binary, e.g. `switchyard-bridge`; names its section of
    /// `deploy/metrics.txt`.
    pub binary: &'static str,
    pub metrics: Vec<Metric>,
}

/// The environment variable that makes [`Catalog::check_file`] rewrite the
/// binary's section instead of failing.
pub const UPDATE_VAR: &str = "SWITCHYARD_UPDATE_METRICS";

impl Catalog {
    /// A catalog from parts (the binary's own metrics and those of the
    /// libraries it runs).
    pub fn new(binary: &'static str, parts: &[&[Metric]]) -> Catalog {
        Catalog {
            binary,
            metrics: parts.iter().flat_map(|p| p.iter().copied()).collect(),
        }
    }

    pub fn get(&self, name: &str) -> Option<&Metric> {
        self.metrics.iter().find(|m| m.name == name)
    }

    /// Describes every metric (HELP) and registers each at zero for every
    /// combination of its labels' known values. `known(set)` gives the
    /// values of a [`Values::Runtime`] set; a metric with a runtime set
    /// `known` does not give is described only, and its series appear at
    /// first use. Safe to call again (nothing is reset).
    pub fn register(&self, known: &dyn Fn(&str) -> Option<Vec<String>>) {
        for m in &self.metrics {
            match m.kind {
                Kind::Counter => metrics::describe_counter!(m.name, m.help),
                Kind::Gauge => metrics::describe_gauge!(m.name, m.help),
                Kind::Histogram => metrics::describe_histogram!(m.name, m.help),
            }
            let Some(combinations) = combinations(m, known) else {
                continue;
            };
            for labels in combinations {
                match m.kind {
                    Kind::Counter => metrics::counter!(m.name, labels).increment(0),
                    Kind::Gauge => metrics::gauge!(m.name, labels).increment(0.0),
                    Kind::Histogram => {
                        let _ = metrics::histogram!(m.name, labels);
                    }
                }
            }
        }
    }

    /// What is wrong with the catalog itself: names, suffixes, HELP, labels.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        for m in &self.metrics {
            let n = m.name;
            if !seen.insert(n) {
                out.push(format!("{n}: declared twice"));
            }
            let valid = n.starts_with("switchyard_")
                && n.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
            if !valid {
                out.push(format!("{n}: not a `switchyard_[a-z0-9_]+` name"));
            }
            match m.kind {
                Kind::Counter if !n.ends_with("_total") => {
                    out.push(format!("{n}: a counter's name must end with _total"))
                }
                Kind::Gauge | Kind::Histogram if n.ends_with("_total") => {
                    out.push(format!("{n}: only counters end with _total"))
                }
                Kind::Histogram if !HISTOGRAM_SUFFIXES.iter().any(|s| n.ends_with(s)) => {
                    out.push(format!(
                        "{n}: a histogram's name must end with one of {HISTOGRAM_SUFFIXES:?} (they have buckets)"
                    ))
                }
                _ => {}
            }
            if m.help.trim().is_empty() || m.help.contains('\n') {
                out.push(format!("{n}: HELP must be one non-empty line"));
            }
            let mut labels = HashSet::new();
            for l in m.labels {
                if !labels.insert(l.name) {
                    out.push(format!("{n}: label {} twice", l.name));
                }
                if RESERVED_LABELS.contains(&l.name) || l.name.starts_with("__") {
                    out.push(format!("{n}: label {} is reserved for Prometheus", l.name));
                }
                if let Values::Fixed(v) = l.values {
                    if v.is_empty() {
                        out.push(format!("{n}: label {} has no values", l.name));
                    }
                }
            }
        }
        out
    }

    /// The binary's section of `deploy/metrics.txt`: per metric a comment
    /// with its HELP (and what bounds its run-time label values), then
    /// `name type labels`, where `label=a|b` lists a label's only values.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for m in &self.metrics {
            let _ = writeln!(out, "# {}", m.help);
            for l in m.labels {
                if let Values::Runtime { doc, .. } = l.values {
                    let _ = writeln!(out, "#   {}: {doc}", l.name);
                }
            }
            let labels: Vec<String> = m
                .labels
                .iter()
                .map(|l| match l.values {
                    Values::Fixed(v) => format!("{}={}", l.name, v.join("|")),
                    Values::Runtime { .. } => l.name.to_owned(),
                })
                .collect();
            let line = format!(
                "{:<47} {:<10} {}",
                m.name,
                m.kind.as_str(),
                labels.join(",")
            );
            let _ = writeln!(out, "{}", line.trim_end());
        }
        out
    }

    fn markers(&self) -> (String, String) {
        (
            format!(
                "# BEGIN {b} (generated: `{b} --print-metrics`; checked by its unit tests)",
                b = self.binary
            ),
            format!("# END {}", self.binary),
        )
    }

    /// Compares the binary's section of the metrics file at `path` with
    /// [`Catalog::render`]. With `SWITCHYARD_UPDATE_METRICS=1` in the
    /// environment the section is rewritten (appended when missing) instead.
    pub fn check_file(&self, path: &Path) -> Result<(), String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let (begin, end) = self.markers();
        let fresh = format!("{begin}\n{}{end}\n", self.render());
        let current = section(&text, &begin, &end);
        if current.as_deref() == Some(fresh.as_str()) {
            return Ok(());
        }
        if std::env::var(UPDATE_VAR).is_ok_and(|v| v == "1") {
            let updated = match &current {
                Some(cur) => text.replacen(cur.as_str(), &fresh, 1),
                None => format!("{text}{fresh}"),
            };
            std::fs::write(path, updated)
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            return Ok(());
        }
        let diff = match &current {
            None => "the section is missing".to_owned(),
            Some(cur) => line_diff(cur, &fresh),
        };
        Err(format!(
            "{} drifted from the {} metric catalog:\n{diff}\nregenerate it with `{UPDATE_VAR}=1 cargo test -p <crate> --lib catalog`",
            path.display(),
            self.binary
        ))
    }

    /// Scans the `.rs` files under `dir` for metric names (string literals
    /// `"switchyard_…"` that look like one; a trailing `_` marks a prefix,
    /// not a name) the catalog lacks, and for
    /// literal label pairs (`"label" => "value"`) whose value is not among
    /// the label's fixed values. `ignore` lists literals that are not metric
    /// names.
    pub fn scan_sources(&self, dir: &Path, ignore: &[&str]) -> Vec<String> {
        let mut out = Vec::new();
        let mut files = Vec::new();
        collect_rs(dir, &mut files);
        let fixed: Vec<(&str, &[&str])> = self
            .metrics
            .iter()
            .flat_map(|m| m.labels)
            .filter_map(|l| match l.values {
                Values::Fixed(v) => Some((l.name, v)),
                Values::Runtime { .. } => None,
            })
            .collect();
        for f in files {
            let Ok(text) = std::fs::read_to_string(&f) else {
                continue;
            };
            let lits = literals(&text);
            for (i, (lit, _, end)) in lits.iter().enumerate() {
                let name_like = lit.starts_with("switchyard_")
                    && lit
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                    && !lit.ends_with('_');
                if name_like && !ignore.contains(&lit.as_str()) && self.get(lit).is_none() {
                    out.push(format!(
                        "{}: `{lit}` is not in the {} catalog",
                        f.display(),
                        self.binary
                    ));
                }
                // "label" => "value"
                if let Some((value, vat, _)) = lits.get(i + 1) {
                    let between = text.get(*end..*vat).unwrap_or_default();
                    if between.trim() != "=>" {
                        continue;
                    }
                    let allowed: Vec<&[&str]> = fixed
                        .iter()
                        .filter(|(n, _)| *n == lit.as_str())
                        .map(|(_, v)| *v)
                        .collect();
                    if !allowed.is_empty() && !allowed.iter().any(|v| v.contains(&value.as_str())) {
                        out.push(format!(
                            "{}: label value {lit}=\"{value}\" is not declared in the {} catalog",
                            f.display(),
                            self.binary
                        ));
                    }
                }
            }
        }
        out
    }

    /// What is wrong with a rendered `/metrics` page against the catalog:
    /// `switchyard_*` series the catalog does not declare, series with a
    /// label value outside the label's fixed values, and exported metrics
    /// without HELP. (The exporter writes HELP only for metrics that have a
    /// series: one whose run-time label set is not known yet has neither.)
    pub fn check_exposition(&self, text: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut exported = HashSet::new();
        for line in text.lines().filter(|l| l.starts_with("switchyard_")) {
            let series = line.rsplit_once(' ').map_or(line, |(s, _)| s);
            let (name, labels) = match series.split_once('{') {
                Some((n, l)) => (n, l.trim_end_matches('}')),
                None => (series, ""),
            };
            let metric = self.get(name).or_else(|| {
                ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
                    self.get(name.strip_suffix(suffix)?)
                        .filter(|m| m.kind == Kind::Histogram)
                })
            });
            let Some(metric) = metric else {
                out.push(format!("{name} is not in the {} catalog", self.binary));
                continue;
            };
            exported.insert(metric.name);
            for pair in labels.split("\",").filter(|p| !p.is_empty()) {
                let Some((label, value)) = pair.split_once("=\"") else {
                    continue;
                };
                let value = value.trim_end_matches('"');
                if label != "le" && !self.allows(metric.name, label, value) {
                    out.push(format!("{series}: {label}=\"{value}\" is not declared"));
                }
            }
        }
        for m in self.metrics.iter().filter(|m| exported.contains(m.name)) {
            if !text.contains(&format!("# HELP {} ", m.name)) {
                out.push(format!("{} is not described (no HELP)", m.name));
            }
        }
        out
    }

    /// Whether `value` is a declared fixed value of label `label` of `metric`.
    pub fn allows(&self, metric: &str, label: &str, value: &str) -> bool {
        self.get(metric)
            .and_then(|m| m.label(label))
            .is_some_and(|l| match l.values {
                Values::Fixed(v) => v.contains(&value),
                Values::Runtime { .. } => true,
            })
    }
}

/// Every combination of a metric's label values, or `None` when a runtime
/// set is unknown.
fn combinations(
    m: &Metric,
    known: &dyn Fn(&str) -> Option<Vec<String>>,
) -> Option<Vec<Vec<metrics::Label>>> {
    let mut out: Vec<Vec<metrics::Label>> = vec![Vec::new()];
    for l in m.labels {
        let values: Vec<String> = match l.values {
            Values::Fixed(v) => v.iter().map(|s| (*s).to_owned()).collect(),
            Values::Runtime { set, .. } => known(set)?,
        };
        let mut next = Vec::with_capacity(out.len() * values.len());
        for prefix in &out {
            for v in &values {
                let mut labels = prefix.clone();
                labels.push(metrics::Label::new(l.name, v.clone()));
                next.push(labels);
            }
        }
        out = next;
    }
    Some(out)
}

/// The text from the `begin` line through the `end` line (with its newline).
fn section(text: &str, begin: &str, end: &str) -> Option<String> {
    let start = text.find(&format!("{begin}\n"))?;
    let rest = &text[start..];
    let stop = rest.find(&format!("{end}\n"))? + end.len() + 1;
    Some(rest[..stop].to_owned())
}

/// A readable summary of two texts' line differences.
fn line_diff(old: &str, new: &str) -> String {
    let a: BTreeSet<&str> = old.lines().collect();
    let b: BTreeSet<&str> = new.lines().collect();
    let mut out = String::new();
    for l in a.difference(&b) {
        let _ = writeln!(out, "  - {l}");
    }
    for l in b.difference(&a) {
        let _ = writeln!(out, "  + {l}");
    }
    if out.is_empty() {
        out.push_str("  (same lines, different order)\n");
    }
    out
}

fn collect_rs(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            collect_rs(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Plain string literals of Rust source with the offsets of their opening
/// quote and of the byte after their closing quote (escapes are not
/// decoded; raw strings and comments are not special-cased, which is
/// enough for names and label values).
fn literals(text: &str) -> Vec<(String, usize, usize)> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\'' => {
                // Skip char literals such as '"' (but not lifetimes).
                if bytes.get(i + 2) == Some(&b'\'') {
                    i += 3;
                } else if bytes.get(i + 1) == Some(&b'\\') && bytes.get(i + 3) == Some(&b'\'') {
                    i += 4;
                } else {
                    i += 1;
                }
            }
            b'"' => {
                let start = i;
                i += 1;
                let mut s = String::new();
                while i < bytes.len() && bytes[i] != b'"' {
                    if bytes[i] == b'\\' {
                        i += 1;
                    }
                    if i < bytes.len() {
                        s.push(bytes[i] as char);
                    }
                    i += 1;
                }
                i += 1;
                out.push((s, start, i.min(bytes.len())));
            }
            _ => i += 1,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use metrics_exporter_prometheus::PrometheusBuilder;

    const TOPIC: Label = Label::runtime("topic", "topics", "the topology's topics");
    const ERRORS: Metric = Metric::counter(
        "switchyard_test_errors_total",
        "Errors, by kind.",
        &[Label::fixed("kind", &["a", "b"])],
    );
    const DELIVERED: Metric = Metric::counter(
        "switchyard_test_delivered_total",
        "Messages delivered, by topic and mode.",
        &[TOPIC, Label::fixed("mode", &["live", "replay"])],
    );
    const LAG: Metric = Metric::gauge(
        "switchyard_test_lag",
        "Lag by partition.",
        &[Label::runtime(
            "partition",
            "partitions",
            "assigned partitions",
        )],
    );
    const LATENCY: Metric = Metric::histogram("switchyard_test_seconds", "Latency.", &[]);

    fn catalog() -> Catalog {
        Catalog::new("switchyard-test", &[&[ERRORS, DELIVERED], &[LAG, LATENCY]])
    }

    #[test]
    fn registration_puts_every_known_series_at_zero_with_help() {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Suffix("_seconds".into()),
                &[0.1, 1.0],
            )
            .unwrap()
            .build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            catalog().register(&|set| (set == "topics").then(|| vec!["News".into()]));
        });
        let text = handle.render();
        assert!(
            text.contains("# HELP switchyard_test_errors_total Errors, by kind."),
            "{text}"
        );
        assert!(
            text.contains("switchyard_test_errors_total{kind=\"a\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("switchyard_test_errors_total{kind=\"b\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("switchyard_test_delivered_total{topic=\"News\",mode=\"replay\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("switchyard_test_seconds_bucket{le=\"+Inf\"} 0"),
            "{text}"
        );
        // Unknown runtime set: described, no series yet.
        assert!(!text.contains("switchyard_test_lag{"), "{text}");
        let c = catalog();
        assert_eq!(c.check_exposition(&text), Vec::<String>::new());
        let extra = format!(
            "{text}switchyard_test_errors_total{{kind=\"c\"}} 1\nswitchyard_other_total 1\n"
        );
        let p = c.check_exposition(&extra).join("\n");
        assert!(p.contains("kind=\"c\" is not declared"), "{p}");
        assert!(p.contains("switchyard_other_total is not in"), "{p}");
        let undescribed = "switchyard_test_seconds_count 0\n";
        assert_eq!(
            c.check_exposition(undescribed),
            ["switchyard_test_seconds is not described (no HELP)"]
        );
    }

    #[test]
    fn render_lists_fixed_values_and_documents_runtime_sets() {
        let text = catalog().render();
        assert!(text.contains("switchyard_test_errors_total"), "{text}");
        assert!(
            text.lines()
                .any(|l| l.starts_with("switchyard_test_delivered_total")
                    && l.ends_with("counter    topic,mode=live|replay")),
            "{text}"
        );
        assert!(
            text.contains("#   partition: assigned partitions"),
            "{text}"
        );
    }

    #[test]
    fn problems_catch_bad_names_labels_and_duplicates() {
        const POD: &[Label] = &[Label::fixed("pod", &["a"])];
        assert!(
            catalog().problems().is_empty(),
            "{:?}",
            catalog().problems()
        );
        let bad = Catalog::new(
            "x",
            &[&[
                Metric::counter("switchyard_x", "no suffix", &[]),
                Metric::histogram("switchyard_x_latency", "summary", &[]),
                Metric::gauge("switchyard_y", "", POD),
                ERRORS,
                ERRORS,
            ]],
        );
        let p = bad.problems().join("\n");
        for expected in ["_total", "buckets", "HELP", "reserved", "declared twice"] {
            assert!(p.contains(expected), "{expected}: {p}");
        }
    }

    #[test]
    fn check_file_finds_drift_and_updates_only_its_section() {
        let dir = std::env::temp_dir().join(format!("catalog-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("metrics.txt");
        let c = catalog();
        let (begin, end) = c.markers();
        let good = format!("# head\n{begin}\n{}{end}\nup gauge\n", c.render());
        std::fs::write(&path, &good).unwrap();
        assert_eq!(c.check_file(&path), Ok(()));
        std::fs::write(&path, good.replace("mode=live|replay", "mode=live")).unwrap();
        let e = c.check_file(&path).unwrap_err();
        assert!(e.contains("+ switchyard_test_delivered_total"), "{e}");
        std::fs::write(&path, "# head\n").unwrap();
        assert!(c.check_file(&path).unwrap_err().contains("missing"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn scan_finds_undeclared_names_and_label_values() {
        let dir = std::env::temp_dir().join(format!("catalog-scan-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(
            dir.join("sub/a.rs"),
            r#"
            const X: &str = "switchyard_test_errors_total";
            const Y: &str = "switchyard_test_unknown_total";
            fn f() { let c = '"'; counter!(X, "kind" => "a"); counter!(X, "kind" => "zzz"); }
            const Z: &str = "switchyard-dlq-reason";
            "#,
        )
        .unwrap();
        let p = catalog().scan_sources(&dir, &[]).join("\n");
        assert!(p.contains("switchyard_test_unknown_total"), "{p}");
        assert!(p.contains("kind=\"zzz\""), "{p}");
        assert!(!p.contains("kind=\"a\""), "{p}");
        assert!(!p.contains("dlq-reason"), "{p}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
