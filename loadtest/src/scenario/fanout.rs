//! The fan-out scenario: every connection subscribes to one unfiltered
//! topic, so each event goes to all of them; measured over the rate
//! `sweep`.
//!
//! Invariant: every live connection is expected to receive every event.

use super::ctx::Ctx;
use crate::report::SystemResult;
use crate::systems::SystemKind;

pub(super) async fn run(ctx: &Ctx, kind: SystemKind) -> anyhow::Result<SystemResult> {
    super::sweep::sweep(ctx, kind, false).await
}
