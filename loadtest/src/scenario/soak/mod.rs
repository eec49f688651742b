//! The chaos soak: a whole Switchyard deployment on private servers (its
//! own PostgreSQL and redis-server, tansu with its data in PostgreSQL, the
//! bridge, two gateways), a steady producer, a fleet of well-behaved
//! clients (some reconnecting with their cursors at random), attackers, and
//! a schedule of faults, for a fixed time; then the check: every
//! well-behaved client has every event it was entitled to, once, in order
//! per product; no valid event in the DLQ; the log holds exactly what was
//! produced; every process's memory stayed under its bound.
//!
//! | module | owns |
//! | --- | --- |
//! | `feed` | the producer: dense per-product numbering, retried sends |
//! | `faults` | the private servers, the schedule, each injection and its recovery times |
//! | `hostile` | the attackers and what the nodes answered them |
//! | `report` | `soak.json` / `soak.md` |
//!
//! Invariant: the well-behaved fleet is connected and subscribed before
//! the first event is produced, so each client is entitled to every event
//! of its products; the counts are read only after production stopped and
//! the fleet drained (or stopped making progress).

pub mod faults;
mod feed;
pub mod hostile;
pub mod report;

use crate::cli::SoakArgs;
use crate::client::{ClientSpec, FleetOptions, LocalFleet as Fleet, Protocol};
use crate::event::{product_code, SCOPED_TOPIC};
use crate::report::{now_rfc3339, Machine};
use crate::verify::Tally;
use anyhow::Context as _;
use faults::{inject, schedule, share_pids, Servers, Watch};
use report::{MemoryRow, SoakReport};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use switchyard_testkit::{free_port, scratch_dir, PgServer, RedisServer, Stack, StackOptions};

/// Gateways' header timeout in the soak (slowloris is judged against it).
const HEADER_TIMEOUT_MS: u64 = 2000;
/// How long the read-only window lasts.
const READ_ONLY_WINDOW: Duration = Duration::from_secs(6);
/// Live messages on Redis are authenticated in the soak (as in production).
const LIVE_KEY: &str = "switchyard-soak-live-key-0123456789abcdef";

