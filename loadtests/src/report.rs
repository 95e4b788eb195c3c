//! What a run found: every measurement, the scenario details, the targets
//! with met or not, printed as tables and written as JSON and an SVG chart.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::Serialize;

use crate::load::Outcome;

/// One load run against one proxy (or none: `direct`).
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    /// Scenario name.
    pub scenario: String,
    /// `gateway`, a peer, `direct` (no proxy) or a generator (`loadtest`, `wrk`).
    pub proxy: String,
    /// Proxy worker threads (none for direct runs).
    pub threads: Option<usize>,
    /// Client connections.
    pub conns: usize,
    /// Routes configured.
    pub routes: usize,
    /// Successful requests per second.
    pub rps: f64,
    /// Latency quantiles, milliseconds.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Successful requests.
    pub requests: u64,
    /// Failed requests.
    pub errors: u64,
    /// A few failures, verbatim.
    pub error_samples: Vec<String>,
    /// Share of responses per revision, percent.
    pub split: BTreeMap<String, f64>,
    /// Proxy CPU seconds (user + system, all its processes) per 100,000 requests.
    pub cpu_s_per_100k: Option<f64>,
    /// Proxy peak resident memory, MiB.
    pub peak_rss_mib: Option<f64>,
}

impl Run {
    /// A run from a load outcome.
    pub fn new(
        scenario: &str,
        proxy: &str,
        threads: Option<usize>,
        routes: usize,
        conns: usize,
        out: &Outcome,
    ) -> Run {
        Run {
            routes,
            p50_ms: out.ms(0.5),
            p90_ms: out.ms(0.9),
            p99_ms: out.ms(0.99),
            p999_ms: out.ms(0.999),
            error_samples: out.error_samples.clone(),
            split: out.split(),
            ..Run::rate(
                scenario,
                proxy,
                threads,
                conns,
                out.rps(),
                out.ok,
                out.errors,
            )
        }
    }

    /// A run measured elsewhere (h2load, the handshake client): a rate and
    /// counts, no latency histogram.
    pub fn rate(
        scenario: &str,
        proxy: &str,
        threads: Option<usize>,
        conns: usize,
        rps: f64,
        requests: u64,
        errors: u64,
    ) -> Run {
        Run {
            scenario: scenario.into(),
            proxy: proxy.into(),
            threads,
            conns,
            routes: 1,
            rps,
            p50_ms: 0.0,
            p90_ms: 0.0,
            p99_ms: 0.0,
            p999_ms: 0.0,
            requests,
            errors,
            error_samples: Vec::new(),
            split: BTreeMap::new(),
            cpu_s_per_100k: None,
            peak_rss_mib: None,
        }
    }

    /// With the proxy's CPU seconds over the run and its peak RSS in bytes.
    pub fn usage(mut self, cpu_s: Option<f64>, rss: Option<u64>) -> Run {
        self.cpu_s_per_100k = cpu_s.map(|c| c * 100_000.0 / self.requests.max(1) as f64);
        self.peak_rss_mib = rss.map(|b| b as f64 / (1024.0 * 1024.0));
        self
    }
}

/// One step of the rollout scenario.
#[derive(Debug, Clone, Serialize)]
pub struct RolloutStep {
    /// The split written, percent per revision.
    pub written: Vec<(String, u32)>,
    /// From the file write to the first response of the new table, ms.
    pub propagation_ms: Option<f64>,
    /// Share per revision among requests sent after propagation, percent.
    pub observed: BTreeMap<String, f64>,
    /// Responses counted for `observed`.
    pub responses: u64,
}

/// The rollout scenario.
#[derive(Debug, Clone, Serialize)]
pub struct Rollout {
    /// Steps in order.
    pub steps: Vec<RolloutStep>,
    /// Failed requests during the whole rollout.
    pub errors: u64,
    /// Successful requests.
    pub requests: u64,
    /// Propagation quantiles over steps, ms.
    pub propagation_p50_ms: f64,
    /// p99 (nearest rank) over steps.
    pub propagation_p99_ms: f64,
    /// A few failures, verbatim.
    pub error_samples: Vec<String>,
}

