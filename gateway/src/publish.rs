//! Publishing: client `publish` frames through the topology's
//! `IsPublishableByUser` gate and the per-user publish rate, and server API
//! publishes scoped like Kafka events — both on the same durable path as a
//! Kafka event (cursor log, then Redis).
//!
//! Invariant: a client publish reaches only channels resolved from the
//! publisher's own entitlements and flagged publishable; every publish is
//! acknowledged only after the PostgreSQL commit.

use crate::auth::Identity;
use crate::error::RequestError;
use crate::metrics as m;
use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;
use switchyard_channels::{ResolvedChannel, Scope, Topology};
use switchyard_cursorlog::config::StoreConfig;
use switchyard_cursorlog::event::is_json_content_type;
use switchyard_cursorlog::route::{route, Draft, Route};
use switchyard_cursorlog::{CursorLog, LogEvent};
use switchyard_livefeed::Publisher;

/// How long the fleet-wide publish counter may take before the publish goes
/// ahead uncounted (fail-open).
const RATE_CHECK_TIMEOUT: Duration = Duration::from_millis(500);

/// A per-user publish quota shared by the fleet.
#[derive(Debug, Clone, Copy)]
pub struct PublishRate {
    pub limit: u64,
    pub window: Duration,
}

/// What a publish needs from the node.
#[derive(Debug)]
pub struct Publishing<'a> {
    pub log: &'a CursorLog,
    pub topology: Arc<Topology>,
    pub publisher: &'a Publisher,
    pub store: &'a StoreConfig,
    pub max_publish_bytes: usize,
    /// Client publishes per user (`None`: unlimited).
    pub rate: Option<PublishRate>,
}

/// An event published by a backend through the server API, scoped like a
/// Kafka event.
#[derive(Debug, Clone)]
pub struct SystemEvent {
    /// Idempotency key; generated when absent.
    pub id: Option<String>,
    pub topic: String,
    pub tenant: String,
    pub scopes: Vec<Scope>,
    pub user_id: Option<String>,
    pub payload: Bytes,
    pub content_type: String,
}

