//! Resolution cost with a large topology: 1,000 channel definitions over 100
//! topics (per topic: 4 wildcard product templates, 2 templates with 50
//! specific product codes, 2 feature-name templates, 1 products-then-features
//! template, 1 static channel), users holding 100 entitlements (70 product
//! codes, 30 feature names), events scoped narrowly (2 codes) or widely (100).
//!
//! Run: `cargo bench -p switchyard-channels --bench resolve`.

use criterion::{criterion_group, criterion_main, Criterion};
use serde_json::json;
use std::hint::black_box;
use switchyard_channels::{Entitlements, Scope, Topology, FEATURE_NAMES, PRODUCT_CODES};

const TOPICS: usize = 100;

fn topology_json() -> String {
    let mut channels = Vec::new();
    for i in 0..1000 {
        let topic = format!("Topic{}", i % TOPICS);
        let some_products: Vec<String> = (0..50).map(|p| format!("P{}", p * 3)).collect();
        let ch = match (i / TOPICS) % 10 {
            0..=3 => json!({"Name": format!("C{i}-[ScopeValue]"), "Topic": topic,
                "Filters": [{"Type": PRODUCT_CODES, "Values": ["*"]}],
                "LookBack": {"IsEnabled": true, "TtlPeriodType": "CalendarDay", "TtlValue": 1}}),
            4 | 5 => json!({"Name": format!("C{i}-[ScopeValue]"), "Topic": topic,
                "Filters": [{"Type": PRODUCT_CODES, "Values": some_products}]}),
            6 | 7 => json!({"Name": format!("C{i}-[ScopeValue]"), "Topic": topic,
                "Filters": [{"Type": FEATURE_NAMES, "Values": ["*"]}]}),
            8 => json!({"Name": format!("C{i}-[ScopeValue]"), "Topic": topic,
                "Filters": [{"Type": PRODUCT_CODES, "Values": ["Nobody"]}, {"Type": FEATURE_NAMES, "Values": ["*"]}]}),
            _ => json!({"Name": format!("C{i}"), "Topic": topic, "Filters": []}),
        };
        channels.push(ch);
    }
    json!({"Hubs": [{"Name": "Big", "Type": "PubSub", "Channels": channels}]}).to_string()
}

fn bench(c: &mut Criterion) {
    let text = topology_json();
    let t = Topology::from_json_str(&text, "bench.json").expect("valid");
    assert_eq!(t.channel_count(), 1000);
    let user = Entitlements {
        tenant: Some("acme".into()),
        products: (0..70).map(|p| format!("P{p}")).collect(),
        features: (0..30).map(|f| format!("F{f}")).collect(),
    };
    let narrow = vec![Scope::products(["P3", "P4"])];
    let wide = vec![
        Scope::products((0..70).map(|p| format!("P{p}"))),
        Scope::features((0..30).map(|f| format!("F{f}"))),
    ];
    let topic = "Topic7";
    eprintln!(
        "channels per subscribe: {}, per narrow event: {}, per wide event: {}",
        t.resolve_subscriber(topic, &user).len(),
        t.resolve_event(topic, &narrow, Some("acme")).len(),
        t.resolve_event(topic, &wide, Some("acme")).len()
    );

    c.bench_function("subscribe: 1000 channels, 100 entitlements", |b| {
        b.iter(|| black_box(t.resolve_subscriber(black_box(topic), black_box(&user))))
    });
    c.bench_function("event: 1000 channels, 2 product codes", |b| {
        b.iter(|| black_box(t.resolve_event(black_box(topic), black_box(&narrow), Some("acme"))))
    });
    c.bench_function("event: 1000 channels, 100 scope values", |b| {
        b.iter(|| black_box(t.resolve_event(black_box(topic), black_box(&wide), Some("acme"))))
    });
    c.bench_function("user publish: 1000 channels, 100 entitlements", |b| {
        b.iter(|| black_box(t.resolve_user_publish(black_box(topic), black_box(&user))))
    });
    c.bench_function("unknown topic", |b| {
        b.iter(|| black_box(t.resolve_subscriber(black_box("Nope"), black_box(&user))))
    });
    c.bench_function("load + validate 1000 channels (reload cost)", |b| {
        b.iter(|| black_box(Topology::from_json_str(black_box(&text), "bench.json")))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
