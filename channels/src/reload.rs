//! Hot reload: [`TopologyHandle`] holds the current [`Topology`] and swaps it
//! atomically when the file changes (a watch on the file's directory, so
//! editors that replace the file and Kubernetes ConfigMap symlink swaps are
//! seen, debounced by 200 ms), on SIGHUP, and on a slow poll as a fallback.
//! Readers take an `Arc<Topology>` and keep resolving against it while a swap
//! happens; subscribers of the generation counter re-resolve after a swap.
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

/// Counter of reload attempts, by `result` ([`RELOAD_RESULTS`]).
pub const RELOADS: &str = "switchyard_topology_reloads_total";
/// The HELP text of [`RELOADS`] (the binaries' metric catalogs use it).
pub const RELOADS_HELP: &str = "Topology file reloads, by result: ok (swapped in) or error (refused; the previous topology stays).";
/// The values of [`RELOADS`]' `result` label.
pub const RELOAD_RESULTS: [&str; 2] = [RELOAD_OK, RELOAD_ERROR];
const RELOAD_OK: &str = "ok";
const RELOAD_ERROR: &str = "error";

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
        let result = std::fs::read(path)
            .map_err(|error| TopologyError::Io {
                source_name: path.display().to_string(),
                error,
            })
            .and_then(|bytes| parse(path, &bytes));
        self.apply(path, result)
    }

    fn apply(
        &self,
        path: &Path,
        result: Result<Topology, TopologyError>,
    ) -> Result<(), TopologyError> {
        match result {
            Ok(t) => {
                let (channels, topics) = (t.channel_count(), t.topics().len());
                self.replace(t);
                metrics::counter!(RELOADS, "result" => RELOAD_OK).increment(1);
                tracing::info!(
                    path = %path.display(),
                    generation = *self.generation.borrow(),
                    channels,
                    topics,
                    "topology reloaded"
                );
                Ok(())
            }
            Err(e) => {
                metrics::counter!(RELOADS, "result" => RELOAD_ERROR).increment(1);
                tracing::error!(
                    path = %path.display(),
                    error = %e,
                    "new topology refused; the previous one stays in force"
                );
                Err(e)
            }
        }
    }

    /// Watches `path` (its directory, so editors that write a new file and
    /// rename it over the old one, and ConfigMap symlink swaps, are seen) and
    /// SIGHUP, with a slow poll as a fallback; reloads when the content
    /// changes (SIGHUP always reloads). Ends when `cancel` is cancelled.
    pub fn spawn_watcher(
        &self,
        path: PathBuf,
        cancel: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(self.watcher(path, cancel))
    }

    /// The watcher as a future, for callers that own their tasks (spawn it
    /// on a tracker); it ends when `cancel` fires.
    pub fn watcher(
        &self,
        path: PathBuf,
        cancel: CancellationToken,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let handle = self.clone();
        async move { handle.watch(path, cancel).await }
    }

    async fn watch(self, path: PathBuf, cancel: CancellationToken) {
        // Capacity 1: one pending "something changed" is all the loop needs.
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
                match w.watch(&dir, notify::RecursiveMode::NonRecursive) {
                    Ok(()) => {
                        tracing::debug!(dir = %dir.display(), "watching the topology directory")
                    }
                    Err(e) => {
                        tracing::warn!(dir = %dir.display(), error = %e, "cannot watch the topology directory; relying on SIGHUP and polling")
                    }
                }
                Some(w)
            }
            Err(e) => {
                tracing::warn!(error = %e, "file watching unavailable; relying on SIGHUP and polling");
                None
            }
        };
        #[cfg(unix)]
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP");
                None
            }
        };
        let mut last = std::fs::read(&path).ok();
        let mut poll = tokio::time::interval(POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        poll.tick().await;
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
            // Let a burst of events (truncate, write, rename, chmod) settle.
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(DEBOUNCE) => {}
            }
            while rx.try_recv().is_ok() {}
            let bytes = match tokio::fs::read(&path).await {
                Ok(b) => b,
                Err(e) => {
                    // Mid-swap or deleted: keep the current topology; the
                    // next event or poll tries again.
                    tracing::debug!(path = %path.display(), error = %e, "topology file unreadable; keeping the current topology");
                    continue;
                }
            };
            if !forced && last.as_deref() == Some(bytes.as_slice()) {
                continue;
            }
            // Validation of a large file is CPU work: keep it off the runtime.
            let p = path.clone();
            let (result, bytes) = match tokio::task::spawn_blocking(move || {
                let result = parse(&p, &bytes);
                (result, bytes)
            })
            .await
            {
                Ok(done) => done,
                Err(e) => {
                    tracing::error!(error = %e, "topology validation task failed; keeping the current topology");
                    continue;
                }
            };
            last = Some(bytes);
            let _ = self.apply(&path, result);
        }
    }
}

fn parse(path: &Path, bytes: &[u8]) -> Result<Topology, TopologyError> {
    let text = std::str::from_utf8(bytes).map_err(|e| TopologyError::Io {
        source_name: path.display().to_string(),
        error: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
    })?;
    Topology::from_text(text, path)
}
