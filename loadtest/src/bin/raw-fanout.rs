//! `raw-fanout`: the raw TCP ceiling (see `switchyard_loadtest::rawfanout`).

use clap::Parser as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = switchyard_loadtest::rawfanout::RawArgs::parse();
    switchyard_loadtest::ensure_loopback(&args.listen)?;
    switchyard_loadtest::rawfanout::run(args).await
}
