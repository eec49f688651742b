//! Tracing and metrics set-up. Logs go to stderr as text or JSON
//! (`SWITCHYARD_LOG_FORMAT`), filtered by `RUST_LOG`; spans are exported over
//! OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT` is set. Metrics are recorded with
//! the `metrics` crate into a Prometheus recorder rendered by the admin
//! endpoint (the data path's trace context is [`crate::tracecontext`]'s). The recorder is installed without the exporter's own upkeep
//! task, so each binary runs [`run_upkeep`] (a future it spawns on its own
//! task set): without it, a process that nobody scrapes would keep every
//! histogram sample it ever recorded.
//!
//! Invariant: initialisation happens once per process; a second call is a
//! no-op so tests that start several components in one process do not panic.

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use opentelemetry_otlp::WithExportConfig as _;
use std::sync::OnceLock;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::fmt::format::{Format, FormatEvent, FormatFields, Json, Writer};
use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

static METRICS: OnceLock<PrometheusHandle> = OnceLock::new();

/// How often [`run_upkeep`] drains histogram samples into their buckets and
/// refreshes sampled gauges.
pub const UPKEEP_PERIOD: Duration = Duration::from_secs(5);

/// Guard that flushes the OTLP exporter: call [`TelemetryGuard::shutdown`]
/// at the end of `main` (dropping it does the same).
#[derive(Debug, Default)]
pub struct TelemetryGuard {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl TelemetryGuard {
    /// Exports the spans still queued and stops the exporter; bounded by
    /// [`FLUSH_TIMEOUT`] so a dead collector cannot hold up an exit.
    pub fn shutdown(&mut self) {
        if let Some(p) = self.provider.take() {
            if let Err(e) = p.shutdown_with_timeout(FLUSH_TIMEOUT) {
                eprintln!("OTLP exporter shutdown: {e}");
            }
        }
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// How long the exit may wait for the last spans to be exported.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// Installs the tracing subscriber. `service` names the OTLP resource unless
/// `OTEL_SERVICE_NAME` is set.
///
/// Spans are exported over OTLP/HTTP (protobuf) to
/// `OTEL_EXPORTER_OTLP_ENDPOINT` (`/v1/traces` is appended), or to
/// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` as given; sampling follows
/// `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG` (default
/// `parentbased_always_on`). Without an endpoint nothing is exported and
/// the data path skips all trace work ([`crate::tracecontext::enabled`]).
/// JSON log lines carry the `trace_id` and `span_id` of the span they are
/// logged in.
pub fn init_tracing(service: &'static str) -> TelemetryGuard {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("SWITCHYARD_LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    let mut guard = TelemetryGuard::default();
    let endpoint = [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|v| std::env::var(v).is_ok_and(|e| !e.trim().is_empty()));
    let otel_layer = if endpoint {
        match opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .build()
        {
            Ok(exporter) => {
                let mut resource = opentelemetry_sdk::Resource::builder();
                if std::env::var("OTEL_SERVICE_NAME").is_err() {
                    resource = resource.with_service_name(service);
                }
                let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(resource.build())
                    .build();
                use opentelemetry::trace::TracerProvider as _;
                let tracer = provider.tracer(service);
                opentelemetry::global::set_tracer_provider(provider.clone());
                opentelemetry::global::set_text_map_propagator(
                    opentelemetry_sdk::propagation::TraceContextPropagator::new(),
                );
                crate::tracecontext::set_enabled(true);
                guard.provider = Some(provider);
                Some(tracing_opentelemetry::layer().with_tracer(tracer))
            }
            Err(e) => {
                eprintln!("OTLP exporter disabled: {e}");
                None
            }
        }
    } else {
        None
    };
    let registry = tracing_subscriber::registry().with(filter).with(otel_layer);
    let res = if json {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .event_format(JsonWithTrace(tracing_subscriber::fmt::format().json()))
                    .with_writer(std::io::stderr),
            )
            .try_init()
    } else {
        registry
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
            .try_init()
    };
    let _ = res;
    guard
}

/// The JSON log format with the current span's `trace_id` and `span_id`
/// (from the OpenTelemetry context the tracing layer activates on span
/// entry) as top-level fields, so a log line leads to its trace.
struct JsonWithTrace(Format<Json>);

impl<S, N> FormatEvent<S, N> for JsonWithTrace
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let mut line = String::new();
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        let ids = trace_ids();
        match (ids, line.strip_prefix('{')) {
            (Some((trace, span)), Some(rest)) => write!(
                writer,
                "{{\"trace_id\":\"{trace}\",\"span_id\":\"{span}\",{rest}"
            ),
            _ => writer.write_str(&line),
        }
    }
}

/// The trace and span id of the active OpenTelemetry context, if any.
fn trace_ids() -> Option<(String, String)> {
    use opentelemetry::trace::TraceContextExt as _;
    let cx = opentelemetry::Context::current();
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid()
        .then(|| (sc.trace_id().to_string(), sc.span_id().to_string()))
}

/// The per-stage latency histograms of the bridge and the gateway: their
/// stages take single milliseconds, so they get [`STAGE_BUCKETS`] instead
/// of the other `_seconds` histograms' buckets (0.5, 1, 2.5, 5, 10, 25 ms
/// …), which are too coarse to tell 2 ms from 4 ms.
pub const STAGE_HISTOGRAMS: [&str; 2] = [
    "switchyard_bridge_stage_seconds",
    "switchyard_gateway_stage_seconds",
];

