//! The ceiling: the same Kafka records written to every accepted TCP socket
//! as length-prefixed frames (4-byte big-endian length, then the record
//! value), with no WebSocket framing, no JSON and no per-client state. Each
//! socket's writer drains everything queued before writing, so one syscall
//! carries as many frames as are waiting: what the machine can push.
//!
//! Invariant: a frame is built once (`Bytes`) and shared by all sockets; a
//! socket subscribes before it is served, as in [`crate::broadcaster`], and
//! its first frame is an empty one that tells the client it was accepted.

use crate::broadcaster::{shutdown_signal, KafkaSource};
use bytes::{BufMut as _, Bytes, BytesMut};
use rdkafka::Message as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::broadcast;

#[derive(Debug, Clone, clap::Parser)]
#[command(about = "Raw TCP fan-out: every Kafka record, length-prefixed, to every socket")]
pub struct RawArgs {
    /// Listen address (loopback).
    #[arg(long, env = "LISTEN", default_value = "127.0.0.1:8091")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub kafka: KafkaSource,
    /// Broadcast channel capacity.
    #[arg(long, default_value_t = 4096)]
    pub capacity: usize,
}

/// Most bytes gathered into one write.
const MAX_BATCH: usize = 64 * 1024;

/// Runs until SIGINT/SIGTERM.
pub async fn run(args: RawArgs) -> anyhow::Result<()> {
    let (tx, _) = broadcast::channel::<Bytes>(args.capacity);
    let consumer = args.kafka.consumer()?;
    let lagged = Arc::new(AtomicU64::new(0));
    let feed = {
        let tx = tx.clone();
        tokio::spawn(async move {
            loop {
                match consumer.recv().await {
                    Ok(m) => {
                        let Some(v) = m.payload() else { continue };
                        let mut f = BytesMut::with_capacity(4 + v.len());
                        f.put_u32(v.len() as u32);
                        f.put_slice(v);
                        let _ = tx.send(f.freeze());
                    }
                    Err(e) => eprintln!("kafka: {e}"),
                }
            }
        })
    };
    let listener = crate::broadcaster::listen(args.listen)?;
    eprintln!("raw fan-out on tcp://{}", args.listen);
    let accept = async {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let rx = tx.subscribe();
            let lagged = lagged.clone();
            tokio::spawn(async move {
                let _ = stream.set_nodelay(true);
                serve(stream, rx, &lagged).await;
            });
        }
    };
    tokio::select! {
        _ = accept => {}
        _ = shutdown_signal() => {}
    }
    feed.abort();
    eprintln!(
        "raw fan-out stopping; {} frames skipped by lagging sockets",
        lagged.load(Relaxed)
    );
    Ok(())
}

async fn serve(
    stream: tokio::net::TcpStream,
    mut rx: broadcast::Receiver<Bytes>,
    lagged: &AtomicU64,
) {
    let (mut rd, mut wr) = stream.into_split();
    // An empty frame says "accepted and subscribed": a TCP connect alone
    // completes in the kernel, before the server has accepted anything.
    if wr.write_all(&[0, 0, 0, 0]).await.is_err() {
        return;
    }
    let mut batch = BytesMut::new();
    let mut sink = [0u8; 64];
    loop {
        tokio::select! {
            m = rx.recv() => {
                match m {
                    Ok(f) => batch.extend_from_slice(&f),
                    Err(broadcast::error::RecvError::Lagged(k)) => {
                        lagged.fetch_add(k, Relaxed);
                        continue;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
                while batch.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(f) => batch.extend_from_slice(&f),
                        Err(broadcast::error::TryRecvError::Lagged(k)) => {
                            lagged.fetch_add(k, Relaxed);
                        }
                        Err(_) => break,
                    }
                }
                if wr.write_all(&batch).await.is_err() {
                    return;
                }
                batch.clear();
            }
            r = rd.read(&mut sink) => {
                if !matches!(r, Ok(n) if n > 0) {
                    return;
                }
            }
        }
    }
}
