//! `switchyard-topology`: tooling for the people who write topologies.
//!
//! - `check FILE`: validates; exit 0 with a summary, or 1 with every problem.
//! - `explain FILE --topic T --products A,B --features X [--tenant T]`: the
//!   channels a user with these entitlements sits in.
//! - `explain FILE --event EVENT.json [--users USERS.json]`: the channels of
//!   an event (the Kafka JSON envelope) and which of the given users
//!   (`[{"sub":..,"products":[..],"features":[..],"tenant":..}]`) receive it.

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use serde::Deserialize;
use std::path::PathBuf;
use std::process::ExitCode;
use switchyard_channels::{Entitlements, ResolvedChannel, Scope, Topology};

#[derive(Debug, Parser)]
#[command(
    name = "switchyard-topology",
    about = "Check and explain Switchyard topology files"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Validate a topology file.
    Check { file: PathBuf },
    /// Show how a user's entitlements or an event resolve to channels.
    Explain {
        file: PathBuf,
        #[arg(long)]
        topic: Option<String>,
        #[arg(long, value_delimiter = ',')]
        products: Vec<String>,
        #[arg(long, value_delimiter = ',')]
        features: Vec<String>,
        #[arg(long)]
        tenant: Option<String>,
        /// An event in the Kafka JSON envelope.
        #[arg(long)]
        event: Option<PathBuf>,
        /// Users to test against the event.
        #[arg(long)]
        users: Option<PathBuf>,
    },
}

#[derive(Debug, Deserialize)]
struct EventIn {
    topic: String,
    #[serde(default)]
    scopes: Vec<Scope>,
    #[serde(default)]
    tenant: Option<String>,
    #[serde(default)]
    user_id: Option<String>,
}

#[derive(Debug, Deserialize)]
struct UserIn {
    sub: String,
    #[serde(default)]
    products: Vec<String>,
    #[serde(default)]
    features: Vec<String>,
    #[serde(default)]
    tenant: Option<String>,
}

fn print_channels(label: &str, chans: &[ResolvedChannel]) {
    if chans.is_empty() {
        println!("{label}: no channel");
        return;
    }
    println!("{label}:");
    for c in chans {
        let mut notes = Vec::new();
        if let Some(lb) = c.lookback {
            notes.push(format!("lookback {lb:?}"));
        }
        if c.ephemeral {
            notes.push("ephemeral".into());
        }
        if let Some(r) = c.retention {
            notes.push(format!("retention {}m", r.as_secs() / 60));
        }
        println!(
            "  {}  (key {}{})",
            c.name,
            c.key,
            if notes.is_empty() {
                String::new()
            } else {
                format!("; {}", notes.join(", "))
            }
        );
    }
}

fn run(cli: Cli) -> anyhow::Result<bool> {
    match cli.cmd {
        Cmd::Check { file } => match Topology::load(&file) {
            Ok(t) => {
                println!(
                    "{}: ok: {} hub(s), {} channels, topics: {}",
                    file.display(),
                    t.hub_count(),
                    t.channel_count(),
                    t.topics().join(", ")
                );
                Ok(true)
            }
            Err(e) => {
                eprintln!("{e}");
                Ok(false)
            }
        },
        Cmd::Explain {
            file,
            topic,
            products,
            features,
            tenant,
            event,
            users,
        } => {
            let t = match Topology::load(&file) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("{e}");
                    return Ok(false);
                }
            };
            if let Some(event) = event {
                let ev: EventIn = serde_json::from_slice(
                    &std::fs::read(&event)
                        .with_context(|| format!("reading {}", event.display()))?,
                )
                .with_context(|| format!("{}: not an event envelope", event.display()))?;
                if !t.has_topic(&ev.topic) {
                    println!("topic {:?} is not in the topology: the bridge sends this event to the DLQ (unknown_topic)", ev.topic);
                    return Ok(false);
                }
                let chans = t.resolve_event(&ev.topic, &ev.scopes, ev.tenant.as_deref());
                print_channels(&format!("event on {}", ev.topic), &chans);
                if let Some(users) = users {
                    let users: Vec<UserIn> = serde_json::from_slice(
                        &std::fs::read(&users)
                            .with_context(|| format!("reading {}", users.display()))?,
                    )
                    .with_context(|| {
                        format!(
                            "{}: expected [{{\"sub\", \"products\", \"features\", \"tenant\"}}]",
                            users.display()
                        )
                    })?;
                    for u in users {
                        let ent = Entitlements {
                            tenant: u.tenant,
                            products: u.products,
                            features: u.features,
                        };
                        let mine = t.resolve_subscriber(&ev.topic, &ent);
                        let shared: Vec<&str> = mine
                            .iter()
                            .filter(|c| chans.iter().any(|e| e.key == c.key))
                            .map(|c| c.name.as_str())
                            .collect();
                        let targeted_away = ev.user_id.as_deref().is_some_and(|id| id != u.sub);
                        if shared.is_empty() {
                            println!("  {}: does not receive it", u.sub);
                        } else if targeted_away {
                            println!(
                                "  {}: does not receive it (the event targets user {:?})",
                                u.sub,
                                ev.user_id.as_deref().unwrap_or("")
                            );
                        } else {
                            println!("  {}: receives it once, via {}", u.sub, shared.join(", "));
                        }
                    }
                }
                return Ok(true);
            }
            let Some(topic) = topic else {
                anyhow::bail!("give --topic (with --products/--features) or --event");
            };
            if !t.has_topic(&topic) {
                println!(
                    "topic {topic:?} is not in the topology; topics: {}",
                    t.topics().join(", ")
                );
                return Ok(false);
            }
            let ent = Entitlements {
                tenant,
                products,
                features,
            };
            print_channels(
                &format!("subscriber to {topic}"),
                &t.resolve_subscriber(&topic, &ent),
            );
            Ok(true)
        }
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("switchyard-topology: {e:#}");
            ExitCode::from(2)
        }
    }
}
