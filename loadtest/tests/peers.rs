//! End-to-end runs of the harness against the Rust peers with a handful of
//! connections: the generator, the probe barrier, the counters and the
//! correctness check must agree with what was produced, and a reconnect
//! storm against a system without cursors must be reported as lossy.
//! Needs the tansu broker (`.ci/run` installs it).

use clap::Parser as _;
use switchyard_loadtest::cli::{Cli, Cmd, RunArgs, ScenarioKind};
use switchyard_loadtest::scenario;

fn args(extra: &[&str]) -> RunArgs {
    let out = std::env::temp_dir().join(format!("loadtest-test-{}", std::process::id()));
    let mut argv = vec!["switchyard-loadtest", "run"];
    argv.extend_from_slice(extra);
    let out = out.to_string_lossy().into_owned();
    argv.extend_from_slice(&["--out-dir", &out, "--no-readme"]);
    match Cli::parse_from(argv).cmd {
        Cmd::Run(a) => *a,
        _ => unreachable!("run"),
    }
}

fn require_tansu() {
    let ok = std::process::Command::new(switchyard_testkit::tansu_bin())
        .arg("--help")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "tansu is not installed: run .ci/run (or cargo install tansu --locked)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_through_the_rust_peers_delivers_everything_once_in_order() {
    require_tansu();
    let a = args(&[
        "fanout",
        "--systems",
        "naive,rawtcp",
        "--connections",
        "40",
        "--rates",
        "20,50",
        "--step-seconds",
        "1",
    ]);
    let report = scenario::run(a, ScenarioKind::Fanout, "test".into())
        .await
        .expect("run");
    assert!(report.ok, "problems: {:?}", report.problems);
    assert_eq!(report.results.len(), 2);
    for r in &report.results {
        assert!(r.error.is_none(), "{}: {:?}", r.system, r.error);
        assert_eq!(r.connected, 40, "{}", r.system);
        assert_eq!(r.steps.len(), 2, "{}: {:?}", r.system, r.notes);
        for st in &r.steps {
            assert_eq!(st.events, (st.offered_rate * 1.0) as u64);
            assert_eq!(st.expected_deliveries, st.events * 40);
            assert_eq!(
                st.deliveries, st.expected_deliveries,
                "{} at {}",
                r.system, st.offered_rate
            );
            assert_eq!((st.lost, st.duplicated), (0, 0));
            assert!(st.p50_ms.is_some_and(|p| p > 0.0));
            assert!(!st.processes.is_empty() && st.server_rss_bytes > 0);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_storm_without_cursors_is_reported_as_loss() {
    require_tansu();
    let a = args(&[
        "reconnect",
        "--systems",
        "naive",
        "--connections",
        "30",
        "--storm-rate",
        "20",
        "--storm-warm-seconds",
        "1",
        "--storm-offline-seconds",
        "1",
        "--storm-after-seconds",
        "1",
    ]);
    let report = scenario::run(a, ScenarioKind::Reconnect, "test".into())
        .await
        .expect("run");
    let r = &report.results[0];
    assert!(r.error.is_none(), "{:?}", r.error);
    assert_eq!(r.caught_up, Some(30), "{:?}", r.notes);
    // Twenty events a second for a second away: about 20 lost per client.
    assert!(r.lost >= 30 * 10, "lost {}", r.lost);
    assert!(!report.ok && report.problems.iter().any(|p| p.contains("naive")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_spread_over_worker_processes_counts_like_one() {
    require_tansu();
    // 40 connections, at most 15 per process: three fleet workers, and two
    // raw fan-out processes (each its own consumer group) at 1 per 15,000
    // would be one, so this checks the generator's spread only.
    let a = args(&[
        "fanout",
        "--systems",
        "rawtcp",
        "--connections",
        "40",
        "--conns-per-process",
        "15",
        "--rates",
        "20",
        "--step-seconds",
        "1",
    ]);
    let report = scenario::run(a, ScenarioKind::Fanout, "test".into())
        .await
        .expect("run");
    assert!(report.ok, "problems: {:?}", report.problems);
    let r = &report.results[0];
    assert!(r.error.is_none(), "{:?}", r.error);
    assert!(
        r.notes.iter().any(|n| n.contains("3 worker processes")),
        "{:?}",
        r.notes
    );
    assert_eq!(r.connected, 40);
    let st = &r.steps[0];
    assert_eq!(st.expected_deliveries, st.events * 40);
    assert_eq!(st.deliveries, st.expected_deliveries);
    assert_eq!((st.lost, st.duplicated), (0, 0));
    assert!(st.p50_ms.is_some_and(|p| p > 0.0));
}
