//! Child processes: spawning a binary with its output in a log file,
//! stopping it, and finding (building) the workspace's binaries; scratch
//! directories for their files.
//!
//! Invariant: a [`Proc`] is SIGKILLed and reaped when its handle drops, so
//! a failing test never leaves servers behind; when it drops during a
//! panic, the tail of its log is printed.

use crate::unique;
use anyhow::Context as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A scratch directory for a stack's files and logs.
pub fn scratch_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(unique(&format!("switchyard-{name}")));
    std::fs::create_dir_all(&d).expect("create scratch dir");
    d
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// Path of a workspace binary, building it (once per test process) so tests
/// always run the current code. With `SWITCHYARD_BIN_DIR` set (the load
/// test's `run.sh`, which has just built them), the binaries are taken from
/// there as they are.
pub fn binary(name: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os("SWITCHYARD_BIN_DIR") {
        return PathBuf::from(dir).join(name);
    }
    static BUILT: Mutex<Vec<String>> = Mutex::new(Vec::new());
    // Test executables live in `<profile>/deps`, the testkit's own binaries
    // (`switchyard-stack`) in `<profile>` itself.
    let profile_dir = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .and_then(|dir| {
            if dir.ends_with("deps") {
                dir.parent().map(Path::to_path_buf)
            } else {
                Some(dir)
            }
        })
        .unwrap_or_else(|| workspace_root().join("target/debug"));
    let path = profile_dir.join(name);
    let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
    if !built.iter().any(|b| b == name) {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let package = name.to_owned();
        let mut cmd = Command::new(cargo);
        cmd.current_dir(workspace_root())
            .args(["build", "--quiet", "-p", &package, "--bin", name]);
        // Build where the running executable came from, whatever
        // CARGO_TARGET_DIR the caller's environment has (or lacks).
        if let Some(target_dir) = profile_dir.parent() {
            cmd.arg("--target-dir").arg(target_dir);
        }
        if profile_dir.ends_with("release") {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo build");
        assert!(status.success(), "cargo build of {name} failed");
        built.push(name.to_owned());
    }
    path
}

/// A child process killed (SIGKILL) on drop; its output goes to a log file.
#[derive(Debug)]
pub struct Proc {
    name: String,
    child: Option<Child>,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(name: &str, mut cmd: Command, dir: &Path) -> anyhow::Result<Proc> {
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("opening {}", log.display()))?;
        let err = out.try_clone()?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("spawning {name} ({:?})", cmd.get_program()))?;
        Ok(Proc {
            name: name.to_owned(),
            child: Some(child),
            log,
        })
    }

    /// The name it was spawned under (its log is `<name>.log`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The pid, until the process is killed, stopped or seen to exit.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends SIGTERM (graceful drain).
    pub fn term(&self) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .stderr(Stdio::null())
                .status();
        }
    }

    /// SIGTERM, then SIGKILL if it has not exited after `grace`.
    pub fn stop(&mut self, grace: Duration) {
        if self.child.is_none() {
            return;
        }
        self.term();
        // A no-op when it exited within the grace period.
        let _ = self.wait_exit(grace);
        self.kill9();
    }

    /// Waits for exit; returns the exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    self.child = None;
                    return status.code();
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `n` bytes of the log (from a character boundary), for
    /// error messages.
    pub fn log_tail(&self, n: usize) -> String {
        tail(&self.log_text(), n).to_owned()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.child.is_some() && std::thread::panicking() {
            eprintln!(
                "--- log of {} ({}) ---\n{}",
                self.name,
                self.log.display(),
                self.log_tail(4000)
            );
        }
        self.kill9();
    }
}

fn tail(s: &str, n: usize) -> &str {
    let start = s.len().saturating_sub(n);
    let mut i = start;
    while !s.is_char_boundary(i) {
        i += 1;
    }
    &s[i..]
}
