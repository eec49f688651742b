//! A demo client for the local system (`scripts/run-local.sh`): connects to a
//! gateway as a user entitled to product CHLT, subscribes to `News`, produces
//! events to Kafka and prints each message as it arrives with its
//! produce-to-client latency.
//!
//! Environment: DEMO_GATEWAY (ws URL), DEMO_KAFKA (bootstrap), DEMO_TOPIC
//! (Kafka topic), SWITCHYARD_JWT_HS256_SECRET, DEMO_EVENTS (count).

use rdkafka::producer::{FutureProducer, FutureRecord};
use std::time::Duration;
use switchyard_testkit::{news, now_ms, Client};

fn env(k: &str, d: &str) -> String {
    std::env::var(k).unwrap_or_else(|_| d.to_owned())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let gateway = env("DEMO_GATEWAY", "ws://127.0.0.1:8081/v1/ws");
    let kafka = env("DEMO_KAFKA", "127.0.0.1:9092");
    let topic = env("DEMO_TOPIC", "switchyard.events");
    let secret = env("SWITCHYARD_JWT_HS256_SECRET", switchyard_testkit::SECRET);
    let count: u64 = env("DEMO_EVENTS", "5").parse()?;
    let claims = serde_json::json!({"sub": "demo-user", "products": ["CHLT", "Sfc"],
        "exp": now_ms() / 1000 + 3600});
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )?;
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
