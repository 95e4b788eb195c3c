//! Scenario 4: a scaled-to-zero revision. The gateway sends its requests to
//! a test activator (with `Knative-Serving-Revision`/`-Namespace`), which
//! forwards them to the pod. Measured: the same pod's latency warm (direct)
//! and cold (via the activator), that the activator received every request,
//! and a wake under load: the revision gains its endpoint with no request lost.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::{ms_between, Ctx};
use crate::activator::Activator;
use crate::load::{self, Spec};
use crate::report::{Cold, Run};
use crate::topology::{Revision, Route, Topology};

const NS: &str = "default";

fn route(name: &str, revision: &str, endpoints: Vec<std::net::SocketAddr>) -> Route {
    Route {
        namespace: NS.into(),
        name: name.into(),
        revisions: vec![Revision {
            name: revision.into(),
            percent: 100,
            endpoints,
        }],
    }
}

/// Run the scenario (gateway only: the peers have no activator path).
pub fn run(ctx: &mut Ctx) -> anyhow::Result<()> {
    let warm_pod = ctx.pods.start("warm-00001")?;
    let cold_pod = ctx.pods.start("cold-00001")?;
    let activator = Activator::start(
        ctx.pods,
        HashMap::from([((NS.to_owned(), "cold-00001".to_owned()), cold_pod.addr)]),
    )?;
    let topo = |cold_endpoints| Topology {
        routes: vec![
            route("warm", "warm-00001", vec![warm_pod.addr]),
            route("cold", "cold-00001", cold_endpoints),
        ],
        upstream_tls: None,
        authz: None,
    };
    let asleep = topo(vec![]);
    let (warm_host, cold_host) = (asleep.routes[0].host(), asleep.routes[1].host());
    let threads = ctx.max_threads();
    let conns = ctx.opts.conns[0];
    let proxy = ctx.start_gateway(&asleep, Some(activator.addr), &warm_host)?;

    ctx.progress(format!("cold: warm path, {conns} conns"));
    let (warm, cpu, _) = ctx.measure(Some(&proxy), &ctx.spec(proxy.addr, &warm_host, conns));
    let warm = Run::new("cold", "gateway", Some(threads), 2, conns, &warm).usage(cpu, None);

    ctx.progress("cold: activator path");
    let spec = ctx.spec(proxy.addr, &cold_host, conns);
    ctx.warm_up(&spec);
    let before = activator.hits();
    let (cold, cpu, _) = ctx.measure_now(Some(&proxy), &spec);
    let activator_requests = activator.hits() - before;
    let cold_run =
        Run::new("cold", "gateway+activator", Some(threads), 2, conns, &cold).usage(cpu, None);

    ctx.progress("cold: wake under load");
    let spec = Spec {
        duration: ctx.opts.duration,
        ..ctx.spec(proxy.addr, &cold_host, conns)
    };
    let awake = topo(vec![cold_pod.addr]);
    let mut switch_ms = None;
    let mut write_error = None;
    let wake = std::thread::scope(|s| {
        let load = s.spawn(|| load::run(&spec));
        std::thread::sleep(ctx.opts.duration / 3);
        let written = Instant::now();
        if let Err(e) = proxy.update(&awake) {
            write_error = Some(e);
        } else {
            // The activator's count stops rising once the new table serves.
            let (mut last, mut changed) = (activator.hits(), None);
            let quiet = Duration::from_millis(100);
            while !load.is_finished() && changed.map_or(written, |c| c).elapsed() < quiet {
                std::thread::sleep(Duration::from_micros(500));
                let now = activator.hits();
                if now != last {
                    (last, changed) = (now, Some(Instant::now()));
                }
            }
            switch_ms = Some(changed.map_or(0.0, |c| ms_between(written, c)));
        }
        load.join().expect("load thread")
    });
    if let Some(e) = write_error {
        return Err(e.context("cold: writing the snapshot"));
    }
    let wake = Run::new("cold", "gateway-wake", Some(threads), 2, conns, &wake);
    ctx.progress(format!(
        "  warm p50 {:.2} ms, via activator p50 {:.2} ms; {} + {} failed",
        warm.p50_ms, cold_run.p50_ms, cold_run.errors, wake.errors
    ));
    ctx.report
        .runs
        .extend([warm.clone(), cold_run.clone(), wake.clone()]);
    ctx.report.cold = Some(Cold {
        added_p50_ms: cold_run.p50_ms - warm.p50_ms,
        added_p99_ms: cold_run.p99_ms - warm.p99_ms,
        warm,
        activator: cold_run,
        activator_requests,
        wake,
        switch_ms,
    });
    Ok(())
}
