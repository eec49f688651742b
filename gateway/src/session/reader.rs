//! A connection's reader task: reads WebSocket frames, reassembles
//! fragmented messages, and hands whole messages to the session loop. The
//! pongs and close replies it owes the peer go to the writer's queue.
//!
//! An idle connection holds no read buffer: fastwebsockets' reader owns an
//! 8 KiB buffer for its whole life, so it is created when bytes arrive and
//! dropped again as soon as everything read has been consumed as whole
//! frames ([`Parking`] knows where frames end in the byte stream). While
//! idle, the task waits on a one-byte read.
//!
//! Invariants:
//! - A reassembled message never exceeds the frame limit
//!   (`SWITCHYARD_MAX_FRAME_BYTES`): single frames are limited by
//!   fastwebsockets, the sum of a message's fragments here (close 1009).
//! - The fastwebsockets reader is dropped only at a frame boundary with its
//!   buffer empty, so no byte of the client's stream is ever lost.
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
use fastwebsockets::{Frame, OpCode, Role, WebSocketError};
use futures::SinkExt as _;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};
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
    pub(super) inbound: futures::channel::mpsc::Sender<Inbound>,
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

/// How a burst of frames ended.
enum Burst {
    /// Everything read was whole frames: park until more bytes come.
    Parked,
    /// The connection is over (cancelled, closed, or `Some` fatal error).
    End(Option<Fatal>),
}

pub(super) async fn run<R>(read: R, mut links: ReaderLinks)
where
    R: AsyncRead + Unpin,
{
    let mut io = Parking::new(read);
    let mut partial: Option<Partial> = None;
    let fatal = loop {
        // Idle: no frame reader, no buffer; wait for the next byte.
        let more = tokio::select! {
            _ = links.connection.cancelled() => break None,
            more = io.wait() => more,
        };
        if !matches!(more, Ok(true)) {
            break None;
        }
        // Boxed: the frame reader and its read future exist only while
        // frames arrive; the idle task keeps just the wait above.
        match Box::pin(burst(&mut io, &mut links, &mut partial)).await {
            Burst::Parked => continue,
            Burst::End(fatal) => break fatal,
        }
    };
    drop(partial);
    if let Some(fatal) = fatal {
        Box::pin(fail(links, fatal)).await;
    }
}

/// Reads frames until everything read was consumed as whole frames
/// ([`Burst::Parked`]) or the connection ends.
async fn burst<R>(
    io: &mut Parking<R>,
    links: &mut ReaderLinks,
    partial: &mut Option<Partial>,
) -> Burst
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
    let (mut reader, _) =
        fastwebsockets::after_handshake_split(io, tokio::io::sink(), Role::Server);
    reader.set_max_message_size(links.max_message_bytes);
    reader.set_auto_close(true);
    // Pings are answered here under a rate limit, not by fastwebsockets
    // (which answers every one).
    reader.set_auto_pong(false);
    loop {
        let frame = tokio::select! {
            _ = links.connection.cancelled() => return Burst::End(None),
            f = reader.read_frame(&mut send_fn) => f,
        };
        links
            .last_read
            .store(links.epoch.elapsed().as_secs(), Ordering::Relaxed);
        let frame = match frame {
            Ok(f) => f,
            // Everything read was whole frames and nothing more is there:
            // drop the reader (and its buffer) until there is.
            Err(WebSocketError::IoError(e)) if is_parked(&e) => return Burst::Parked,
            Err(e) => {
                return Burst::End(match e {
                    WebSocketError::FrameTooLarge => Some(Fatal::TooLarge),
                    WebSocketError::InvalidUTF8 => Some(Fatal::Close(1007, "invalid UTF-8")),
                    WebSocketError::ConnectionClosed | WebSocketError::UnexpectedEOF => None,
                    other => {
                        tracing::debug!(error = %other, "websocket read error");
                        Some(Fatal::Close(1002, "protocol error"))
                    }
                });
            }
        };
        let message = match (frame.opcode, partial.as_mut()) {
            (OpCode::Close, _) => return Burst::End(None),
            (OpCode::Ping, _) => {
                if !links.pings.allow() {
                    metrics::counter!(m::PING_FLOOD_CLOSES).increment(1);
                    return Burst::End(Some(Fatal::Close(1008, "too many pings")));
                }
                let pong = Outbound::Control(OpCode::Pong, frame.payload.to_vec());
                if links.outbound.send(pong).await.is_err() {
                    return Burst::End(None);
                }
                continue;
            }
            (OpCode::Text | OpCode::Binary, Some(_)) | (OpCode::Continuation, None) => {
                return Burst::End(Some(Fatal::Close(
                    1002,
                    "protocol error: bad fragmentation",
                )));
            }
            (OpCode::Text | OpCode::Binary, None) if frame.fin => frame.payload.to_vec(),
            (OpCode::Text | OpCode::Binary, None) => {
                *partial = Some(Partial {
                    text: frame.opcode == OpCode::Text,
                    data: frame.payload.to_vec(),
                });
                continue;
            }
            (OpCode::Continuation, Some(p)) => {
                if p.data.len().saturating_add(frame.payload.len()) > links.max_message_bytes {
                    return Burst::End(Some(Fatal::TooLarge));
                }
                p.data.extend_from_slice(&frame.payload);
                if !frame.fin {
                    continue;
                }
                let Some(p) = partial.take() else {
                    return Burst::End(None);
                };
                if p.text && std::str::from_utf8(&p.data).is_err() {
                    return Burst::End(Some(Fatal::Close(1007, "invalid UTF-8")));
                }
                p.data
            }
            _ => continue,
        };
        if links.inbound.send(Inbound::Data(message)).await.is_err() {
            return Burst::End(None);
        }
    }
}

