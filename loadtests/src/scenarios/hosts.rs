//! Scenario 2: many routes (10,000 by default), each request for a random
//! one of their hosts, against the same proxy serving one route; throughput
//! ratio and peak memory.

use super::{hello, Ctx, A, B};
use crate::load::{Hosts, Spec};
use crate::peers::Launch;
use crate::report::Run;
use crate::topology::{Revision, Route, Topology};

/// Run the scenario at the highest thread count and the lowest connection count.
pub fn run(ctx: &mut Ctx) -> anyhow::Result<()> {
    let a = ctx.backends(A, 2)?;
    let b = ctx.backends(B, 2)?;
    let one = Topology {
        routes: vec![hello(&[&a[0], &a[1]], &[&b[0], &b[1]], 90, 10)],
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
            };
            let proxy = match launch.start(&topo.routes[0].host()) {
                Ok(p) => p,
                Err(e) => {
                    let why = format!(
                        "hosts: {} with {n} routes failed to start: {e:#}",
                        kind.name()
                    );
                    ctx.progress(&why);
                    ctx.report.failures.push(why);
                    continue;
                }
            };
            let spec = Spec {
                hosts: if n == 1 {
                    Hosts::one(&topo.routes[0].host())
                } else {
                    Hosts::Random(hosts.clone())
                },
                ..ctx.spec(proxy.addr, "", conns)
            };
            let (out, cpu, rss) = ctx.measure(Some(&proxy), &spec);
            ctx.progress(format!(
                "  {:.0} rps, p99 {:.2} ms, {} errors, peak RSS {:.1} MiB",
                out.rps(),
                out.ms(0.99),
                out.errors,
                rss.unwrap_or(0) as f64 / 1048576.0
            ));
            let run = Run::new("hosts", kind.name(), Some(threads), n, conns, &out).usage(cpu, rss);
            ctx.report.runs.push(run);
        }
    }
    Ok(())
}
