//! The `switchyard-topology` CLI as its users run it.

#![allow(clippy::unwrap_used)]

use std::process::Command;

fn cli(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard-topology"))
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

fn example() -> String {
    format!("{}/examples/topology.json", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn check_accepts_the_examples_and_names_problems() {
    let (code, text) = cli(&["check", &example()]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("ok: 1 hub(s), 7 channels"), "{text}");
    let yaml = example().replace(".json", ".yaml");
    assert_eq!(cli(&["check", &yaml]).0, 0);

    let dir = std::env::temp_dir().join(format!("sy-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.json");
    std::fs::write(
        &bad,
        r#"{"Hubs":[{"Name":"C","Channels":[{"Name":"N-[ScopeValue]","Topic":"N"}]}]}"#,
    )
    .unwrap();
    let (code, text) = cli(&["check", bad.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        text.contains("bad.json: Hubs[0].Channels[0].Name"),
        "{text}"
    );
    assert!(text.contains("fix:"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn explain_shows_channels_and_receivers() {
    let (code, text) = cli(&[
        "explain",
        &example(),
        "--topic",
        "News",
        "--products",
        "CHLT,Sfc",
    ]);
    assert_eq!(code, 0);
    assert!(
        text.contains("News-CHLT") && text.contains("News-Sfc"),
        "{text}"
    );

    let dir = std::env::temp_dir().join(format!("sy-cli-ev-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ev = dir.join("event.json");
    let users = dir.join("users.json");
    std::fs::write(&ev, r#"{"id":"1","topic":"News","scopes":[{"type":"Product Codes","values":["CHLT","FullAccess"]}]}"#).unwrap();
    std::fs::write(
        &users,
        r#"[{"sub":"a","products":["CHLT","Sfc"]},{"sub":"b","products":["FullAccess"]},{"sub":"c","products":["Sfc"]}]"#,
    )
    .unwrap();
    let (code, text) = cli(&[
        "explain",
        &example(),
        "--event",
        ev.to_str().unwrap(),
        "--users",
        users.to_str().unwrap(),
    ]);
    assert_eq!(code, 0);
    assert!(
        text.contains("a: receives it once, via News-CHLT"),
        "{text}"
    );
    assert!(
        text.contains("b: receives it once, via News-FullAccess"),
        "{text}"
    );
    assert!(text.contains("c: does not receive it"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn explain_covers_features_tenants_and_targeted_events() {
    let (code, text) = cli(&[
        "explain",
        &example(),
        "--topic",
        "Alerts",
        "--products",
        "CHLT",
        "--features",
        "TradeAlerts,Other",
        "--tenant",
        "acme",
    ]);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains(
            "Alerts-TradeAlerts  (key acme/Content/Alerts-TradeAlerts; lookback Minutes(30))"
        ),
        "{text}"
    );
    assert!(!text.contains("Alerts-Other"), "{text}");

    let (code, text) = cli(&["explain", &example(), "--topic", "Nope"]);
    assert_eq!(code, 1);
    assert!(text.contains("not in the topology"), "{text}");

    let dir = std::env::temp_dir().join(format!("sy-cli-t-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ev = dir.join("event.json");
    let users = dir.join("users.json");
    std::fs::write(
        &ev,
        r#"{"id":"2","topic":"Notifications","user_id":"a","tenant":"acme","payload":{}}"#,
    )
    .unwrap();
    std::fs::write(
        &users,
        r#"[{"sub":"a","tenant":"acme"},{"sub":"b","tenant":"acme"},{"sub":"a2","tenant":"globex"}]"#,
    )
    .unwrap();
    let (code, text) = cli(&[
        "explain",
        &example(),
        "--event",
        ev.to_str().unwrap(),
        "--users",
        users.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("a: receives it once, via Notifications"),
        "{text}"
    );
    assert!(
        text.contains("b: does not receive it (the event targets user \"a\")"),
        "{text}"
    );
    assert!(text.contains("a2: does not receive it"), "{text}");

    std::fs::write(&users, r#"{"not":"a list"}"#).unwrap();
    let (code, text) = cli(&[
        "explain",
        &example(),
        "--event",
        ev.to_str().unwrap(),
        "--users",
        users.to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("users.json: expected"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}
