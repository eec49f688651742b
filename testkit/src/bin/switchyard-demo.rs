//! Developer tools for a local Switchyard (`scripts/run-local.sh`):
//!
//! - `switchyard-demo` (or `switchyard-demo check`): connects to a gateway
//!   as a user entitled to product CHLT, subscribes to `News`, produces
//!   events to Kafka and prints each message as it arrives with its
//!   produce-to-client latency.
//! - `switchyard-demo token --sub alice --products CHLT,Sfc --ttl 3600`:
//!   prints an HS256 token for the gateway's `SWITCHYARD_JWT_HS256_SECRET`
//!   (or `--secret-file`), with products, features, tenant, issuer and
//!   audience as asked.
//! - `switchyard-demo produce --every-ms 2000`: produces demo `News` events,
//!   each scoped to one product of a small catalogue (and `FullAccess`), until
//!   stopped or `--count` is reached; the live demo page shows them.
//!
//! Environment: DEMO_GATEWAY (ws URL), DEMO_KAFKA (bootstrap), DEMO_TOPIC
//! (Kafka topic), SWITCHYARD_JWT_HS256_SECRET, DEMO_EVENTS (count).
//!
//! Invariant: the secret is read from the environment or a file, never from
//! the command line (where `ps` would show it), and only tokens leave.

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::path::PathBuf;
use std::time::Duration;
use switchyard_testkit::{mint_hs256, news, now_ms, Client};

fn env(k: &str, d: &str) -> String {
    std::env::var(k).unwrap_or_else(|_| d.to_owned())
}

#[derive(Debug, Parser)]
#[command(
    name = "switchyard-demo",
    about = "Demo client, token minting and demo events for a local Switchyard"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Produce a few events and watch them arrive over WebSocket (default).
    Check,
    /// Print a signed HS256 token for a developer or a demo user.
    Token {
        /// The user id (`sub`).
        #[arg(long)]
        sub: String,
        /// Product codes (scope type "Product Codes"), comma-separated.
        #[arg(long, value_delimiter = ',')]
        products: Vec<String>,
        /// Feature names (scope type "Feature Names"), comma-separated.
        #[arg(long, value_delimiter = ',')]
        features: Vec<String>,
        #[arg(long)]
        tenant: Option<String>,
        /// Lifetime in seconds; negative mints an already expired token.
        #[arg(long, default_value_t = 3600, allow_hyphen_values = true)]
        ttl: i64,
        /// `iss`, for gateways with SWITCHYARD_JWT_ISSUER.
        #[arg(long)]
        iss: Option<String>,
        /// `aud`, for gateways with SWITCHYARD_JWT_AUDIENCE.
        #[arg(long)]
        aud: Option<String>,
        /// Read the HS256 secret from this file instead of
        /// SWITCHYARD_JWT_HS256_SECRET.
        #[arg(long)]
        secret_file: Option<PathBuf>,
    },
    /// Produce demo News events to Kafka until stopped.
    Produce {
        /// Kafka bootstrap servers.
        #[arg(long, env = "DEMO_KAFKA", default_value = "127.0.0.1:9092")]
        brokers: String,
        /// Kafka topic the bridge consumes.
        #[arg(long, env = "DEMO_TOPIC", default_value = "switchyard.events")]
        topic: String,
        /// Pause between two events, in milliseconds.
        #[arg(long, default_value_t = 2000)]
        every_ms: u64,
        /// Stop after this many events (default: never).
        #[arg(long)]
        count: Option<u64>,
        /// Products the events are scoped to, one per event in turn.
        #[arg(long, value_delimiter = ',', default_value = "CHLT,Sfc,Mkt")]
        products: Vec<String>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd.unwrap_or(Cmd::Check) {
        Cmd::Check => check().await,
        Cmd::Token {
            sub,
            products,
            features,
            tenant,
            ttl,
            iss,
            aud,
            secret_file,
        } => {
            let secret = match secret_file {
                Some(f) => std::fs::read_to_string(&f)
                    .with_context(|| format!("reading --secret-file {}", f.display()))?
                    .trim()
                    .to_owned(),
                None => std::env::var("SWITCHYARD_JWT_HS256_SECRET").context(
                    "set SWITCHYARD_JWT_HS256_SECRET to the gateway's secret, or pass --secret-file",
                )?,
            };
            if secret.len() < 32 {
                bail!("the HS256 secret must be at least 32 bytes, as the gateway requires");
            }
            let mut claims = serde_json::json!({"sub": sub});
            if !products.is_empty() {
                claims["products"] = serde_json::json!(products);
            }
            if !features.is_empty() {
                claims["features"] = serde_json::json!(features);
            }
            for (k, v) in [("tenant", tenant), ("iss", iss), ("aud", aud)] {
                if let Some(v) = v {
                    claims[k] = serde_json::json!(v);
                }
            }
            println!("{}", mint_hs256(claims, ttl, &secret)?);
            Ok(())
        }
        Cmd::Produce {
            brokers,
            topic,
            every_ms,
            count,
            products,
        } => produce(&brokers, &topic, every_ms, count, &products).await,
    }
}

