//! `loadtest`: run the scenarios, print the comparison, write JSON and SVG.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;

use loadtests::backend::Pods;
use loadtests::peers::{self, Kind};
use loadtests::report::Report;
use loadtests::scenarios::{self, Ctx, Options, Scenario};

/// Load tests of the gateway, side by side with nginx, HAProxy and Envoy, on loopback.
#[derive(Debug, Parser)]
#[command(name = "loadtest", version, about)]
struct Cli {
    /// Scenarios to run, in order.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Scenario::Split, Scenario::Hosts, Scenario::Rollout, Scenario::Cold, Scenario::Churn, Scenario::Protocols, Scenario::UpstreamTls, Scenario::Authz, Scenario::Hostile, Scenario::KubeScale, Scenario::Callgrind])]
    scenarios: Vec<Scenario>,
    /// Proxies to compare (the gateway always runs).
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Kind::Gateway, Kind::Haproxy, Kind::Nginx, Kind::Envoy])]
    peers: Vec<Kind>,
    /// Measured time of each load run.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Unmeasured load before each run.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Proxy worker threads to compare at.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 2])]
    threads: Vec<usize>,
    /// Client connections to compare at.
    #[arg(long, value_delimiter = ',', default_values_t = [64, 256])]
    conns: Vec<usize>,
    /// Load generator threads.
    #[arg(long, default_value_t = 2)]
    load_threads: usize,
    /// Routes in the hosts scenario.
    #[arg(long, default_value_t = 10_000)]
    routes: usize,
    /// Length of each rollout step.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    step: Duration,
    /// Rollout cycles of four steps.
    #[arg(long, default_value_t = 3)]
    cycles: usize,
    /// Pods the churn scenario adds (one every other 100 ms tick). Below 100,
    /// the propagation p99 is simply the slowest sample.
    #[arg(long, default_value_t = 100)]
    churn_adds: usize,
    /// KIngresses in the kube-scale scenario (each with its revision's
    /// Service and EndpointSlice).
    #[arg(long, default_value_t = 10_000)]
    kube_kingresses: usize,
    /// Services and slices no KIngress references, in kube-scale.
    #[arg(long, default_value_t = 20_000)]
    kube_unrelated: usize,
    /// The gateway's --kube-api-qps in kube-scale (0: no limit).
    #[arg(long, default_value_t = 0.0)]
    kube_qps: f64,
    /// Backend (pod) runtime threads.
    #[arg(long, default_value_t = 2)]
    pod_threads: usize,
    /// The gateway executable (default: `gateway` next to this one).
    #[arg(long)]
    gateway: Option<PathBuf>,
    /// Don't install missing peers; run without them.
    #[arg(long)]
    no_install: bool,
    /// Skip the comparison of the load generator with wrk.
    #[arg(long)]
    no_wrk: bool,
    /// The CI smoke run: every scenario for about a second, gateway and direct only.
    #[arg(long)]
    smoke: bool,
    /// Where to write results.json, results.txt and chart.svg.
    #[arg(long, default_value = "loadtests/results")]
    out: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let mut cli = Cli::parse();
    if cli.smoke {
        cli.peers = vec![Kind::Gateway];
        cli.duration = Duration::from_millis(700);
        cli.warmup = Duration::from_millis(100);
        cli.threads = vec![1];
        cli.conns = vec![8];
        cli.load_threads = 1;
        cli.routes = 1_000;
        cli.step = Duration::from_millis(250);
        cli.cycles = 1;
        cli.churn_adds = 3;
        cli.kube_kingresses = 500;
        cli.kube_unrelated = 1_000;
        cli.no_install = true;
        cli.no_wrk = true;
        // A debug build under valgrind takes minutes: the unit tests cover
        // the arithmetic, the full run the rest.
        cli.scenarios.retain(|s| *s != Scenario::Callgrind);
    }
    anyhow::ensure!(
        !cli.threads.is_empty() && !cli.conns.is_empty() && cli.load_threads > 0,
        "--threads, --conns and --load-threads need at least one value above zero"
    );
    if !cli.peers.contains(&Kind::Gateway) {
        cli.peers.insert(0, Kind::Gateway);
    }
    let gateway = match cli.gateway.clone() {
        Some(p) => p,
        None => std::env::current_exe()?
            .parent()
            .context("this executable has no directory")?
            .join("gateway"),
    };
    anyhow::ensure!(
        gateway.is_file(),
        "no gateway executable at {} (build it with `cargo build --release -p gateway`, or pass --gateway)",
        gateway.display()
    );
    let bins = peers::locate(gateway, &cli.peers, !cli.no_install);
    if cli.scenarios.contains(&Scenario::Callgrind)
        && !cli.no_install
        && !loadtests::callgrind::available()
    {
        if let Err(e) = peers::apt("valgrind") {
            eprintln!("==> valgrind unavailable, the callgrind scenario will fail: {e}");
        }
    }
    let pods = Pods::new(cli.pod_threads)?;
    let opts = Options {
        duration: cli.duration,
        warmup: cli.warmup,
        threads: cli.threads.clone(),
        conns: cli.conns.clone(),
        load_threads: cli.load_threads,
        routes: cli.routes,
        step: cli.step,
        cycles: cli.cycles,
        churn_adds: cli.churn_adds.max(1),
        kube_kingresses: cli.kube_kingresses,
        kube_unrelated: cli.kube_unrelated,
        kube_qps: cli.kube_qps,
        kube_ready_limit_s: if cli.smoke { 60 } else { 600 },
        kinds: cli.peers.clone(),
        wrk: !cli.no_wrk,
        profiles: cli.out.join("callgrind"),
    };
    let mut report = Report {
        started_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        missing: bins
            .missing
            .iter()
            .map(|(k, why)| (k.name().to_owned(), why.clone()))
            .collect(),
        ..Report::default()
    };
    report.environment = environment(&cli, &bins);
    let started = Instant::now();
    let mut ctx = Ctx {
        opts: &opts,
        pods: &pods,
        bins: &bins,
        report: &mut report,
        started,
    };
    for scenario in &cli.scenarios {
        let result = match scenario {
            Scenario::Split => scenarios::split::run(&mut ctx),
            Scenario::Hosts => scenarios::hosts::run(&mut ctx),
            Scenario::Rollout => scenarios::rollout::run(&mut ctx),
            Scenario::Cold => scenarios::cold::run(&mut ctx),
            Scenario::Churn => scenarios::churn::run(&mut ctx),
            Scenario::Protocols => scenarios::protocols::run(&mut ctx),
            Scenario::Callgrind => scenarios::callgrind::run(&mut ctx),
            Scenario::Hostile => scenarios::hostile::run(&mut ctx),
            Scenario::UpstreamTls => scenarios::upstream_tls::run(&mut ctx),
            Scenario::KubeScale => scenarios::kube_scale::run(&mut ctx),
            Scenario::Authz => scenarios::authz::run(&mut ctx),
        };
        if let Err(e) = result {
            let why = format!("{scenario:?}: {e:#}");
            ctx.progress(format!("FAILED {why}"));
            ctx.report.failures.push(why);
        }
    }
    report.check();
    let text = report.text();
    println!("{text}");
    std::fs::create_dir_all(&cli.out)
        .with_context(|| format!("cannot create {}", cli.out.display()))?;
    let json = serde_json::to_string_pretty(&report)?;
    for (name, body) in [
        ("results.json", json.as_str()),
        ("results.txt", text.as_str()),
        ("chart.svg", report.svg().as_str()),
    ] {
        let path = cli.out.join(name);
        std::fs::write(&path, body).with_context(|| format!("cannot write {}", path.display()))?;
    }
    eprintln!(
        "wrote {0}/results.json, {0}/results.txt and {0}/chart.svg in {1:.0} s",
        cli.out.display(),
        started.elapsed().as_secs_f64()
    );
    anyhow::ensure!(
        report.failures.is_empty(),
        "{} scenario(s) failed",
        report.failures.len()
    );
    Ok(())
}

/// What the figures depend on.
fn environment(cli: &Cli, bins: &peers::Binaries) -> std::collections::BTreeMap<String, String> {
    let mut env = std::collections::BTreeMap::new();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    env.insert("cores".into(), cores.to_string());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    env.insert("kernel".into(), kernel.trim().to_owned());
    env.insert("duration".into(), format!("{:?}", cli.duration));
    env.insert("warmup".into(), format!("{:?}", cli.warmup));
    env.insert("load_threads".into(), cli.load_threads.to_string());
    env.insert("pod_threads".into(), cli.pod_threads.to_string());
    env.insert("gateway".into(), bins.gateway.display().to_string());
    for (k, p) in &bins.peers {
        env.insert(k.name().into(), p.display().to_string());
    }
    if let Some(w) = &bins.wrk {
        env.insert("wrk".into(), w.display().to_string());
    }
    env
}
