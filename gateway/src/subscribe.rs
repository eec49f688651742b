//! Planning a subscription: resolving a topic to the user's channels and
//! choosing where replay starts in each (the client's cursor, the lookback
//! window, or the head), and whether the cursor counts as `recovered`.
//!
//! Invariant: a cursor is trusted only when it is from this log (same epoch),
//! not ahead of any head, and nothing after it has been trimmed; otherwise the
//! answer is `recovered: false` with a lookback replay — never an error.

use crate::auth::Identity;
use crate::protocol::ErrorCode;
use crate::Node;
use std::collections::HashMap;
use switchyard_channels::LookBack;
use switchyard_cursorlog::Cursor;

/// Where a subscription starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Sorted channel ids.
    pub channels: Vec<i64>,
    /// Start positions, one per channel, in `channels` order.
    pub positions: Vec<(i64, i64)>,
    pub recovered: bool,
}

/// Plans a subscription to `topic`. `prior` (a refresh) takes precedence
/// over `cursor` and is trusted as-is.
pub async fn plan(
    node: &Node,
    identity: &Identity,
    topic: &str,
    cursor: Option<&str>,
    prior: Option<&[(i64, i64)]>,
) -> Result<Plan, (ErrorCode, String)> {
    let topology = node.topology.current();
    if !topology.has_topic(topic) {
        return Err((ErrorCode::BadRequest, format!("unknown topic {topic:?}")));
    }
    let resolved = topology.resolve_subscriber(topic, &identity.entitlements);
    if resolved.is_empty() {
        return Err((
            ErrorCode::Forbidden,
            format!("your entitlements give you no channel of topic {topic:?}"),
        ));
    }
    let keys: Vec<String> = resolved.iter().map(|c| c.key.clone()).collect();
    let ids = node.log.channel_ids(&keys).await.map_err(internal)?;
    let mut chans: Vec<(i64, Option<LookBack>)> = ids
        .into_iter()
        .zip(resolved.iter().map(|c| c.lookback))
        .collect();
    chans.sort_by_key(|c| c.0);
    chans.dedup_by_key(|c| c.0);
    let channel_ids: Vec<i64> = chans.iter().map(|c| c.0).collect();
    let heads: HashMap<i64, (i64, Option<i64>)> = node
        .log
        .heads(&channel_ids)
        .await
        .map_err(internal)?
        .into_iter()
        .map(|h| (h.channel, (h.head, h.floor)))
        .collect();

    let mut known: HashMap<i64, i64> = HashMap::new();
    let mut recovered = false;
    if let Some(prior) = prior {
        known.extend(prior.iter().copied());
    } else if let Some(text) = cursor {
        match Cursor::decode(text) {
            Ok(c) if c.epoch == node.log.epoch() => {
                let mut covered = 0;
                let mut valid = true;
                for &(ch, _) in &chans {
                    let Some(p) = c.position(ch) else { continue };
                    covered += 1;
                    let (head, floor) = heads.get(&ch).copied().unwrap_or((0, None));
                    let retained = p >= head || floor.is_some_and(|f| p + 1 >= f);
                    if p > head || !retained {
                        valid = false;
                    }
                    known.insert(ch, p);
                }
                recovered = valid && covered > 0;
                if !recovered {
                    known.clear();
                }
            }
            Ok(_) => tracing::debug!(topic, "cursor from another log; replaying lookback"),
            Err(e) => tracing::debug!(topic, error = %e, "bad cursor; replaying lookback"),
        }
    }

    // Channels without a known position start at the lookback window, or at
    // the head when the channel has no lookback.
    let now = chrono::Utc::now();
    let windows: Vec<(i64, chrono::DateTime<chrono::Utc>)> = chans
        .iter()
        .filter(|(ch, _)| !known.contains_key(ch))
        .filter_map(|(ch, lb)| lb.map(|lb| (*ch, lb.window_start(now, node.cfg.store.lookback_tz))))
        .collect();
    let starts = node.log.lookback_starts(&windows).await.map_err(internal)?;
    let positions = chans
        .iter()
        .map(|(ch, _)| {
            let head = heads.get(ch).map(|h| h.0).unwrap_or(0);
            let pos = match known.get(ch) {
                Some(p) => *p,
                None => starts.get(ch).copied().flatten().unwrap_or(head),
            };
            (*ch, pos)
        })
        .collect();
    Ok(Plan {
        channels: channel_ids,
        positions,
        recovered,
    })
}

fn internal(e: switchyard_cursorlog::LogError) -> (ErrorCode, String) {
    tracing::warn!(error = %e, "cursor log unavailable for a subscription");
    (
        ErrorCode::Internal,
        "the message log is unavailable; retry shortly".to_owned(),
    )
}
