//! Control messages between gateway nodes: one Redis channel per deployment
//! (`<prefix>:control`, outside the live pattern), carrying orders every
//! node applies to its own connections — today a server-side `disconnect`
//! of a user.
//!
//! Invariant: control messages are orders about the present, not events: a
//! node that is not subscribed when one is sent never sees it (the sender is
//! told when the broadcast itself fails, and may retry), and applying one
//! twice is harmless. With `SWITCHYARD_LIVE_KEY` set, a node applies only
//! orders authenticated with that key and sent within
//! [`CONTROL_MAX_AGE_MS`] of now, so whoever can publish on Redis can neither
//! forge an order nor replay a recorded one later.

use crate::naming::control_channel;
use crate::wire::LiveKey;
use crate::Publisher;
use futures::StreamExt as _;
use std::time::Duration;
use switchyard_ops::backoff::Backoff;
use tokio_util::sync::CancellationToken;

/// An order to every gateway node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// Close every connection of this user.
    Disconnect { user: String },
}

const DISCONNECT: &str = "disconnect ";

impl Control {
    /// The message text (`disconnect <user>`).
    pub fn encode(&self) -> String {
        match self {
            Control::Disconnect { user } => format!("{DISCONNECT}{user}"),
        }
    }

    /// Parses a message; `None` for anything else (e.g. from a newer node).
    pub fn decode(text: &[u8]) -> Option<Control> {
        let text = std::str::from_utf8(text).ok()?;
        let user = text.strip_prefix(DISCONNECT)?;
        (!user.is_empty()).then(|| Control::Disconnect {
            user: user.to_owned(),
        })
    }
}

/// Marks an authenticated order: `C1`, a 16-byte MAC, the sending time
/// (milliseconds since the Unix epoch, 8 bytes big-endian), then the order.
const SIGNED: &[u8; 2] = b"C1";
const MAC_BYTES: usize = 16;

/// How far an authenticated order's sending time may be from the receiver's
/// clock (either way) before it is refused as a replay.
pub const CONTROL_MAX_AGE_MS: i64 = 30_000;

/// Why a control message was not applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ControlRefusal {
    /// Not authenticated with `SWITCHYARD_LIVE_KEY` (missing or wrong MAC).
    #[error("control message not authenticated with SWITCHYARD_LIVE_KEY")]
    Unauthenticated,
    /// Authenticated, but sent too long ago (or in the future): a replay.
    #[error("control message older than the replay window")]
    Stale,
    /// Not an order this node knows (e.g. from a newer node).
    #[error("unknown control message")]
    Unknown,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Encodes `control` for Redis, authenticated (and stamped with `sent_ms`)
/// when there is a key.
pub fn encode_control(control: &Control, key: Option<&LiveKey>, sent_ms: i64) -> Vec<u8> {
    let text = control.encode();
    let Some(key) = key else {
        return text.into_bytes();
    };
    let mut body = Vec::with_capacity(8 + text.len());
    body.extend_from_slice(&sent_ms.to_be_bytes());
    body.extend_from_slice(text.as_bytes());
    let mut out = Vec::with_capacity(SIGNED.len() + MAC_BYTES + body.len());
    out.extend_from_slice(SIGNED);
    out.extend_from_slice(&key.tag(&body)[..MAC_BYTES]);
    out.extend_from_slice(&body);
    out
}

/// Decodes a control message received at `now_ms`; with a key, only orders
/// authenticated with it and sent within [`CONTROL_MAX_AGE_MS`] are accepted.
pub fn decode_control(
    bytes: &[u8],
    key: Option<&LiveKey>,
    now_ms: i64,
) -> Result<Control, ControlRefusal> {
    let Some(key) = key else {
        return Control::decode(bytes).ok_or(ControlRefusal::Unknown);
    };
    let rest = bytes
        .strip_prefix(SIGNED.as_slice())
        .ok_or(ControlRefusal::Unauthenticated)?;
    if rest.len() < MAC_BYTES + 8 {
        return Err(ControlRefusal::Unauthenticated);
    }
    let (tag, body) = rest.split_at(MAC_BYTES);
    if !key.verify(body, tag) {
        return Err(ControlRefusal::Unauthenticated);
    }
    let (sent, text) = body.split_at(8);
    let sent = i64::from_be_bytes(
        sent.try_into()
            .map_err(|_| ControlRefusal::Unauthenticated)?,
    );
    if now_ms.saturating_sub(sent).saturating_abs() > CONTROL_MAX_AGE_MS {
        return Err(ControlRefusal::Stale);
    }
    Control::decode(text).ok_or(ControlRefusal::Unknown)
}

