//! The naive baseline: consume the Kafka topic with rdkafka and broadcast
//! every record's value, as a WebSocket text frame, to every connected
//! socket through a tokio `broadcast` channel. No auth, no scopes, no
//! cursors, no replay: what a first version of a push server looks like.
//!
//! Invariant: a connection subscribes to the broadcast channel *before* its
//! WebSocket handshake completes, so a client that sees the handshake finish
//! gets every later event unless it lags more than the channel's capacity
//! (then it loses events, which the load test reports).

use anyhow::Context as _;
use futures::{SinkExt as _, StreamExt as _};
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::{ClientConfig, Message as _};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

/// What the naive broadcaster needs.
#[derive(Debug, Clone, clap::Args)]
pub struct KafkaSource {
    /// Kafka bootstrap servers.
    #[arg(long, env = "KAFKA_BROKERS")]
    pub brokers: String,
    /// Topic to consume.
    #[arg(long, env = "KAFKA_TOPIC")]
    pub topic: String,
    /// Consumer group (a fresh one per run).
    #[arg(long, env = "KAFKA_GROUP")]
    pub group: String,
    /// librdkafka `fetch.wait.max.ms`.
    #[arg(long, default_value_t = 100)]
    pub fetch_wait_ms: u32,
}

impl KafkaSource {
    /// A consumer subscribed to the topic, starting at its end.
    pub fn consumer(&self) -> anyhow::Result<StreamConsumer> {
        let c: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .set("group.id", &self.group)
            .set("auto.offset.reset", "latest")
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", self.fetch_wait_ms.to_string())
            .set("session.timeout.ms", "10000")
            .create()
            .context("creating the Kafka consumer")?;
        c.subscribe(&[&self.topic]).context("subscribing")?;
        Ok(c)
    }
}

#[derive(Debug, Clone, clap::Parser)]
#[command(about = "Naive tokio-tungstenite broadcaster: every Kafka record to every socket")]
pub struct NaiveArgs {
    /// Listen address (loopback).
    #[arg(long, env = "LISTEN", default_value = "127.0.0.1:8090")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub kafka: KafkaSource,
    /// Broadcast channel capacity (events a slow socket may lag behind).
    #[arg(long, default_value_t = 4096)]
    pub capacity: usize,
}

/// Runs until SIGINT/SIGTERM.
pub async fn run(args: NaiveArgs) -> anyhow::Result<()> {
    let (tx, _) = broadcast::channel::<Utf8Bytes>(args.capacity);
    let consumer = args.kafka.consumer()?;
    let lagged = Arc::new(AtomicU64::new(0));
    let feed = {
        let tx = tx.clone();
        tokio::spawn(async move {
            loop {
                match consumer.recv().await {
                    Ok(m) => {
                        let Some(v) = m.payload() else { continue };
                        match Utf8Bytes::try_from(bytes::Bytes::copy_from_slice(v)) {
                            Ok(text) => {
                                let _ = tx.send(text);
                            }
                            Err(_) => eprintln!("skipping a record that is not UTF-8"),
                        }
                    }
                    Err(e) => eprintln!("kafka: {e}"),
                }
            }
        })
    };
    let listener = listen(args.listen)?;
    eprintln!("naive broadcaster on ws://{}", args.listen);
    let accept = async {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let rx = tx.subscribe();
            let lagged = lagged.clone();
            tokio::spawn(async move {
                let _ = stream.set_nodelay(true);
                if let Ok(ws) = tokio_tungstenite::accept_async(stream).await {
                    serve(ws, rx, &lagged).await;
                }
            });
        }
    };
    tokio::select! {
        _ = accept => {}
        _ = shutdown_signal() => {}
    }
    feed.abort();
    eprintln!(
        "naive broadcaster stopping; {} events skipped by lagging sockets",
        lagged.load(Relaxed)
    );
    Ok(())
}

async fn serve(
    ws: tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    mut rx: broadcast::Receiver<Utf8Bytes>,
    lagged: &AtomicU64,
) {
    let (mut sink, mut stream) = ws.split();
    loop {
        tokio::select! {
            m = rx.recv() => match m {
                Ok(text) => {
                    if sink.send(Message::Text(text)).await.is_err() {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(k)) => {
                    lagged.fetch_add(k, Relaxed);
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            f = stream.next() => match f {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            }
        }
    }
}

/// A listener with a deep accept backlog (connection storms), capped by
/// `net.core.somaxconn`.
pub fn listen(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    let sock = tokio::net::TcpSocket::new_v4()?;
    sock.set_reuseaddr(true)?;
    sock.bind(addr).with_context(|| format!("binding {addr}"))?;
    Ok(sock.listen(65_535)?)
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}
