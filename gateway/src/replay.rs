//! Ordering replayed log rows so every guarantee holds when an event sits in
//! several channels: an event is handled only once it is the next entry in
//! *each* of its tracked channels, and then for all of them at once.
//!
//! Rows come from [`switchyard_cursorlog::CursorLog::read_after`]: per
//! channel in sequence order, merged across channels by append order (which
//! is consistent with every channel's sequence order, because sequences are
//! assigned under the channel locks of the appending transaction). So the
//! oldest unhandled event of a page is always ready, and a page always makes
//! progress unless it is empty.
//!
//! Invariant: positions only ever advance to `seq` from `seq - 1` (or jump
//! over entries retention already deleted), so no entry is skipped and none
//! is handled twice.

use crate::protocol::{self, Protocol};
use crate::subscription::set_position;
use bytes::Bytes;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use switchyard_cursorlog::cursor::CursorCodec;
use switchyard_cursorlog::{CursorLog, LogError, LogEvent, PageLimit};

/// What to do, in order.
#[derive(Debug, Clone)]
pub(crate) enum Action {
    /// Entries before `to + 1` of `channel` are gone (retention): move on.
    Jump { channel: i64, to: i64 },
    /// Handle `event`: it is next in each of `fresh`; `earlier` says some of
    /// its entries in tracked channels were already handled (it reached the
    /// reader before, through another channel).
    Event {
        event: Arc<LogEvent>,
        fresh: Vec<(i64, i64)>,
        earlier: bool,
    },
}

/// Plans a page of rows against `pos` (tracked channels and their last
/// handled sequence), advancing `pos` as the actions will.
pub(crate) fn plan_page(
    rows: &[(i64, i64, Arc<LogEvent>)],
    pos: &mut HashMap<i64, i64>,
) -> Vec<Action> {
    let mut actions = Vec::new();
    let mut first_seen: HashSet<i64> = HashSet::new();
    for (ch, seq, _) in rows {
        if first_seen.insert(*ch) {
            if let Some(p) = pos.get_mut(ch) {
                if *seq > *p + 1 {
                    *p = seq - 1;
                    actions.push(Action::Jump {
                        channel: *ch,
                        to: seq - 1,
                    });
                }
            }
        }
    }
    let mut blocked: HashSet<i64> = HashSet::new();
    let mut i = 0;
    while i < rows.len() {
        let ev = &rows[i].2;
        let mut j = i;
        while j < rows.len() && Arc::ptr_eq(&rows[j].2, ev) {
            j += 1;
        }
        let group = &rows[i..j];
        i = j;
        if group.iter().any(|r| blocked.contains(&r.0)) {
            blocked.extend(group.iter().map(|r| r.0));
            continue;
        }
        let mut fresh = Vec::new();
        let mut earlier = false;
        let mut ahead = false;
        for e in ev.entries.iter().filter(|e| e.seq > 0) {
            let Some(p) = pos.get(&e.channel) else {
                continue;
            };
            if e.seq <= *p {
                earlier = true;
            } else if e.seq == *p + 1 {
                fresh.push((e.channel, e.seq));
            } else {
                ahead = true;
            }
        }
        if ahead {
            blocked.extend(group.iter().map(|r| r.0));
            continue;
        }
        if fresh.is_empty() {
            continue;
        }
        for (ch, seq) in &fresh {
            pos.insert(*ch, *seq);
        }
        actions.push(Action::Event {
            event: ev.clone(),
            fresh,
            earlier,
        });
    }
    actions
}

