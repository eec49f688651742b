//! The WebSocket test client: connects with a token, speaks the JSON
//! protocol (requests with ids, replies, `message` frames) and remembers the
//! last cursor per topic.
//!
//! Invariant: frames that arrive while the client waits for a reply are
//! queued, not dropped, so a later read still sees every message the server
//! sent, in order.

use anyhow::{anyhow, bail};
use futures::{SinkExt as _, StreamExt as _};
use serde_json::{json, Value};
use std::time::Duration;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A WebSocket client speaking the JSON protocol.
pub struct Client {
    ws: Ws,
    next_id: u64,
    /// Frames read while waiting for something else.
    pending: std::collections::VecDeque<Value>,
    /// Last cursor seen per topic.
    pub cursors: std::collections::HashMap<String, String>,
    /// Pongs received so far (answers to the pings a test sends).
    pub pongs: usize,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("next_id", &self.next_id)
            .finish()
    }
}

/// How a connection attempt ended.
#[derive(Debug)]
pub enum Connect {
    Open(Box<Client>),
    /// HTTP status and body of a refused upgrade.
    Refused(u16, String),
}

impl Client {
    /// Connects with `?access_token=` and waits for `welcome`.
    pub async fn connect(url: &str, token: &str) -> anyhow::Result<Client> {
        match Self::try_connect(&format!("{url}?access_token={token}"), None).await? {
            Connect::Open(c) => Ok(*c),
            Connect::Refused(code, body) => bail!("connection refused: {code} {body}"),
        }
    }

    pub async fn try_connect(url: &str, bearer: Option<&str>) -> anyhow::Result<Connect> {
        let mut req = url.into_client_request()?;
        if let Some(t) = bearer {
            req.headers_mut()
                .insert("authorization", format!("Bearer {t}").parse()?);
        }
        match tokio_tungstenite::connect_async(req).await {
            Ok((ws, _)) => {
                let mut c = Client {
                    ws,
                    next_id: 1,
                    pending: Default::default(),
                    cursors: Default::default(),
                    pongs: 0,
                };
                let w = c.next_frame(Duration::from_secs(10)).await?;
                if w["type"] != "welcome" {
                    bail!("expected welcome, got {w}");
                }
                Ok(Connect::Open(Box::new(c)))
            }
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                let body = resp
                    .body()
                    .as_ref()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default();
                Ok(Connect::Refused(resp.status().as_u16(), body))
            }
            Err(e) => Err(e.into()),
        }
    }

    pub async fn send_raw(&mut self, msg: Message) -> anyhow::Result<()> {
        self.ws.send(msg).await?;
        Ok(())
    }

    pub async fn send(&mut self, v: Value) -> anyhow::Result<()> {
        self.send_raw(Message::Text(v.to_string().into())).await
    }

    /// Sends a request with a fresh id; returns the id.
    pub async fn request(&mut self, mut v: Value) -> anyhow::Result<u64> {
        let id = self.next_id;
        self.next_id += 1;
        v["id"] = json!(id);
        self.send(v).await?;
        Ok(id)
    }

    /// Next JSON frame from the socket (or the pending queue).
    pub async fn next_frame(&mut self, timeout: Duration) -> anyhow::Result<Value> {
        if let Some(v) = self.pending.pop_front() {
            return Ok(v);
        }
        self.read_socket(timeout).await
    }

    async fn read_socket(&mut self, timeout: Duration) -> anyhow::Result<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .map_err(|_| anyhow!("no frame within {timeout:?}"))?;
            match msg {
                None => bail!("connection closed"),
                Some(Err(e)) => bail!("connection error: {e}"),
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(&t)?;
                    if v["type"] == "message" {
                        if let (Some(topic), Some(c)) = (v["topic"].as_str(), v["cursor"].as_str())
                        {
                            self.cursors.insert(topic.to_owned(), c.to_owned());
                        }
                    }
                    return Ok(v);
                }
                Some(Ok(Message::Close(f))) => {
                    let code = f.as_ref().map(|f| u16::from(f.code)).unwrap_or(0);
                    return Ok(
                        json!({"type": "__close", "code": code, "reason": f.map(|f| f.reason.to_string()).unwrap_or_default()}),
                    );
                }
                Some(Ok(Message::Pong(_))) => self.pongs += 1,
                Some(Ok(_)) => continue,
            }
        }
    }

    /// Waits for the reply to request `id`, queueing other frames.
    pub async fn reply(&mut self, id: u64, timeout: Duration) -> anyhow::Result<Value> {
        if let Some(pos) = self
            .pending
            .iter()
            .position(|v| v["id"] == json!(id) && v["type"] != "message")
        {
            return Ok(self.pending.remove(pos).expect("present"));
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let v = self.read_socket(left).await?;
            if v["id"] == json!(id) && v["type"] != "message" {
                return Ok(v);
            }
            self.pending.push_back(v);
        }
    }

    /// Subscribes and returns the `subscribed` (or `error`) reply.
    pub async fn subscribe(&mut self, topic: &str, cursor: Option<&str>) -> anyhow::Result<Value> {
        let mut req = json!({"type": "subscribe", "topic": topic});
        if let Some(c) = cursor {
            req["cursor"] = json!(c);
        }
        let id = self.request(req).await?;
        self.reply(id, Duration::from_secs(10)).await
    }

    /// Collects `message` frames until `n` arrived (or the timeout).
    pub async fn messages(&mut self, n: usize, timeout: Duration) -> anyhow::Result<Vec<Value>> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut out = Vec::new();
        while out.len() < n {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                bail!(
                    "got {} of {n} messages; last {:?}",
                    out.len(),
                    ids(&out).last()
                );
            }
            match self.next_frame(left).await {
                Ok(v) if v["type"] == "message" => out.push(v),
                Ok(v) if v["type"] == "__close" => {
                    bail!("closed after {} of {n} messages: {v}", out.len())
                }
                Ok(_) => {}
                Err(e) => bail!(
                    "got {} of {n} messages ({e}); last {:?}",
                    out.len(),
                    ids(&out).last()
                ),
            }
        }
        Ok(out)
    }

    /// Asserts no `message` frame arrives within `quiet`.
    pub async fn expect_silence(&mut self, quiet: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + quiet;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Ok(());
            }
            match self.next_frame(left).await {
                Ok(v) if v["type"] == "message" => bail!("unexpected message {v}"),
                Ok(_) => {}
                Err(_) => return Ok(()),
            }
        }
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

/// The event ids of message frames.
pub fn ids(msgs: &[Value]) -> Vec<String> {
    msgs.iter()
        .map(|m| m["id"].as_str().unwrap_or("?").to_owned())
        .collect()
}

/// The `payload.n` of message frames (the tests number their events).
pub fn ns(msgs: &[Value]) -> Vec<u64> {
    msgs.iter()
        .map(|m| m["payload"]["n"].as_u64().expect("payload.n"))
        .collect()
}
