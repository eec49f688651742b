//! Hot reload as an operator sees it: edit the file (in place or by rename),
//! break it, send SIGHUP; the topology in force follows only valid files.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;
use switchyard_channels::{Topology, TopologyHandle};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

fn topo(topic: &str) -> String {
    format!(r#"{{"Hubs":[{{"Name":"C","Channels":[{{"Name":"{topic}","Topic":"{topic}"}}]}}]}}"#)
}

async fn next_generation(rx: &mut watch::Receiver<u64>) -> u64 {
    tokio::time::timeout(Duration::from_secs(10), rx.changed())
        .await
        .expect("no reload within 10 s")
        .unwrap();
    *rx.borrow_and_update()
}

fn replace_by_rename(path: &Path, text: &str) {
    let tmp = path.with_extension("json.swp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test]
async fn follows_valid_edits_and_refuses_invalid_ones() {
    let dir = std::env::temp_dir().join(format!("sy-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("topology.json");
    std::fs::write(&path, topo("A")).unwrap();

    let handle = TopologyHandle::new(Topology::load(&path).unwrap());
    let mut gen = handle.subscribe();
    assert_eq!(*gen.borrow(), 0);
    let before = handle.current();
    let cancel = CancellationToken::new();
    let task = handle.spawn_watcher(path.clone(), cancel.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;

    // In-place rewrite.
    std::fs::write(&path, topo("B")).unwrap();
    assert_eq!(next_generation(&mut gen).await, 1);
    assert!(handle.current().has_topic("B"));
    // A reader holding the old Arc keeps a consistent old topology.
    assert!(before.has_topic("A") && !before.has_topic("B"));

    // An editor that writes a new file and renames it over the old one.
    replace_by_rename(&path, &topo("C"));
    assert_eq!(next_generation(&mut gen).await, 2);
    assert_eq!(handle.current().topics(), vec!["C"]);

    // Invalid files are refused; the old topology stays in force.
    std::fs::write(&path, "{ not json").unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    std::fs::write(
        &path,
        r#"{"Hubs":[{"Name":"C","Channels":[{"Name":"N-[ScopeValue]","Topic":"N"}]}]}"#,
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(*gen.borrow(), 2, "no swap for invalid files");
    assert_eq!(handle.current().topics(), vec!["C"]);
    let err = handle.reload_from(&path).unwrap_err().to_string();
    assert!(
        err.contains("topology.json: Hubs[0].Channels[0].Name"),
        "{err}"
    );
    assert_eq!(handle.current().topics(), vec!["C"]);

    // Fixing the file is picked up.
    replace_by_rename(&path, &topo("D"));
    assert_eq!(next_generation(&mut gen).await, 3);
    assert_eq!(handle.current().topics(), vec!["D"]);

    // SIGHUP reloads even when the content is unchanged.
    let status = std::process::Command::new("kill")
        .args(["-HUP", &std::process::id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(next_generation(&mut gen).await, 4);

    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(2), task)
        .await
        .expect("watcher ends on cancel")
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn reload_from_swaps_only_valid_files() {
    let dir = std::env::temp_dir().join(format!("sy-reload-sync-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("t.yaml");
    std::fs::write(
        &path,
        "Hubs:\n  - Name: C\n    Channels:\n      - {Name: A, Topic: A}\n",
    )
    .unwrap();
    let handle = TopologyHandle::new(Topology::load(&path).unwrap());
    let rx = handle.subscribe();
    std::fs::write(
        &path,
        "Hubs:\n  - Name: C\n    Channels:\n      - {Name: B, Topic: B}\n",
    )
    .unwrap();
    handle.reload_from(&path).unwrap();
    assert_eq!(*rx.borrow(), 1);
    assert!(handle.current().has_topic("B"));
    std::fs::write(
        &path,
        "Hubs:\n  - Name: C\n    Channels:\n      - {Name: B, Topic: B, Typo: 1}\n",
    )
    .unwrap();
    let e = handle.reload_from(&path).unwrap_err().to_string();
    assert!(e.contains("Hubs[0].Channels[0].Typo: unknown field"), "{e}");
    assert!(handle.reload_from(&dir.join("missing.yaml")).is_err());
    assert_eq!(*rx.borrow(), 1);
    assert!(handle.current().has_topic("B"));
    let _ = std::fs::remove_dir_all(&dir);
}
