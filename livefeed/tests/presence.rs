//! Presence and fleet connection counts against the machine's Redis: the
//! scripts' answers (who announces a join or a leave), the counts readers
//! see, expiry of a node that stops heartbeating, and the atomic quota
//! reservation. Each test uses its own key prefix.

#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use std::time::Duration;
use switchyard_livefeed::occupancy::{Ask, Reservation};
use switchyard_livefeed::presence::HeldUser;
use switchyard_livefeed::Publisher;

const NODES: [&str; 2] = [
    "00000000000000000000000000000000",
    "11111111111111111111111111111111",
];

async fn publisher() -> Publisher {
    let prefix = format!("sy_presence_{}", uuid::Uuid::new_v4().simple());
    Publisher::connect(&switchyard_testkit::redis_base(), &prefix, "ep", None)
        .await
        .unwrap()
}

/// Runs one script command and answers its integer.
async fn run(p: &Publisher, cmd: redis::Cmd) -> i64 {
    let mut pipe = redis::pipe();
    pipe.add_command(cmd);
    let (n,): (i64,) = p.run_pipeline(&pipe).await.unwrap();
    n
}

async fn set(
    p: &Publisher,
    node: usize,
    user: &str,
    n: usize,
    node_total: usize,
    ttl: Duration,
) -> i64 {
    let cmd = if n > 0 {
        p.presence_join_cmd(
            "t/C/Room",
            NODES[node],
            &HeldUser {
                user,
                connections: n,
                info: Some(r#"{"u":1}"#),
            },
            node_total,
            ttl,
        )
    } else {
        p.presence_leave_cmd("t/C/Room", NODES[node], user, node_total, ttl)
    };
    run(p, cmd).await
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Whatever the order of connections and disconnections over two
    /// nodes, exactly the transitions of a user's fleet-wide count between
    /// 0 and more are announced, once each, and readers see every user
    /// with connections, with their totals.
    #[test]
    fn joins_and_leaves_are_announced_exactly_on_the_fleet_transitions(
        ops in proptest::collection::vec((0usize..2, 0usize..3, any::<bool>()), 1..30)
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let p = publisher().await;
            let ttl = Duration::from_secs(30);
            let mut counts = [[0usize; 3]; 2];
            for (node, user, connect) in ops {
                let before: usize = counts[0][user] + counts[1][user];
                if connect {
                    counts[node][user] += 1;
                } else if counts[node][user] > 0 {
                    counts[node][user] -= 1;
                } else {
                    continue;
                }
                let after: usize = counts[0][user] + counts[1][user];
                let node_total: usize = counts[node].iter().sum();
                let name = format!("u{user}");
                let announced = set(&p, node, &name, counts[node][user], node_total, ttl).await;
                let expected = (before == 0) != (after == 0);
                prop_assert_eq!(announced == 1, expected, "user {} {} -> {}", name, before, after);
            }
            let read = p.presence_read(&["t/C/Room"], 100).await.unwrap();
            let present: Vec<(String, u64)> = (0..3)
                .filter(|u| counts[0][*u] + counts[1][*u] > 0)
                .map(|u| (format!("u{u}"), (counts[0][u] + counts[1][u]) as u64))
                .collect();
            let got: Vec<(String, u64)> = read[0].members.iter().map(|m| (m.user.clone(), m.connections)).collect();
            prop_assert_eq!(&got, &present);
            prop_assert_eq!(read[0].users, present.len() as u64);
            let total: usize = counts.iter().flatten().sum();
            prop_assert_eq!(read[0].connections, total as u64);
            prop_assert!(!read[0].truncated);
            Ok(())
        })?;
    }
}

