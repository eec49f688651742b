//! Client `publish` frames: the topology's `IsPublishableByUser` gate, then
//! the same durable path as a Kafka event (cursor log, then Redis).
//!
//! Invariant: a client publish reaches only channels resolved from the
//! publisher's own entitlements and flagged publishable; it is acknowledged
//! (`published`) only after the PostgreSQL commit.

use crate::auth::Identity;
use crate::error::RequestError;
use bytes::Bytes;
use std::sync::Arc;
use switchyard_channels::Topology;
use switchyard_cursorlog::config::StoreConfig;
use switchyard_cursorlog::event::is_json_content_type;
use switchyard_cursorlog::route::{route, Draft, Route};
use switchyard_cursorlog::CursorLog;
use switchyard_livefeed::Publisher;

/// What a client publish needs from the node.
#[derive(Debug)]
pub struct Publishing<'a> {
    pub log: &'a CursorLog,
    pub topology: Arc<Topology>,
    pub publisher: &'a Publisher,
    pub store: &'a StoreConfig,
    pub max_publish_bytes: usize,
}

impl Publishing<'_> {
    /// Publishes a client's event.
    pub async fn publish(
        &self,
        identity: &Identity,
        topic: &str,
        payload: Bytes,
        content_type: String,
    ) -> Result<(), RequestError> {
        let topology = &self.topology;
        if !topology.has_topic(topic) {
            return Err(RequestError::UnknownTopic(topic.to_owned()));
        }
        if payload.len() > self.max_publish_bytes {
            return Err(RequestError::PayloadTooLarge {
                size: payload.len(),
                limit: self.max_publish_bytes,
            });
        }
        if is_json_content_type(&content_type)
            && serde_json::from_slice::<&serde_json::value::RawValue>(&payload).is_err()
        {
            return Err(RequestError::PayloadNotJson);
        }
        let resolved = topology.resolve_user_publish(topic, &identity.entitlements);
        if resolved.is_empty() {
            return Err(RequestError::NotPublishable(topic.to_owned()));
        }
        let keys: Vec<String> = resolved.iter().map(|c| c.key.clone()).collect();
        let ids = self.log.channel_ids(&keys).await?;
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
        let live = match route(draft, resolved.iter().zip(ids), now, self.store) {
            Route::Ephemeral(live) => live,
            Route::Logged { event, ephemeral } => {
                let mut out = self.log.append_batch(&[event]).await?;
                let mut live = out.appended.pop().ok_or(RequestError::NotStored)?;
                live.entries.extend(ephemeral);
                live
            }
        };
        self.publisher.publish(std::slice::from_ref(&live)).await;
        tracing::debug!(topic, user = %identity.user, event_id = %live.event_id, "client publish stored");
        Ok(())
    }
}
