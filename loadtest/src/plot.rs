//! The plot of a report, written as SVG by hand (no font or image
//! dependencies): latency percentiles against offered rate, one colour per
//! system (p50 solid, p99 dashed, p99.9 dotted) for the sweeps; a bar chart
//! of the scenario's headline figure for the others.
//!
//! Invariant: the SVG is a pure function of the report.

use crate::report::{RunReport, SystemResult};
use std::fmt::Write as _;

const W: f64 = 760.0;
const H: f64 = 440.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 180.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;

fn colour(system: &str) -> &'static str {
    match system {
        "switchyard" => "#d62728",
        "socketio" => "#1f77b4",
        "naive" => "#2ca02c",
        "rawtcp" => "#7f7f7f",
        _ => "#9467bd",
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Log-scale axis over [lo, hi] (both > 0).
struct LogAxis {
    lo: f64,
    hi: f64,
}

impl LogAxis {
    fn new(min: f64, max: f64) -> Self {
        let lo = 10f64.powf(min.max(1e-3).log10().floor());
        let mut hi = 10f64.powf(max.max(lo * 10.0).log10().ceil());
        if hi <= lo {
            hi = lo * 10.0;
        }
        LogAxis { lo, hi }
    }
    fn frac(&self, v: f64) -> f64 {
        ((v.max(self.lo)).log10() - self.lo.log10()) / (self.hi.log10() - self.lo.log10())
    }
    fn ticks(&self) -> Vec<f64> {
        let mut out = Vec::new();
        let mut decade = self.lo;
        while decade <= self.hi * 1.0001 {
            for m in [1.0, 2.0, 5.0] {
                let v = decade * m;
                if v >= self.lo * 0.999 && v <= self.hi * 1.001 {
                    out.push(v);
                }
            }
            decade *= 10.0;
        }
        out
    }
}

fn label(v: f64) -> String {
    if v >= 1000.0 {
        format!("{}k", v / 1000.0)
    } else if v >= 1.0 {
        format!("{v}")
    } else {
        format!("{v:.3}").trim_end_matches('0').to_owned()
    }
}

fn header(s: &mut String, title: &str) {
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="15" font-weight="bold">{}</text>"#,
        LEFT + (W - LEFT - RIGHT) / 2.0,
        esc(title)
    );
}

/// The SVG for a report.
pub fn svg(r: &RunReport) -> String {
    match r.scenario.as_str() {
        "fanout" | "scoped" => sweep(r),
        "reconnect" => bars(
            r,
            "Reconnect storm: seconds until every client caught up",
            "seconds",
            |x| x.catch_up_s,
        ),
        "idle" => bars(
            r,
            "Idle: server memory per connection",
            "bytes / connection",
            |x| x.rss_per_conn_bytes,
        ),
        "ingest" => bars(r, "Ingest: events/s made durable", "events / s", |x| {
            x.durable_events_per_s.or(Some(x.events_per_s))
        }),
        _ => {
            let mut s = String::new();
            header(&mut s, &r.scenario);
            s.push_str("</svg>\n");
            s
        }
    }
}

