//! CPU and memory of processes, read from `/proc/<pid>/stat` and
//! `/proc/<pid>/status`, and the machine's busy share from `/proc/stat`.
//!
//! Invariant: CPU is the process's own user + system time (all threads, not
//! its children), so a delta between two readings is the CPU it spent in
//! between; memory is resident set size (`VmRSS`), the figure the idle
//! scenario divides by connections.

use std::sync::OnceLock;

/// One reading of one process.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcSample {
    pub cpu_s: f64,
    pub rss_bytes: u64,
    pub hwm_bytes: u64,
}

fn clock_ticks() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// Parses utime + stime (seconds) from the text of `/proc/<pid>/stat`.
pub fn parse_stat_cpu(stat: &str) -> Option<f64> {
    // The command name (field 2) may contain spaces and parentheses.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14, stime 15.
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks())
}

fn status_kib(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Reads a process; `None` once it is gone.
pub fn sample(pid: u32) -> Option<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    Some(ProcSample {
        cpu_s: parse_stat_cpu(&stat)?,
        rss_bytes: status_kib(&status, "VmRSS:").unwrap_or(0) * 1024,
        hwm_bytes: status_kib(&status, "VmHWM:").unwrap_or(0) * 1024,
    })
}

/// This process.
pub fn sample_self() -> ProcSample {
    sample(std::process::id()).unwrap_or_default()
}

/// This process and its child processes running the same binary (the
/// fleet workers): the generator's pids, for its CPU.
pub fn generator_pids() -> Vec<u32> {
    let me = std::process::id();
    let mut out = vec![me];
    let Ok(exe) = std::env::current_exe() else {
        return out;
    };
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Field 4 (ppid) follows the command name, which may contain spaces.
        let ppid = stat
            .rfind(')')
            .and_then(|i| stat.get(i + 2..))
            .and_then(|rest| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(me)
            && std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|p| p == exe)
        {
            out.push(pid);
        }
    }
    out
}

/// Jiffies (busy, total) over all CPUs from `/proc/stat`.
pub fn machine_jiffies() -> (u64, u64) {
    let Ok(s) = std::fs::read_to_string("/proc/stat") else {
        return (0, 0);
    };
    let Some(line) = s.lines().next() else {
        return (0, 0);
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total - idle.min(total), total)
}

/// Busy share (0..=100 % of all cores) between two [`machine_jiffies`].
pub fn busy_pct(before: (u64, u64), after: (u64, u64)) -> f64 {
    let busy = after.0.saturating_sub(before.0) as f64;
    let total = after.1.saturating_sub(before.1) as f64;
    if total > 0.0 {
        100.0 * busy / total
    } else {
        0.0
    }
}

/// Resident memory of `pid` and its direct children (a PostgreSQL server:
/// the postmaster and its backends); `None` once `pid` is gone.
pub fn tree_rss(pid: u32) -> Option<u64> {
    let own = sample(pid)?.rss_bytes;
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Some(own);
    };
    let children: u64 = dir
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| {
            std::fs::read_to_string(format!("/proc/{child}/stat"))
                .ok()
                .and_then(|st| parent_of(&st))
                == Some(pid)
        })
        .filter_map(|child| sample(child).map(|s| s.rss_bytes))
        .sum();
    Some(own + children)
}

/// The parent pid (field 4) from the text of `/proc/<pid>/stat`.
fn parent_of(stat: &str) -> Option<u32> {
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Pids of running processes whose `comm` is `name` (e.g. `postgres`).
pub fn pids_named(name: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .map(|c| c.trim() == name)
                .unwrap_or(false)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_odd_command_names_parses() {
        let stat = "1234 (tokio (rt) x) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 9 0 100 1000 200 18446744073709551615";
        let cpu = parse_stat_cpu(stat).expect("parses");
        assert!((cpu - 300.0 / clock_ticks()).abs() < 1e-9);
        assert_eq!(parent_of(stat), Some(1));
    }

    #[test]
    fn this_process_is_readable() {
        let s = sample_self();
        assert!(s.rss_bytes > 0);
        assert!(busy_pct((0, 0), machine_jiffies()) >= 0.0);
    }
}