/// The cold-start scenario.
#[derive(Debug, Clone, Serialize)]
pub struct Cold {
    /// The same backend through a revision with endpoints.
    pub warm: Run,
    /// Through the activator while the revision has none.
    pub activator: Run,
    /// `activator.p50 - warm.p50`, ms.
    pub added_p50_ms: f64,
    /// `activator.p99 - warm.p99`, ms.
    pub added_p99_ms: f64,
    /// Requests the activator received while cold (equals the cold responses when none is lost).
    pub activator_requests: u64,
    /// The wake: load during the write that gives the revision an endpoint.
    pub wake: Run,
    /// From that write until the activator saw its last request, ms.
    pub switch_ms: Option<f64>,
}

/// The endpoint-churn scenario.
#[derive(Debug, Clone, Serialize)]
pub struct Churn {
    /// The load during churn.
    pub run: Run,
    /// Snapshot writes (each adds or removes one endpoint).
    pub updates: usize,
    /// Endpoints added.
    pub added: usize,
    /// Added endpoints that received traffic.
    pub added_served: usize,
    /// From the write adding an endpoint to its first request, ms: p50 and p99.
    pub propagation_p50_ms: Option<f64>,
    /// p99 (nearest rank).
    pub propagation_p99_ms: Option<f64>,
    /// The slowest.
    pub propagation_max_ms: Option<f64>,
    /// Propagation samples: added endpoints whose first request was seen.
    pub propagation_samples: usize,
}

/// The kube-scale scenario: the control plane at Knative's size.
#[derive(Debug, Clone, Serialize)]
pub struct KubeScale {
    /// KIngresses of the gateway's class.
    pub kingresses: usize,
    /// Services (each with an EndpointSlice), referenced or not.
    pub services: usize,
    /// From the gateway's start to the last KIngress's host served, s.
    pub first_table_s: f64,
    /// From the start until every KIngress is Ready, s (`None`: not in time).
    pub all_ready_s: Option<f64>,
    /// KIngresses changed 1.4 s after start: each from its change to Ready, ms.
    pub cold_change_ready_ms: Vec<Option<f64>>,
    /// The gateway's resident memory once all are Ready, MiB.
    pub rss_mib: f64,
    /// Status writes the API server received (failed ones included).
    pub status_writes: u64,
    /// Status writes a second between the first table and all Ready.
    pub status_writes_per_s: Option<f64>,
    /// API calls (lists, gets, writes; not watches) per KIngress.
    pub api_calls_per_kingress: f64,
    /// A KIngress change (split to a new Service) to its first request, ms: p50.
    pub kingress_change_p50_ms: Option<f64>,
    /// p99 (nearest rank).
    pub kingress_change_p99_ms: Option<f64>,
    /// KIngress changes seen on the request path.
    pub kingress_change_samples: usize,
    /// An endpoint change (a revision's pod moved) to its first request, ms: p50.
    pub endpoint_change_p50_ms: Option<f64>,
    /// p99 (nearest rank).
    pub endpoint_change_p99_ms: Option<f64>,
    /// Endpoint changes seen on the request path.
    pub endpoint_change_samples: usize,
}

/// One target of the issue and whether this run met it.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// What was asked.
    pub target: String,
    /// What was measured.
    pub measured: String,
    /// Met or not.
    pub met: bool,
}

/// One malformed-request case and what each proxy did with it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HostileCase {
    /// The case's short name.
    pub case: String,
    /// What it tries.
    pub what: String,
    /// By proxy: the answer (`400`, `200 (0 forwarded)`, `closed`) and, if
    /// unsafe, why.
    pub answers: BTreeMap<String, (String, Option<String>)>,
}

