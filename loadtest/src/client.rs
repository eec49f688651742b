//! The generator's connections: one lightweight task per connection that
//! connects (from a chosen loopback source address), performs the
//! protocol's handshake, then scans every frame it receives, checks it
//! ([`crate::verify`]) and records its latency ([`crate::latency`]).
//!
//! Protocols: Switchyard (`switchyard.v1.json` over WebSocket, subscribe
//! with an optional cursor), Socket.IO (Engine.IO v4 over WebSocket, rooms
//! from the handshake's `auth`), the naive broadcaster (WebSocket, nothing
//! to say) and the raw TCP fan-out (length-prefixed frames).
//!
//! Invariant: a task owns its socket and its [`ConnState`]; the harness
//! steers all tasks through one `watch` channel ([`Mode`]) and never blocks
//! on a task, and every task ends on [`Mode::Stop`]. Connection attempts are
//! bounded (count and timeout), so a dead server cannot keep a run alive.

use crate::event::{cursor_of, scan, Scanned};
use crate::latency::Recorder;
use crate::verify::{ConnState, Verdict};
use anyhow::{anyhow, bail, Context as _};
use bytes::{Buf as _, BytesMut};
use futures::{SinkExt as _, StreamExt as _};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt as _;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// The wire protocol of a system under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Protocol {
    Switchyard,
    SocketIo,
    NaiveWs,
    RawTcp,
}

/// What the harness wants the connections to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Mode {
    /// Be connected (connect, or reconnect with the last cursor).
    Run,
    /// Drop the connection at once and stay away.
    Offline,
    /// Close and end the task.
    Stop,
}

/// How to reach the system, for one connection (sent as is to a fleet
/// worker process, see [`crate::worker`]).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ClientSpec {
    pub protocol: Protocol,
    pub server: SocketAddr,
    /// Source address; 127.0.0.1 leaves the choice to the kernel, any other
    /// loopback address is bound explicitly (its own 28k ephemeral ports).
    pub source_ip: Ipv4Addr,
    /// Switchyard: the access token.
    pub token: String,
    /// Switchyard: the topic to subscribe to.
    #[serde(deserialize_with = "known_topic")]
    pub topic: StaticTopic,
    /// Socket.IO: the product rooms to join.
    pub products: Vec<String>,
    /// Other nodes of the same system: after a lost connection or a failed
    /// attempt the client moves on to the next address (`server` first).
    pub alternates: Vec<SocketAddr>,
    /// Switchyard: end the connection after a random time in this range
    /// (ms) and reconnect at once with the last cursor (the soak's churn).
    pub churn_ms: Option<(u64, u64)>,
}

/// A topic name that lives as long as the program. An alias, so serde's
/// derive does not borrow it from the input (it would for a literal
/// `&'static str` field) and [`known_topic`] maps it instead.
pub type StaticTopic = &'static str;

/// Maps a topic read from a worker's input back to the constant it came
/// from (specs hold `&'static str`, so 100,000 of them share one string).
fn known_topic<'de, D: serde::Deserializer<'de>>(d: D) -> Result<&'static str, D::Error> {
    use serde::de::Error as _;
    use serde::Deserialize as _;
    let s = String::deserialize(d)?;
    [crate::event::FANOUT_TOPIC, crate::event::SCOPED_TOPIC]
        .into_iter()
        .find(|t| *t == s)
        .ok_or_else(|| D::Error::custom(format!("unknown client topic {s:?}")))
}

/// State shared by all connections of one system phase.
#[derive(Debug)]
pub struct Shared {
    pub recorder: Arc<Recorder>,
    /// Connections currently connected and subscribed.
    pub live: AtomicUsize,
    /// Reconnect storm: the stream-0 sequence number that means "caught up"
    /// (`u64::MAX` when not armed).
    pub catch_up_target: AtomicU64,
    /// Bounds concurrent handshakes (the storm lifts it).
    pub connect_gate: Semaphore,
    pub connect_timeout: Duration,
    /// Attempts per connection before it gives up until the mode changes.
    pub max_attempts: u32,
    /// Latest scheduled send time (µs) of any event any connection received.
    pub latest_t_us: AtomicU64,
}

enum Conn {
    Ws(Box<WebSocketStream<TcpStream>>),
    Tcp(TcpStream, BytesMut),
}

enum End {
    /// The harness changed the mode.
    Mode,
    /// The client's own churn timer ended the connection.
    Churn,
    /// The server closed, reset or broke the connection.
    Lost(String),
}

