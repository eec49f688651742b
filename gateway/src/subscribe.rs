//! Planning a subscription: resolving a topic to the user's channels and
//! choosing where replay starts in each (the client's cursor, the lookback
//! window, or the head), and whether the cursor counts as `recovered`.
//!
//! Invariant: a cursor is trusted only when it is from this log (same epoch),
//! not ahead of any head, and nothing after it has been trimmed; otherwise the
//! answer is `recovered: false` with a lookback replay — never an error. The
//! rule is [`trust_cursor`], a pure function.

use crate::auth::Identity;
use crate::error::RequestError;
use crate::subscription::Positions;
use chrono_tz::Tz;
use std::collections::HashMap;
use std::sync::Arc;
use switchyard_channels::{LookBack, Topology};
use switchyard_cursorlog::cursor::CursorCodec;
use switchyard_cursorlog::{Cursor, CursorLog};

/// Where a subscription starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Sorted channel ids.
    pub channels: Vec<i64>,
    /// Start positions, one per channel, in `channels` order.
    pub positions: Positions,
    pub recovered: bool,
}

/// A channel's head and retention floor, as the log reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadInfo {
    pub head: i64,
    /// Lowest sequence still retained, when known.
    pub floor: Option<i64>,
}

/// Which positions of a cursor to trust for a subscription's channels.
///
/// Returns the positions to resume from (empty when the cursor is not
/// trusted) and whether the cursor counts as recovered. A cursor is trusted
/// when it is from this log's epoch, covers at least one of the channels, and
/// for every channel it covers the position is not past the head and nothing
/// after it was deleted by retention.
pub fn trust_cursor(
    cursor: &Cursor,
    epoch: &str,
    channels: &[i64],
    heads: &HashMap<i64, HeadInfo>,
) -> (HashMap<i64, i64>, bool) {
    if cursor.epoch != epoch {
        return (HashMap::new(), false);
    }
    let mut known = HashMap::new();
    let mut valid = true;
    for &ch in channels {
        let Some(p) = cursor.position(ch) else {
            continue;
        };
        let info = heads.get(&ch).copied().unwrap_or(HeadInfo {
            head: 0,
            floor: None,
        });
        let retained = p >= info.head || info.floor.is_some_and(|f| p.saturating_add(1) >= f);
        if p < 0 || p > info.head || !retained {
            valid = false;
        }
        known.insert(ch, p);
    }
    if valid && !known.is_empty() {
        (known, true)
    } else {
        (HashMap::new(), false)
    }
}

/// What planning needs from the node.
#[derive(Debug, Clone)]
pub struct Planner<'a> {
    pub log: &'a CursorLog,
    /// Decodes (and checks the signature of) clients' cursors.
    pub cursors: &'a CursorCodec,
    pub topology: Arc<Topology>,
    pub lookback_tz: Tz,
}

