//! The soak's attackers: tasks that run testkit's attacks
//! ([`switchyard_testkit::attack`]) one after another against a random
//! gateway while the well-behaved fleet is served, and tally what the node
//! did against what it should do.
//!
//! Invariant: an attack never shares a connection or a user with a
//! well-behaved client, and every attack is bounded in time, so attackers
//! can only hurt the fleet through the node, which is what the soak checks.

use crate::event::{product_code, SCOPED_TOPIC};
use crate::verify::ConnState;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use switchyard_testkit::attack::{self, Outcome};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// The attacks, in the order each attacker cycles through them.
const ATTACKS: [&str; 7] = [
    "fragment flood",
    "slowloris",
    "malformed frames",
    "expired token",
    "forged cursor",
    "poll flood",
    "stalled reader",
];

/// What one kind of attack met.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct AttackTally {
    pub runs: u64,
    /// The node answered as it should (see [`judge`]).
    pub expected: u64,
    /// It did something else (first few in `samples`).
    pub unexpected: u64,
    /// The attack could not reach a node (it was down for a fault).
    pub unreachable: u64,
    pub samples: Vec<String>,
}

/// All attackers' findings.
#[derive(Debug, Default)]
pub(super) struct Hostile {
    tallies: Mutex<BTreeMap<&'static str, AttackTally>>,
    /// Forged cursors the node trusted (`recovered: true`): a security bug.
    pub(super) forged_trusted: AtomicU64,
}