fn ws_config() -> WebSocketConfig {
    // Small buffers: 10,000 connections share the generator's memory.
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_message_size(Some(1 << 20))
        .max_frame_size(Some(1 << 20))
}

async fn tcp_connect(source: Ipv4Addr, server: SocketAddr) -> anyhow::Result<TcpStream> {
    crate::ensure_loopback(&server)?;
    let sock = TcpSocket::new_v4()?;
    if source != Ipv4Addr::LOCALHOST {
        if !source.is_loopback() {
            bail!("source address {source} is not loopback");
        }
        sock.bind(SocketAddr::from((source, 0)))
            .with_context(|| format!("binding source address {source}"))?;
    }
    let s = sock.connect(server).await?;
    s.set_nodelay(true)?;
    Ok(s)
}

fn frame_type(frame: &[u8]) -> &str {
    let Some(at) = memchr::memmem::find(frame, br#""type":""#) else {
        return "";
    };
    let rest = &frame[at + 8..];
    let end = memchr::memchr(b'"', rest).unwrap_or(0);
    std::str::from_utf8(&rest[..end]).unwrap_or("")
}

struct Session<'a> {
    idx: usize,
    spec: &'a ClientSpec,
    state: &'a ConnState,
    shared: &'a Shared,
}

impl Session<'_> {
    /// Handles one received frame (any protocol).
    fn frame(&self, frame: &[u8]) {
        match scan(frame) {
            Scanned::Event { n, stream, t_us } => {
                let now = crate::now_us();
                if self.state.observe(stream, n) == Verdict::Unentitled {
                    return;
                }
                self.shared.recorder.record(self.idx, t_us, now);
                self.shared.latest_t_us.fetch_max(t_us, Relaxed);
                if self.spec.protocol == Protocol::Switchyard {
                    if let Some(c) = cursor_of(frame) {
                        let mut g = self.state.cursor.lock().unwrap_or_else(|p| p.into_inner());
                        let s = g.get_or_insert_with(String::new);
                        s.clear();
                        s.push_str(std::str::from_utf8(c).unwrap_or(""));
                    }
                }
                if stream == 0
                    && n >= self.shared.catch_up_target.load(Relaxed)
                    && self.state.caught_up_at_us.load(Relaxed) == 0
                {
                    self.state.caught_up_at_us.store(now, Relaxed);
                }
            }
            Scanned::Probe(k) => {
                self.state.probe.fetch_max(k, Relaxed);
            }
            Scanned::Other => {
                if self.spec.protocol != Protocol::Switchyard {
                    return;
                }
                match frame_type(frame) {
                    "error" => self.state.set_error(String::from_utf8_lossy(frame)),
                    "reconnect" => {
                        // The node drains: come back (elsewhere) after its hint.
                        let after = serde_json::from_slice::<serde_json::Value>(frame)
                            .ok()
                            .and_then(|v| v["after_ms"].as_u64())
                            .unwrap_or(0);
                        self.state
                            .reconnect_after_ms
                            .store(after.clamp(1, 60_000), Relaxed);
                    }
                    _ => {}
                }
            }
        }
    }

    /// The node to try now: `server`, or one of the alternates after
    /// failures.
    fn server(&self) -> SocketAddr {
        let n = self.spec.alternates.len() as u64 + 1;
        match (self.state.node.load(Relaxed) % n) as usize {
            0 => self.spec.server,
            k => self.spec.alternates[k - 1],
        }
    }

    async fn connect(&self) -> anyhow::Result<Conn> {
        let spec = self.spec;
        let server = self.server();
        let tcp = tcp_connect(spec.source_ip, server).await?;
        let url = match spec.protocol {
            Protocol::RawTcp => {
                // Wait for the server's empty hello frame: only then has it
                // accepted (and subscribed) this socket.
                let mut tcp = tcp;
                let mut hello = [0u8; 4];
                tcp.read_exact(&mut hello)
                    .await
                    .context("waiting for the hello frame")?;
                if hello != [0, 0, 0, 0] {
                    bail!("unexpected first frame from the raw fan-out");
                }
                return Ok(Conn::Tcp(tcp, BytesMut::with_capacity(4096)));
            }
            Protocol::Switchyard => {
                format!("ws://{server}/v1/ws?access_token={}", spec.token)
            }
            Protocol::SocketIo => {
                format!("ws://{server}/socket.io/?EIO=4&transport=websocket")
            }
            Protocol::NaiveWs => format!("ws://{server}/"),
        };
        let mut req = url.into_client_request()?;
        if spec.protocol == Protocol::Switchyard {
            req.headers_mut().insert(
                "sec-websocket-protocol",
                HeaderValue::from_static("switchyard.v1.json"),
            );
        }
        let (mut ws, _) = tokio_tungstenite::client_async_with_config(req, tcp, Some(ws_config()))
            .await
            .map_err(|e| anyhow!("WebSocket handshake: {e}"))?;
        match spec.protocol {
            Protocol::Switchyard => self.switchyard_handshake(&mut ws).await?,
            Protocol::SocketIo => self.socketio_handshake(&mut ws).await?,
            Protocol::NaiveWs | Protocol::RawTcp => {}
        }
        Ok(Conn::Ws(Box::new(ws)))
    }

    async fn next_text(ws: &mut WebSocketStream<TcpStream>) -> anyhow::Result<Vec<u8>> {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => return Ok(t.as_bytes().to_vec()),
                Some(Ok(Message::Binary(b))) => return Ok(b.to_vec()),
                Some(Ok(Message::Close(f))) => bail!("closed during handshake: {f:?}"),
                Some(Ok(_)) => continue,
                Some(Err(e)) => bail!("during handshake: {e}"),
                None => bail!("closed during handshake"),
            }
        }
    }

    async fn switchyard_handshake(
        &self,
        ws: &mut WebSocketStream<TcpStream>,
    ) -> anyhow::Result<()> {
        let welcome = Self::next_text(ws).await?;
        if frame_type(&welcome) != "welcome" {
            bail!(
                "expected welcome, got {}",
                String::from_utf8_lossy(&welcome)
            );
        }
        let cursor = self
            .state
            .cursor
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut sub = serde_json::json!({"type": "subscribe", "id": 1, "topic": self.spec.topic});
        if let Some(c) = cursor {
            sub["cursor"] = serde_json::Value::String(c);
        }
        let resuming = sub.get("cursor").is_some();
        ws.send(Message::text(sub.to_string())).await?;
        loop {
            let f = Self::next_text(ws).await?;
            match frame_type(&f) {
                "subscribed" => {
                    if resuming && memchr::memmem::find(&f, br#""recovered":false"#).is_some() {
                        self.state.unrecovered.fetch_add(1, Relaxed);
                    }
                    // Replayed messages follow the reply.
                    self.state.begin_subscription();
                    return Ok(());
                }
                "error" => bail!("subscribe refused: {}", String::from_utf8_lossy(&f)),
                _ => self.frame(&f),
            }
        }
    }

    async fn socketio_handshake(&self, ws: &mut WebSocketStream<TcpStream>) -> anyhow::Result<()> {
        let open = Self::next_text(ws).await?;
        if open.first() != Some(&b'0') {
            bail!(
                "expected Engine.IO open, got {}",
                String::from_utf8_lossy(&open)
            );
        }
        let auth = serde_json::json!({ "products": self.spec.products });
        ws.send(Message::text(format!("40{auth}"))).await?;
        loop {
            let f = Self::next_text(ws).await?;
            match f.as_slice() {
                b"2" => ws.send(Message::text("3")).await?,
                x if x.starts_with(b"44") => {
                    bail!("Socket.IO connect refused: {}", String::from_utf8_lossy(x))
                }
                x if x.starts_with(br#"42["ready""#) => return Ok(()),
                x if x.starts_with(b"40") => {}
                x => self.frame(x),
            }
        }
    }

    async fn read_loop(&self, conn: &mut Conn, ctrl: &mut watch::Receiver<Mode>) -> End {
        let churn = match self.spec.churn_ms {
            Some((lo, hi)) => {
                Duration::from_millis(lo + rand::random::<u64>() % (hi.saturating_sub(lo) + 1))
            }
            None => Duration::from_secs(365 * 24 * 3600),
        };
        let churn_at = tokio::time::sleep(churn);
        tokio::pin!(churn_at);
        match conn {
            Conn::Ws(ws) => loop {
                tokio::select! {
                    biased;
                    _ = ctrl.changed() => return End::Mode,
                    _ = &mut churn_at => return End::Churn,
                    msg = ws.next() => match msg {
                        Some(Ok(Message::Text(t))) => {
                            if self.spec.protocol == Protocol::SocketIo && t.as_str() == "2" {
                                if let Err(e) = ws.send(Message::text("3")).await {
                                    return End::Lost(format!("sending pong: {e}"));
                                }
                                continue;
                            }
                            self.frame(t.as_bytes());
                        }
                        Some(Ok(Message::Binary(b))) => self.frame(&b),
                        Some(Ok(Message::Close(f))) => return End::Lost(format!("closed by server: {f:?}")),
                        Some(Ok(_)) => {}
                        Some(Err(e)) => return End::Lost(e.to_string()),
                        None => return End::Lost("connection ended".into()),
                    }
                }
            },
            Conn::Tcp(stream, buf) => loop {
                tokio::select! {
                    biased;
                    _ = ctrl.changed() => return End::Mode,
                    r = stream.read_buf(buf) => match r {
                        Ok(0) => return End::Lost("closed by server".into()),
                        Err(e) => return End::Lost(e.to_string()),
                        Ok(_) => {
                            while buf.len() >= 4 {
                                let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
                                if buf.len() < 4 + len {
                                    buf.reserve(4 + len - buf.len());
                                    break;
                                }
                                self.frame(&buf[4..4 + len]);
                                buf.advance(4 + len);
                            }
                        }
                    }
                }
            },
        }
    }
}

