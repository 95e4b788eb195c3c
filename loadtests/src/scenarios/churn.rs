//! Scenario 5: under load, revision A's endpoints change ten times a second
//! through the snapshot file, alternately one new pod added and the oldest
//! churned one removed. A removed pod keeps serving until the scenario ends,
//! as Knative's queue-proxy drains before a pod stops. Measured: failed
//! requests, the split, and the time from each add to the new pod's first
//! request. The load lasts as long as the configured number of adds takes
//! (100 by default: 5 s of churn gave only 24 samples, and the p99 of
//! 24 is their maximum, decided by one stall of a shared machine).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::{hello, ms_between, Ctx, A, B};
use crate::backend::Backend;
use crate::load;
use crate::report::{quantile, Churn, Run};
use crate::topology::Topology;

/// Time between snapshot writes: ten a second.
const TICK: Duration = Duration::from_millis(100);

/// Run the scenario (gateway only: the peers have no snapshot source).
pub fn run(ctx: &mut Ctx) -> anyhow::Result<()> {
    let stable = ctx.pods.start(A)?;
    let b = ctx.backends(B, 2)?;
    let mut churned: VecDeque<Backend> = VecDeque::from([ctx.pods.start(A)?]);
    let initial = churned[0].addr;
    let mut draining: Vec<Backend> = Vec::new();
    let topo = |churned: &VecDeque<Backend>| {
        let a: Vec<&Backend> = std::iter::once(&stable).chain(churned.iter()).collect();
        Topology {
            routes: vec![hello(&a, &[&b[0], &b[1]], 90, 10)],
            upstream_tls: None,
            authz: None,
        }
    };
    let first = topo(&churned);
    let host = first.routes[0].host();
    let threads = ctx.max_threads();
    let conns = ctx.opts.conns[0];
    let proxy = ctx.start_gateway(&first, None, &host)?;
    let adds = ctx.opts.churn_adds;
    ctx.progress(format!(
        "churn: an endpoint added or removed every {TICK:?}, {adds} added, under {conns} conns"
    ));
    let mut spec = ctx.spec(proxy.addr, &host, conns);
    // One add every other tick, a tick of load before the first and two after the last.
    spec.duration = spec.duration.max(TICK * (2 * adds as u32 + 2));
    let (mut updates, mut added, mut propagation) = (0usize, 0usize, Vec::new());
    let mut failure = None;
    let cpu0 = proxy.cpu_seconds();
    let out = std::thread::scope(|s| {
        let load = s.spawn(|| load::run(&spec));
        // Churn stops a tick before the load does, so the last pod added has time to serve.
        let stop = Instant::now() + spec.duration.saturating_sub(TICK);
        std::thread::sleep(TICK);
        let mut tick = 0u32;
        while added < adds && Instant::now() < stop {
            let next = Instant::now() + TICK;
            let adding = tick % 2 == 0;
            tick += 1;
            let result = if adding {
                ctx.pods.start(A).map(|pod| churned.push_back(pod))
            } else {
                draining.extend(churned.pop_front());
                Ok(())
            };
            let written = Instant::now();
            if let Err(e) = result.and_then(|()| proxy.update(&topo(&churned))) {
                failure = Some(e);
                break;
            }
            updates += 1;
            if adding {
                added += 1;
                let pod = churned.back().expect("just added");
                // The new pod's first request marks the table that has it.
                while pod.hits() == 0 && Instant::now() < next {
                    std::thread::sleep(Duration::from_micros(200));
                }
                if pod.hits() > 0 {
                    propagation.push(ms_between(written, Instant::now()));
                }
            }
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
        }
        load.join().expect("load thread")
    });
    if let Some(e) = failure {
        return Err(e.context("churn: updating endpoints"));
    }
    let cpu = proxy.cpu_seconds() - cpu0;
    let served = churned
        .iter()
        .chain(&draining)
        .filter(|p| p.addr != initial && p.hits() > 0)
        .count();
    let run = Run::new("churn", "gateway", Some(threads), 1, conns, &out)
        .usage(Some(cpu), Some(proxy.peak_rss()));
    ctx.progress(format!(
        "  {updates} writes, {} ok, {} failed, {served}/{added} added pods served",
        run.requests, run.errors
    ));
    ctx.report.runs.push(run.clone());
    ctx.report.churn = Some(Churn {
        run,
        updates,
        added,
        added_served: served,
        propagation_p50_ms: quantile(&propagation, 0.5),
        propagation_p99_ms: quantile(&propagation, 0.99),
        propagation_max_ms: quantile(&propagation, 1.0),
        propagation_samples: propagation.len(),
    });
    Ok(())
}
