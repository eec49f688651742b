//! Splitting a batch for concurrent appends: [`shard`] groups a batch's
//! events so that no channel (and no event id) is in two groups, and keeps
//! each group in batch order. Each group can then be appended in its own
//! transaction at the same time as the others.
//!
//! Invariant: every channel's events are all in one group, in batch order,
//! so appending the groups concurrently assigns each channel the same
//! sequence numbers, in the same order, as appending the batch in one
//! transaction. Events sharing an id are in one group too, so the log's
//! de-duplication sees them together.

use crate::event::NewEvent;
use std::collections::HashMap;

/// Disjoint-set forest over channel ids (union by size, path halving).
struct Sets {
    parent: Vec<usize>,
    size: Vec<usize>,
}

impl Sets {
    fn new() -> Self {
        Sets {
            parent: Vec::new(),
            size: Vec::new(),
        }
    }

    fn add(&mut self) -> usize {
        self.parent.push(self.parent.len());
        self.size.push(1);
        self.parent.len() - 1
    }

    fn find(&mut self, mut x: usize) -> usize {
        while self.parent[x] != x {
            self.parent[x] = self.parent[self.parent[x]];
            x = self.parent[x];
        }
        x
    }

    fn union(&mut self, a: usize, b: usize) {
        let (a, b) = (self.find(a), self.find(b));
        if a == b {
            return;
        }
        let (big, small) = if self.size[a] >= self.size[b] {
            (a, b)
        } else {
            (b, a)
        };
        self.parent[small] = big;
        self.size[big] += self.size[small];
    }
}

/// Splits `events` into at most `max_groups` groups of indexes into
/// `events`, each in batch order, such that no channel and no event id
/// appears in two groups. Groups are balanced by event count as far as the
/// channel sets allow; empty groups are omitted. Events without channels
/// go to the first group.
pub fn shard(events: &[NewEvent], max_groups: usize) -> Vec<Vec<usize>> {
    let max_groups = max_groups.max(1);
    if max_groups == 1 || events.len() < 2 {
        return if events.is_empty() {
            Vec::new()
        } else {
            vec![(0..events.len()).collect()]
        };
    }
    // One set per channel; an event joins its channels, and an event id
    // seen before joins the earlier event's first channel.
    let mut sets = Sets::new();
    let mut of_channel: HashMap<i64, usize> = HashMap::new();
    let mut of_id: HashMap<&str, usize> = HashMap::new();
    let mut first_set: Vec<Option<usize>> = Vec::with_capacity(events.len());
    for ev in events {
        let mut first = None;
        for ch in &ev.channels {
            let s = *of_channel.entry(*ch).or_insert_with(|| sets.add());
            match first {
                None => first = Some(s),
                Some(f) => sets.union(f, s),
            }
        }
        if let Some(f) = first {
            match of_id.get(ev.event_id.as_str()) {
                Some(&earlier) => sets.union(earlier, f),
                None => {
                    of_id.insert(ev.event_id.as_str(), f);
                }
            }
        }
        first_set.push(first);
    }
    // Events per component, then components to groups: largest first, each
    // to the group with the fewest events so far.
    let mut per_root: HashMap<usize, usize> = HashMap::new();
    let roots: Vec<Option<usize>> = first_set.iter().map(|f| f.map(|s| sets.find(s))).collect();
    for r in roots.iter().flatten() {
        *per_root.entry(*r).or_insert(0) += 1;
    }
    let mut comps: Vec<(usize, usize)> = per_root.into_iter().collect();
    comps.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let groups = max_groups.min(comps.len().max(1));
    let mut load = vec![0usize; groups];
    let mut group_of: HashMap<usize, usize> = HashMap::with_capacity(comps.len());
    for (root, n) in comps {
        let g = (0..groups).min_by_key(|&g| (load[g], g)).unwrap_or(0);
        load[g] += n;
        group_of.insert(root, g);
    }
    let mut out: Vec<Vec<usize>> = vec![Vec::new(); groups];
    for (i, r) in roots.iter().enumerate() {
        let g = r.and_then(|r| group_of.get(&r).copied()).unwrap_or(0);
        out[g].push(i);
    }
    out.retain(|g| !g.is_empty());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ev(id: &str, channels: Vec<i64>) -> NewEvent {
        NewEvent {
            event_id: id.into(),
            topic: "t".into(),
            tenant: String::new(),
            user_id: None,
            payload: bytes::Bytes::new(),
            content_type: "application/json".into(),
            created_at_ms: 0,
            expires_at: chrono::Utc::now(),
            channels,
        }
    }

    #[test]
    fn disjoint_channels_spread_and_shared_ones_stay_together() {
        let events = vec![
            ev("a", vec![1]),
            ev("b", vec![2]),
            ev("c", vec![3]),
            ev("d", vec![1, 3]),
            ev("e", vec![4]),
        ];
        let g = shard(&events, 4);
        // {1,3} (a, c, d), {2} (b), {4} (e).
        assert_eq!(g.len(), 3);
        assert!(g.contains(&vec![0, 2, 3]));
        assert!(g.contains(&vec![1]));
        assert!(g.contains(&vec![4]));
        assert_eq!(shard(&events, 1), vec![vec![0, 1, 2, 3, 4]]);
        assert!(shard(&[], 4).is_empty());
    }

    #[test]
    fn a_repeated_event_id_stays_in_one_group() {
        let events = vec![ev("x", vec![1]), ev("y", vec![2]), ev("x", vec![3])];
        let g = shard(&events, 4);
        let with = |i: usize| g.iter().position(|grp| grp.contains(&i));
        assert_eq!(with(0), with(2));
    }

    proptest! {
        /// Every event once; groups in batch order; no channel or id in two
        /// groups; at most `max` groups.
        #[test]
        fn groups_partition_the_batch_by_channel(
            raw in proptest::collection::vec(
                (0u8..20, proptest::collection::btree_set(0i64..30, 0..4)),
                0..200,
            ),
            max in 1usize..8,
        ) {
            let events: Vec<NewEvent> = raw
                .iter()
                .map(|(id, chs)| ev(&id.to_string(), chs.iter().copied().collect()))
                .collect();
            let groups = shard(&events, max);
            prop_assert!(groups.len() <= max);
            let mut seen = vec![false; events.len()];
            let mut channel_group: HashMap<i64, usize> = HashMap::new();
            let mut id_group: HashMap<&str, usize> = HashMap::new();
            for (g, idx) in groups.iter().enumerate() {
                prop_assert!(!idx.is_empty());
                prop_assert!(idx.windows(2).all(|w| w[0] < w[1]), "batch order");
                for &i in idx {
                    prop_assert!(!seen[i], "event {} twice", i);
                    seen[i] = true;
                    for ch in &events[i].channels {
                        prop_assert_eq!(*channel_group.entry(*ch).or_insert(g), g);
                    }
                    if !events[i].channels.is_empty() {
                        prop_assert_eq!(*id_group.entry(events[i].event_id.as_str()).or_insert(g), g);
                    }
                }
            }
            prop_assert!(seen.iter().all(|s| *s));
        }
    }
}
