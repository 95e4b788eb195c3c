//! Scenario 3: under constant load, the split goes 100/0 → 90/10 → 50/50 →
//! 0/100 (and round again) through the gateway's snapshot file, one step per
//! `--step`. Each write also moves a one-revision `marker` route to a pod
//! of its own, so the first marker response from that pod is the moment the
//! new table answers: the propagation time.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::{hello, ms_between, Ctx, A, B};
use crate::load::{self, Hosts, Outcome, Spec};
use crate::report::{quantile, Rollout, RolloutStep, Run};
use crate::topology::{Revision, Route, Topology};

const STEPS: [(u32, u32); 4] = [(100, 0), (90, 10), (50, 50), (0, 100)];

/// Run the scenario (gateway only: the peers have no snapshot source).
pub fn run(ctx: &mut Ctx) -> anyhow::Result<()> {
    let a = ctx.backends(A, 2)?;
    let b = ctx.backends(B, 2)?;
    let total = STEPS.len() * ctx.opts.cycles.max(1);
    let markers: Vec<_> = (0..total)
        .map(|i| ctx.pods.start(&format!("marker-{i}")))
        .collect::<Result<_, _>>()?;
    let topo = |i: usize| {
        let (pa, pb) = STEPS[i % STEPS.len()];
        Topology {
            routes: vec![
                hello(&[&a[0], &a[1]], &[&b[0], &b[1]], pa, pb),
                Route {
                    namespace: "default".into(),
                    name: "marker".into(),
                    revisions: vec![Revision {
                        name: format!("marker-{i}"),
                        percent: 100,
                        endpoints: vec![markers[i].addr],
                    }],
                },
            ],
            upstream_tls: None,
            authz: None,
        }
    };
    let first = topo(0);
    let (host, marker_host) = (first.routes[0].host(), first.routes[1].host());
    let threads = ctx.max_threads();
    let proxy = ctx.start_gateway(&first, None, &host)?;
    let step = ctx.opts.step;
    let conns = ctx.opts.conns[0];
    ctx.progress(format!(
        "rollout: {total} steps of {step:?} under {conns} conns ({threads} threads)"
    ));
    let span = step * total as u32 + Duration::from_millis(200);
    let main_spec = Spec {
        duration: span,
        timeline: true,
        ..ctx.spec(proxy.addr, &host, conns)
    };
    let marker_spec = Spec {
        hosts: Hosts::one(&marker_host),
        conns: 1,
        threads: 1,
        duration: span,
        timeline: true,
        ..main_spec.clone()
    };
    let mut writes: Vec<Instant> = Vec::new();
    let mut write_error = None;
    let (main, marker) = std::thread::scope(|s| {
        let main = s.spawn(|| load::run(&main_spec));
        let marker = s.spawn(|| load::run(&marker_spec));
        std::thread::sleep(step);
        for i in 1..total {
            let at = Instant::now();
            if let Err(e) = proxy.update(&topo(i)) {
                write_error = Some(e);
                break;
            }
            writes.push(at);
            ctx.progress(format!("  step {i}: {:?}", STEPS[i % STEPS.len()]));
            std::thread::sleep(step.saturating_sub(at.elapsed()));
        }
        (
            main.join().expect("load thread"),
            marker.join().expect("marker thread"),
        )
    });
    if let Some(e) = write_error {
        return Err(e.context("rollout: writing the snapshot"));
    }
    let steps = analyse(&main, &marker, &writes);
    let props: Vec<f64> = steps.iter().filter_map(|s| s.propagation_ms).collect();
    let r = Rollout {
        errors: main.errors + marker.errors,
        requests: main.ok + marker.ok,
        propagation_p50_ms: quantile(&props, 0.5).unwrap_or(f64::NAN),
        propagation_p99_ms: quantile(&props, 0.99).unwrap_or(f64::NAN),
        error_samples: main
            .error_samples
            .iter()
            .chain(&marker.error_samples)
            .cloned()
            .collect(),
        steps,
    };
    ctx.progress(format!(
        "  {} ok, {} failed, propagation p99 {:.2} ms",
        r.requests, r.errors, r.propagation_p99_ms
    ));
    let run = Run::new("rollout", "gateway", Some(threads), 2, conns, &main)
        .usage(None, Some(proxy.peak_rss()));
    ctx.report.runs.push(run);
    ctx.report.rollout = Some(r);
    Ok(())
}

/// When the clock passed `micros` into an outcome's run.
fn at(out: &Outcome, micros: u64) -> Instant {
    out.started + Duration::from_micros(micros)
}

/// Per step: propagation from the marker (when its first answer from the new
/// pod arrived), observed split from the main load (requests sent after that,
/// so a request routed by the old table and answered late is not counted).
fn analyse(main: &Outcome, marker: &Outcome, writes: &[Instant]) -> Vec<RolloutStep> {
    let end = at(main, main.timeline.last().map_or(0, |m| m.0));
    writes
        .iter()
        .enumerate()
        .map(|(k, &written)| {
            let i = k + 1;
            let name = format!("marker-{i}");
            let live = marker
                .timeline
                .iter()
                .map(|&(_, done, n)| (at(marker, done), n))
                .find(|&(t, n)| t >= written && marker.names[n as usize] == name)
                .map(|(t, _)| t);
            let until = writes.get(k + 1).copied().unwrap_or(end);
            let mut counts: BTreeMap<String, u64> = BTreeMap::new();
            if let Some(from) = live {
                for &(sent, _, n) in &main.timeline {
                    let t = at(main, sent);
                    if t >= from && t < until {
                        *counts.entry(main.names[n as usize].clone()).or_default() += 1;
                    }
                }
            }
            let responses: u64 = counts.values().sum();
            let (pa, pb) = STEPS[i % STEPS.len()];
            RolloutStep {
                written: vec![(A.into(), pa), (B.into(), pb)],
                propagation_ms: live.map(|t| ms_between(written, t)),
                observed: counts
                    .into_iter()
                    .map(|(k, v)| (k, 100.0 * v as f64 / responses.max(1) as f64))
                    .collect(),
                responses,
            }
        })
        .collect()
}
