//! The scenarios, each a function over a [`Ctx`]: start backends and
//! proxies, drive load, record what was measured in the report.

pub mod authz;
pub mod callgrind;
pub mod churn;
pub mod cold;
pub mod hostile;
pub mod hosts;
pub mod kube_scale;
pub mod protocols;
pub mod rollout;
pub mod split;
pub mod upstream_tls;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::backend::{Backend, Pods};
use crate::load::{self, Outcome, Spec};
use crate::peers::{Binaries, Kind, Launch, Proxy};
use crate::report::{Report, Run};
use crate::topology::{Revision, Route, Topology};

/// Rounds per side where two things are compared by alternating rounds (the
/// hosts ratio, the generator against wrk); each lasts the configured duration.
pub const ROUNDS: usize = 3;

/// The order of `n` sides in `round`: forwards, then backwards (A B, B A,
/// A B, ...), so a drift over time favours neither side.
pub fn alternating(round: usize, n: usize) -> impl Iterator<Item = usize> {
    let forwards = round % 2 == 0;
    (0..n).map(move |i| if forwards { i } else { n - 1 - i })
}

/// A scenario's name, as given on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// One route, 90/10 over two revisions with two endpoints each; every proxy.
    Split,
    /// Many routes, a random Host per request; every proxy.
    Hosts,
    /// The split changed through the snapshot file under load (gateway).
    Rollout,
    /// A scaled-to-zero revision behind a test activator (gateway).
    Cold,
    /// Endpoints added and removed ten times a second under load (gateway).
    Churn,
    /// The split over h2c (h2load) and HTTPS (keep-alive, and new handshakes); every proxy.
    Protocols,
    /// The split's instructions per request under callgrind (gateway, nginx, HAProxy).
    Callgrind,
    /// Malformed and request-smuggling cases, each proxy's answers side by side.
    Hostile,
    /// The split to backends serving TLS (system-internal TLS) and to plaintext
    /// ones, keep-alive; the gateway and Envoy.
    UpstreamTls,
    /// The control plane at Knative's size: a test API server of its own
    /// with thousands of KIngresses; start, Ready, changes, memory (gateway).
    KubeScale,
    /// The split with every request checked by a gRPC authorization server;
    /// the gateway and Envoy.
    Authz,
}

/// How hard and how long.
#[derive(Debug, Clone)]
pub struct Options {
    /// Measured time per load run.
    pub duration: Duration,
    /// Unmeasured load before each measured run.
    pub warmup: Duration,
    /// Proxy worker threads to compare at.
    pub threads: Vec<usize>,
    /// Client connections to compare at.
    pub conns: Vec<usize>,
    /// Load generator threads.
    pub load_threads: usize,
    /// Routes in the hosts scenario.
    pub routes: usize,
    /// How long each rollout step lasts.
    pub step: Duration,
    /// Rollout cycles (of four steps each).
    pub cycles: usize,
    /// Pods the churn scenario adds, each one propagation sample.
    pub churn_adds: usize,
    /// KIngresses in the kube-scale scenario.
    pub kube_kingresses: usize,
    /// Services (with slices) no KIngress references, in kube-scale.
    pub kube_unrelated: usize,
    /// The gateway's `--kube-api-qps` in kube-scale (0: no limit).
    pub kube_qps: f64,
    /// How long kube-scale waits for every KIngress to be Ready, seconds.
    pub kube_ready_limit_s: u64,
    /// The proxies to run (the gateway always, peers where available).
    pub kinds: Vec<Kind>,
    /// Compare the load generator with wrk, where wrk is installed.
    pub wrk: bool,
    /// Where the callgrind scenario keeps each proxy's profile of its long run.
    pub profiles: std::path::PathBuf,
}

/// What scenarios share.
pub struct Ctx<'a> {
    /// Options.
    pub opts: &'a Options,
    /// Where backends run.
    pub pods: &'a Pods,
    /// Executables.
    pub bins: &'a Binaries,
    /// Results so far.
    pub report: &'a mut Report,
    /// Start of the whole invocation, for progress lines.
    pub started: Instant,
}

impl<'a> Ctx<'a> {
    /// A progress line on stderr.
    pub fn progress(&self, msg: impl AsRef<str>) {
        eprintln!(
            "[{:>6.1}s] {}",
            self.started.elapsed().as_secs_f64(),
            msg.as_ref()
        );
    }

    /// Record `why` as a failure of the run (which goes on), with a progress line.
    pub fn fail(&mut self, why: String) {
        self.progress(&why);
        self.report.failures.push(why);
    }

    /// Start `launch`, ready once `host` answers. A proxy that cannot start
    /// is recorded as a failure (`what` names the run) and `None` returned:
    /// the scenario goes on with the others.
    pub fn start(&mut self, launch: &Launch, host: &str, what: &str) -> Option<Proxy> {
        match launch.start(host) {
            Ok(p) => Some(p),
            Err(e) => {
                self.fail(format!("{what} failed to start: {e:#}"));
                None
            }
        }
    }