impl Publisher {
    /// Sends `control` to every node subscribed now, authenticated with the
    /// publisher's live key when it has one.
    pub async fn publish_control(&self, control: &Control) -> redis::RedisResult<()> {
        let mut conn = self.conn.clone();
        redis::cmd("PUBLISH")
            .arg(control_channel(&self.prefix))
            .arg(encode_control(control, self.key.as_ref(), now_ms()))
            .query_async::<()>(&mut conn)
            .await
    }
}

/// Runs the control subscription until `cancel` fires, reconnecting with
/// backoff, and hands each order to `apply` — with `key`, only the orders
/// authenticated with it (the others are counted and dropped).
pub async fn subscribe_control(
    redis_url: String,
    prefix: String,
    key: Option<LiveKey>,
    apply: impl Fn(Control) + Send,
    cancel: CancellationToken,
) {
    let channel = control_channel(&prefix);
    subscribe_channel(
        redis_url,
        channel,
        "control",
        move |payload| match decode_control(payload, key.as_ref(), now_ms()) {
            Ok(c) => apply(c),
            Err(ControlRefusal::Unknown) => tracing::warn!("unknown control message ignored"),
            Err(refusal) => {
                metrics::counter!(crate::metrics::CONTROL_REFUSED).increment(1);
                tracing::warn!(%refusal, "control message refused");
            }
        },
        cancel,
    )
    .await
}

/// Runs a subscription to one Redis channel until `cancel` fires,
/// reconnecting with backoff, and hands each message's payload to `apply`
/// (`what` names the channel in log lines). Messages sent while it is not
/// subscribed are not seen: only for messages about the present.
pub async fn subscribe_channel(
    redis_url: String,
    channel: String,
    what: &'static str,
    apply: impl Fn(&[u8]) + Send,
    cancel: CancellationToken,
) {
    let client = match redis::Client::open(redis_url.as_str()) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, what, "invalid SWITCHYARD_REDIS_URL; subscription disabled");
            return;
        }
    };
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    while !cancel.is_cancelled() {
        let connected = async {
            let mut ps = client.get_async_pubsub().await?;
            ps.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(ps)
        };
        let mut pubsub = match tokio::time::timeout(Duration::from_secs(3), connected).await {
            Ok(Ok(ps)) => ps,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, what, "redis subscription failed");
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(backoff.next_delay()) => continue,
                }
            }
            Err(_) => {
                tracing::warn!(what, "redis subscription timed out");
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(backoff.next_delay()) => continue,
                }
            }
        };
        backoff.reset();
        let mut messages = pubsub.on_message();
        loop {
            let msg = tokio::select! {
                _ = cancel.cancelled() => return,
                msg = messages.next() => msg,
            };
            let Some(msg) = msg else { break };
            apply(msg.get_payload_bytes());
        }
        tracing::warn!(what, "redis subscription lost; reconnecting");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_messages_roundtrip() {
        let c = Control::Disconnect {
            user: "u 1:x".into(),
        };
        assert_eq!(Control::decode(c.encode().as_bytes()), Some(c));
        assert_eq!(Control::decode(b"disconnect "), None);
        assert_eq!(Control::decode(b"reboot all"), None);
        assert_eq!(Control::decode(b"\xff"), None);
    }

    #[test]
    fn authenticated_orders_need_the_key_and_a_recent_time() {
        let c = Control::Disconnect { user: "u1".into() };
        let key = LiveKey::new(&[7u8; 32]);
        let now = 1_700_000_000_000;
        let signed = encode_control(&c, Some(&key), now);
        assert_eq!(decode_control(&signed, Some(&key), now + 1), Ok(c.clone()));
        // Plain, other key, tampered user, replayed later: refused.
        let plain = encode_control(&c, None, now);
        assert_eq!(
            decode_control(&plain, Some(&key), now),
            Err(ControlRefusal::Unauthenticated)
        );
        let other = encode_control(&c, Some(&LiveKey::new(&[8u8; 32])), now);
        assert_eq!(
            decode_control(&other, Some(&key), now),
            Err(ControlRefusal::Unauthenticated)
        );
        let mut tampered = signed.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert_eq!(
            decode_control(&tampered, Some(&key), now),
            Err(ControlRefusal::Unauthenticated)
        );
        assert_eq!(
            decode_control(&signed, Some(&key), now + CONTROL_MAX_AGE_MS + 1),
            Err(ControlRefusal::Stale)
        );
        assert_eq!(
            decode_control(b"C1", Some(&key), now),
            Err(ControlRefusal::Unauthenticated)
        );
        // Without a key, plain orders apply as before.
        assert_eq!(decode_control(&plain, None, now), Ok(c));
    }
}