/// Bucket bounds of [`STAGE_HISTOGRAMS`]: every millisecond up to 6 ms,
/// then steps of about a third; a superset of the default bounds, so
/// queries written against those (alerts) read the same.
pub const STAGE_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.0025, 0.003, 0.004, 0.005, 0.006, 0.0075, 0.01, 0.0125, 0.015, 0.02,
    0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The recorder's builder with every histogram's buckets.
fn builder() -> Result<PrometheusBuilder, metrics_exporter_prometheus::BuildError> {
    let buckets = [
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    ];
    let mut b = PrometheusBuilder::new();
    // `Full` matchers are consulted before `Suffix` ones.
    for name in STAGE_HISTOGRAMS {
        b = b.set_buckets_for_metric(Matcher::Full(name.into()), STAGE_BUCKETS)?;
    }
    b.set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &buckets)?
        .set_buckets_for_metric(
            Matcher::Suffix("_size".into()),
            &[1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0],
        )
}

/// Installs the Prometheus recorder (once) and returns its handle.
pub fn init_metrics() -> PrometheusHandle {
    METRICS
        .get_or_init(|| match builder().and_then(|b| b.install_recorder()) {
            Ok(h) => h,
            Err(e) => {
                // Another recorder is installed (tests): keep a detached one.
                tracing::debug!(error = %e, "prometheus recorder already installed");
                PrometheusBuilder::new().build_recorder().handle()
            }
        })
        .clone()
}

/// Runs the recorder's upkeep every `every` until `cancel` fires: histogram
/// samples are drained into their buckets (memory stays bounded whether or
/// not anyone scrapes `/metrics`), and `sample` refreshes the gauges that
/// are read from state rather than updated where things happen (pool
/// usage). The caller owns the task (spawn it on the binary's task set).
pub async fn run_upkeep(
    handle: PrometheusHandle,
    every: Duration,
    cancel: CancellationToken,
    mut sample: impl FnMut() + Send,
) {
    loop {
        sample();
        handle.run_upkeep();
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// Sets [`crate::catalog::BUILD_INFO`] to 1 for this build's `version`.
pub fn record_build_info(version: &'static str) {
    metrics::gauge!(crate::catalog::BUILD_INFO.name, "version" => version).set(1.0);
}

#[cfg(test)]
mod tests {
    use super::*;
    use metrics_exporter_prometheus::PrometheusBuilder;

    /// The stage histograms get millisecond buckets; other `_seconds`
    /// histograms keep theirs.
    #[test]
    fn stage_histograms_have_millisecond_buckets() {
        let recorder = builder().unwrap().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            metrics::histogram!(STAGE_HISTOGRAMS[1], "stage" => "write").record(0.003);
            metrics::histogram!("switchyard_test_seconds").record(0.003);
        });
        let text = handle.render();
        assert!(
            text.contains(r#"switchyard_gateway_stage_seconds_bucket{stage="write",le="0.003"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"switchyard_gateway_stage_seconds_bucket{stage="write",le="0.002"} 0"#),
            "{text}"
        );
        assert!(
            !text.contains(r#"switchyard_test_seconds_bucket{le="0.003"}"#),
            "{text}"
        );
        assert!(
            text.contains(r#"switchyard_test_seconds_bucket{le="0.005"} 1"#),
            "{text}"
        );
    }

    /// A JSON log line logged inside a span carries that span's trace and
    /// span ids; one logged outside any span carries none.
    #[test]
    fn json_logs_carry_the_trace_ids_of_their_span() {
        use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
        use std::sync::{Arc, Mutex};
        use tracing_opentelemetry::OpenTelemetrySpanExt as _;

        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let writer = buf.clone();
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")))
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .event_format(JsonWithTrace(tracing_subscriber::fmt::format().json()))
                    .with_writer(move || writer.clone()),
            );
        let (trace, span_id) = tracing::subscriber::with_default(subscriber, || {
            tracing::info!("outside");
            let span = tracing::info_span!("work");
            let _entered = span.enter();
            tracing::info!(n = 1, "inside");
            let cx = span.context();
            let sc = cx.span().span_context().clone();
            (sc.trace_id().to_string(), sc.span_id().to_string())
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(lines[0].get("trace_id").is_none(), "{text}");
        assert_eq!(lines[1]["trace_id"], trace.as_str(), "{text}");
        assert_eq!(lines[1]["span_id"], span_id.as_str(), "{text}");
        assert_eq!(lines[1]["fields"]["message"], "inside");
        assert_eq!(trace.len(), 32);
    }

    /// Without upkeep (and without scrapes) samples pile up in the
    /// histogram's buffer; one upkeep pass moves them into buckets.
    #[tokio::test]
    async fn upkeep_drains_histogram_samples_and_stops_on_cancel() {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &[1.0])
            .unwrap()
            .build_recorder();
        let handle = recorder.handle();
        let h = metrics::with_local_recorder(&recorder, || {
            metrics::histogram!("switchyard_test_upkeep_seconds")
        });
        for _ in 0..1000 {
            h.record(0.5);
        }
        let cancel = CancellationToken::new();
        let mut samples = 0;
        let task = run_upkeep(
            handle.clone(),
            Duration::from_millis(10),
            cancel.clone(),
            || samples += 1,
        );
        cancel.cancel();
        task.await;
        assert_eq!(samples, 1);
        // Upkeep already drained the samples: the bucket holds them.
        assert!(handle
            .render()
            .contains("switchyard_test_upkeep_seconds_bucket{le=\"1\"} 1000"));
    }
}