impl Hostile {
    pub(super) fn tallies(&self) -> BTreeMap<String, AttackTally> {
        self.tallies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    fn note(&self, attack: &'static str, verdict: Verdict) {
        let mut g = self.tallies.lock().unwrap_or_else(|p| p.into_inner());
        let t = g.entry(attack).or_default();
        t.runs += 1;
        match verdict {
            Verdict::Expected => t.expected += 1,
            Verdict::Unreachable => t.unreachable += 1,
            Verdict::Unexpected(why) => {
                t.unexpected += 1;
                if t.samples.len() < 5 {
                    t.samples.push(why);
                }
            }
        }
    }
}

enum Verdict {
    Expected,
    Unexpected(String),
    Unreachable,
}

/// What the attackers need.
#[derive(Clone)]
pub(super) struct AttackPlan {
    pub(super) nodes: Vec<SocketAddr>,
    pub(super) products: u32,
    pub(super) header_timeout: Duration,
    /// Genuine cursors to forge from: the well-behaved clients' states.
    pub(super) victims: Vec<Arc<ConnState>>,
    pub(super) token_ttl_s: i64,
}

/// Starts `n` attackers; they stop when `stop` turns true.
pub(super) fn spawn(
    n: usize,
    plan: AttackPlan,
    hostile: Arc<Hostile>,
    stop: watch::Receiver<bool>,
) -> JoinSet<()> {
    let mut set = JoinSet::new();
    for i in 0..n {
        set.spawn(attacker(i, plan.clone(), hostile.clone(), stop.clone()));
    }
    set
}

async fn attacker(
    i: usize,
    plan: AttackPlan,
    hostile: Arc<Hostile>,
    mut stop: watch::Receiver<bool>,
) {
    let product = product_code(i as u32 % plan.products.max(1));
    let token = switchyard_testkit::token(
        &format!("hostile-{i}"),
        &[product.as_str()],
        &[],
        plan.token_ttl_s,
    );
    let mut round = i;
    while !*stop.borrow() {
        let attack = ATTACKS[round % ATTACKS.len()];
        round += 1;
        let node = plan.nodes[rand::random::<u64>() as usize % plan.nodes.len()];
        let run = one(attack, node, &token, &plan, &hostile);
        let verdict = tokio::select! {
            _ = stop.changed() => return,
            v = tokio::time::timeout(Duration::from_secs(60), run) => match v {
                Ok(v) => v,
                Err(_) => Verdict::Unexpected("the attack was still running after 60 s".into()),
            },
        };
        hostile.note(attack, verdict);
        let pause = Duration::from_millis(200 + rand::random::<u64>() % 800);
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

/// Runs one attack and judges the node's answer.
async fn one(
    attack: &'static str,
    node: SocketAddr,
    token: &str,
    plan: &AttackPlan,
    hostile: &Hostile,
) -> Verdict {
    let url = format!("ws://{node}/v1/ws");
    let limit = Duration::from_secs(20);
    let res = match attack {
        "fragment flood" => attack::fragment_flood(&url, token, 30_000, 20, limit).await,
        "slowloris" => attack::slowloris(node, plan.header_timeout + limit).await,
        "malformed frames" => attack::malformed_frames(&url, token, limit).await,
        "expired token" => {
            let expired = switchyard_testkit::token("hostile-expired", &["P0"], &[], -120);
            attack::with_token(&url, &expired, limit).await
        }
        "forged cursor" => {
            let Some(forged) = forge(&plan.victims) else {
                // No client has a cursor yet.
                return Verdict::Expected;
            };
            match attack::subscribe_with_cursor(&url, token, SCOPED_TOPIC, &forged).await {
                Ok(reply) if reply["type"] == "subscribed" && reply["recovered"] == false => {
                    return Verdict::Expected
                }
                Ok(reply) if reply["recovered"] == true => {
                    hostile.forged_trusted.fetch_add(1, Relaxed);
                    return Verdict::Unexpected(format!("forged cursor trusted: {reply}"));
                }
                Ok(reply) => return Verdict::Unexpected(format!("reply {reply}")),
                Err(e) => Err(e),
            }
        }
        "poll flood" => attack::poll_flood(node, token, SCOPED_TOPIC, 50, 1000).await,
        _ => attack::stalled_reader(&url, token, SCOPED_TOPIC, Duration::from_secs(10)).await,
    };
    match res {
        Err(e) => {
            let text = format!("{e:#}");
            if text.contains("refused") || text.contains("Connection reset") {
                Verdict::Unreachable
            } else {
                Verdict::Unexpected(text.chars().take(200).collect())
            }
        }
        Ok(outcome) => judge(attack, &outcome, plan.header_timeout),
    }
}

/// Whether the node answered an attack as it should.
fn judge(attack: &str, o: &Outcome, header_timeout: Duration) -> Verdict {
    let ok = match (attack, o) {
        // too_large and close 1009; a reset after the close is fine too.
        ("fragment flood", Outcome::Closed(1009, _)) => true,
        ("fragment flood", Outcome::Dropped(_)) => true,
        ("slowloris", Outcome::Dropped(d)) => *d <= header_timeout + Duration::from_secs(3),
        // Errors for the bad frames and the ping still answered, or a
        // protocol close for the binary garbage.
        ("malformed frames", Outcome::Answered(_)) => true,
        ("malformed frames", Outcome::Closed(code, _)) => matches!(code, 1002 | 1003 | 1007 | 1008),
        ("expired token", Outcome::Refused(401)) => true,
        ("poll flood", Outcome::Statuses(s)) => attack::unexpected_statuses(s).is_empty(),
        // Held (its queue never filled) or closed for stalling: both bounded.
        ("stalled reader", _) => true,
        _ => false,
    };
    if ok {
        Verdict::Expected
    } else {
        Verdict::Unexpected(format!("{o:?}").chars().take(200).collect())
    }
}

/// A cursor rewound to the start of retention and re-encoded without the
/// fleet's key, from a well-behaved client's genuine one.
fn forge(victims: &[Arc<ConnState>]) -> Option<String> {
    let start = rand::random::<u64>() as usize % victims.len().max(1);
    let genuine = victims
        .iter()
        .cycle()
        .skip(start)
        .take(victims.len())
        .find_map(|c| c.cursor.lock().unwrap_or_else(|p| p.into_inner()).clone())?;
    let decoded = switchyard_cursorlog::Cursor::decode(&genuine).ok()?;
    Some(switchyard_cursorlog::cursor::encode_parts(
        &decoded.epoch,
        decoded.positions.iter().map(|(ch, _)| (*ch, 0)),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn judging_tells_a_bounded_answer_from_a_hole() {
        let t = Duration::from_secs(2);
        assert!(matches!(
            judge(
                "fragment flood",
                &Outcome::Closed(1009, vec!["too_large".into()]),
                t
            ),
            Verdict::Expected
        ));
        assert!(matches!(
            judge("fragment flood", &Outcome::Held(Duration::from_secs(20)), t),
            Verdict::Unexpected(_)
        ));
        assert!(matches!(
            judge("slowloris", &Outcome::Dropped(Duration::from_secs(2)), t),
            Verdict::Expected
        ));
        assert!(matches!(
            judge("slowloris", &Outcome::Dropped(Duration::from_secs(30)), t),
            Verdict::Unexpected(_)
        ));
        assert!(matches!(
            judge("expired token", &Outcome::Refused(200), t),
            Verdict::Unexpected(_)
        ));
        assert!(matches!(
            judge("poll flood", &Outcome::Statuses(vec![200, 503, 500]), t),
            Verdict::Unexpected(_)
        ));
        assert!(matches!(
            judge("poll flood", &Outcome::Statuses(vec![200, 503, 0]), t),
            Verdict::Expected
        ));
    }
}