/// Instructions per proxied request, under callgrind.
#[derive(Debug, Clone, Serialize)]
pub struct Instructions {
    /// `gateway` or a peer.
    pub proxy: String,
    /// Client connections.
    pub conns: usize,
    /// Requests between the short and the long run.
    pub requests: u64,
    /// User-space instructions per request, every process and thread of the proxy.
    pub per_request: f64,
}

/// Everything one invocation measured.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// Seconds since the epoch at start.
    pub started_unix: u64,
    /// Cores, kernel and the options used.
    pub environment: BTreeMap<String, String>,
    /// Load runs.
    pub runs: Vec<Run>,
    /// Rollout details.
    pub rollout: Option<Rollout>,
    /// Cold-start details.
    pub cold: Option<Cold>,
    /// Churn details.
    pub churn: Option<Churn>,
    /// Control-plane details (the kube-scale scenario).
    pub kube_scale: Option<KubeScale>,
    /// Instructions per request (the callgrind scenario).
    pub callgrind: Vec<Instructions>,
    /// Each malformed-request case and every proxy's answer (the hostile scenario).
    pub hostile: Vec<HostileCase>,
    /// Peers that could not be run, and why.
    pub missing: Vec<(String, String)>,
    /// Scenarios that could not finish, and why.
    pub failures: Vec<String>,
    /// Targets.
    pub checks: Vec<Check>,
}

impl KubeScale {
    /// The targets of the control-plane issue, at its size (10,000).
    fn checks(&self) -> Vec<Check> {
        let at = format!("kube-scale ({}): ", self.kingresses);
        let ms = |m: Option<f64>| m.map_or("never".into(), |m| format!("{m:.1} ms"));
        let mut checks = vec![
            Check {
                target: format!("{at}first table < 2 s"),
                measured: format!("{:.2} s", self.first_table_s),
                met: self.first_table_s < 2.0,
            },
            Check {
                target: format!("{at}all Ready < 10 s"),
                measured: self
                    .all_ready_s
                    .map_or("never".into(), |s| format!("{s:.1} s")),
                met: self.all_ready_s.is_some_and(|s| s < 10.0),
            },
        ];
        let slowest = self
            .cold_change_ready_ms
            .iter()
            .try_fold(0.0f64, |m, v| v.map(|v| m.max(v)));
        checks.push(Check {
            target: format!("{at}changed in the cold start, Ready < 1 s"),
            measured: ms(slowest),
            met: slowest.is_some_and(|m| m < 1000.0),
        });
        checks.push(Check {
            target: format!("{at}KIngress change p50 < 20 ms, p99 < 50 ms"),
            measured: format!(
                "{} / {}",
                ms(self.kingress_change_p50_ms),
                ms(self.kingress_change_p99_ms)
            ),
            met: self.kingress_change_p50_ms.is_some_and(|m| m < 20.0)
                && self.kingress_change_p99_ms.is_some_and(|m| m < 50.0),
        });
        checks.push(Check {
            target: format!("{at}endpoint change p50 < 10 ms"),
            measured: ms(self.endpoint_change_p50_ms),
            met: self.endpoint_change_p50_ms.is_some_and(|m| m < 10.0),
        });
        checks.push(Check {
            // The figure is in MB (10^6 bytes): 114.4 MiB.
            target: format!("{at}RSS < 120 MB"),
            measured: format!(
                "{:.0} MiB = {:.0} MB",
                self.rss_mib,
                self.rss_mib * 1.048_576
            ),
            met: self.rss_mib * 1.048_576 < 120.0,
        });
        checks
    }
}

/// `revision=share%` pairs, space-separated.
fn shares(split: &BTreeMap<String, f64>) -> String {
    let parts: Vec<String> = split.iter().map(|(k, v)| format!("{k}={v:.1}%")).collect();
    parts.join(" ")
}

/// Nearest-rank quantile of unsorted values.
pub fn quantile(values: &[f64], q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    Some(v[rank - 1])
}

