//! The gateway's modules import each other in one direction only: each
//! module may use only modules listed after it in `LAYERS` (the order of
//! `src/lib.rs`'s documentation); unit tests (`#[cfg(test)]`) are exempt. Run `cargo test -p switchyard-gateway
//! --test module_graph` to check; a new module must be added here.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::Path;

/// From the edge inwards.
const LAYERS: &[&str] = &[
    "api",
    "server",
    "poll",
    "session",
    "livefeed",
    "publish",
    "presence",
    "occupancy",
    "fanout",
    "catchup",
    "subscribe",
    "replay",
    "golive",
    "subscription",
    "connections",
    "outbound",
    "wakers",
    "http",
    "config",
    "auth",
    "error",
    "protocol",
    "metrics",
];

/// `crate::<module>` references in a file (its own module excluded).
fn uses(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        // `crate::{a, b}` lists.
        if name.is_empty() && rest.starts_with('{') {
            let end = rest.find('}').unwrap_or(rest.len());
            for part in rest[1..end].split(',') {
                let n: String = part
                    .trim()
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !n.is_empty() {
                    out.push(n);
                }
            }
        } else if !name.is_empty() {
            out.push(name);
        }
    }
    out
}

fn module_files(src: &Path) -> BTreeMap<String, Vec<std::path::PathBuf>> {
    let mut files: BTreeMap<String, Vec<std::path::PathBuf>> = BTreeMap::new();
    for entry in std::fs::read_dir(src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if path.is_dir() {
            for f in std::fs::read_dir(&path).unwrap() {
                files
                    .entry(name.clone())
                    .or_default()
                    .push(f.unwrap().path());
            }
        } else if name != "lib" && name != "main" {
            files.entry(name).or_default().push(path);
        }
    }
    files
}

#[test]
fn modules_import_each_other_in_one_direction() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let rank = |m: &str| LAYERS.iter().position(|l| *l == m);
    let mut violations = Vec::new();
    for (module, files) in module_files(&src) {
        let Some(r) = rank(&module) else {
            panic!("module {module} is not in LAYERS; add it where it belongs");
        };
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap();
            // Unit tests may use anything.
            let text = text.split("#[cfg(test)]").next().unwrap_or("");
            for used in uses(text) {
                // `crate::Node` and other root items belong to lib.rs (the
                // composition root), which only `api`, `server` and
                // `session` may use.
                match rank(&used) {
                    Some(u) if u <= r && used != module => violations.push(format!(
                        "{} uses crate::{used}, which is not below {module}",
                        f.display()
                    )),
                    None if used == "Node"
                        && !matches!(module.as_str(), "api" | "server" | "session") =>
                    {
                        violations.push(format!("{} uses the node root", f.display()))
                    }
                    _ => {}
                }
            }
        }
    }
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}
