//! Fleet-wide counters in fixed time windows, on the feed's Redis: what
//! quotas shared by every gateway node (e.g. publishes per user per minute)
//! count with.
//!
//! Invariant: a window's key expires after two windows, so counters never
//! accumulate in Redis whatever the callers do; the count is exact within a
//! window (one `INCR`), and a window boundary resets it for everyone at once.

use crate::Publisher;
use std::time::Duration;

impl Publisher {
    /// Adds one to `name`'s counter for the current window of `window` and
    /// returns the new count.
    pub async fn count_in_window(&self, name: &str, window: Duration) -> redis::RedisResult<u64> {
        let secs = window.as_secs().max(1);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let key = format!("{}:count:{name}:{}", self.prefix, now / secs);
        let mut conn = self.conn.clone();
        let (count,): (u64,) = redis::pipe()
            .atomic()
            .incr(&key, 1u64)
            .expire(&key, (2 * secs) as i64)
            .ignore()
            .query_async(&mut conn)
            .await?;
        Ok(count)
    }
}
