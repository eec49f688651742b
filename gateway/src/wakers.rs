//! Wake-ups for long-polls, per channel: a long-poll waiting on its channels
//! is woken by live events of those channels only, not by every event of the
//! node.
//!
//! Invariant: a wake-up that arrives between a poll's read and its wait is
//! not lost (each watch keeps one pending permit, `Notify::notify_one`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::Notify;

/// The node's registry of waiting long-polls.
#[derive(Debug, Default)]
pub struct ChannelWakers {
    waiting: Mutex<HashMap<i64, HashMap<u64, Arc<Notify>>>>,
    next: AtomicU64,
}

/// One long-poll's registration; dropping it unregisters.
#[derive(Debug)]
pub struct Watch {
    registry: Arc<ChannelWakers>,
    key: u64,
    channels: Vec<i64>,
    notify: Arc<Notify>,
}

impl ChannelWakers {
    fn lock(&self) -> MutexGuard<'_, HashMap<i64, HashMap<u64, Arc<Notify>>>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers interest in `channels`.
    pub fn watch(self: &Arc<Self>, channels: &[i64]) -> Watch {
        let key = self.next.fetch_add(1, Ordering::Relaxed);
        let notify = Arc::new(Notify::new());
        let mut waiting = self.lock();
        for ch in channels {
            waiting.entry(*ch).or_default().insert(key, notify.clone());
        }
        Watch {
            registry: self.clone(),
            key,
            channels: channels.to_vec(),
            notify,
        }
    }

    /// Wakes the polls waiting on any of `channels`.
    pub fn wake(&self, channels: impl IntoIterator<Item = i64>) {
        let waiting = self.lock();
        if waiting.is_empty() {
            return;
        }
        for ch in channels {
            if let Some(w) = waiting.get(&ch) {
                for n in w.values() {
                    n.notify_one();
                }
            }
        }
    }

    /// Polls registered (for tests and metrics).
    pub fn len(&self) -> usize {
        let waiting = self.lock();
        let mut keys: Vec<u64> = waiting.values().flat_map(|w| w.keys().copied()).collect();
        keys.sort_unstable();
        keys.dedup();
        keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }
}

impl Watch {
    /// Waits for a wake-up (returns at once when one is pending).
    pub async fn woken(&self) {
        self.notify.notified().await;
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let mut waiting = self.registry.lock();
        for ch in &self.channels {
            if let Some(w) = waiting.get_mut(ch) {
                w.remove(&self.key);
                if w.is_empty() {
                    waiting.remove(ch);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn only_the_watched_channels_wake_a_poll() {
        let reg = Arc::new(ChannelWakers::default());
        let w = reg.watch(&[1, 2]);
        reg.wake([3]);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), w.woken())
                .await
                .is_err(),
            "channel 3 must not wake a poll on 1 and 2"
        );
        // Woken before waiting: the permit is kept.
        reg.wake([2]);
        tokio::time::timeout(Duration::from_millis(50), w.woken())
            .await
            .unwrap();
        assert_eq!(reg.len(), 1);
        drop(w);
        assert!(reg.is_empty());
    }
}
