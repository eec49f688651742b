//! `switchyard-gateway` entry point: parse configuration, start telemetry,
//! serve until SIGTERM/SIGINT, then drain. `--print-metrics` prints the
//! metric catalog (its section of `deploy/metrics.txt`) and exits.

use std::process::ExitCode;
use std::time::Duration;
use switchyard_gateway::config::GatewayConfig;

const EX_USAGE: u8 = 64;

// jemalloc: tens of thousands of long-lived connections, each with a few
// small buffers, fragment glibc's arenas; measured with
// `loadtest/run.sh idle`, jemalloc keeps about 1 KiB less per connection.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some("--print-metrics") {
        print!("{}", switchyard_gateway::metrics::catalog().render());
        return ExitCode::SUCCESS;
    }
    let _telemetry = switchyard_ops::telemetry::init_tracing("switchyard-gateway");
    // jemalloc returns freed pages to the system only while the arena that
    // freed them keeps allocating, unless background threads purge them:
    // without, a node that went idle after a connection storm (handshakes,
    // catch-ups) kept that peak resident for good.
    if let Err(e) = tikv_jemalloc_ctl::background_thread::write(true) {
        tracing::warn!(error = %e, "cannot start jemalloc's background purging; memory freed after a burst may stay resident");
    }
    let cfg = match switchyard_ops::config::Source::from_env()
        .and_then(|s| GatewayConfig::from_source(&s))
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("switchyard-gateway: configuration error: {e}");
            return ExitCode::from(EX_USAGE);
        }
    };
    let running = match switchyard_gateway::start(cfg).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "gateway failed to start");
            eprintln!("switchyard-gateway: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    switchyard_ops::shutdown::signal().await;
    // Connections close spread over the drain window; a few seconds more
    // for the last close frames to go out.
    let grace = running.node.drain_window() + Duration::from_secs(5);
    let report = running.shutdown(grace).await;
    if report.tasks_left > 0 {
        eprintln!(
            "switchyard-gateway: {} background tasks did not stop in time",
            report.tasks_left
        );
    }
    ExitCode::SUCCESS
}
