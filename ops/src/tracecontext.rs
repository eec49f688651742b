//! W3C trace context (`traceparent`, `tracestate`) as the binaries carry it:
//! read from Kafka record headers, written into the live event as one
//! compact `traceparent` string, read back by the gateways.
//!
//! Invariant: when tracing is off (no `OTEL_EXPORTER_OTLP_ENDPOINT`,
//! [`enabled`] is false) nothing here is called on a data path, so tracing
//! costs nothing; when it is on, malformed input from the network yields
//! `None` (a new root), never an error that would stop an event.

use opentelemetry::propagation::{Extractor, TextMapPropagator as _};
use opentelemetry::trace::{SpanContext, TraceContextExt as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use std::sync::atomic::{AtomicBool, Ordering};

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported (set once by
/// [`crate::telemetry::init_tracing`]).
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

pub(crate) fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// The tracer spans of the data path are started with (the process's
/// provider; a no-op one when tracing is off).
pub fn tracer() -> opentelemetry::global::BoxedTracer {
    opentelemetry::global::tracer("switchyard")
}

/// Headers as `(name, value)` pairs, e.g. a Kafka record's.
struct Pairs<'a>(&'a [(&'a str, &'a [u8])]);

impl Extractor for Pairs<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| *k).collect()
    }
}

/// The remote span context in `traceparent` / `tracestate` headers, if one
/// is there and valid.
pub fn extract(headers: &[(&str, &[u8])]) -> Option<SpanContext> {
    let cx = TraceContextPropagator::new().extract(&Pairs(headers));
    let sc = cx.span().span_context().clone();
    sc.is_valid().then_some(sc)
}

/// The remote span context of a `traceparent` string (no `tracestate`).
pub fn parse(traceparent: &str) -> Option<SpanContext> {
    if traceparent.is_empty() {
        return None;
    }
    extract(&[("traceparent", traceparent.as_bytes())])
}

/// `sc` as a `traceparent` string (55 bytes), or empty when `sc` is invalid.
pub fn traceparent(sc: &SpanContext) -> String {
    if !sc.is_valid() {
        return String::new();
    }
    format!(
        "00-{}-{}-{:02x}",
        sc.trace_id(),
        sc.span_id(),
        sc.trace_flags().to_u8()
    )
}

/// A parent context for a span whose parent is the remote `sc`.
pub fn remote_parent(sc: SpanContext) -> opentelemetry::Context {
    opentelemetry::Context::new().with_remote_span_context(sc)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn traceparent_roundtrips() {
        let sc = parse(TP).unwrap();
        assert!(sc.is_sampled() && sc.is_remote());
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(traceparent(&sc), TP);
    }

    #[test]
    fn headers_are_matched_without_case_and_tracestate_is_kept() {
        let sc = extract(&[
            ("content-type", b"application/json".as_slice()),
            ("TraceParent", TP.as_bytes()),
            ("tracestate", b"vendor=x".as_slice()),
        ])
        .unwrap();
        assert_eq!(sc.trace_state().get("vendor"), Some("x"));
    }

    #[test]
    fn malformed_input_is_none() {
        for bad in [
            "",
            "garbage",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "zz-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert!(parse(bad).is_none(), "{bad}");
        }
        assert!(extract(&[("traceparent", [0xffu8, 0xfe].as_slice())]).is_none());
        assert_eq!(traceparent(&SpanContext::empty_context()), "");
    }
}
