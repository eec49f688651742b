//! Fuzz target for the topology file, run by `cargo test` on a stable
//! toolchain (see `switchyard_testkit::fuzz`): every entry of
//! `fuzz/corpus/topology/` is replayed, then `SWITCHYARD_FUZZ_CASES`
//! generated texts (random, corpus, mutated corpus), each read as JSON and
//! as YAML. Properties: loading never panics; every error names the file
//! first and says where and how to fix it; a topology that loads survives
//! a round trip (serialized as JSON and as YAML, it loads to the same file).

#![allow(clippy::unwrap_used)]

use std::time::Instant;
use switchyard_channels::topology::TopologyError;
use switchyard_channels::Topology;
use switchyard_testkit::fuzz;

const SOURCE: &str = "fuzz-topology.json";

fn check_error(e: &TopologyError) {
    let text = e.to_string();
    assert!(
        text.starts_with(SOURCE),
        "the error does not name the file: {text}"
    );
    assert!(
        text.contains("fix"),
        "the error does not say how to fix it: {text}"
    );
    if let TopologyError::Invalid { issues, .. } = e {
        assert!(!issues.is_empty(), "an invalid topology without issues");
        for i in issues {
            assert!(
                !i.path.is_empty() && !i.problem.is_empty() && !i.fix.is_empty(),
                "{i:?}"
            );
        }
    }
}

fn check_loaded(t: &Topology) {
    let file = t.file();
    let json = serde_json::to_string(file).unwrap();
    let back = Topology::from_json_str(&json, SOURCE).unwrap();
    assert_eq!(back.file(), file, "JSON round trip");
    let yaml = serde_yaml::to_string(file).unwrap();
    let back = Topology::from_yaml_str(&yaml, SOURCE).unwrap();
    assert_eq!(back.file(), file, "YAML round trip");
}

fn check(text: &str) {
    for result in [
        Topology::from_json_str(text, SOURCE),
        Topology::from_yaml_str(text, SOURCE),
    ] {
        match result {
            Ok(t) => check_loaded(&t),
            Err(e) => check_error(&e),
        }
    }
}

#[test]
fn fuzz_topology() {
    let corpus = fuzz::corpus("topology");
    let started = Instant::now();
    let mut loaded = 0;
    for (name, data) in &corpus {
        let text = String::from_utf8_lossy(data).into_owned();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&text)));
        assert!(r.is_ok(), "corpus entry topology/{name} broke the loader");
        if !name.starts_with("nasty") {
            loaded += 1;
            let ok = Topology::from_json_str(&text, SOURCE).is_ok()
                || Topology::from_yaml_str(&text, SOURCE).is_ok();
            assert!(ok, "the valid corpus entry {name} does not load");
        }
    }
    assert!(loaded >= 2, "the corpus needs valid topologies");
    let mut runner = proptest::test_runner::TestRunner::new(fuzz::config());
    runner
        .run(&fuzz::text_inputs(&corpus), |text| {
            check(&text);
            Ok(())
        })
        .unwrap();
    eprintln!(
        "fuzz topology: {} corpus entries + {} cases in {:?}",
        corpus.len(),
        fuzz::cases(),
        started.elapsed()
    );
}