/// Runs the soak and returns its report (written by the caller).
pub async fn run(args: SoakArgs, command: String) -> anyhow::Result<SoakReport> {
    let planned = args.duration_s();
    let clients = args.clients();
    let hostile_n = ((clients as f64) * args.hostile_share).round() as usize;
    let churn_n = ((clients as f64) * args.churn_share).round() as usize;
    let good_n = clients.saturating_sub(hostile_n + churn_n).max(1);
    let fleet_n = good_n + churn_n;
    switchyard_testkit::require_servers();
    let dir = scratch_dir("soak");
    eprintln!(
        "soak: {planned:.0} s, {good_n} well-behaved + {churn_n} reconnecting clients, {hostile_n} attackers; logs in {}",
        dir.display()
    );

    // Private servers: nothing here touches the machine's PostgreSQL or Redis.
    let (pg, broker_pg, redis) = tokio::task::block_in_place(|| -> anyhow::Result<_> {
        let pg = PgServer::start(&dir).context("private PostgreSQL for Switchyard")?;
        let broker_pg = PgServer::start(&dir).context("private PostgreSQL for tansu")?;
        let redis = RedisServer::start(&dir, free_port()).context("private redis-server")?;
        Ok((pg, broker_pg, redis))
    })?;
    let env: Vec<(String, String)> = [
        ("RUST_LOG", args.server_log.as_str()),
        ("SWITCHYARD_LIVE_KEY", LIVE_KEY),
        ("SWITCHYARD_CLIENT_STALL_MS", "5000"),
        (
            "SWITCHYARD_HEADER_TIMEOUT_MS",
            &HEADER_TIMEOUT_MS.to_string(),
        ),
        ("SWITCHYARD_MAX_POLLS", "64"),
        ("SWITCHYARD_KAFKA_OPTIONS", "fetch.wait.max.ms=10"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let stack = Stack::start(StackOptions {
        gateways: 2,
        redis_url: Some(redis.url()),
        pg_base: Some(pg.base_url()),
        broker_pg: Some(broker_pg.base_url()),
        partitions: 3,
        env,
        ..Default::default()
    })
    .await
    .context("starting the stack")?;
    eprintln!(
        "stack up: broker {} (PostgreSQL storage), gateways {:?}; their logs in {}",
        stack.broker.addr,
        stack.gateways.iter().map(|g| g.listen).collect::<Vec<_>>(),
        stack.dir.display()
    );
    let stack_dir = stack.dir.clone();
    let nodes: Vec<std::net::SocketAddr> = stack.gateways.iter().map(|g| g.listen).collect();
    let producer = stack.broker.producer()?;
    let kafka_topic = stack.events_topic.clone();
    let dlq_topic = stack.dlq_topic.clone();
    let broker_storage = stack.broker.storage().to_owned();
    let mut servers = Servers {
        stack,
        pg,
        broker_pg,
        redis,
        dir: dir.clone(),
    };

    // The well-behaved fleet (the last `churn_n` reconnect at random).
    let token_ttl = (planned as i64) + 3600;
    let mut specs = Vec::with_capacity(fleet_n);
    for i in 0..fleet_n {
        let streams = super::entitlements(i, args.products, args.products_per_user);
        let products: Vec<String> = streams.iter().map(|p| product_code(*p)).collect();
        let products: Vec<&str> = products.iter().map(String::as_str).collect();
        let server = nodes[i % nodes.len()];
        specs.push((
            ClientSpec {
                protocol: Protocol::Switchyard,
                server,
                // 200 clients per loopback source address, so a per-address
                // connection cap meets the soak as it would real users.
                source_ip: Ipv4Addr::new(127, 0, 0, 1 + (i / 200).min(250) as u8),
                token: switchyard_testkit::token(&format!("soak-{i}"), &products, &[], token_ttl),
                topic: SCOPED_TOPIC,
                products: Vec::new(),
                alternates: nodes.iter().copied().filter(|n| *n != server).collect(),
                churn_ms: (i >= good_n).then_some((3_000, 20_000)),
            },
            streams,
        ));
    }
    let fleet = Fleet::spawn(
        specs,
        FleetOptions {
            connect_concurrency: args.connect_concurrency,
            connect_timeout: Duration::from_secs(10),
            max_attempts: u32::MAX,
            shards: 16,
        },
    );
    for c in &fleet.conns {
        c.dedupe_across_subscriptions();
    }
    let live = fleet.wait_live(fleet_n, Duration::from_secs(180)).await;
    if live < fleet_n {
        eprintln!(
            "warning: only {live} of {fleet_n} clients connected before the load: {:?}",
            fleet.sample_errors(3)
        );
    }
    eprintln!("{live} clients subscribed; starting the load");

    // Memory sampler.
    let pids = share_pids(&servers);
    let peaks: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = tokio::spawn(sample_memory(pids.clone(), peaks.clone(), sampling.clone()));

    // Load: producer and attackers.
    let t0 = Instant::now();
    let feed = feed::Feed::new(args.products);
    let mut feeding = feed::spawn(
        feed::FeedPlan {
            producer,
            kafka_topic,
            run: format!("soak-{}", crate::infra::suffix()),
            products: args.products,
            rate: args.rate,
            payload_bytes: args.payload_bytes,
        },
        feed.clone(),
    );
    let hostile = Arc::new(hostile::Hostile::default());
    let (stop_attacks, stop_rx) = tokio::sync::watch::channel(false);
    let mut attacking = hostile::spawn(
        hostile_n,
        hostile::AttackPlan {
            nodes: nodes.clone(),
            products: args.products,
            header_timeout: Duration::from_millis(HEADER_TIMEOUT_MS),
            victims: fleet.conns[..good_n].to_vec(),
            token_ttl_s: token_ttl,
        },
        hostile.clone(),
        stop_rx,
    );

    // Faults: from 10 % of the time to 80 %, about one cycle per two minutes.
    let cycles = ((planned / 150.0).round() as usize).max(1);
    let plan = schedule((planned * 0.1).max(8.0), planned * 0.8, cycles, nodes.len());
    let mut records = Vec::new();
    let mut faults_skipped = 0usize;
    {
        let watch = Watch {
            fleet: &fleet,
            good: good_n,
            pids: &pids,
            read_only_window: READ_ONLY_WINDOW,
        };
        for (at, kind, node) in plan {
            // Slow recoveries push the schedule; it never runs past 90 %
            // of the time, so the run stays bounded.
            if t0.elapsed().as_secs_f64() > planned * 0.9 {
                faults_skipped += 1;
                continue;
            }
            let due = t0 + Duration::from_secs_f64(at);
            tokio::time::sleep_until(due.into()).await;
            records.push(inject(&mut servers, kind, node, t0, &watch).await);
        }
    }
    let end = t0 + Duration::from_secs_f64(planned);
    tokio::time::sleep_until(end.into()).await;
    let ran_s = t0.elapsed().as_secs_f64();

    // Stop the load, then let the fleet drain.
    eprintln!("[{ran_s:6.1}s] stopping the load");
    let _ = stop_attacks.send(true);
    feed.stop();
    let feed_deadline = Instant::now() + Duration::from_secs(60);
    while !feeding.is_empty() {
        if tokio::time::timeout_at(feed_deadline.into(), feeding.join_next())
            .await
            .is_err()
        {
            feed.give_up();
            feeding.abort_all();
            break;
        }
    }
    let produced = feed.produced();
    let total: u64 = produced.iter().sum();
    eprintln!("produced {total} events; draining");
    drain(
        &fleet,
        &produced,
        Duration::from_secs_f64(args.drain_timeout_seconds),
    )
    .await;
    let tally = Tally::collect(&fleet.conns, &produced);
    attacking.abort_all();
    while attacking.join_next().await.is_some() {}

    // The log and the DLQ.
    let stored_events = servers.stack.stored_events().await.ok();
    let dlq_records = dlq_count(&broker_storage, &dlq_topic)
        .await
        .map_err(|e| eprintln!("reading the DLQ: {e:#}"))
        .ok();
    sampling.store(false, Relaxed);
    let _ = sampler.await;
    let churns = fleet.conns.iter().map(|c| c.churns.load(Relaxed)).sum();
    let expected = fleet_expected(&fleet, &produced);
    fleet.shutdown(Duration::from_secs(10)).await;

    let memory: Vec<MemoryRow> = peaks
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .map(|(name, bytes)| MemoryRow {
            process: name.clone(),
            peak_rss_mib: *bytes as f64 / 1048576.0,
            bound_mib: (name.starts_with("gateway") || name == "bridge")
                .then_some(args.max_rss_mib as f64),
        })
        .collect();
    let mut problems = Vec::new();
    if tally.lost > 0 || tally.duplicated > 0 || tally.unentitled > 0 {
        problems.push(format!(
            "well-behaved clients: lost {}, duplicated {}, out of scope {} ({} clients with loss)",
            tally.lost, tally.duplicated, tally.unentitled, tally.conns_with_loss
        ));
    }
    match dlq_records {
        Some(0) => {}
        Some(n) => problems.push(format!("{n} valid events in the DLQ")),
        None => problems.push("the DLQ could not be read".into()),
    }
    match stored_events {
        Some(n) if n == total as i64 => {}
        Some(n) => problems.push(format!("the log holds {n} events, {total} were produced")),
        None => problems.push("the log could not be counted".into()),
    }
    let trusted = hostile.forged_trusted.load(Relaxed);
    if trusted > 0 {
        problems.push(format!("{trusted} forged cursors were trusted"));
    }
    for m in &memory {
        if let Some(b) = m.bound_mib {
            if m.peak_rss_mib > b {
                problems.push(format!(
                    "{} peaked at {:.0} MiB, over its bound of {b:.0} MiB",
                    m.process, m.peak_rss_mib
                ));
            }
        }
    }
    for f in &records {
        if let Some(e) = &f.error {
            problems.push(format!(
                "fault {} at {:.0}s failed: {e}",
                f.kind.name(),
                f.at_s
            ));
        } else if f.delivery_s.is_none() {
            problems.push(format!(
                "delivery did not resume within 60 s of the {} at {:.0}s",
                f.kind.name(),
                f.at_s
            ));
        }
    }
    let report = SoakReport {
        generated_at: now_rfc3339(),
        command,
        machine: Machine::detect(),
        params: serde_json::to_value(&args)?,
        planned_s: planned,
        ran_s,
        well_behaved: good_n,
        reconnecting: churn_n,
        hostile: hostile_n,
        events_produced: total,
        produce_retries: feed.retries.load(Relaxed),
        deliveries: tally.received,
        expected_deliveries: expected,
        lost: tally.lost,
        duplicated: tally.duplicated,
        out_of_scope: tally.unentitled,
        redelivered: tally.redelivered,
        unrecovered: tally.unrecovered,
        conns_with_loss: tally.conns_with_loss,
        disconnects: tally.disconnects,
        churn_reconnects: churns,
        stored_events,
        dlq_records,
        recovery: report::recovery(&records),
        faults_skipped,
        faults: records,
        memory,
        attacks: hostile.tallies(),
        ok: problems.is_empty(),
        problems,
    };
    drop(servers);
    if args.keep {
        eprintln!("kept {} and {}", dir.display(), stack_dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::remove_dir_all(&stack_dir);
    }
    Ok(report)
}

/// Entitled deliveries: each connection, every event of its products.
fn fleet_expected(fleet: &Fleet, produced: &[u64]) -> u64 {
    fleet
        .conns
        .iter()
        .map(|c| {
            c.streams
                .iter()
                .map(|s| produced.get(*s as usize).copied().unwrap_or(0))
                .sum::<u64>()
        })
        .sum()
}

/// Waits until every connection has every event of its products, or no
/// connection made progress for `idle`.
async fn drain(fleet: &Fleet, produced: &[u64], idle: Duration) {
    let behind = || -> u64 {
        fleet
            .conns
            .iter()
            .map(|c| {
                c.streams
                    .iter()
                    .map(|s| {
                        produced
                            .get(*s as usize)
                            .copied()
                            .unwrap_or(0)
                            .saturating_sub(c.next_of(*s))
                    })
                    .sum::<u64>()
            })
            .sum()
    };
    let mut last = u64::MAX;
    let mut last_change = Instant::now();
    loop {
        let b = behind();
        if b == 0 {
            return;
        }
        if b != last {
            last = b;
            last_change = Instant::now();
        } else if last_change.elapsed() > idle {
            eprintln!("drain: {b} deliveries still missing after {idle:?} without progress");
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Peak resident memory per process name, sampled every 250 ms (pids are
/// re-read, so restarted processes keep their row).
async fn sample_memory(
    pids: Arc<Mutex<Vec<(String, u32)>>>,
    peaks: Arc<Mutex<BTreeMap<String, u64>>>,
    on: Arc<AtomicBool>,
) {
    while on.load(Relaxed) {
        let now: Vec<(String, u32)> = pids.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut readings: Vec<(String, u64)> = now
            .into_iter()
            .filter_map(|(name, pid)| {
                let rss = if name.starts_with("postgres") {
                    crate::procstat::tree_rss(pid)
                } else {
                    crate::procstat::sample(pid).map(|s| s.rss_bytes)
                }?;
                Some((name, rss))
            })
            .collect();
        readings.push((
            "soak runner (clients)".into(),
            crate::procstat::sample_self().rss_bytes,
        ));
        {
            let mut g = peaks.lock().unwrap_or_else(|p| p.into_inner());
            for (name, rss) in readings {
                let e = g.entry(name).or_insert(0);
                *e = (*e).max(rss);
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Records in the DLQ topic, counted in the broker's own storage (tansu
/// keeps them in PostgreSQL): exact, and independent of the broker's
/// metadata answers, which timed out for a fresh client after a restart.
async fn dlq_count(storage: &str, topic: &str) -> anyhow::Result<i64> {
    let (c, conn) = tokio_postgres::connect(storage, tokio_postgres::NoTls)
        .await
        .context("connecting to the broker's storage")?;
    tokio::spawn(conn);
    let row = c
        .query_one(
            "SELECT count(*) FROM record r JOIN topition tp ON r.topition = tp.id \
             JOIN topic t ON tp.topic = t.id WHERE t.name = $1",
            &[&topic],
        )
        .await
        .context("counting the DLQ's records")?;
    Ok(row.get(0))
}