/// Tells the session (too large) or the peer (a close code) why the reader
/// stopped, then keeps the socket briefly so the error frame gets out.
async fn fail(mut links: ReaderLinks, fatal: Fatal) {
    match fatal {
        Fatal::TooLarge => {
            let _ = links.inbound.send(Inbound::TooLarge).await;
        }
        Fatal::Close(code, reason) => {
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

/// The error [`Parking`] reads end with when the reader may be dropped.
#[derive(Debug)]
struct Parked;

impl std::fmt::Display for Parked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("no more input at a frame boundary")
    }
}

impl std::error::Error for Parked {}

fn is_parked(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<Parked>())
}

/// Where the client's byte stream stands: inside a frame header (bytes of it
/// seen so far) or inside a payload (bytes of it still to come).
#[derive(Debug, Default)]
struct FrameScan {
    head: [u8; 14],
    have: u8,
    payload_left: u64,
}

impl FrameScan {
    fn at_boundary(&self) -> bool {
        self.have == 0 && self.payload_left == 0
    }

    fn feed(&mut self, mut bytes: &[u8]) {
        while let Some((&first, rest)) = bytes.split_first() {
            if self.payload_left > 0 {
                let n = self.payload_left.min(bytes.len() as u64);
                self.payload_left -= n;
                bytes = &bytes[n as usize..];
                continue;
            }
            self.head[usize::from(self.have)] = first;
            self.have += 1;
            bytes = rest;
            if let Some(payload) = complete_header(&self.head[..usize::from(self.have)]) {
                self.have = 0;
                self.payload_left = payload;
            }
        }
    }
}

