//! `switchyard-stack`: a whole Switchyard deployment for tests written in
//! other languages (the TypeScript SDK's end-to-end and browser tests). It
//! starts the same [`Stack`] the Rust integration tests use — a tansu broker
//! on a free port, a fresh PostgreSQL database, a unique Redis prefix, the
//! bridge and `--gateways` gateway nodes — prints one JSON line describing
//! it, then obeys one JSON command per line on standard input and answers
//! each with one JSON line:
//!
//! ```text
//! {"cmd":"produce","events":[{..Kafka JSON envelope..}]}  -> {"ok":true}
//! {"cmd":"wait_stored","count":12}                          -> {"ok":true,"stored":12}
//! {"cmd":"term","gateway":0}    SIGTERM (drain); returns at once
//! {"cmd":"wait_exit","gateway":0}  -> {"ok":true,"exit":0}
//! {"cmd":"kill","gateway":0}    SIGKILL
//! {"cmd":"start_gateway"}       -> {"ok":true,"gateway":{..}}
//! ```
//!
//! Invariant: the stack lives exactly as long as standard input is open (or
//! until SIGTERM/SIGINT); then every process is killed and the database
//! dropped, so a test runner that dies leaves nothing behind.

use anyhow::Context as _;
use clap::Parser;
use serde_json::{json, Value};
use std::time::Duration;
use switchyard_testkit::{require_servers, seed_topology, Stack, StackOptions, SECRET};
use tokio::io::{AsyncBufReadExt as _, BufReader};

#[derive(Debug, Parser)]
#[command(
    name = "switchyard-stack",
    about = "Run a throw-away Switchyard stack, driven over stdin"
)]
struct Cli {
    /// Gateway nodes to start.
    #[arg(long, default_value_t = 2)]
    gateways: usize,
    /// Topology file (default: the seed topology the Rust tests use).
    #[arg(long)]
    topology: Option<std::path::PathBuf>,
    /// Extra environment for every process, `KEY=value` (repeatable).
    #[arg(long = "env", value_parser = parse_kv)]
    env: Vec<(String, String)>,
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("expected KEY=value, got {s:?}"))
}

fn describe(stack: &Stack, i: usize) -> Value {
    let g = stack.gateway(i);
    json!({
        "index": i,
        "url": format!("http://{}", g.listen),
        "ws": g.ws_url(),
        "admin": format!("http://{}", g.admin),
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    require_servers();
    let topology = match &cli.topology {
        Some(p) => serde_json::from_slice(
            &std::fs::read(p).with_context(|| format!("reading {}", p.display()))?,
        )
        .with_context(|| format!("parsing {}", p.display()))?,
        None => seed_topology(),
    };
    let mut stack = Stack::start(StackOptions {
        gateways: cli.gateways,
        topology,
        env: cli.env,
        ..StackOptions::default()
    })
    .await?;
    let gateways: Vec<Value> = (0..stack.gateways.len())
        .map(|i| describe(&stack, i))
        .collect();
    println!(
        "{}",
        json!({
            "ready": true,
            "gateways": gateways,
            "kafka": stack.broker.addr,
            "events_topic": stack.events_topic,
            "secret": SECRET,
            "dir": stack.dir,
        })
    );

    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        let line = tokio::select! {
            l = lines.next_line() => l?,
            _ = term.recv() => None,
            _ = tokio::signal::ctrl_c() => None,
        };
        let Some(line) = line else { break };
        if line.trim().is_empty() {
            continue;
        }
        let reply = match serde_json::from_str::<Value>(&line) {
            Ok(cmd) => match run(&mut stack, &cmd).await {
                Ok(mut v) => {
                    v["ok"] = json!(true);
                    v
                }
                Err(e) => json!({"ok": false, "error": format!("{e:#}")}),
            },
            Err(e) => json!({"ok": false, "error": format!("not JSON: {e}")}),
        };
        println!("{reply}");
    }
    drop(stack);
    Ok(())
}

async fn run(stack: &mut Stack, cmd: &Value) -> anyhow::Result<Value> {
    let gateway = || -> anyhow::Result<usize> {
        let i = cmd["gateway"].as_u64().context("missing \"gateway\"")? as usize;
        anyhow::ensure!(i < stack.gateways.len(), "no gateway {i}");
        Ok(i)
    };
    match cmd["cmd"].as_str().unwrap_or("") {
        "produce" => {
            let events = cmd["events"].as_array().context("missing \"events\"")?;
            stack.produce(events).await?;
            Ok(json!({}))
        }
        "wait_stored" => {
            let want = cmd["count"].as_i64().context("missing \"count\"")?;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            loop {
                let stored = stack.stored_events().await?;
                if stored >= want {
                    return Ok(json!({"stored": stored}));
                }
                anyhow::ensure!(
                    tokio::time::Instant::now() < deadline,
                    "only {stored} of {want} events stored after 20 s"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        "term" => {
            // Returns at once: the node drains while the test goes on.
            let i = gateway()?;
            stack.gateways[i].proc.term();
            Ok(json!({}))
        }
        "wait_exit" => {
            let i = gateway()?;
            let node = &mut stack.gateways[i];
            let code = node.proc.wait_exit(Duration::from_secs(30));
            Ok(json!({"exit": code}))
        }
        "kill" => {
            let i = gateway()?;
            stack.gateways[i].proc.kill9();
            Ok(json!({}))
        }
        "start_gateway" => {
            let i = stack.start_gateway()?;
            stack.wait_ready()?;
            Ok(json!({"gateway": describe(stack, i)}))
        }
        other => anyhow::bail!("unknown command {other:?}"),
    }
}
