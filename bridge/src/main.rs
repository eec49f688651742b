//! `switchyard-bridge` entry point: parse configuration, start telemetry, run
//! until SIGTERM/SIGINT, drain with a timeout. `--print-metrics` prints the
//! metric catalog (its section of `deploy/metrics.txt`) and exits.

use std::process::ExitCode;
use std::time::Duration;
use switchyard_bridge::config::BridgeConfig;
use tokio_util::sync::CancellationToken;

const EX_USAGE: u8 = 64;

#[tokio::main]
async fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some("--print-metrics") {
        print!("{}", switchyard_bridge::metrics::catalog().render());
        return ExitCode::SUCCESS;
    }
    let _telemetry = switchyard_ops::telemetry::init_tracing("switchyard-bridge");
    let cfg = match switchyard_ops::config::Source::from_env()
        .and_then(|s| BridgeConfig::from_source(&s))
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("switchyard-bridge: configuration error: {e}");
            return ExitCode::from(EX_USAGE);
        }
    };
    let cancel = CancellationToken::new();
    let mut run = tokio::spawn(switchyard_bridge::run(cfg, cancel.clone()));
    tokio::select! {
        r = &mut run => return exit(r),
        _ = switchyard_ops::shutdown::signal() => cancel.cancel(),
    }
    match tokio::time::timeout(Duration::from_secs(30), run).await {
        Ok(r) => exit(r),
        Err(_) => {
            tracing::error!("drain timed out after 30s; exiting");
            ExitCode::FAILURE
        }
    }
}

fn exit(r: Result<anyhow::Result<()>, tokio::task::JoinError>) -> ExitCode {
    match r {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            tracing::error!(error = format!("{e:#}"), "bridge failed");
            eprintln!("switchyard-bridge: {e:#}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("switchyard-bridge: task failed: {e}");
            ExitCode::FAILURE
        }
    }
}
