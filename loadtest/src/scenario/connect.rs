//! Connecting a system's fleet: one client spec per connection (server,
//! loopback source address, token, topic, entitled products), then the
//! probe barrier that makes every live connection prove it receives.
//!
//! Invariant: measurement starts only after every live connection has seen
//! a probe (or the barrier's bounded wait is noted as a shortfall), so no
//! system is charged for events sent before it listened.

use super::ctx::{Ctx, JWT_SECRET};
use super::scoped::entitlements;
use super::secs;
use crate::cli::RunArgs;
use crate::client::{ClientSpec, FleetOptions};
use crate::event::{product_code, FANOUT_TOPIC, SCOPED_TOPIC};
use crate::fleet::Fleet;
use crate::systems::{Running, SystemKind};
use anyhow::bail;
use std::net::Ipv4Addr;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

fn token(sub: &str, products: &[String]) -> anyhow::Result<String> {
    let exp = crate::now_us() / 1_000_000 + 6 * 3600;
    let claims = serde_json::json!({"sub": sub, "exp": exp, "products": products, "features": []});
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )?)
}

fn source_ip(args: &RunArgs, i: usize) -> anyhow::Result<Ipv4Addr> {
    let o = args.first_source_ip.octets();
    let step = (i / args.conns_per_source_ip.max(1)) as u32;
    let ip = u32::from_be_bytes(o) + step;
    let ip = Ipv4Addr::from(ip);
    if !ip.is_loopback() {
        bail!("source address {ip} left 127.0.0.0/8: lower --connections or raise --conns-per-source-ip");
    }
    Ok(ip)
}

/// Builds the fleet's client specs for `sys`.
fn clients(
    ctx: &Ctx,
    sys: &Running,
    n: usize,
    scoped: bool,
) -> anyhow::Result<Vec<(ClientSpec, Vec<u32>)>> {
    let a = &ctx.args;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let streams = if scoped {
            entitlements(i, a.products, a.products_per_user)
        } else {
            vec![0]
        };
        let products: Vec<String> = if scoped {
            streams.iter().map(|p| product_code(*p)).collect()
        } else {
            Vec::new()
        };
        let token = if sys.kind == SystemKind::Switchyard {
            token(&format!("load-{i}"), &products)?
        } else {
            String::new()
        };
        out.push((
            ClientSpec {
                protocol: sys.kind.protocol(),
                server: sys.endpoints[i % sys.endpoints.len()],
                source_ip: source_ip(a, i)?,
                token,
                topic: if scoped { SCOPED_TOPIC } else { FANOUT_TOPIC },
                products,
                alternates: Vec::new(),
                churn_ms: None,
            },
            streams,
        ));
    }
    Ok(out)
}

fn fleet_options(a: &RunArgs) -> FleetOptions {
    FleetOptions {
        connect_concurrency: a.connect_concurrency,
        connect_timeout: secs(a.connect_timeout_seconds),
        max_attempts: 8,
        shards: 16,
    }
}

/// Connects the fleet and waits for the probe barrier; notes what fell short.
pub(super) async fn connect_fleet(
    ctx: &Ctx,
    sys: &mut Running,
    n: usize,
    scoped: bool,
    notes: &mut Vec<String>,
) -> anyhow::Result<Fleet> {
    notes.append(&mut sys.notes);
    let t = Instant::now();
    let fleet = Fleet::spawn(
        clients(ctx, sys, n, scoped)?,
        fleet_options(&ctx.args),
        ctx.args.conns_per_process,
    )
    .await?;
    if fleet.processes() > 0 {
        notes.push(format!(
            "the generator ran its {n} connections in {} worker processes (at most {} each)",
            fleet.processes(),
            ctx.args.conns_per_process
        ));
    }
    match connected(ctx, sys, &fleet, n, scoped, notes, t).await {
        Ok(()) => Ok(fleet),
        Err(e) => {
            fleet.shutdown(Duration::from_secs(5)).await;
            Err(e)
        }
    }
}

/// Waits for the fleet to come up, then for the probe barrier.
async fn connected(
    ctx: &Ctx,
    sys: &mut Running,
    fleet: &Fleet,
    n: usize,
    scoped: bool,
    notes: &mut Vec<String>,
    t: Instant,
) -> anyhow::Result<()> {
    let live = fleet
        .wait_live(n, secs(ctx.args.connect_deadline_seconds))
        .await?;
    eprintln!(
        "  {live}/{n} connections live after {:.1}s",
        t.elapsed().as_secs_f64()
    );
    sys.check_alive()?;
    if live < n {
        notes.push(format!(
            "only {live} of {n} connections came up within {}s; errors: {}",
            ctx.args.connect_deadline_seconds,
            fleet.sample_errors(3).await.join(" | ")
        ));
    }
    if live == 0 {
        bail!(
            "no connection came up: {}",
            fleet.sample_errors(3).await.join(" | ")
        );
    }
    probe_barrier(ctx, sys, fleet, scoped, notes).await
}

/// Sends probe events until every live connection has seen one.
async fn probe_barrier(
    ctx: &Ctx,
    sys: &Running,
    fleet: &Fleet,
    scoped: bool,
    notes: &mut Vec<String>,
) -> anyhow::Result<()> {
    let first = ctx.probe_seq.load(Relaxed);
    let deadline = Instant::now() + Duration::from_secs(60);
    let (client_topic, products) = if scoped {
        (SCOPED_TOPIC, Some(ctx.args.products))
    } else {
        (FANOUT_TOPIC, None)
    };
    loop {
        let k = ctx.probe_seq.fetch_add(1, Relaxed);
        ctx.producer
            .probe(&sys.kafka_topic, &ctx.run_id, client_topic, products, k);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (probed, live) = fleet.probed(first).await?;
        if probed >= live && live > 0 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            return Ok(());
        }
        if Instant::now() > deadline {
            notes.push(format!(
                "probe barrier: only {probed} of {live} live connections saw a probe within 60s"
            ));
            return Ok(());
        }
    }
}
