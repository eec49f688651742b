//! Redis channel names of the live feed: one channel per topic under a
//! deployment prefix, so several deployments can share one Redis.
//!
//! Invariant: every channel [`live_channel`] names under a prefix matches
//! [`live_pattern`] of that prefix, and no other prefix's pattern.

/// The Redis channel carrying live events of `topic`.
pub fn live_channel(prefix: &str, topic: &str) -> String {
    format!("{prefix}:live:{topic}")
}

/// The pattern matching every live channel under `prefix`.
pub fn live_pattern(prefix: &str) -> String {
    format!("{prefix}:live:*")
}

/// The channel of control messages between gateway nodes: outside the
/// live pattern, so the feed never mistakes one for an event.
pub fn control_channel(prefix: &str) -> String {
    format!("{prefix}:control")
}

/// The channel of presence events (joins and leaves) between gateway
/// nodes: outside the live pattern.
pub fn presence_events_channel(prefix: &str) -> String {
    format!("{prefix}:presence")
}

/// The stem of a channel's presence keys (`channel` is its log key).
pub fn presence_key(prefix: &str, channel: &str) -> String {
    format!("{prefix}:presence:{channel}")
}

/// The key of a user's or tenant's connections over the fleet.
pub fn occupancy_key(prefix: &str, holder: &str, name: &str) -> String {
    format!("{prefix}:occupancy:{holder}:{name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_match_their_prefix_pattern_only() {
        assert_eq!(live_channel("sy", "News"), "sy:live:News");
        assert_eq!(live_pattern("sy"), "sy:live:*");
        let channel = live_channel("sy", "News");
        let stem = |pattern: String| pattern.trim_end_matches('*').to_owned();
        assert!(channel.starts_with(&stem(live_pattern("sy"))));
        assert!(!channel.starts_with(&stem(live_pattern("s"))));
        assert!(!control_channel("sy").starts_with(&stem(live_pattern("sy"))));
        assert!(!presence_events_channel("sy").starts_with(&stem(live_pattern("sy"))));
    }
}
