//! Scenario 2: many routes (10,000 by default), each request for a random
//! one of their hosts, against the same proxy serving one route; throughput
//! ratio and peak memory. The two run side by side, measured in alternating
//! rounds.

use super::{alternating, hello, Ctx, A, B, ROUNDS};
use crate::load::{Hosts, Outcome, Spec};
use crate::peers::Launch;
use crate::report::Run;
use crate::topology::{Revision, Route, Topology};

/// Run the scenario at the highest thread count and the lowest connection count.
pub fn run(ctx: &mut Ctx) -> anyhow::Result<()> {
    let a = ctx.backends(A, 2)?;
    let b = ctx.backends(B, 2)?;
    let one = Topology {
        routes: vec![hello(&[&a[0], &a[1]], &[&b[0], &b[1]], 90, 10)],
        upstream_tls: None,
        authz: None,
    };
    let many = Topology {
        routes: (0..ctx.opts.routes)
            .map(|i| {
                // Each route has revisions of its own; their pods are the shared backends.
                let mut r = one.routes[0].clone();
                r.namespace = format!("ns-{}", i % 100);
                r.name = format!("route-{i}");
                r.revisions = r
                    .revisions
                    .iter()
                    .enumerate()
                    .map(|(k, v)| Revision {
                        name: format!("route-{i}-{:05}", k + 1),
                        ..v.clone()
                    })
                    .collect();
                r
            })
            .collect(),
        upstream_tls: None,
        authz: None,
    };
    let hosts: Vec<http::HeaderValue> = many
        .routes
        .iter()
        .map(|r: &Route| http::HeaderValue::from_str(&r.host()).expect("valid host"))
        .collect();
    let hosts = std::sync::Arc::new(hosts);
    let threads = *ctx
        .opts
        .threads
        .iter()
        .max()
        .expect("at least one thread count");
    let conns = ctx.opts.conns[0];
    for (kind, bin) in ctx.proxies() {
        // Both proxies run side by side and are measured in alternating rounds
        // (one, many, many, one, ...): on a shared machine a neighbour's burst
        // then lands on both sides instead of deciding the ratio.
        let mut sides = Vec::new();
        for topo in [&one, &many] {
            let n = topo.routes.len();
            ctx.progress(format!(
                "hosts: {} with {n} route(s), {threads} threads, {conns} conns",
                kind.name()
            ));
            let launch = Launch {
                kind,
                bin,
                topology: topo,
                threads,
                activator: None,
                listeners: Default::default(),
                callgrind: None,
            };
            let what = format!("hosts: {} with {n} routes", kind.name());
            if let Some(proxy) = ctx.start(&launch, &topo.routes[0].host(), &what) {
                let spec = Spec {
                    hosts: if n == 1 {
                        Hosts::one(&topo.routes[0].host())
                    } else {
                        Hosts::Random(hosts.clone())
                    },
                    ..ctx.spec(proxy.addr, "", conns)
                };
                ctx.warm_up(&spec);
                sides.push(Side {
                    n,
                    proxy,
                    spec,
                    out: Outcome::empty(),
                    cpu: Some(0.0),
                });
            }
        }
        for round in 0..ROUNDS {
            for i in alternating(round, sides.len()) {
                let side = &mut sides[i];
                let (out, cpu, _) = ctx.measure_now(Some(&side.proxy), &side.spec);
                side.out.absorb(out);
                side.cpu = side.cpu.zip(cpu).map(|(a, b)| a + b);
            }
        }
        for side in sides {
            let rss = side.proxy.peak_rss();
            ctx.progress(format!(
                "  {} with {} route(s): {:.0} rps, p99 {:.2} ms, {} errors, peak RSS {:.1} MiB",
                kind.name(),
                side.n,
                side.out.rps(),
                side.out.ms(0.99),
                side.out.errors,
                rss as f64 / 1048576.0
            ));
            let run = Run::new(
                "hosts",
                kind.name(),
                Some(threads),
                side.n,
                conns,
                &side.out,
            )
            .usage(side.cpu, Some(rss));
            ctx.report.runs.push(run);
        }
    }
    Ok(())
}

/// One of the two proxies compared, and what its rounds measured so far.
struct Side {
    n: usize,
    proxy: crate::peers::Proxy,
    spec: Spec,
    out: Outcome,
    cpu: Option<f64>,
}
