//! `naive-broadcaster`: the naive peer (see `switchyard_loadtest::broadcaster`).

use clap::Parser as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = switchyard_loadtest::broadcaster::NaiveArgs::parse();
    switchyard_loadtest::ensure_loopback(&args.listen)?;
    switchyard_loadtest::broadcaster::run(args).await
}
