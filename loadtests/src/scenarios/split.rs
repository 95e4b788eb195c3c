//! Scenario 1: one route, 90/10 over two revisions with two endpoints each,
//! at every connection count and thread count, for every proxy; plus the
//! backends hit directly (the physical limit) and the load generator checked
//! against wrk.

use std::process::Command;

use anyhow::Context;

use super::{alternating, hello, Ctx, A, B, ROUNDS};
use crate::load::{self, Outcome, Spec};
use crate::peers::Launch;
use crate::report::Run;
use crate::topology::Topology;

/// Run the scenario.
pub fn run(ctx: &mut Ctx) -> anyhow::Result<()> {
    let a = ctx.backends(A, 2)?;
    let b = ctx.backends(B, 2)?;
    let topo = Topology {
        routes: vec![hello(&[&a[0], &a[1]], &[&b[0], &b[1]], 90, 10)],
        upstream_tls: None,
        authz: None,
    };
    let host = topo.routes[0].host();
    let all: Vec<_> = a.iter().chain(&b).map(|x| x.addr).collect();

    for &conns in &ctx.opts.conns {
        ctx.progress(format!("split: direct to the 4 backends, {conns} conns"));
        let spec = Spec {
            targets: all.clone(),
            ..ctx.spec(all[0], &host, conns)
        };
        let (out, _, _) = ctx.measure(None, &spec);
        let run = Run::new("split", "direct", None, 1, conns, &out);
        ctx.report.runs.push(run);
    }

    if let (true, Some(wrk)) = (ctx.opts.wrk, ctx.bins.wrk.clone()) {
        let conns = ctx.opts.conns[0];
        ctx.progress(format!(
            "generator: ours vs wrk, one backend, {conns} conns"
        ));
        let spec = ctx.spec(a[0].addr, &host, conns);
        ctx.warm_up(&spec);
        // Alternating rounds (ours, wrk, wrk, ours, ...): the backend's rate
        // swings by a fifth between runs on a shared machine.
        let mut ours = Outcome::empty();
        let mut theirs = Vec::new();
        for round in 0..ROUNDS {
            for side in alternating(round, 2) {
                if side == 0 {
                    ours.absorb(ctx.measure_now(None, &spec).0);
                } else {
                    theirs.push(run_wrk(&wrk, &spec).context("wrk")?);
                }
            }
        }
        let run = Run::new("generator", "loadtest", None, 1, conns, &ours);
        ctx.report.runs.push(run);
        ctx.report.runs.push(pool(theirs));
    }

    for &threads in &ctx.opts.threads {
        for (kind, bin) in ctx.proxies() {
            ctx.progress(format!("split: {} with {threads} threads", kind.name()));
            let launch = Launch {
                kind,
                bin,
                topology: &topo,
                threads,
                activator: None,
                listeners: Default::default(),
                callgrind: None,
            };
            let Some(proxy) = ctx.start(&launch, &host, &format!("split: {}", kind.name())) else {
                continue;
            };
            ctx.measure_conns(&proxy, &host, "split", kind.name(), threads);
        }
    }
    Ok(())
}

/// wrk's rounds as one run: the rate over all of them, and the latency
/// percentiles of the median round (wrk prints no histogram to merge).
fn pool(mut rounds: Vec<Run>) -> Run {
    let requests: u64 = rounds.iter().map(|r| r.requests).sum();
    let seconds: f64 = rounds
        .iter()
        .map(|r| r.requests as f64 / r.rps.max(1e-9))
        .sum();
    let errors = rounds.iter().map(|r| r.errors).sum();
    rounds.sort_by(|a, b| a.rps.total_cmp(&b.rps));
    let mut run = rounds.swap_remove(rounds.len() / 2);
    run.rps = requests as f64 / seconds.max(1e-9);
    run.requests = requests;
    run.errors = errors;
    run
}

/// wrk with the same threads, connections, duration and Host as `spec`.
fn run_wrk(wrk: &std::path::Path, spec: &Spec) -> anyhow::Result<Run> {
    let secs = spec.duration.as_secs().max(1);
    let out = Command::new(wrk)
        .args(["-t", &spec.threads.to_string()])
        .args(["-c", &spec.conns.to_string()])
        .args(["-d", &format!("{secs}s"), "--latency"])
        .args(["-H", &format!("Host: {}", host_of(spec))])
        .arg(format!("http://{}/", spec.targets[0]))
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(out.status.success(), "{}: {text}", out.status);
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .with_context(|| format!("no Requests/sec in wrk's output:\n{text}"))?;
    let pct = |p: &str| {
        text.lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(p))
            .and_then(|v| duration_ms(v.trim()))
            .unwrap_or(f64::NAN)
    };
    let requests = text
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let errors: u64 = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Non-2xx or 3xx responses:"))
        .filter_map(|v| v.trim().parse::<u64>().ok())
        .sum();
    let mut run = Run::new("generator", "wrk", None, 1, spec.conns, &Outcome::empty());
    run.rps = rps;
    run.requests = requests;
    run.errors = errors;
    run.p50_ms = pct("50%");
    run.p90_ms = pct("90%");
    run.p99_ms = pct("99%");
    run.p999_ms = f64::NAN;
    Ok(run)
}

fn host_of(spec: &Spec) -> String {
    match &spec.hosts {
        load::Hosts::One(h) => h.to_str().unwrap_or_default().to_owned(),
        load::Hosts::Random(all) => all[0].to_str().unwrap_or_default().to_owned(),
    }
}

/// wrk's durations: `512.00us`, `1.23ms`, `2.00s`.
fn duration_ms(v: &str) -> Option<f64> {
    let (num, scale) = if let Some(n) = v.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1000.0)
    } else {
        return None;
    };
    num.parse::<f64>().ok().map(|n| n * scale)
}

#[cfg(test)]
mod tests {
    use super::{duration_ms, pool};
    use crate::load::Outcome;
    use crate::report::Run;

    #[test]
    fn wrk_rounds_pool_into_the_rate_over_all_of_them() {
        let round = |requests: u64, rps: f64, p99: f64| {
            let mut r = Run::new("generator", "wrk", None, 1, 64, &Outcome::empty());
            (r.requests, r.rps, r.p99_ms, r.errors) = (requests, rps, p99, 1);
            r
        };
        // 1 s at 100k, 2 s at 50k, 1 s at 120k: 320k requests in 4 s.
        let run = pool(vec![
            round(100_000, 100_000.0, 2.0),
            round(100_000, 50_000.0, 9.0),
            round(120_000, 120_000.0, 1.0),
        ]);
        assert_eq!(run.requests, 320_000);
        assert!((run.rps - 80_000.0).abs() < 1e-6, "{}", run.rps);
        assert_eq!(run.errors, 3);
        assert_eq!(run.p99_ms, 2.0, "the median round's percentiles");
    }

    #[test]
    fn reads_wrk_durations() {
        assert_eq!(duration_ms("512.00us"), Some(0.512));
        assert_eq!(duration_ms("1.25ms"), Some(1.25));
        assert_eq!(duration_ms("2.00s"), Some(2000.0));
        assert_eq!(duration_ms("12%"), None);
    }
}