impl Planner<'_> {
    /// Plans a subscription to `topic`. `prior` (a refresh) takes precedence
    /// over `cursor` and is trusted as-is.
    pub async fn plan(
        &self,
        identity: &Identity,
        topic: &str,
        cursor: Option<&str>,
        prior: Option<&[(i64, i64)]>,
    ) -> Result<Plan, RequestError> {
        let chans = self.resolve(identity, topic).await?;
        let channel_ids: Vec<i64> = chans.iter().map(|c| c.0).collect();
        let heads: HashMap<i64, HeadInfo> = self
            .log
            .heads(&channel_ids)
            .await?
            .into_iter()
            .map(|h| {
                (
                    h.channel,
                    HeadInfo {
                        head: h.head,
                        floor: h.floor,
                    },
                )
            })
            .collect();

        let (known, recovered) = match (prior, cursor) {
            (Some(prior), _) => (prior.iter().copied().collect(), false),
            (None, Some(text)) => match self.cursors.decode(text) {
                Ok(c) => trust_cursor(&c, self.log.epoch(), &channel_ids, &heads),
                Err(e) => {
                    tracing::debug!(topic, error = %e, "bad cursor; replaying lookback");
                    (HashMap::new(), false)
                }
            },
            (None, None) => (HashMap::new(), false),
        };

        // Channels without a known position start at the lookback window, or
        // at the head when the channel has no lookback.
        let now = chrono::Utc::now();
        let windows: Vec<(i64, chrono::DateTime<chrono::Utc>)> = chans
            .iter()
            .filter(|(ch, _)| !known.contains_key(ch))
            .filter_map(|(ch, lb)| lb.map(|lb| (*ch, lb.window_start(now, self.lookback_tz))))
            .collect();
        let starts = self.log.lookback_starts(&windows).await?;
        let positions = chans
            .iter()
            .map(|(ch, _)| {
                let head = heads.get(ch).map(|h| h.head).unwrap_or(0);
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

    /// The sorted, de-duplicated channel ids of `topic` for `identity`.
    pub async fn channel_ids(
        &self,
        identity: &Identity,
        topic: &str,
    ) -> Result<Vec<i64>, RequestError> {
        Ok(self
            .resolve(identity, topic)
            .await?
            .into_iter()
            .map(|c| c.0)
            .collect())
    }

    async fn resolve(
        &self,
        identity: &Identity,
        topic: &str,
    ) -> Result<Vec<(i64, Option<LookBack>)>, RequestError> {
        if !self.topology.has_topic(topic) {
            return Err(RequestError::UnknownTopic(topic.to_owned()));
        }
        let resolved = self
            .topology
            .resolve_subscriber(topic, &identity.entitlements);
        if resolved.is_empty() {
            return Err(RequestError::NoChannels(topic.to_owned()));
        }
        let keys: Vec<String> = resolved.iter().map(|c| c.key.clone()).collect();
        let ids = self.log.channel_ids(&keys).await?;
        let mut chans: Vec<(i64, Option<LookBack>)> = ids
            .into_iter()
            .zip(resolved.iter().map(|c| c.lookback))
            .collect();
        chans.sort_by_key(|c| c.0);
        chans.dedup_by_key(|c| c.0);
        Ok(chans)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cursor(epoch: &str, positions: &[(i64, i64)]) -> Cursor {
        let text = switchyard_cursorlog::cursor::encode_parts(epoch, positions.iter().copied());
        Cursor::decode(&text).unwrap()
    }

    fn heads(list: &[(i64, i64, Option<i64>)]) -> HashMap<i64, HeadInfo> {
        list.iter()
            .map(|&(ch, head, floor)| (ch, HeadInfo { head, floor }))
            .collect()
    }

    #[test]
    fn a_cursor_within_retention_is_trusted() {
        let h = heads(&[(1, 10, Some(1)), (2, 5, Some(3))]);
        let (known, recovered) = trust_cursor(&cursor("e", &[(1, 7), (2, 4)]), "e", &[1, 2], &h);
        assert!(recovered);
        assert_eq!(known, HashMap::from([(1, 7), (2, 4)]));
    }

    #[test]
    fn a_cursor_from_another_epoch_is_not() {
        let h = heads(&[(1, 10, Some(1))]);
        assert_eq!(
            trust_cursor(&cursor("old", &[(1, 7)]), "e", &[1], &h),
            (HashMap::new(), false)
        );
    }

    #[test]
    fn a_position_past_the_head_spoils_the_cursor() {
        let h = heads(&[(1, 10, Some(1)), (2, 5, Some(1))]);
        assert_eq!(
            trust_cursor(&cursor("e", &[(1, 7), (2, 6)]), "e", &[1, 2], &h),
            (HashMap::new(), false)
        );
    }

    #[test]
    fn a_position_before_trimmed_entries_spoils_the_cursor() {
        // Entries 1..=4 are gone: position 2 would skip 3 and 4 silently.
        let h = heads(&[(1, 10, Some(5))]);
        assert_eq!(
            trust_cursor(&cursor("e", &[(1, 2)]), "e", &[1], &h),
            (HashMap::new(), false)
        );
        // Position 4 resumes exactly at the floor.
        assert!(trust_cursor(&cursor("e", &[(1, 4)]), "e", &[1], &h).1);
        // At the head nothing is missing even if everything was trimmed.
        let h = heads(&[(1, 10, None)]);
        assert!(trust_cursor(&cursor("e", &[(1, 10)]), "e", &[1], &h).1);
    }

    #[test]
    fn a_cursor_covering_none_of_the_channels_is_not_recovered() {
        let h = heads(&[(1, 10, Some(1))]);
        assert_eq!(
            trust_cursor(&cursor("e", &[(9, 3)]), "e", &[1], &h),
            (HashMap::new(), false)
        );
    }

    #[test]
    fn channels_the_cursor_does_not_cover_are_left_to_lookback() {
        let h = heads(&[(1, 10, Some(1)), (2, 5, Some(1))]);
        let (known, recovered) = trust_cursor(&cursor("e", &[(1, 7)]), "e", &[1, 2], &h);
        assert!(recovered);
        assert_eq!(known, HashMap::from([(1, 7)]));
    }
}