/// Reads the log after `positions` for a stateless reader (long-poll,
/// server API history): the messages `user` may see, encoded in JSON with
/// their cursors, at most `max` of them and, past the first, no more than
/// `limit.bytes` of encoded messages. `positions` advance past what was
/// returned (and what was skipped); the flag says more is waiting.
pub(crate) async fn read_messages(
    log: &CursorLog,
    cursors: &CursorCodec,
    positions: &mut [(i64, i64)],
    user: Option<&str>,
    limit: PageLimit,
    max: usize,
    mut created: Option<&mut Vec<i64>>,
) -> Result<(Vec<Bytes>, bool), LogError> {
    let mut messages: Vec<Bytes> = Vec::new();
    let mut bytes: i64 = 0;
    loop {
        let page = log.read_after(positions, None, limit).await?;
        let mut pos: HashMap<i64, i64> = positions.iter().copied().collect();
        let actions = plan_page(&page.rows, &mut pos);
        let progressed = !actions.is_empty();
        for action in actions {
            let (event, fresh, earlier) = match action {
                Action::Jump { channel, to } => {
                    set_position(positions, channel, to);
                    continue;
                }
                Action::Event {
                    event,
                    fresh,
                    earlier,
                } => (event, fresh, earlier),
            };
            if messages.len() >= max || bytes >= limit.bytes {
                // The positions stay before this event: the next read
                // starts here.
                return Ok((messages, true));
            }
            for (ch, seq) in &fresh {
                set_position(positions, *ch, *seq);
            }
            // An event for one user is for that user only.
            let for_other_user = event.user_id.as_deref().is_some_and(|u| Some(u) != user);
            if earlier || for_other_user {
                continue;
            }
            let cursor = cursors.encode(positions.iter().copied());
            let message = protocol::encode_message(Protocol::Json, &event, &cursor);
            bytes = bytes.saturating_add(message.len() as i64);
            messages.push(message);
            if let Some(c) = created.as_deref_mut() {
                c.push(event.created_at_ms);
            }
        }
        if !progressed || !page.more {
            return Ok((messages, false));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use switchyard_cursorlog::Entry;

    fn ev(id: &str, entries: &[(i64, i64)]) -> Arc<LogEvent> {
        Arc::new(LogEvent {
            live: Default::default(),
            event_id: id.into(),
            topic: "T".into(),
            tenant: String::new(),
            user_id: None,
            payload: Bytes::new(),
            content_type: "application/json".into(),
            created_at_ms: 0,
            entries: entries
                .iter()
                .map(|&(channel, seq)| Entry { channel, seq })
                .collect(),
        })
    }

    fn ids(actions: &[Action]) -> Vec<String> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Event {
                    event,
                    earlier: false,
                    ..
                } => Some(event.event_id.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn an_event_waits_until_it_is_next_in_every_channel() {
        // Channel 1 (CHLT) has every event; channel 2 (Sfc) only the odd ones.
        let e: Vec<_> = (1..=5)
            .map(|n| {
                if n % 2 == 1 {
                    ev(&n.to_string(), &[(1, n), (2, (n + 1) / 2)])
                } else {
                    ev(&n.to_string(), &[(1, n)])
                }
            })
            .collect();
        // Page in merged append order.
        let rows = vec![
            (1, 1, e[0].clone()),
            (2, 1, e[0].clone()),
            (1, 2, e[1].clone()),
            (1, 3, e[2].clone()),
            (2, 2, e[2].clone()),
            (1, 4, e[3].clone()),
            (1, 5, e[4].clone()),
            (2, 3, e[4].clone()),
        ];
        let mut pos = HashMap::from([(1, 0), (2, 0)]);
        assert_eq!(ids(&plan_page(&rows, &mut pos)), ["1", "2", "3", "4", "5"]);
        assert_eq!(pos, HashMap::from([(1, 5), (2, 3)]));
    }

    #[test]
    fn a_page_cut_short_in_one_channel_blocks_the_other() {
        let a = ev("a", &[(1, 1), (2, 1)]);
        let b = ev("b", &[(2, 2)]);
        let c = ev("c", &[(1, 2), (2, 3)]);
        // Channel 2 was cut at one row by the page limit: c must wait.
        let rows = vec![(1, 1, a.clone()), (2, 1, a), (1, 2, c.clone())];
        let mut pos = HashMap::from([(1, 0), (2, 0)]);
        assert_eq!(ids(&plan_page(&rows, &mut pos)), ["a"]);
        let rows = vec![(2, 2, b), (1, 2, c.clone()), (2, 3, c)];
        assert_eq!(ids(&plan_page(&rows, &mut pos)), ["b", "c"]);
    }

    #[test]
    fn already_handled_entries_and_trimmed_prefixes() {
        let a = ev("a", &[(1, 5), (2, 9)]);
        let mut pos = HashMap::from([(1, 4), (2, 9)]);
        let acts = plan_page(&[(1, 5, a)], &mut pos);
        assert!(matches!(&acts[..], [Action::Event { earlier: true, .. }]));
        let b = ev("b", &[(1, 20)]);
        let acts = plan_page(&[(1, 20, b)], &mut pos);
        assert!(matches!(acts[0], Action::Jump { channel: 1, to: 19 }));
        assert_eq!(ids(&acts), ["b"]);
    }
}