/// One connection's task: connect, read, reconnect, as the mode says.
async fn run_client(
    idx: usize,
    spec: ClientSpec,
    state: Arc<ConnState>,
    shared: Arc<Shared>,
    mut ctrl: watch::Receiver<Mode>,
) {
    let session = Session {
        idx,
        spec: &spec,
        state: &state,
        shared: &shared,
    };
    let mut attempts = 0u32;
    loop {
        let mode = *ctrl.borrow_and_update();
        match mode {
            Mode::Stop => return,
            Mode::Offline => {
                attempts = 0;
                if ctrl.changed().await.is_err() {
                    return;
                }
                continue;
            }
            Mode::Run => {}
        }
        if attempts >= shared.max_attempts {
            // Give up until the harness changes the mode.
            if ctrl.changed().await.is_err() {
                return;
            }
            attempts = 0;
            continue;
        }
        attempts += 1;
        let connected = {
            let Ok(_permit) = shared.connect_gate.acquire().await else {
                return;
            };
            tokio::select! {
                biased;
                _ = ctrl.changed() => continue,
                r = tokio::time::timeout(shared.connect_timeout, session.connect()) => {
                    r.map_err(|_| anyhow!("connect timed out after {:?}", shared.connect_timeout)).and_then(|r| r)
                }
            }
        };
        match connected {
            Ok(mut conn) => {
                attempts = 0;
                state.connected_at_us.store(crate::now_us(), Relaxed);
                state.live.store(true, Relaxed);
                shared.live.fetch_add(1, Relaxed);
                let end = session.read_loop(&mut conn, &mut ctrl).await;
                state.live.store(false, Relaxed);
                shared.live.fetch_sub(1, Relaxed);
                drop(conn);
                match end {
                    End::Lost(why) => {
                        state.disconnects.fetch_add(1, Relaxed);
                        state.set_error(why);
                        // Another node, after the node's hint or a backoff.
                        state.node.fetch_add(1, Relaxed);
                        backoff(&mut ctrl, 1, &state).await;
                    }
                    End::Churn => {
                        state.churns.fetch_add(1, Relaxed);
                    }
                    End::Mode => {}
                }
            }
            Err(e) => {
                state.connect_failures.fetch_add(1, Relaxed);
                state.set_error(format!("{e:#}"));
                state.node.fetch_add(1, Relaxed);
                backoff(&mut ctrl, attempts, &state).await;
            }
        }
    }
}