/// The payload length once `head` is a whole frame header (RFC 6455 5.2),
/// `None` while bytes of it are missing.
fn complete_header(head: &[u8]) -> Option<u64> {
    let [_, second, ext @ ..] = head else {
        return None;
    };
    let masked = second & 0x80 != 0;
    let code = second & 0x7f;
    let ext_len = match code {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    if ext.len() < ext_len + if masked { 4 } else { 0 } {
        return None;
    }
    Some(match code {
        126 => u64::from(u16::from_be_bytes([ext[0], ext[1]])),
        127 => u64::from_be_bytes(ext[..8].try_into().ok()?),
        n => u64::from(n),
    })
}

/// The read half as the frame reader sees it: hands on the client's bytes
/// and, when the frame reader asks for more at a frame boundary and none are
/// there, fails with [`Parked`] instead of waiting, so the reader and its
/// buffer can be dropped. [`Parking::wait`] then waits with a one-byte read.
#[derive(Debug)]
struct Parking<R> {
    inner: R,
    scan: FrameScan,
    peeked: Option<u8>,
}

impl<R: AsyncRead + Unpin> Parking<R> {
    fn new(inner: R) -> Self {
        Parking {
            inner,
            scan: FrameScan::default(),
            peeked: None,
        }
    }

    /// Waits for the next byte of input; `false` at the end of the stream.
    async fn wait(&mut self) -> io::Result<bool> {
        if self.peeked.is_some() {
            return Ok(true);
        }
        let mut byte = [0u8; 1];
        if self.inner.read(&mut byte).await? == 0 {
            return Ok(false);
        }
        self.peeked = Some(byte[0]);
        Ok(true)
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for Parking<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        if let Some(b) = this.peeked.take() {
            buf.put_slice(&[b]);
            this.scan.feed(&[b]);
            return Poll::Ready(Ok(()));
        }
        let at_boundary = this.scan.at_boundary();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Pending if at_boundary => {
                Poll::Ready(Err(io::Error::new(io::ErrorKind::WouldBlock, Parked)))
            }
            Poll::Ready(Ok(())) => {
                this.scan.feed(&buf.filled()[before..]);
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A client text frame of `len` bytes of `x` (masked when asked).
    fn frame(masked: bool, len: usize) -> Vec<u8> {
        let key = [1u8, 2, 3, 4];
        let mut head = [0u8; 14];
        let mut f = Frame::new(
            true,
            OpCode::Text,
            masked.then_some(key),
            fastwebsockets::Payload::Owned(vec![b'x'; len]),
        );
        let n = f.fmt_head(&mut head);
        let mut out = head[..n].to_vec();
        out.extend((0..len).map(|i| if masked { b'x' ^ key[i % 4] } else { b'x' }));
        out
    }

    proptest! {
        /// However the stream is cut into reads, the scan is at a boundary
        /// exactly where a frame ends.
        #[test]
        fn boundaries_are_where_frames_end(
            lens in proptest::collection::vec((any::<bool>(), prop_oneof![0usize..130, 60_000usize..70_000]), 1..6),
            cuts in proptest::collection::vec(1usize..200, 1..50),
        ) {
            let mut stream = Vec::new();
            let mut ends = std::collections::BTreeSet::new();
            for (masked, len) in &lens {
                stream.extend(frame(*masked, *len));
                ends.insert(stream.len());
            }
            let mut scan = FrameScan::default();
            let mut pos = 0;
            let mut cut = cuts.iter().cycle();
            while pos < stream.len() {
                let step = (*cut.next().unwrap_or(&1) * 37).min(stream.len() - pos);
                for i in 0..step {
                    scan.feed(&stream[pos + i..pos + i + 1]);
                    prop_assert_eq!(scan.at_boundary(), ends.contains(&(pos + i + 1)));
                }
                pos += step;
            }
            prop_assert!(scan.at_boundary());
        }
    }

    /// The reader task of every idle connection is this future: keep it
    /// small (the 8 KiB frame buffer is not in it while idle).
    #[tokio::test]
    async fn an_idle_reader_task_is_small() {
        let (_client, server) = tokio::io::duplex(64);
        let (read, _write) = tokio::io::split(server);
        let (outbound, _rx) = crate::outbound::queue(8, 1024);
        let (inbound, _in_rx) = futures::channel::mpsc::channel(1);
        let links = ReaderLinks {
            outbound,
            inbound,
            connection: CancellationToken::new(),
            last_read: Arc::default(),
            epoch: Instant::now(),
            max_message_bytes: 65536,
            pings: super::super::RateLimit::new(2, 10),
        };
        let task = run(read, links);
        let size = std::mem::size_of_val(&task);
        println!("reader task future: {size} bytes");
        // 1,304 bytes (debug build) while the frame reader and its read
        // future were in it; they are boxed per burst of frames since, and
        // the idle wait is what stays: 464 bytes.
        assert!(size <= 512, "reader future grew to {size} bytes");
    }

    #[tokio::test]
    async fn reader_parks_between_frames_and_loses_nothing() {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let mut io = Parking::new(server);
        let mut sent = frame(true, 5);
        sent.extend(frame(true, 70_000));
        tokio::io::AsyncWriteExt::write_all(&mut client, &sent)
            .await
            .unwrap();
        assert!(io.wait().await.unwrap());
        let (mut reader, _) =
            fastwebsockets::after_handshake_split(&mut io, tokio::io::sink(), Role::Server);
        let mut noop = |_: Frame<'_>| async { Ok::<_, std::convert::Infallible>(()) };
        assert_eq!(reader.read_frame(&mut noop).await.unwrap().payload.len(), 5);
        assert_eq!(
            reader.read_frame(&mut noop).await.unwrap().payload.len(),
            70_000
        );
        match reader.read_frame(&mut noop).await {
            Err(WebSocketError::IoError(e)) => assert!(is_parked(&e)),
            other => panic!("expected to park, got {:?}", other.map(|f| f.opcode)),
        }
        drop(reader);
        // The next frame arrives in two pieces, after the reader was dropped.
        let next = frame(true, 300);
        tokio::io::AsyncWriteExt::write_all(&mut client, &next[..3])
            .await
            .unwrap();
        assert!(io.wait().await.unwrap());
        let (mut reader, _) =
            fastwebsockets::after_handshake_split(&mut io, tokio::io::sink(), Role::Server);
        let read = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            tokio::io::AsyncWriteExt::write_all(&mut client, &next[3..])
                .await
                .unwrap();
            client
        });
        let f = reader.read_frame(&mut noop).await.unwrap();
        assert_eq!(&f.payload[..], &[b'x'; 300][..]);
        drop(reader);
        let client = read.await.unwrap();
        drop(client);
        assert!(
            !io.wait().await.unwrap(),
            "end of stream after the client went"
        );
    }
}
