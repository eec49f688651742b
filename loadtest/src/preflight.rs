//! Checks of the machine a load test needs: open-file limits, the kernel's
//! connection-related sysctls, and the tools the systems need.
//!
//! Invariant: it only reads and advises; it never changes a setting.

use std::process::Command;

fn sysctl(path: &str) -> String {
    std::fs::read_to_string(format!("/proc/sys/{path}"))
        .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn have(cmd: &str, arg: &str) -> String {
    Command::new(cmd)
        .arg(arg)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("ok")
                .trim()
                .to_owned()
        })
        .unwrap_or_else(|| "MISSING".into())
}

/// One advice line per setting that limits a 10,000-connection run.
pub fn advice(nofile: u64) -> Vec<String> {
    let mut out = Vec::new();
    let num = |p: &str| {
        sysctl(p)
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
    };
    if nofile < 50_000 {
        out.push(format!(
            "open files limit {nofile} (loadtest/run.sh raises it to the hard limit): enough for about {} connections; raise the hard limit (prlimit, limits.conf, LimitNOFILE=) for more",
            nofile.saturating_sub(1000)
        ));
    }
    if num("net/core/somaxconn").is_some_and(|v| v < 4096) {
        out.push(
            "sysctl -w net.core.somaxconn=65535 (accept backlog for connection storms)".into(),
        );
    }
    if num("net/ipv4/tcp_max_syn_backlog").is_some_and(|v| v < 4096) {
        out.push("sysctl -w net.ipv4.tcp_max_syn_backlog=65535".into());
    }
    let range: Vec<u64> = sysctl("net/ipv4/ip_local_port_range")
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    if let [lo, hi] = range[..] {
        if hi - lo < 50_000 {
            out.push(format!(
                "ephemeral ports {lo}-{hi} ({} per source address): the generator spreads over 127.0.0.x (--conns-per-source-ip); or sysctl -w net.ipv4.ip_local_port_range=\"1024 65535\"",
                hi - lo
            ));
        }
    }
    if num("fs/nr_open").is_some_and(|v| v < 200_000) {
        out.push("sysctl -w fs.nr_open=1048576 (lets ulimit -n go above it)".into());
    }
    out
}

/// Prints what the machine has and what to change.
pub fn report(nofile: u64) {
    println!("open files limit (after raising): {nofile}");
    for p in [
        "fs/nr_open",
        "fs/file-max",
        "net/core/somaxconn",
        "net/ipv4/tcp_max_syn_backlog",
        "net/ipv4/ip_local_port_range",
        "net/ipv4/tcp_tw_reuse",
        "net/core/netdev_max_backlog",
    ] {
        println!("{:32} {}", p.replace('/', "."), sysctl(p));
    }
    println!(
        "{:32} {}",
        "tansu",
        have(
            &switchyard_testkit::tansu_bin().to_string_lossy(),
            "--version"
        )
    );
    println!("{:32} {}", "node", have("node", "--version"));
    println!("{:32} {}", "npm", have("npm", "--version"));
    println!("{:32} {}", "psql", have("psql", "--version"));
    println!("{:32} {}", "redis-cli", have("redis-cli", "--version"));
    let adv = advice(nofile);
    if adv.is_empty() {
        println!("\nnothing to change");
    } else {
        println!("\nfor 10,000+ connections:");
        for a in adv {
            println!("  - {a}");
        }
    }
}