/// Waits a little (more after repeated failures; a node's `reconnect`
/// hint when it sent one) unless the mode changes.
async fn backoff(ctrl: &mut watch::Receiver<Mode>, attempt: u32, state: &ConnState) {
    let hint = state.reconnect_after_ms.swap(0, Relaxed);
    let wait = if hint > 0 {
        hint
    } else {
        let base = 100u64 * u64::from(attempt.min(20));
        base + rand::random::<u64>() % (base + 1)
    };
    tokio::select! {
        _ = ctrl.changed() => {}
        _ = tokio::time::sleep(Duration::from_millis(wait)) => {}
    }
}

/// All connections of one system phase held in this process (the
/// scenarios go through [`crate::fleet::Fleet`], which spreads large
/// fleets over several processes of these).
#[derive(Debug)]
pub struct LocalFleet {
    pub conns: Vec<Arc<ConnState>>,
    pub shared: Arc<Shared>,
    /// Reconnect storm: which connections had been connected when the
    /// catch-up target was armed (only they count as caught up).
    armed: std::sync::Mutex<Vec<bool>>,
    ctrl: watch::Sender<Mode>,
    tasks: JoinSet<()>,
}

/// How a fleet connects.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct FleetOptions {
    pub connect_concurrency: usize,
    pub connect_timeout: Duration,
    pub max_attempts: u32,
    pub shards: usize,
}

