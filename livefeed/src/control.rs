//! Control messages between gateway nodes: one Redis channel per deployment
//! (`<prefix>:control`, outside the live pattern), carrying orders every
//! node applies to its own connections — today a server-side `disconnect`
//! of a user.
//!
//! Invariant: control messages are orders about the present, not events: a
//! node that is not subscribed when one is sent never sees it (the sender is
//! told when the broadcast itself fails, and may retry), and applying one
//! twice is harmless.

use crate::naming::control_channel;
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

impl Publisher {
    /// Sends `control` to every node subscribed now.
    pub async fn publish_control(&self, control: &Control) -> redis::RedisResult<()> {
        let mut conn = self.conn.clone();
        redis::cmd("PUBLISH")
            .arg(control_channel(&self.prefix))
            .arg(control.encode())
            .query_async::<()>(&mut conn)
            .await
    }
}

/// Runs the control subscription until `cancel` fires, reconnecting with
/// backoff, and hands each order to `apply`.
pub async fn subscribe_control(
    redis_url: String,
    prefix: String,
    apply: impl Fn(Control) + Send,
    cancel: CancellationToken,
) {
    let channel = control_channel(&prefix);
    subscribe_channel(
        redis_url,
        channel,
        "control",
        move |payload| match Control::decode(payload) {
            Some(c) => apply(c),
            None => tracing::warn!("unknown control message ignored"),
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
}