const HEADLINES: &[&str] = &[
    "rates unchanged",
    "guidance raised",
    "new listing",
    "dividend declared",
    "index rebalanced",
    "outage resolved",
];

async fn produce(
    brokers: &str,
    topic: &str,
    every_ms: u64,
    count: Option<u64>,
    products: &[String],
) -> anyhow::Result<()> {
    if products.is_empty() {
        bail!("--products needs at least one product");
    }
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("message.timeout.ms", "10000")
        .create()?;
    let run = uuid::Uuid::new_v4().simple().to_string();
    let mut n = 0u64;
    loop {
        n += 1;
        if count.is_some_and(|c| n > c) {
            return Ok(());
        }
        let product = &products[(n as usize - 1) % products.len()];
        let headline = HEADLINES[(n as usize - 1) % HEADLINES.len()];
        let event = serde_json::json!({
            "id": format!("demo-{}-{n}", &run[..8]),
            "topic": "News",
            "scopes": [{"type": "Product Codes", "values": [product, "FullAccess"]}],
            "payload": {"n": n, "product": product, "headline": format!("{product}: {headline}")},
            "created_at_ms": now_ms(),
        });
        let sent = producer
            .send(
                FutureRecord::to(topic)
                    .key("News")
                    .payload(&event.to_string()),
                Duration::from_secs(10),
            )
            .await;
        match sent {
            Ok(_) => println!("produced News #{n} for {product}"),
            // Keep going: the broker may be restarting in a demo.
            Err((e, _)) => eprintln!("produce of News #{n} failed: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(every_ms)).await;
    }
}

async fn check() -> anyhow::Result<()> {
    let gateway = env("DEMO_GATEWAY", "ws://127.0.0.1:8081/v1/ws");
    let kafka = env("DEMO_KAFKA", "127.0.0.1:9092");
    let topic = env("DEMO_TOPIC", "switchyard.events");
    let secret = env("SWITCHYARD_JWT_HS256_SECRET", switchyard_testkit::SECRET);
    let count: u64 = env("DEMO_EVENTS", "5").parse()?;
    let claims = serde_json::json!({"sub": "demo-user", "products": ["CHLT", "Sfc"]});
    let token = mint_hs256(claims, 3600, &secret)?;
    let mut client = Client::connect(&gateway, &token).await?;
    let r = client.subscribe("News", None).await?;
    println!("subscribed to News on {gateway}: {r}");
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &kafka)
        .create()?;
    let run = uuid::Uuid::new_v4().simple().to_string();
    for n in 1..=count {
        let ev = news(&format!("demo-{run}-{n}"), &["CHLT"], n);
        producer
            .send(
                FutureRecord::to(&topic)
                    .key("News")
                    .payload(&ev.to_string()),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)?;
        // Earlier runs' messages arrive first (News replays today's
        // lookback window); report them and wait for ours.
        let wanted = format!("demo-{run}-{n}");
        loop {
            let m = client.messages(1, Duration::from_secs(10)).await?;
            let id = m[0]["id"].as_str().unwrap_or("");
            if id != wanted {
                println!("replayed from the lookback window: {id}");
                continue;
            }
            let lat = now_ms() - m[0]["created_at_ms"].as_i64().unwrap_or(0);
            println!("received {id} payload={} latency={lat}ms", m[0]["payload"]);
            break;
        }
    }
    println!("{count} events flowed Kafka -> bridge -> PostgreSQL -> Redis -> gateway -> client");
    client.close().await;
    Ok(())
}