/// What one chart panel plots of a run.
type Measure = fn(&Run) -> Vec<f64>;

const PEERS: [&str; 3] = ["haproxy", "nginx", "envoy"];

/// The performance issue's target for the gateway, in instructions per request.
const INSTRUCTIONS_TARGET: u64 = 30_000;

impl Report {
    /// Work out every target from the runs.
    pub fn check(&mut self) {
        let mut checks = Vec::new();
        let find = |scenario: &str, proxy: &str, threads: Option<usize>, conns: usize| {
            self.runs
                .iter()
                .find(|r| {
                    r.scenario == scenario
                        && r.proxy == proxy
                        && r.threads == threads
                        && r.conns == conns
                })
                .cloned()
        };
        for g in self
            .runs
            .iter()
            .filter(|r| r.scenario == "generator" && r.proxy == "loadtest")
        {
            if let Some(wrk) = find("generator", "wrk", None, g.conns) {
                checks.push(Check {
                    target: format!("generator direct rate ≥ wrk's ({} conns)", g.conns),
                    measured: format!(
                        "{:.0} vs {:.0} rps = {:.2}×",
                        g.rps,
                        wrk.rps,
                        g.rps / wrk.rps
                    ),
                    met: g.rps >= wrk.rps,
                });
            }
        }
        for gw in self
            .runs
            .iter()
            .filter(|r| r.scenario == "split" && r.proxy == "gateway")
        {
            let at = format!("{} threads, {} conns", gw.threads.unwrap_or(0), gw.conns);
            for peer in PEERS {
                let Some(p) = find("split", peer, gw.threads, gw.conns) else {
                    continue;
                };
                let want = if peer == "haproxy" { 1.0 } else { 1.2 };
                checks.push(Check {
                    target: format!("split rps ≥ {want}× {peer} ({at})"),
                    measured: format!("{:.2}×", gw.rps / p.rps),
                    met: gw.rps >= want * p.rps,
                });
                checks.push(Check {
                    target: format!("split p99 ≤ {peer} ({at})"),
                    measured: format!("{:.2} vs {:.2} ms", gw.p99_ms, p.p99_ms),
                    met: gw.p99_ms <= p.p99_ms,
                });
                if let (Some(a), Some(b)) = (gw.cpu_s_per_100k, p.cpu_s_per_100k) {
                    checks.push(Check {
                        target: format!("split CPU per request ≤ {peer} ({at})"),
                        measured: format!("{a:.2} vs {b:.2} CPU s per 100k"),
                        met: a <= b,
                    });
                }
            }
        }
        for many in self
            .runs
            .iter()
            .filter(|r| r.scenario == "hosts" && r.routes > 1)
        {
            let one = self.runs.iter().find(|r| {
                r.scenario == "hosts"
                    && r.routes == 1
                    && r.proxy == many.proxy
                    && r.threads == many.threads
            });
            if let (Some(one), "gateway") = (one, many.proxy.as_str()) {
                checks.push(Check {
                    target: format!("hosts: {} routes ≥ 0.9× one route's rps", many.routes),
                    measured: format!("{:.2}×", many.rps / one.rps),
                    met: many.rps >= 0.9 * one.rps,
                });
                if let Some(rss) = many.peak_rss_mib {
                    checks.push(Check {
                        target: format!("hosts: RSS at {} routes < 100 MB", many.routes),
                        measured: format!("{:.1} MB", rss * 1.048_576),
                        met: rss * 1.048_576 < 100.0,
                    });
                }
            }
        }
        // The protocols issue's targets, each a ratio to a peer in this run.
        for (scenario, peer, want, what) in [
            ("h2c", "envoy", 1.2, "h2c rps"),
            ("h2c", "nginx", 1.0, "h2c rps"),
            ("https", "nginx", 1.0, "HTTPS keep-alive rps"),
            ("handshakes", "nginx", 1.0, "new TLS connections per second"),
        ] {
            for gw in self
                .runs
                .iter()
                .filter(|r| r.scenario == scenario && r.proxy == "gateway")
            {
                if let Some(p) = find(scenario, peer, gw.threads, gw.conns) {
                    checks.push(Check {
                        target: format!(
                            "{what} ≥ {want}× {peer} ({} threads)",
                            gw.threads.unwrap_or(0)
                        ),
                        measured: format!("{:.0} vs {:.0} = {:.2}×", gw.rps, p.rps, gw.rps / p.rps),
                        met: gw.rps >= want * p.rps,
                    });
                }
            }
        }
        // The encryption issue's: TLS to backends against Envoy configured as
        // Kourier configures it, and against the gateway's own plaintext.
        for gw in self
            .runs
            .iter()
            .filter(|r| r.scenario == "upstream-tls" && r.proxy == "gateway tls")
        {
            let at = |proxy| find("upstream-tls", proxy, gw.threads, gw.conns);
            for (other, want, what) in [
                ("envoy tls", None, "upstream TLS rps vs Envoy's"),
                (
                    "gateway plaintext",
                    Some(0.8),
                    "upstream TLS rps ≥ 0.8× plaintext",
                ),
            ] {
                let Some(o) = at(other) else { continue };
                checks.push(Check {
                    target: format!("{what} ({} conns)", gw.conns),
                    measured: format!("{:.0} vs {:.0} = {:.2}×", gw.rps, o.rps, gw.rps / o.rps),
                    met: want.is_none_or(|w| gw.rps >= w * o.rps),
                });
            }
        }
        // External authorization: against Envoy doing the same with the
        // same server (issue target ≥ 1.5×), and the check's own cost.
        for gw in self
            .runs
            .iter()
            .filter(|r| r.scenario == "authz" && r.proxy == "gateway authz")
        {
            let at = |proxy| find("authz", proxy, gw.threads, gw.conns);
            for (other, want, what) in [
                ("envoy authz", Some(1.5), "authz rps ≥ 1.5× Envoy's"),
                ("gateway none", None, "authz rps vs no check"),
            ] {
                let Some(o) = at(other) else { continue };
                checks.push(Check {
                    target: format!("{what} ({} conns)", gw.conns),
                    measured: format!("{:.0} vs {:.0} = {:.2}×", gw.rps, o.rps, gw.rps / o.rps),
                    met: want.is_none_or(|w| gw.rps >= w * o.rps),
                });
            }
        }
        if let Some(gw) = self.callgrind.iter().find(|c| c.proxy == "gateway") {
            checks.push(Check {
                target: format!(
                    "instructions per request ≤ {INSTRUCTIONS_TARGET} (callgrind, 1 thread)"
                ),
                measured: format!("{:.0}", gw.per_request),
                met: gw.per_request <= INSTRUCTIONS_TARGET as f64,
            });
            if let Some(nginx) = self.callgrind.iter().find(|c| c.proxy == "nginx") {
                checks.push(Check {
                    target: "instructions per request ≤ nginx's (callgrind, 1 thread)".into(),
                    measured: format!("{:.2}×", gw.per_request / nginx.per_request),
                    met: gw.per_request <= nginx.per_request,
                });
            }
        }
        if let Some(r) = &self.rollout {
            checks.push(Check {
                target: "rollout: zero failed requests".into(),
                measured: format!("{} failed of {}", r.errors, r.requests + r.errors),
                met: r.errors == 0,
            });
            let all = r.steps.iter().all(|s| s.propagation_ms.is_some());
            checks.push(Check {
                target: "rollout: propagation < 50 ms p99".into(),
                measured: format!(
                    "p50 {:.1} ms, p99 {:.1} ms over {} steps{}",
                    r.propagation_p50_ms,
                    r.propagation_p99_ms,
                    r.steps.len(),
                    if all { "" } else { " (some never propagated)" }
                ),
                met: all && r.propagation_p99_ms < 50.0,
            });
        }
        if let Some(c) = &self.churn {
            checks.push(Check {
                target: "churn: zero failed requests".into(),
                measured: format!(
                    "{} failed of {}",
                    c.run.errors,
                    c.run.requests + c.run.errors
                ),
                met: c.run.errors == 0,
            });
            if let Some(p99) = c.propagation_p99_ms {
                checks.push(Check {
                    target: "churn: propagation < 50 ms p99".into(),
                    measured: format!("{p99:.1} ms over {} added endpoints", c.propagation_samples),
                    met: p99 < 50.0,
                });
            }
        }
        if let Some(k) = &self.kube_scale {
            checks.extend(k.checks());
        }
        if let Some(c) = &self.cold {
            let lost = c.activator.errors + c.wake.errors;
            checks.push(Check {
                target: "cold: no request lost".into(),
                measured: format!(
                    "{lost} failed; activator saw {} for {} answered",
                    c.activator_requests, c.activator.requests
                ),
                met: lost == 0 && c.activator_requests == c.activator.requests,
            });
        }
        self.checks = checks;
    }

