//! The scoped scenario: each user is entitled to a seeded subset of the
//! products and subscribes to the scoped topic, so each event goes only to
//! the users entitled to its product; measured over the rate
//! `sweep`. Only systems with per-user scopes run it.
//!
//! Invariant: a user's entitlements depend only on its index and the
//! options, so every system serves the same users the same products.

use super::ctx::Ctx;
use crate::report::SystemResult;
use crate::systems::SystemKind;
use rand::{seq::IndexedRandom as _, SeedableRng as _};

pub(super) async fn run(ctx: &Ctx, kind: SystemKind) -> anyhow::Result<SystemResult> {
    super::sweep::sweep(ctx, kind, true).await
}

/// Entitled product indices of user `i` (seeded: the same in every system).
pub fn entitlements(i: usize, products: u32, per_user: u32) -> Vec<u32> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5157_0000 ^ i as u64);
    let all: Vec<u32> = (0..products.max(1)).collect();
    let mut v: Vec<u32> = all
        .choose_multiple(&mut rng, per_user.clamp(1, products.max(1)) as usize)
        .copied()
        .collect();
    v.sort_unstable();
    v
}