    /// The proxies to compare: the gateway, then each available peer.
    pub fn proxies(&self) -> Vec<(Kind, &'a Path)> {
        let bins: &'a Binaries = self.bins;
        self.opts
            .kinds
            .iter()
            .filter_map(|k| bins.get(*k).map(|p| (*k, p)))
            .collect()
    }

    /// The gateway's executable.
    pub fn gateway(&self) -> &'a Path {
        &self.bins.gateway
    }

    /// Warm up, then measure `spec` against `proxy` (CPU over the measured part, peak RSS).
    pub fn measure(
        &self,
        proxy: Option<&Proxy>,
        spec: &Spec,
    ) -> (Outcome, Option<f64>, Option<u64>) {
        self.warm_up(spec);
        self.measure_now(proxy, spec)
    }

    /// Unmeasured load, so connections, pools and caches are warm.
    pub fn warm_up(&self, spec: &Spec) {
        if !self.opts.warmup.is_zero() {
            load::run(&Spec {
                duration: self.opts.warmup,
                timeline: false,
                ..spec.clone()
            });
        }
    }

    /// Measure `spec` against `proxy` without warming up first.
    pub fn measure_now(
        &self,
        proxy: Option<&Proxy>,
        spec: &Spec,
    ) -> (Outcome, Option<f64>, Option<u64>) {
        let cpu0 = proxy.map(Proxy::cpu_seconds);
        let out = load::run(spec);
        let cpu = proxy.zip(cpu0).map(|(p, c0)| p.cpu_seconds() - c0);
        let rss = proxy.map(Proxy::peak_rss);
        (out, cpu, rss)
    }

    /// Measure `proxy` serving `host` at every connection count, each run
    /// recorded as `scenario` for `name` at `threads`, with a progress line.
    pub fn measure_conns(
        &mut self,
        proxy: &Proxy,
        host: &str,
        scenario: &str,
        name: &str,
        threads: usize,
    ) {
        let opts = self.opts;
        for &conns in &opts.conns {
            let (out, cpu, rss) = self.measure(Some(proxy), &self.spec(proxy.addr, host, conns));
            self.progress(format!(
                "  {conns} conns: {:.0} rps, p99 {:.2} ms, {} errors",
                out.rps(),
                out.ms(0.99),
                out.errors
            ));
            let run = Run::new(scenario, name, Some(threads), 1, conns, &out).usage(cpu, rss);
            self.report.runs.push(run);
        }
    }

    /// The load spec every scenario starts from.
    pub fn spec(&self, target: SocketAddr, host: &str, conns: usize) -> Spec {
        Spec {
            targets: vec![target],
            hosts: load::Hosts::one(host),
            conns,
            threads: self.opts.load_threads,
            duration: self.opts.duration,
            timeline: false,
        }
    }

    /// The thread count the single-proxy scenarios run at: the highest asked for.
    pub fn max_threads(&self) -> usize {
        *self
            .opts
            .threads
            .iter()
            .max()
            .expect("at least one thread count")
    }

    /// Start the gateway on `topology` at [`Self::max_threads`], ready once `host` answers.
    pub fn start_gateway(
        &self,
        topology: &Topology,
        activator: Option<SocketAddr>,
        host: &str,
    ) -> anyhow::Result<Proxy> {
        Launch {
            kind: Kind::Gateway,
            bin: self.gateway(),
            topology,
            threads: self.max_threads(),
            activator,
            listeners: Default::default(),
            callgrind: None,
        }
        .start(host)
    }

    /// Start `n` backends answering `revision`.
    pub fn backends(&self, revision: &str, n: usize) -> anyhow::Result<Vec<Backend>> {
        (0..n).map(|_| self.pods.start(revision)).collect()
    }
}

/// The revisions every scenario splits between.
pub const A: &str = "hello-00001";
/// The second revision.
pub const B: &str = "hello-00002";

/// Route `default/hello` splitting `pa`/`pb` between revisions A and B.
pub fn hello(a: &[&Backend], b: &[&Backend], pa: u32, pb: u32) -> Route {
    let rev = |name: &str, percent, eps: &[&Backend]| Revision {
        name: name.into(),
        percent,
        endpoints: eps.iter().map(|e| e.addr).collect(),
    };
    Route {
        namespace: "default".into(),
        name: "hello".into(),
        revisions: vec![rev(A, pa, a), rev(B, pb, b)],
    }
}

/// Milliseconds between two instants (negative if `to` is earlier).
pub fn ms_between(from: Instant, to: Instant) -> f64 {
    if to >= from {
        (to - from).as_secs_f64() * 1000.0
    } else {
        -((from - to).as_secs_f64() * 1000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::alternating;

    #[test]
    fn rounds_alternate_the_order_of_the_sides() {
        let order = |round, n| alternating(round, n).collect::<Vec<_>>();
        assert_eq!(order(0, 2), [0, 1]);
        assert_eq!(order(1, 2), [1, 0]);
        assert_eq!(order(2, 2), [0, 1]);
        assert_eq!(order(1, 1), [0], "a side that failed to start leaves one");
        assert!(order(1, 0).is_empty());
    }
}