    /// The tables printed at the end.
    pub fn text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{:<9} {:>3} {:>5} {:>6} {:<17} {:>9} {:>7} {:>7} {:>7} {:>7} {:>6} {:>8} {:>7} {:>8}  split",
            "scenario", "thr", "conns", "routes", "proxy", "rps", "p50ms", "p90ms", "p99ms", "p99.9", "errors", "cpu/100k", "rssMiB", "vs-best"
        );
        for r in &self.runs {
            let best = self.fastest_peer(r);
            let vs = match best {
                Some(b) if r.proxy == "gateway" => format!("{:.2}×", r.rps / b),
                _ => String::new(),
            };
            let _ = writeln!(
                s,
                "{:<9} {:>3} {:>5} {:>6} {:<17} {:>9.0} {:>7.2} {:>7.2} {:>7.2} {:>7.2} {:>6} {:>8} {:>7} {:>8}  {}",
                r.scenario,
                r.threads.map_or("-".into(), |t| t.to_string()),
                r.conns,
                r.routes,
                r.proxy,
                r.rps,
                r.p50_ms,
                r.p90_ms,
                r.p99_ms,
                r.p999_ms,
                r.errors,
                r.cpu_s_per_100k.map_or("-".into(), |c| format!("{c:.2}")),
                r.peak_rss_mib.map_or("-".into(), |m| format!("{m:.1}")),
                vs,
                shares(&r.split)
            );
        }
        if !self.callgrind.is_empty() {
            let _ = writeln!(s, "\ncallgrind, 1 thread: instructions per proxied request");
            for c in &self.callgrind {
                let _ = writeln!(
                    s,
                    "  {:<8} {:>8.0}  ({} conns, {} requests measured)",
                    c.proxy, c.per_request, c.conns, c.requests
                );
            }
        }
        if let Some(first) = self.hostile.first() {
            let proxies: Vec<&String> = first.answers.keys().collect();
            let _ = write!(
                s,
                "\nhostile requests ('!' marks an answer outside what the case allows)\n  {:<24}",
                "case"
            );
            for p in &proxies {
                let _ = write!(s, " {p:<22}");
            }
            let _ = writeln!(s);
            for row in &self.hostile {
                let _ = write!(s, "  {:<24}", row.case);
                for p in &proxies {
                    let cell = row.answers.get(*p).map_or("-".to_owned(), |(a, why)| {
                        format!("{}{a}", if why.is_some() { "! " } else { "" })
                    });
                    let _ = write!(s, " {cell:<22}");
                }
                let _ = writeln!(s);
            }
        }
        if let Some(r) = &self.rollout {
            let _ = writeln!(s, "\nrollout: {} ok, {} failed", r.requests, r.errors);
            for st in &r.steps {
                let w: Vec<String> = st.written.iter().map(|(k, v)| format!("{k}={v}")).collect();
                let _ = writeln!(
                    s,
                    "  wrote {:<32} propagated in {:>8}  observed {} ({} responses)",
                    w.join(" "),
                    st.propagation_ms
                        .map_or("never".into(), |p| format!("{p:.2} ms")),
                    shares(&st.observed),
                    st.responses
                );
            }
        }
        if let Some(c) = &self.cold {
            let _ = writeln!(
                s,
                "\ncold: warm p50 {:.2} / p99 {:.2} ms; via activator p50 {:.2} / p99 {:.2} ms; added p50 {:.2} / p99 {:.2} ms; activator saw {} for {} answered; wake: {} failed, switched in {}",
                c.warm.p50_ms, c.warm.p99_ms, c.activator.p50_ms, c.activator.p99_ms, c.added_p50_ms, c.added_p99_ms,
                c.activator_requests, c.activator.requests, c.wake.errors,
                c.switch_ms.map_or("never".into(), |m| format!("{m:.1} ms"))
            );
        }
        if let Some(c) = &self.churn {
            let _ = writeln!(
                s,
                "\nchurn: {} writes ({} endpoints added, {} served traffic), {} ok, {} failed; propagation over {} samples p50 {} p99 {} max {}",
                c.updates, c.added, c.added_served, c.run.requests, c.run.errors, c.propagation_samples,
                c.propagation_p50_ms.map_or("-".into(), |p| format!("{p:.2} ms")),
                c.propagation_p99_ms.map_or("-".into(), |p| format!("{p:.2} ms")),
                c.propagation_max_ms.map_or("-".into(), |p| format!("{p:.2} ms")),
            );
        }
        if let Some(k) = &self.kube_scale {
            let ms = |m: Option<f64>| m.map_or("-".into(), |m| format!("{m:.1} ms"));
            let cold: Vec<String> = k.cold_change_ready_ms.iter().map(|m| ms(*m)).collect();
            let _ = writeln!(
                s,
                "\nkube-scale ({} KIngresses, {} Services): first table {:.2} s; all Ready {}; changed during the cold start, Ready after {}; RSS {:.0} MiB; {} status writes ({}/s), {:.2} API calls per KIngress; KIngress change p50 {} p99 {} ({} samples); endpoint change p50 {} p99 {} ({} samples)",
                k.kingresses, k.services, k.first_table_s,
                k.all_ready_s.map_or("never".into(), |s| format!("{s:.1} s")),
                cold.join(", "), k.rss_mib, k.status_writes,
                k.status_writes_per_s.map_or("-".into(), |w| format!("{w:.0}")),
                k.api_calls_per_kingress,
                ms(k.kingress_change_p50_ms), ms(k.kingress_change_p99_ms), k.kingress_change_samples,
                ms(k.endpoint_change_p50_ms), ms(k.endpoint_change_p99_ms), k.endpoint_change_samples,
            );
        }
        for (k, why) in &self.missing {
            let _ = writeln!(s, "\nnot run: {k}: {why}");
        }
        for f in &self.failures {
            let _ = writeln!(s, "\nFAILED: {f}");
        }
        if !self.checks.is_empty() {
            let _ = writeln!(s, "\ntargets:");
            for c in &self.checks {
                let _ = writeln!(
                    s,
                    "  [{}] {:<52} {}",
                    if c.met { "met" } else { "NOT MET" },
                    c.target,
                    c.measured
                );
            }
        }
        s
    }

    /// The fastest peer's rps on the same work as `r`, for the gateway's ratio.
    fn fastest_peer(&self, r: &Run) -> Option<f64> {
        self.runs
            .iter()
            .filter(|p| {
                PEERS.contains(&p.proxy.as_str())
                    && p.scenario == r.scenario
                    && p.threads == r.threads
                    && p.conns == r.conns
                    && p.routes == r.routes
            })
            .map(|p| p.rps)
            .reduce(f64::max)
    }

    /// A chart of the split runs: requests/s, then p50 and p99 latency, per proxy.
    pub fn svg(&self) -> String {
        let runs: Vec<&Run> = self
            .runs
            .iter()
            .filter(|r| r.scenario == "split" || (r.scenario == "hosts" && r.routes > 1))
            .collect();
        let mut groups: Vec<(String, Vec<&Run>)> = Vec::new();
        for r in &runs {
            let key = format!(
                "{}{} thr, {} conns",
                if r.scenario == "hosts" {
                    format!("{} hosts, ", r.routes)
                } else {
                    String::new()
                },
                r.threads.map_or("-".into(), |t| t.to_string()),
                r.conns
            );
            match groups.iter_mut().find(|(k, _)| *k == key) {
                Some((_, v)) => v.push(r),
                None => groups.push((key, vec![r])),
            }
        }
        let colour = |p: &str| match p {
            "gateway" => "#d62728",
            "nginx" => "#2ca02c",
            "haproxy" => "#1f77b4",
            "envoy" => "#9467bd",
            _ => "#7f7f7f",
        };
        let (w, panel, left, top) = (960.0, 260.0, 70.0, 40.0);
        let height = top + 2.0 * (panel + 70.0) + 30.0;
        let mut s = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
        );
        let group_w = (w - left - 20.0) / groups.len().max(1) as f64;
        let panels: [(&str, Measure); 2] = [
            ("requests per second", |r: &Run| vec![r.rps]),
            ("latency p50 (solid) and p99 (light), ms", |r: &Run| {
                vec![r.p50_ms, r.p99_ms]
            }),
        ];
        for (pi, (title, values)) in panels.iter().enumerate() {
            let y0 = top + pi as f64 * (panel + 70.0);
            let max = runs
                .iter()
                .flat_map(|r| values(r))
                .fold(0.0f64, f64::max)
                .max(1e-9);
            let _ = writeln!(
                s,
                "<text x=\"{left}\" y=\"{}\" font-size=\"14\">{title}</text>",
                y0 - 10.0
            );
            let base = y0 + panel;
            let _ = writeln!(
                s,
                "<line x1=\"{left}\" y1=\"{base}\" x2=\"{}\" y2=\"{base}\" stroke=\"black\"/>",
                w - 20.0
            );
            for t in 0..=4 {
                let v = max * t as f64 / 4.0;
                let y = base - panel * t as f64 / 4.0;
                let _ = writeln!(s, "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text><line x1=\"{left}\" y1=\"{y}\" x2=\"{}\" y2=\"{y}\" stroke=\"#ddd\"/>", left - 5.0, y + 4.0, if max >= 100.0 { format!("{v:.0}") } else { format!("{v:.2}") }, w - 20.0);
            }
            for (gi, (key, members)) in groups.iter().enumerate() {
                let gx = left + gi as f64 * group_w;
                let bar = group_w * 0.8 / members.len().max(1) as f64;
                for (mi, r) in members.iter().enumerate() {
                    let x = gx + group_w * 0.1 + mi as f64 * bar;
                    let vals = values(r);
                    for (vi, v) in vals.iter().enumerate().rev() {
                        let h = panel * v / max;
                        let opacity = if vi == 0 { 1.0 } else { 0.35 };
                        let _ = writeln!(s, "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{h:.1}\" fill=\"{}\" fill-opacity=\"{opacity}\"><title>{} {}: {v:.2}</title></rect>", base - h, bar * 0.9, colour(&r.proxy), r.proxy, key);
                    }
                    let _ = writeln!(s, "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"9\" transform=\"rotate(-45 {:.1} {:.1})\" text-anchor=\"end\">{}</text>", x + bar * 0.45, base + 12.0, x + bar * 0.45, base + 12.0, r.proxy);
                }
                let _ = writeln!(
                    s,
                    "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{key}</text>",
                    gx + group_w / 2.0,
                    base + 58.0
                );
            }
        }
        s.push_str("</svg>\n");
        s
    }
}