fn sweep(r: &RunReport) -> String {
    let pw = W - LEFT - RIGHT;
    let ph = H - TOP - BOTTOM;
    let points: Vec<(&SystemResult, &SystemResult)> = r
        .results
        .iter()
        .flat_map(|x| x.steps.iter().map(move |st| (x, st)))
        .collect();
    let xs: Vec<f64> = points
        .iter()
        .map(|(_, st)| st.offered_rate)
        .filter(|v| *v > 0.0)
        .collect();
    let ys: Vec<f64> = points
        .iter()
        .flat_map(|(_, st)| [st.p50_ms, st.p99_ms, st.p999_ms])
        .flatten()
        .filter(|v| *v > 0.0)
        .collect();
    let mut s = String::new();
    header(
        &mut s,
        &format!(
            "{}: end-to-end latency vs offered rate ({} connections)",
            r.scenario,
            r.results.first().map_or(0, |x| x.connections)
        ),
    );
    if xs.is_empty() || ys.is_empty() {
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}">no data</text></svg>"#,
            W / 2.0,
            H / 2.0
        );
        return s;
    }
    let xa = LogAxis::new(
        xs.iter().cloned().fold(f64::MAX, f64::min),
        xs.iter().cloned().fold(0.0, f64::max),
    );
    let ya = LogAxis::new(
        ys.iter().cloned().fold(f64::MAX, f64::min),
        ys.iter().cloned().fold(0.0, f64::max),
    );
    let px = |v: f64| LEFT + xa.frac(v) * pw;
    let py = |v: f64| TOP + ph - ya.frac(v) * ph;
    // Grid and axes.
    for t in ya.ticks() {
        let y = py(t);
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#e5e5e5"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            LEFT + pw,
            LEFT - 6.0,
            y + 4.0,
            label(t)
        );
    }
    for t in xa.ticks() {
        let x = px(t);
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}" stroke="#e5e5e5"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            TOP + ph,
            TOP + ph + 16.0,
            label(t)
        );
    }
    let _ = writeln!(
        s,
        r##"<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>"##
    );
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">offered events/s (log)</text>"#,
        LEFT + pw / 2.0,
        H - 12.0
    );
    let _ = writeln!(
        s,
        r#"<text x="16" y="{:.1}" text-anchor="middle" transform="rotate(-90 16 {:.1})">latency ms (log)</text>"#,
        TOP + ph / 2.0,
        TOP + ph / 2.0
    );
    // Series.
    type Series = (&'static str, &'static str, fn(&SystemResult) -> Option<f64>);
    let styles: [Series; 3] = [
        ("p50", "", |x| x.p50_ms),
        ("p99", "6 4", |x| x.p99_ms),
        ("p99.9", "2 3", |x| x.p999_ms),
    ];
    let mut legend_y = TOP + 10.0;
    for x in &r.results {
        if x.steps.is_empty() {
            continue;
        }
        let c = colour(&x.system);
        for (name, dash, get) in &styles {
            let pts: Vec<String> = x
                .steps
                .iter()
                .filter_map(|st| {
                    get(st).map(|v| format!("{:.1},{:.1}", px(st.offered_rate), py(v)))
                })
                .collect();
            if pts.is_empty() {
                continue;
            }
            let _ = writeln!(
                s,
                r#"<polyline points="{}" fill="none" stroke="{c}" stroke-width="2" stroke-dasharray="{dash}"/>"#,
                pts.join(" ")
            );
            for p in &pts {
                let (cx, cy) = p.split_once(',').unwrap_or(("0", "0"));
                let _ = writeln!(s, r#"<circle cx="{cx}" cy="{cy}" r="2.5" fill="{c}"/>"#);
            }
            let lx = LEFT + pw + 14.0;
            let _ = writeln!(
                s,
                r#"<line x1="{lx}" y1="{legend_y:.1}" x2="{:.1}" y2="{legend_y:.1}" stroke="{c}" stroke-width="2" stroke-dasharray="{dash}"/><text x="{:.1}" y="{:.1}">{} {name}</text>"#,
                lx + 26.0,
                lx + 32.0,
                legend_y + 4.0,
                esc(&x.system)
            );
            legend_y += 17.0;
        }
        legend_y += 6.0;
    }
    s.push_str("</svg>\n");
    s
}

fn bars(r: &RunReport, title: &str, unit: &str, get: fn(&SystemResult) -> Option<f64>) -> String {
    let pw = W - LEFT - RIGHT;
    let ph = H - TOP - BOTTOM;
    let shown: Vec<&SystemResult> = r.results.iter().filter(|x| x.error.is_none()).collect();
    let vals: Vec<(&str, Option<f64>)> =
        shown.iter().map(|x| (x.system.as_str(), get(x))).collect();
    // Losses are printed under the bars: a quick "catch-up" that lost
    // events is no catch-up.
    let lost: Vec<u64> = shown.iter().map(|x| x.lost).collect();
    let max = vals
        .iter()
        .filter_map(|v| v.1)
        .fold(0.0, f64::max)
        .max(1e-9)
        * 1.15;
    let mut s = String::new();
    header(&mut s, title);
    let _ = writeln!(
        s,
        r##"<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>"##
    );
    for i in 0..=4 {
        let v = max * f64::from(i) / 4.0;
        let y = TOP + ph - ph * f64::from(i) / 4.0;
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#e5e5e5"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            LEFT + pw,
            LEFT - 6.0,
            y + 4.0,
            if v >= 100.0 {
                format!("{v:.0}")
            } else {
                format!("{v:.2}")
            }
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="16" y="{:.1}" text-anchor="middle" transform="rotate(-90 16 {:.1})">{}</text>"#,
        TOP + ph / 2.0,
        TOP + ph / 2.0,
        esc(unit)
    );
    let n = vals.len().max(1) as f64;
    let slot = pw / n;
    for (i, (name, v)) in vals.iter().enumerate() {
        let x = LEFT + slot * i as f64 + slot * 0.2;
        let bw = slot * 0.6;
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            x + bw / 2.0,
            TOP + ph + 16.0,
            esc(name)
        );
        if let Some(lost) = lost.get(i).copied().filter(|l| *l > 0) {
            let _ = writeln!(
                s,
                r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" fill="#b00">lost {lost}</text>"##,
                x + bw / 2.0,
                TOP + ph + 32.0
            );
        }
        match v {
            Some(v) => {
                let h = ph * v / max;
                let _ = writeln!(
                    s,
                    r#"<rect x="{x:.1}" y="{:.1}" width="{bw:.1}" height="{h:.1}" fill="{}"/><text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
                    TOP + ph - h,
                    colour(name),
                    x + bw / 2.0,
                    TOP + ph - h - 5.0,
                    if *v >= 100.0 {
                        format!("{v:.0}")
                    } else {
                        format!("{v:.2}")
                    }
                );
            }
            None => {
                let _ = writeln!(
                    s,
                    r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">n/a</text>"#,
                    x + bw / 2.0,
                    TOP + ph - 8.0
                );
            }
        }
    }
    s.push_str("</svg>\n");
    s
}
