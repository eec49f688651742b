//! The events tests produce, in the shape the bridge accepts.
//!
//! Invariant: `created_at_ms` is the wall clock at creation, the same clock
//! the demo client measures latency against.

use serde_json::{json, Value};

/// A news event in the seed's shape.
pub fn news(id: &str, products: &[&str], n: u64) -> Value {
    json!({
        "id": id,
        "topic": "News",
        "scopes": [{"type": "Product Codes", "values": products}],
        "payload": {"n": n},
        "created_at_ms": now_ms()
    })
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
