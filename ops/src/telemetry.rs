//! Tracing and metrics set-up. Logs go to stderr as text or JSON
//! (`SWITCHYARD_LOG_FORMAT`), filtered by `RUST_LOG`; spans are exported over
//! OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT` is set. Metrics are recorded with
//! the `metrics` crate into a Prometheus recorder rendered by the admin
//! endpoint. The recorder is installed without the exporter's own upkeep
//! task, so each binary runs [`run_upkeep`] (a future it spawns on its own
//! task set): without it, a process that nobody scrapes would keep every
//! histogram sample it ever recorded.
//!
//! Invariant: initialisation happens once per process; a second call is a
//! no-op so tests that start several components in one process do not panic.

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

static METRICS: OnceLock<PrometheusHandle> = OnceLock::new();

/// How often [`run_upkeep`] drains histogram samples into their buckets and
/// refreshes sampled gauges.
pub const UPKEEP_PERIOD: Duration = Duration::from_secs(5);

/// Guard that flushes the OTLP exporter when dropped.
#[derive(Debug, Default)]
pub struct TelemetryGuard {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take() {
            let _ = p.shutdown();
        }
    }
}

/// Installs the tracing subscriber. `service` names the OTLP resource.
pub fn init_tracing(service: &'static str) -> TelemetryGuard {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("SWITCHYARD_LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    let mut guard = TelemetryGuard::default();
    let otel_layer = if std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").is_ok() {
        match opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build()
        {
            Ok(exporter) => {
                let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(
                        opentelemetry_sdk::Resource::builder()
                            .with_service_name(service)
                            .build(),
                    )
                    .build();
                use opentelemetry::trace::TracerProvider as _;
                let tracer = provider.tracer(service);
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

/// Installs the Prometheus recorder (once) and returns its handle.
pub fn init_metrics() -> PrometheusHandle {
    METRICS
        .get_or_init(|| {
            let buckets = [
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0,
            ];
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &buckets)
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Suffix("_size".into()),
                        &[1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0],
                    )
                });
            match builder.and_then(|b| b.install_recorder()) {
                Ok(h) => h,
                Err(e) => {
                    // Another recorder is installed (tests): keep a detached one.
                    tracing::debug!(error = %e, "prometheus recorder already installed");
                    PrometheusBuilder::new().build_recorder().handle()
                }
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