/// What a server API publish stored.
#[derive(Debug, Clone)]
pub struct Published {
    pub event_id: String,
    /// The id was already in the log: nothing new was stored or sent.
    pub duplicate: bool,
    /// `(channel name, channel id, sequence)`; sequence 0 for ephemeral
    /// channels (live only).
    pub entries: Vec<(String, i64, i64)>,
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
        check_json(&content_type, &payload)?;
        let resolved = topology.resolve_user_publish(topic, &identity.entitlements);
        if resolved.is_empty() {
            return Err(RequestError::NotPublishable(topic.to_owned()));
        }
        self.check_rate(&identity.user).await?;
        let draft = Draft {
            event_id: format!("client-{}", uuid::Uuid::new_v4().simple()),
            topic: topic.to_owned(),
            tenant: identity.entitlements.tenant.clone().unwrap_or_default(),
            user_id: None,
            payload,
            content_type,
            created_at_ms: chrono::Utc::now().timestamp_millis(),
        };
        let live = self.store_and_send(draft, &resolved).await?;
        if let Some(live) = live {
            tracing::debug!(topic, user = %identity.user, event_id = %live.event_id, "client publish stored");
        }
        Ok(())
    }

    /// Publishes a backend's event: resolved like a Kafka event (scopes and
    /// tenant, `IsPublishableByUser` ignored), stored, then sent live.
    pub async fn publish_system(&self, ev: SystemEvent) -> Result<Published, RequestError> {
        if !self.topology.has_topic(&ev.topic) {
            return Err(RequestError::UnknownTopic(ev.topic));
        }
        check_json(&ev.content_type, &ev.payload)?;
        let tenant = (!ev.tenant.is_empty()).then_some(ev.tenant.as_str());
        let resolved = self.topology.resolve_event(&ev.topic, &ev.scopes, tenant);
        let event_id = ev
            .id
            .unwrap_or_else(|| format!("api-{}", uuid::Uuid::new_v4().simple()));
        if resolved.is_empty() {
            return Ok(Published {
                event_id,
                duplicate: false,
                entries: Vec::new(),
            });
        }
        let draft = Draft {
            event_id: event_id.clone(),
            topic: ev.topic,
            tenant: ev.tenant,
            user_id: ev.user_id,
            payload: ev.payload,
            content_type: ev.content_type,
            created_at_ms: chrono::Utc::now().timestamp_millis(),
        };
        let keys: Vec<String> = resolved.iter().map(|c| c.key.clone()).collect();
        let Some(live) = self.store_and_send(draft, &resolved).await? else {
            return Ok(Published {
                event_id,
                duplicate: true,
                entries: Vec::new(),
            });
        };
        let ids = self.log.channel_ids(&keys).await?;
        let name_of = |channel: i64| {
            ids.iter()
                .position(|id| *id == channel)
                .map(|i| keys[i].clone())
                .unwrap_or_default()
        };
        Ok(Published {
            event_id,
            duplicate: false,
            entries: live
                .entries
                .iter()
                .map(|e| (name_of(e.channel), e.channel, e.seq))
                .collect(),
        })
    }

    /// Appends (unless every channel is ephemeral) and publishes on Redis;
    /// `None` when the event id is already in the log.
    async fn store_and_send(
        &self,
        draft: Draft,
        resolved: &[ResolvedChannel],
    ) -> Result<Option<LogEvent>, RequestError> {
        let keys: Vec<String> = resolved.iter().map(|c| c.key.clone()).collect();
        let ids = self.log.channel_ids(&keys).await?;
        let now = chrono::Utc::now();
        let live = match route(draft, resolved.iter().zip(ids), now, self.store) {
            Route::Ephemeral(live) => live,
            Route::Logged { event, ephemeral } => {
                let mut out = self.log.append_batch(&[event]).await?;
                let Some(mut live) = out.appended.pop() else {
                    if out.duplicates.is_empty() {
                        return Err(RequestError::NotStored);
                    }
                    return Ok(None);
                };
                live.entries.extend(ephemeral);
                live
            }
        };
        self.publisher.publish(std::slice::from_ref(&live)).await;
        Ok(Some(live))
    }

    /// Counts the publish against the user's fleet-wide quota. Fails open:
    /// when Redis does not answer, the publish goes ahead and
    /// `switchyard_gateway_quota_fail_open_total` counts it — a Redis outage
    /// must not stop publishing, which the per-connection rate limit still
    /// bounds.
    async fn check_rate(&self, user: &str) -> Result<(), RequestError> {
        let Some(rate) = self.rate.filter(|r| r.limit > 0) else {
            return Ok(());
        };
        let counted = tokio::time::timeout(
            RATE_CHECK_TIMEOUT,
            self.publisher
                .count_in_window(&format!("publish:{user}"), rate.window),
        )
        .await;
        match counted {
            Ok(Ok(n)) if n > rate.limit => {
                metrics::counter!(m::QUOTA_REFUSALS, "kind" => "user_publish_rate").increment(1);
                Err(RequestError::PublishRate {
                    limit: rate.limit,
                    window_secs: rate.window.as_secs(),
                })
            }
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => {
                metrics::counter!(m::QUOTA_FAIL_OPEN, "kind" => "user_publish_rate").increment(1);
                tracing::warn!(error = %e, "publish quota unavailable (redis); allowing the publish");
                Ok(())
            }
            Err(_) => {
                metrics::counter!(m::QUOTA_FAIL_OPEN, "kind" => "user_publish_rate").increment(1);
                tracing::warn!("publish quota timed out (redis); allowing the publish");
                Ok(())
            }
        }
    }
}

fn check_json(content_type: &str, payload: &[u8]) -> Result<(), RequestError> {
    if is_json_content_type(content_type)
        && serde_json::from_slice::<&serde_json::value::RawValue>(payload).is_err()
    {
        return Err(RequestError::PayloadNotJson);
    }
    Ok(())
}
