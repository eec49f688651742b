//! A connection's reader task: reads WebSocket frames, reassembles
//! fragmented messages, and hands whole messages to the session loop. The
//! pongs and close replies it owes the peer go to the writer's queue.
//!
//! Invariants:
//! - A reassembled message never exceeds the frame limit
//!   (`SWITCHYARD_MAX_FRAME_BYTES`): single frames are limited by
//!   fastwebsockets, the sum of a message's fragments here (close 1009).
//! - Pings are answered only within the ping rate limit
//!   (`SWITCHYARD_PING_RATE`/`SWITCHYARD_PING_BURST`); a client that pings
//!   faster is closed with 1008, so a ping flood costs the node at most that
//!   many pongs.
//! - `read_frame` is not cancel-safe; racing it against the connection
//!   token is safe only because the reader is never used again once the
//!   connection is cancelled.

use super::RateLimit;
use crate::metrics as m;
use crate::outbound::{Outbound, OutboundTx};
use fastwebsockets::{Frame, OpCode, WebSocketError, WebSocketRead};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncRead;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// What the reader hands the session loop.
#[derive(Debug)]
pub(super) enum Inbound {
    Data(Vec<u8>),
    TooLarge,
}

/// Links of the reader to the rest of the connection.
#[derive(Debug)]
pub(super) struct ReaderLinks {
    pub(super) outbound: OutboundTx,
    pub(super) inbound: mpsc::Sender<Inbound>,
    pub(super) connection: CancellationToken,
    /// Seconds since `epoch` of the last frame read (the writer's idle check).
    pub(super) last_read: Arc<AtomicU64>,
    pub(super) epoch: Instant,
    pub(super) max_message_bytes: usize,
    /// Pings answered (auto-pong is off).
    pub(super) pings: RateLimit,
}

/// A message being reassembled from fragments.
struct Partial {
    text: bool,
    data: Vec<u8>,
}

enum Fatal {
    TooLarge,
    Close(u16, &'static str),
}

pub(super) async fn run<R>(mut reader: WebSocketRead<R>, mut links: ReaderLinks)
where
    R: AsyncRead + Unpin,
{
    let control_tx = links.outbound.clone();
    let mut send_fn = move |frame: Frame<'_>| {
        let tx = control_tx.clone();
        let op = frame.opcode;
        let payload = frame.payload.to_vec();
        async move {
            tx.send(Outbound::Control(op, payload))
                .await
                .map_err(|_| "connection closing")
        }
    };
    let mut partial: Option<Partial> = None;
    let mut fatal: Option<Fatal> = None;
    loop {
        let frame = tokio::select! {
            _ = links.connection.cancelled() => break,
            f = reader.read_frame(&mut send_fn) => f,
        };
        links
            .last_read
            .store(links.epoch.elapsed().as_secs(), Ordering::Relaxed);
        let frame = match frame {
            Ok(f) => f,
            Err(e) => {
                fatal = match e {
                    WebSocketError::FrameTooLarge => Some(Fatal::TooLarge),
                    WebSocketError::InvalidUTF8 => Some(Fatal::Close(1007, "invalid UTF-8")),
                    WebSocketError::ConnectionClosed | WebSocketError::UnexpectedEOF => None,
                    other => {
                        tracing::debug!(error = %other, "websocket read error");
                        Some(Fatal::Close(1002, "protocol error"))
                    }
                };
                break;
            }
        };
        let message = match (frame.opcode, partial.as_mut()) {
            (OpCode::Close, _) => break,
            (OpCode::Ping, _) => {
                if !links.pings.allow() {
                    metrics::counter!(m::PING_FLOOD_CLOSES).increment(1);
                    fatal = Some(Fatal::Close(1008, "too many pings"));
                    break;
                }
                let pong = Outbound::Control(OpCode::Pong, frame.payload.to_vec());
                if links.outbound.send(pong).await.is_err() {
                    break;
                }
                continue;
            }
            (OpCode::Text | OpCode::Binary, Some(_)) | (OpCode::Continuation, None) => {
                fatal = Some(Fatal::Close(1002, "protocol error: bad fragmentation"));
                break;
            }
            (OpCode::Text | OpCode::Binary, None) if frame.fin => frame.payload.to_vec(),
            (OpCode::Text | OpCode::Binary, None) => {
                partial = Some(Partial {
                    text: frame.opcode == OpCode::Text,
                    data: frame.payload.to_vec(),
                });
                continue;
            }
            (OpCode::Continuation, Some(p)) => {
                if p.data.len().saturating_add(frame.payload.len()) > links.max_message_bytes {
                    fatal = Some(Fatal::TooLarge);
                    break;
                }
                p.data.extend_from_slice(&frame.payload);
                if !frame.fin {
                    continue;
                }
                let Some(p) = partial.take() else { break };
                if p.text && std::str::from_utf8(&p.data).is_err() {
                    fatal = Some(Fatal::Close(1007, "invalid UTF-8"));
                    break;
                }
                p.data
            }
            _ => continue,
        };
        if links.inbound.send(Inbound::Data(message)).await.is_err() {
            break;
        }
    }
    drop(partial);
    match fatal {
        None => return,
        Some(Fatal::TooLarge) => {
            let _ = links.inbound.send(Inbound::TooLarge).await;
        }
        Some(Fatal::Close(code, reason)) => {
            let _ = links.outbound.send(Outbound::Close(code, reason)).await;
        }
    }
    drop(links.inbound);
    // Unread input (e.g. the rest of an oversized frame) would make the
    // kernel reset the connection and could destroy the error frame in
    // flight; keep the socket until the writer is done, briefly.
    let _ = tokio::time::timeout(Duration::from_secs(2), links.connection.cancelled()).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
}
