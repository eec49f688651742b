//! `switchyard-loadtest`: parses the command line, raises the open-files
//! limit, runs the scenario(s) and writes the results. Behaviour lives in
//! the library (`scenario`, `report`).

use clap::Parser as _;
use switchyard_loadtest::cli::{Cli, Cmd, ScenarioKind};
use switchyard_loadtest::{quick, report};

/// Exit code when events were lost, duplicated or leaked (without --allow-loss).
const EXIT_LOSS: i32 = 2;
/// Exit code of `quick` when a figure is worse than the baseline allows.
const EXIT_WORSE: i32 = 3;

fn main() {
    let cli = Cli::parse();
    let code = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => match rt.block_on(interruptible(run(cli))) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("error: {e:#}");
                1
            }
        },
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            1
        }
    };
    std::process::exit(code);
}

/// Runs `work` until it ends or SIGINT/SIGTERM arrives; on a signal the
/// work is dropped, and with it every server and fleet worker it started
/// (their handles kill them), instead of leaving them running.
async fn interruptible(
    work: impl std::future::Future<Output = anyhow::Result<i32>>,
) -> anyhow::Result<i32> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = work => r,
        _ = tokio::signal::ctrl_c() => anyhow::bail!("interrupted"),
        _ = term.recv() => anyhow::bail!("terminated"),
    }
}

fn raise_nofile() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("warning: cannot raise the open-files limit: {e}");
            rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(0, |l| l.0)
        }
    }
}

/// The command that reproduces `scenario` (an `all` run is recorded per scenario).
fn command_for(scenario: ScenarioKind) -> String {
    let args: Vec<String> = std::env::args().skip(2).collect();
    let mut out = vec!["loadtest/run.sh".to_owned()];
    let mut replaced = false;
    for a in args {
        let is_scenario = ScenarioKind::EACH.iter().any(|s| s.name() == a)
            || a == "all"
            || a == ScenarioKind::Growth.name();
        if !replaced && is_scenario {
            out.push(scenario.name().to_owned());
            replaced = true;
        } else {
            out.push(a);
        }
    }
    out.join(" ")
}

async fn run(cli: Cli) -> anyhow::Result<i32> {
    match cli.cmd {
        Cmd::FleetWorker => {
            // Its own soft limit up to the hard one, like the parent's.
            raise_nofile();
            switchyard_loadtest::worker::serve(tokio::io::stdin(), tokio::io::stdout()).await?;
            Ok(0)
        }
        Cmd::Preflight => {
            switchyard_loadtest::preflight::report(raise_nofile());
            Ok(0)
        }
        Cmd::Quick(q) => {
            let nofile = raise_nofile();
            if nofile < 5000 {
                eprintln!("warning: open-files limit {nofile} is low for 2,000 connections");
            }
            let path = q.baseline.clone().unwrap_or_else(quick::default_baseline);
            let base = quick::read_baseline(&path)?;
            let t = std::time::Instant::now();
            let now = quick::measure(&q).await?;
            let (table, worse) = quick::table(&now, base.as_ref());
            println!("\n## quick ({:.0} s)\n\n{table}", t.elapsed().as_secs_f64());
            if base.is_none() {
                println!(
                    "no baseline at {}: save one with --save-baseline",
                    path.display()
                );
            }
            if let Some(p) = &q.json {
                quick::write(p, &now)?;
            }
            if q.save_baseline {
                quick::write(&path, &now)?;
                eprintln!("wrote the baseline {}", path.display());
            }
            Ok(if worse > 0 { EXIT_WORSE } else { 0 })
        }
        Cmd::Report { out_dir } => {
            let default = out_dir.is_none();
            let dir = out_dir.unwrap_or_else(report::default_out_dir);
            report::regenerate(&dir, default.then(report::readme_path).as_deref())?;
            eprintln!("rewrote reports in {}", dir.display());
            Ok(0)
        }
        Cmd::Soak(args) => {
            raise_nofile();
            let args = *args;
            let out_dir = args.out_dir.clone().unwrap_or_else(report::default_out_dir);
            let command = std::iter::once("loadtest/run.sh soak".to_owned())
                .chain(std::env::args().skip(2))
                .collect::<Vec<_>>()
                .join(" ");
            // Ctrl-C or SIGTERM drops the run, and with it every server it
            // started (their handles kill them).
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            let r = tokio::select! {
                r = switchyard_loadtest::scenario::soak::run(args, command) => r?,
                _ = tokio::signal::ctrl_c() => anyhow::bail!("interrupted"),
                _ = term.recv() => anyhow::bail!("terminated"),
            };
            switchyard_loadtest::scenario::soak::report::write(&out_dir, &r)?;
            println!(
                "{}",
                switchyard_loadtest::scenario::soak::report::markdown(&r)
            );
            eprintln!("wrote {}/soak.{{json,md}}", out_dir.display());
            if r.ok {
                Ok(0)
            } else {
                eprintln!("\n!!! soak: PROBLEMS !!!");
                for p in &r.problems {
                    eprintln!("!!!   {p}");
                }
                Ok(EXIT_LOSS)
            }
        }
        Cmd::Run(args) => {
            let nofile = raise_nofile();
            let args = *args;
            // A fleet larger than --conns-per-process is spread over worker
            // processes, each with its own limit.
            let conns_needed = ScenarioKind::EACH
                .iter()
                .map(|s| args.connections_for(*s))
                .max()
                .unwrap_or(0)
                .min(args.conns_per_process) as u64;
            if nofile < conns_needed + 1024 {
                eprintln!(
                    "warning: open-files limit {nofile} is below the {conns_needed} connections asked for; run through loadtest/run.sh (ulimit -n 200000)"
                );
            }
            let default_out = args.out_dir.is_none();
            let out_dir = args.out_dir.clone().unwrap_or_else(report::default_out_dir);
            let scenarios: Vec<ScenarioKind> = if args.scenario == ScenarioKind::All {
                ScenarioKind::EACH.to_vec()
            } else {
                vec![args.scenario]
            };
            let mut code = 0;
            for scenario in scenarios {
                let mut r = switchyard_loadtest::scenario::run(
                    args.clone(),
                    scenario,
                    command_for(scenario),
                )
                .await?;
                if args.merge {
                    let prior = report::read_all(&out_dir)
                        .into_iter()
                        .find(|p| p.scenario == r.scenario);
                    if let Some(prior) = prior {
                        for old in prior.results {
                            if !r.results.iter().any(|x| x.system == old.system) {
                                r.results.push(old);
                            }
                        }
                    }
                }
                report::write_run(&out_dir, &r)?;
                println!("\n## {}\n\n{}", r.scenario, report::summary_table(&r));
                if !r.ok {
                    eprintln!("\n!!! {}: CORRECTNESS PROBLEMS !!!", r.scenario);
                    for p in &r.problems {
                        eprintln!("!!!   {p}");
                    }
                    if !args.allow_loss {
                        code = EXIT_LOSS;
                    }
                }
                eprintln!("wrote {}/{}.{{json,md,svg}}", out_dir.display(), r.scenario);
            }
            if default_out && !args.no_readme {
                report::update_readme(&report::readme_path(), &report::read_all(&out_dir))?;
            }
            Ok(code)
        }
    }
}
