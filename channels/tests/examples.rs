//! The shipped example topologies: both formats say the same thing, and the
//! seed case study's scenario resolves as the case study describes.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use switchyard_channels::{Entitlements, LookBack, ResolvedChannel, Scope, Topology};

fn example(ext: &str) -> Topology {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("examples/topology.{ext}"));
    Topology::load(&p).unwrap()
}

fn user(products: &[&str], features: &[&str]) -> Entitlements {
    Entitlements {
        tenant: None,
        products: products.iter().map(|s| s.to_string()).collect(),
        features: features.iter().map(|s| s.to_string()).collect(),
    }
}

fn names(v: &[ResolvedChannel]) -> Vec<&str> {
    v.iter().map(|c| c.name.as_str()).collect()
}

fn receives(t: &Topology, topic: &str, u: &Entitlements, scopes: &[Scope]) -> bool {
    let mine = t.resolve_subscriber(topic, u);
    let ev = t.resolve_event(topic, scopes, u.tenant.as_deref());
    mine.iter().any(|m| ev.iter().any(|e| e.key == m.key))
}

#[test]
fn json_and_yaml_examples_are_the_same_topology() {
    assert_eq!(example("json").file(), example("yaml").file());
}

#[test]
fn the_seed_scenario() {
    let t = example("json");
    let a = user(&["CHLT", "Sfc"], &[]);
    let b = user(&["FullAccess"], &[]);
    let c = user(&["Sfc"], &[]);
    assert_eq!(
        names(&t.resolve_subscriber("News", &a)),
        ["News-CHLT", "News-Sfc"]
    );
    assert_eq!(
        names(&t.resolve_subscriber("News", &b)),
        ["News-FullAccess"]
    );
    assert_eq!(names(&t.resolve_subscriber("News", &c)), ["News-Sfc"]);

    let cases: [(&[&str], [bool; 3]); 4] = [
        (&["CHLT", "FullAccess"], [true, true, false]),
        (&["Sfc"], [true, false, true]),
        (&["CHLT", "Sfc"], [true, false, true]),
        (&["Other"], [false, false, false]),
    ];
    for (scope, expected) in cases {
        let scopes = [Scope::products(scope.iter().copied())];
        let got = [&a, &b, &c].map(|u| receives(&t, "News", u, &scopes));
        assert_eq!(got, expected, "event scoped {scope:?}");
    }
    // A, in both News-CHLT and News-Sfc, gets an event scoped to both once:
    // the gateway deduplicates by event id; the channels it shares are two.
    let ev = t.resolve_event("News", &[Scope::products(["CHLT", "Sfc"])], None);
    assert_eq!(names(&ev), ["News-CHLT", "News-Sfc"]);
    assert_eq!(ev[0].lookback, Some(LookBack::CalendarDay(1)));
}

#[test]
fn the_extensions_of_the_example() {
    let t = example("yaml");
    // Static channel shared by everyone.
    assert_eq!(
        names(&t.resolve_subscriber("SiteVisits", &user(&[], &[]))),
        ["Site Visit Count"]
    );
    // Chat: per-product rooms through the AllProducts collection; publishable.
    let u = user(&["CHLT"], &[]);
    let chat = t.resolve_user_publish("Chat", &u);
    assert_eq!(names(&chat), ["Chat-CHLT"]);
    assert_eq!(
        chat[0].retention,
        Some(std::time::Duration::from_secs(1440 * 60))
    );
    assert!(t.resolve_user_publish("News", &u).is_empty());
    assert!(t.resolve_user_publish("Notifications", &u).is_empty());
    // Alerts: feature names, sliding window.
    let alerts = t.resolve_subscriber("Alerts", &user(&["CHLT"], &["TradeAlerts", "Beta"]));
    assert_eq!(names(&alerts), ["Alerts-TradeAlerts"]);
    assert_eq!(alerts[0].lookback, Some(LookBack::Minutes(30)));
    // Scanner: products first, the Scanner feature as fall-through.
    assert_eq!(
        names(&t.resolve_subscriber("Scanner", &user(&["CHLT", "Sfc"], &["Scanner"]))),
        ["Scanner-CHLT"]
    );
    assert_eq!(
        names(&t.resolve_subscriber("Scanner", &user(&["Sfc"], &["Scanner"]))),
        ["Scanner-Scanner"]
    );
    assert!(t
        .resolve_subscriber("Scanner", &user(&["Sfc"], &[]))
        .is_empty());
    // Presence: ephemeral.
    let p = t.resolve_event("Presence", &[], None);
    assert!(p[0].ephemeral && p[0].lookback.is_none());
    assert_eq!(
        t.topic_lookback("Notifications"),
        Some(LookBack::CalendarDay(7))
    );
}
