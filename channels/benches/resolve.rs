//! Resolution cost with a large topology: 1,000 channels (500 topics with
//! wildcard product channels, 250 with specific product lists, 250 static),
//! users holding 100 products, events scoped to 100 products.
//! Run: `cargo bench -p switchyard-channels --bench resolve`.

use criterion::{criterion_group, criterion_main, Criterion};
use serde_json::json;
use std::hint::black_box;
use switchyard_channels::{Entitlements, Scope, Topology, PRODUCT_CODES};

fn topology() -> Topology {
    let mut channels = Vec::new();
    for i in 0..1000 {
        let topic = format!("Topic{}", i % 100);
        let ch = match i % 4 {
            0 | 1 => json!({"Name": format!("C{i}-[ScopeValue]"), "Topic": topic,
                "Filters": [{"Type": "Product Codes", "Values": ["*"]}]}),
            2 => json!({"Name": format!("C{i}-[ScopeValue]"), "Topic": topic,
                "Filters": [{"Type": "Product Codes", "Values": (0..50).map(|p| format!("P{}", p * 3)).collect::<Vec<_>>()}]}),
            _ => json!({"Name": format!("C{i}"), "Topic": topic, "Filters": []}),
        };
        channels.push(ch);
    }
    let file = json!({"Hubs": [{"Name": "Big", "Channels": channels}]});
    Topology::from_json_str(&file.to_string(), "bench.json").expect("valid")
}

fn bench(c: &mut Criterion) {
    let t = topology();
    let products: Vec<String> = (0..100).map(|p| format!("P{p}")).collect();
    let user = Entitlements {
        tenant: None,
        products: products.clone(),
        features: vec![],
    };
    let scopes = vec![Scope {
        scope_type: PRODUCT_CODES.into(),
        values: products,
    }];
    c.bench_function("resolve_subscriber (1000 channels, 100 products)", |b| {
        b.iter(|| black_box(t.resolve_subscriber(black_box("Topic7"), black_box(&user))))
    });
    c.bench_function("resolve_event (1000 channels, 100 products)", |b| {
        b.iter(|| black_box(t.resolve_event(black_box("Topic7"), black_box(&scopes), None)))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
