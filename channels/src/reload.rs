//! Hot reload: [`TopologyHandle`] holds the current [`Topology`] and swaps it
//! atomically when the file changes (inotify on the file's directory, so
//! editors that replace the file and Kubernetes ConfigMap symlink swaps are
//! seen), on SIGHUP, and on a slow poll as a fallback.
//!
//! Invariant: a new file replaces the current topology only after it has
//! validated completely; an invalid file is refused, logged and counted, and
//! the previous topology stays in force.

use crate::topology::{Topology, TopologyError};
use arc_swap::ArcSwap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Counter of reload attempts, by `result` ("ok" | "error").
pub const RELOADS: &str = "switchyard_topology_reloads_total";

const DEBOUNCE: Duration = Duration::from_millis(200);
const POLL: Duration = Duration::from_secs(10);

/// Shared, hot-swappable topology.
#[derive(Clone)]
pub struct TopologyHandle {
    current: Arc<ArcSwap<Topology>>,
    generation: Arc<watch::Sender<u64>>,
}

impl std::fmt::Debug for TopologyHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TopologyHandle")
            .field("generation", &*self.generation.borrow())
            .finish()
    }
}

impl TopologyHandle {
    pub fn new(t: Topology) -> Self {
        let (tx, _) = watch::channel(0);
        TopologyHandle {
            current: Arc::new(ArcSwap::from_pointee(t)),
            generation: Arc::new(tx),
        }
    }

    /// The topology in force.
    pub fn current(&self) -> Arc<Topology> {
        self.current.load_full()
    }

    /// A receiver whose value bumps on every successful swap.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Swaps in `t` and notifies subscribers.
    pub fn replace(&self, t: Topology) {
        self.current.store(Arc::new(t));
        self.generation.send_modify(|g| *g += 1);
    }

    /// Validates `path` and swaps it in; on error the old topology stays.
    pub fn reload_from(&self, path: &Path) -> Result<(), TopologyError> {
        match Topology::load(path) {
            Ok(t) => {
                self.replace(t);
                metrics::counter!(RELOADS, "result" => "ok").increment(1);
                tracing::info!(path = %path.display(), "topology reloaded");
                Ok(())
            }
            Err(e) => {
                metrics::counter!(RELOADS, "result" => "error").increment(1);
                tracing::error!(path = %path.display(), error = %e, "new topology refused; the previous one stays in force");
                Err(e)
            }
        }
    }

    /// Watches `path` until `cancel` fires, reloading when its content changes.
    pub fn spawn_watcher(
        &self,
        path: PathBuf,
        cancel: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let handle = self.clone();
        tokio::spawn(async move { handle.watch(path, cancel).await })
    }

    async fn watch(self, path: PathBuf, cancel: CancellationToken) {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let notify_tx = tx.clone();
        let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if res.is_ok() {
                let _ = notify_tx.try_send(());
            }
        });
        let _watcher = match watcher {
            Ok(mut w) => {
                use notify::Watcher as _;
                if let Err(e) = w.watch(&dir, notify::RecursiveMode::NonRecursive) {
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot watch the topology directory; relying on SIGHUP and polling");
                }
                Some(w)
            }
            Err(e) => {
                tracing::warn!(error = %e, "file watching unavailable; relying on SIGHUP and polling");
                None
            }
        };
        #[cfg(unix)]
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let mut last = std::fs::read(&path).ok();
        let mut poll = tokio::time::interval(POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            #[cfg(unix)]
            let hup_fut = async {
                match hup.as_mut() {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            #[cfg(not(unix))]
            let hup_fut = std::future::pending::<()>();
            let forced = tokio::select! {
                _ = cancel.cancelled() => return,
                _ = rx.recv() => false,
                _ = poll.tick() => false,
                _ = hup_fut => true,
            };
            // Let a burst of events (write, rename, chmod) settle.
            tokio::time::sleep(DEBOUNCE).await;
            while rx.try_recv().is_ok() {}
            let now = std::fs::read(&path).ok();
            if now.is_none() || (!forced && now == last) {
                continue;
            }
            last = now;
            let _ = self.reload_from(&path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = r#"{"Hubs":[{"Name":"C","Channels":[{"Name":"A","Topic":"A"}]}]}"#;
    const B: &str = r#"{"Hubs":[{"Name":"C","Channels":[{"Name":"B","Topic":"B"}]}]}"#;

    #[tokio::test]
    async fn reloads_valid_files_and_keeps_the_old_one_otherwise() {
        let dir = std::env::temp_dir().join(format!("sy-topo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("topology.json");
        std::fs::write(&path, A).unwrap();
        let h = TopologyHandle::new(Topology::load(&path).unwrap());
        let mut gen = h.subscribe();
        let cancel = CancellationToken::new();
        let task = h.spawn_watcher(path.clone(), cancel.clone());
        tokio::time::sleep(Duration::from_millis(300)).await;

        // An editor-style replace: write elsewhere, rename over.
        let tmp = dir.join("topology.json.tmp");
        std::fs::write(&tmp, B).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        tokio::time::timeout(Duration::from_secs(5), gen.changed())
            .await
            .unwrap()
            .unwrap();
        assert!(h.current().has_topic("B") && !h.current().has_topic("A"));

        std::fs::write(&path, "{ not valid").unwrap();
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert!(
            h.current().has_topic("B"),
            "invalid file refused, old topology kept"
        );
        assert!(h.reload_from(&path).is_err());

        cancel.cancel();
        task.await.unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