/// A node that stops heartbeating: its members vanish from reads after the
/// TTL, one sweep (not two) removes and answers each, and a user also on a
/// live node stays.
#[tokio::test]
async fn a_silent_nodes_members_expire_and_are_swept_once() {
    let p = publisher().await;
    let ttl = Duration::from_millis(3000);
    assert_eq!(set(&p, 0, "dead-only", 1, 2, ttl).await, 1);
    assert_eq!(set(&p, 0, "both", 1, 2, ttl).await, 1);
    assert_eq!(set(&p, 1, "both", 1, 2, ttl).await, 0);
    assert_eq!(set(&p, 1, "alive", 1, 2, ttl).await, 1);
    let read = p.presence_read(&["t/C/Room"], 1).await.unwrap();
    assert_eq!((read[0].users, read[0].connections), (3, 4));
    assert_eq!(read[0].members.len(), 1);
    assert!(read[0].truncated);
    // Node 1 heartbeats; node 0 is silent past the TTL.
    let deadline = tokio::time::Instant::now() + ttl + Duration::from_millis(500);
    while tokio::time::Instant::now() < deadline {
        let mut pipe = redis::pipe();
        let held = [
            HeldUser {
                user: "both",
                connections: 1,
                info: None,
            },
            HeldUser {
                user: "alive",
                connections: 1,
                info: None,
            },
        ];
        p.presence_heartbeat(&mut pipe, "t/C/Room", NODES[1], &held, 2, ttl);
        p.run_pipeline::<()>(&pipe).await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let read = p.presence_read(&["t/C/Room"], 10).await.unwrap();
    let members: Vec<(&str, u64)> = read[0]
        .members
        .iter()
        .map(|m| (m.user.as_str(), m.connections))
        .collect();
    assert_eq!(members, vec![("alive", 1), ("both", 1)]);
    assert_eq!(read[0].connections, 2);
    let sweep = |p: &Publisher| {
        let mut pipe = redis::pipe();
        pipe.add_command(p.presence_sweep_cmd("t/C/Room"));
        pipe
    };
    let (gone,): (Vec<String>,) = p.run_pipeline(&sweep(&p)).await.unwrap();
    assert_eq!(gone, vec!["dead-only"]);
    let (again,): (Vec<String>,) = p.run_pipeline(&sweep(&p)).await.unwrap();
    assert!(again.is_empty());
    let counts = p.presence_counts(&["t/C/Room"]).await.unwrap();
    assert_eq!((counts[0].users, counts[0].connections), (2, 2));
}

/// The fleet-wide reservation counts other nodes' live counts, refuses
/// past the limit without writing, and stops counting a silent node after
/// the TTL.
#[tokio::test]
async fn reservations_count_other_nodes_until_they_expire() {
    let p = publisher().await;
    let ttl = Duration::from_millis(1500);
    let ask = |here: usize| Ask {
        user: "u",
        user_here: here,
        user_limit: 3,
        tenant: Some("t"),
        tenant_here: here,
        tenant_limit: 10,
    };
    assert_eq!(
        p.occupancy_reserve(NODES[0], &ask(1), ttl).await.unwrap(),
        Reservation::Admitted
    );
    assert_eq!(
        p.occupancy_reserve(NODES[0], &ask(2), ttl).await.unwrap(),
        Reservation::Admitted
    );
    assert_eq!(
        p.occupancy_reserve(NODES[1], &ask(1), ttl).await.unwrap(),
        Reservation::Admitted
    );
    assert_eq!(
        p.occupancy_reserve(NODES[1], &ask(2), ttl).await.unwrap(),
        Reservation::UserFull { elsewhere: 2 }
    );
    let tenant_ask = Ask {
        user: "v",
        user_here: 1,
        user_limit: 0,
        tenant: Some("t"),
        tenant_here: 9,
        tenant_limit: 10,
    };
    assert_eq!(
        p.occupancy_reserve(NODES[1], &tenant_ask, ttl)
            .await
            .unwrap(),
        Reservation::TenantFull { elsewhere: 2 }
    );
    // Node 0 goes silent: after the TTL its two no longer count.
    tokio::time::sleep(ttl + Duration::from_millis(200)).await;
    assert_eq!(
        p.occupancy_reserve(NODES[1], &ask(3), ttl).await.unwrap(),
        Reservation::Admitted
    );
}