impl LocalFleet {
    /// Spawns one task per `(spec, entitled streams)`; they start connecting
    /// at once (at most `connect_concurrency` handshakes at a time).
    pub fn spawn(clients: Vec<(ClientSpec, Vec<u32>)>, opts: FleetOptions) -> LocalFleet {
        let shared = Arc::new(Shared {
            recorder: Arc::new(Recorder::new(opts.shards)),
            live: AtomicUsize::new(0),
            catch_up_target: AtomicU64::new(u64::MAX),
            connect_gate: Semaphore::new(opts.connect_concurrency.max(1)),
            connect_timeout: opts.connect_timeout,
            max_attempts: opts.max_attempts.max(1),
            latest_t_us: AtomicU64::new(0),
        });
        let (ctrl, rx) = watch::channel(Mode::Run);
        let mut tasks = JoinSet::new();
        let mut conns = Vec::with_capacity(clients.len());
        for (idx, (spec, streams)) in clients.into_iter().enumerate() {
            let state = Arc::new(ConnState::new(streams));
            conns.push(state.clone());
            tasks.spawn(run_client(idx, spec, state, shared.clone(), rx.clone()));
        }
        LocalFleet {
            conns,
            shared,
            armed: std::sync::Mutex::new(Vec::new()),
            ctrl,
            tasks,
        }
    }

    /// Arms the reconnect storm's catch-up: event `target` of stream 0
    /// means caught up; clears every connection's catch-up time and notes
    /// which connections had been connected (only they count).
    pub fn arm_catch_up(&self, target: u64) {
        self.shared.catch_up_target.store(target, Relaxed);
        let mut armed = self.armed.lock().unwrap_or_else(|p| p.into_inner());
        armed.clear();
        for c in &self.conns {
            c.caught_up_at_us.store(0, Relaxed);
            armed.push(c.connected_at_us.load(Relaxed) > 0);
        }
    }

    /// Connections armed by [`Self::arm_catch_up`] that have caught up.
    pub fn caught_up(&self) -> usize {
        let armed = self.armed.lock().unwrap_or_else(|p| p.into_inner());
        self.conns
            .iter()
            .zip(armed.iter())
            .filter(|(c, a)| **a && c.caught_up_at_us.load(Relaxed) > 0)
            .count()
    }

    /// Which connections [`Self::arm_catch_up`] counted, by index.
    pub fn armed(&self) -> Vec<bool> {
        self.armed.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Whether every connection is live or has used up its attempts.
    pub fn exhausted(&self) -> bool {
        self.conns.iter().all(|c| {
            c.live.load(Relaxed)
                || c.connect_failures.load(Relaxed) >= u64::from(self.shared.max_attempts)
        })
    }

    pub fn live(&self) -> usize {
        self.shared.live.load(Relaxed)
    }

    pub fn set_mode(&self, mode: Mode) {
        self.ctrl.send_replace(mode);
    }

    /// Lets `extra` more handshakes run at once (the storm's "all at once").
    pub fn widen_gate(&self, extra: usize) {
        self.shared.connect_gate.add_permits(extra);
    }

    /// Waits until `want` connections are live, every connection has given
    /// up, or `timeout`; returns how many are live.
    pub async fn wait_live(&self, want: usize, timeout: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut last = usize::MAX;
        let mut last_report = tokio::time::Instant::now();
        loop {
            let live = self.live();
            if live >= want || tokio::time::Instant::now() >= deadline {
                return live;
            }
            if self.exhausted() {
                return live;
            }
            if live != last && last_report.elapsed() > Duration::from_secs(2) {
                eprintln!("    {live}/{want} connections live");
                last_report = tokio::time::Instant::now();
            }
            last = live;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Live connections that have seen probe `k` (or a later one).
    pub fn probed(&self, k: u64) -> usize {
        self.conns
            .iter()
            .filter(|c| c.live.load(Relaxed) && c.probe.load(Relaxed) >= k)
            .count()
    }

    /// A few distinct error texts, for the report.
    pub fn sample_errors(&self, max: usize) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for c in &self.conns {
            if let Some(e) = c
                .last_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_ref()
            {
                let e: String = e.chars().take(200).collect();
                if !out.contains(&e) {
                    out.push(e);
                    if out.len() >= max {
                        break;
                    }
                }
            }
        }
        out
    }

    /// Stops every task (closing its socket) and waits for them.
    pub async fn shutdown(mut self, timeout: Duration) {
        self.set_mode(Mode::Stop);
        let all = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(timeout, all).await.is_err() {
            self.tasks.abort_all();
        }
    }
}
