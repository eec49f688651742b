//! Client `publish` frames: the topology's `IsPublishableByUser` gate, then
//! the same durable path as a Kafka event (cursor log, then Redis).
//!
//! Invariant: a client publish reaches only channels resolved from the
//! publisher's own entitlements and flagged publishable; it is acknowledged
//! (`published`) only after the PostgreSQL commit.

use crate::auth::Identity;
use crate::protocol::ErrorCode;
use crate::Node;
use bytes::Bytes;
use switchyard_cursorlog::event::is_json_content_type;
use switchyard_cursorlog::route::{route, Draft, Route};

/// Publishes a client's event; the error is the code and message for the
/// client's `error` frame.
pub async fn publish(
    node: &Node,
    identity: &Identity,
    topic: &str,
    payload: Bytes,
    content_type: String,
) -> Result<(), (ErrorCode, String)> {
    let topology = node.topology.current();
    if !topology.has_topic(topic) {
        return Err((ErrorCode::BadRequest, format!("unknown topic {topic:?}")));
    }
    if payload.len() > node.cfg.max_publish_bytes {
        return Err((
            ErrorCode::TooLarge,
            format!(
                "payload is {} bytes, the limit is {}",
                payload.len(),
                node.cfg.max_publish_bytes
            ),
        ));
    }
    if is_json_content_type(&content_type)
        && serde_json::from_slice::<&serde_json::value::RawValue>(&payload).is_err()
    {
        return Err((ErrorCode::BadRequest, "payload is not valid JSON".into()));
    }
    let resolved = topology.resolve_user_publish(topic, &identity.entitlements);
    if resolved.is_empty() {
        return Err((
            ErrorCode::NotPublishable,
            format!("topic {topic:?} does not accept publishes from you"),
        ));
    }
    let keys: Vec<String> = resolved.iter().map(|c| c.key.clone()).collect();
    let ids = node.log.channel_ids(&keys).await.map_err(internal)?;
    let now = chrono::Utc::now();
    let draft = Draft {
        event_id: format!("client-{}", uuid::Uuid::new_v4().simple()),
        topic: topic.to_owned(),
        tenant: identity.entitlements.tenant.clone().unwrap_or_default(),
        user_id: None,
        payload,
        content_type,
        created_at_ms: now.timestamp_millis(),
    };
    let live = match route(draft, resolved.iter().zip(ids), now, &node.cfg.store) {
        Route::Ephemeral(live) => live,
        Route::Logged { event, ephemeral } => {
            let mut out = node.log.append_batch(&[event]).await.map_err(internal)?;
            let mut live = out
                .appended
                .pop()
                .ok_or_else(|| (ErrorCode::Internal, "publish was not stored".to_owned()))?;
            live.entries.extend(ephemeral);
            live
        }
    };
    node.publisher.publish(std::slice::from_ref(&live)).await;
    tracing::debug!(topic, user = %identity.user, event_id = %live.event_id, "client publish stored");
    Ok(())
}

fn internal(e: switchyard_cursorlog::LogError) -> (ErrorCode, String) {
    tracing::warn!(error = %e, "cursor log unavailable for a publish");
    (
        ErrorCode::Internal,
        "the message log is unavailable; retry shortly".to_owned(),
    )
}
