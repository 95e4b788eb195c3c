//! Scenario: the control plane at Knative's size. The in-repo API server, in
//! a process of its own (`scale-apiserver`), holds `--kube-kingresses`
//! KIngresses of the gateway's class as Serving writes them, their revision
//! Services and EndpointSlices, and `--kube-unrelated` Services and slices no
//! KIngress references; `gateway serve --kube` (2 worker threads) starts
//! against it. Measured: time to the first full table served; five
//! KIngresses changed 1.4 s after start, each until Ready; time until every
//! KIngress is Ready; RSS then; status writes a second and API calls per
//! KIngress; 20 KIngress changes (the split moved to a Service created 50 ms
//! earlier) and 20 endpoint changes (a revision's only pod moved), each from
//! the write to the API server (about 0.1 ms before its watch event) to the
//! first request the new pod answers, each after at least 30 ms of quiet.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use test_apiserver::population::{self, KINGRESS_API};

use super::{ms_between, Ctx};
use crate::peers::free_port;
use crate::report::{quantile, KubeScale};

const CLASS: &str = "knative-gateway.ingress.networking.knative.dev";
/// KIngresses changed during the cold start.
const COLD_CHANGES: usize = 5;
/// When they change, after the gateway starts.
const COLD_CHANGE_AT: Duration = Duration::from_millis(1400);
/// Samples of each change latency.
const SAMPLES: usize = 20;
/// Quiet before each sample: longer than the gateway's settle time (10 ms),
/// so each change is measured alone, not as the next of a burst (which the
/// gateway publishes at most once per settle time).
const QUIET: Duration = Duration::from_millis(30);

/// A child process killed when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

type Http = Client<HttpConnector, Full<Bytes>>;

/// The API server's base URL and a client for it and the gateway.
struct Api {
    url: String,
    http: Http,
}

impl Api {
    async fn send(
        &self,
        method: http::Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Value> {
        let body = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let req = http::Request::builder()
            .method(method.clone())
            .uri(format!("{}{path}", self.url))
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))?;
        let resp = self.http.request(req).await?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            bail!(
                "{method} {path}: {status}: {}",
                String::from_utf8_lossy(&bytes)
            );
        }
        Ok(serde_json::from_slice(&bytes)?)
    }

    /// The collection path of an object.
    fn path(obj: &Value) -> String {
        let api = obj["apiVersion"].as_str().unwrap_or_default();
        let ns = obj["metadata"]["namespace"].as_str().unwrap_or_default();
        let plural = match obj["kind"].as_str().unwrap_or_default() {
            "Ingress" => "ingresses",
            "Service" => "services",
            "EndpointSlice" => "endpointslices",
            other => return format!("/unknown/{other}"),
        };
        let prefix = if api == "v1" {
            "/api/v1".to_owned()
        } else {
            format!("/apis/{api}")
        };
        format!("{prefix}/namespaces/{ns}/{plural}")
    }

    async fn create(&self, obj: &Value) -> anyhow::Result<()> {
        self.send(http::Method::POST, &Self::path(obj), Some(obj))
            .await
            .map(drop)
    }

    async fn replace(&self, obj: &Value) -> anyhow::Result<()> {
        let name = obj["metadata"]["name"].as_str().unwrap_or_default();
        let path = format!("{}/{name}", Self::path(obj));
        self.send(http::Method::PUT, &path, Some(obj))
            .await
            .map(drop)
    }

    async fn stats(&self) -> anyhow::Result<Value> {
        self.send(http::Method::GET, "/_test/stats", None).await
    }

    /// Whether KIngress `i` is Ready for `generation`.
    async fn ready(&self, i: usize, generation: i64) -> anyhow::Result<bool> {
        let path = format!(
            "/apis/{KINGRESS_API}/namespaces/{}/ingresses/{}",
            population::namespace(i),
            population::name(i)
        );
        let obj = self.send(http::Method::GET, &path, None).await?;
        let s = &obj["status"];
        Ok(s["observedGeneration"] == generation
            && s["conditions"].as_array().is_some_and(|cs| {
                cs.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            }))
    }

    /// The status code of `GET /` for `host` through the gateway at `gw`.
    async fn through(&self, gw: SocketAddr, host: &str) -> Option<u16> {
        let req = http::Request::get(format!("http://{gw}/"))
            .header(http::header::HOST, host)
            .body(Full::default())
            .ok()?;
        let resp = self.http.request(req).await.ok()?;
        let status = resp.status().as_u16();
        let _ = resp.into_body().collect().await;
        Some(status)
    }
}

/// Run the scenario (the gateway only: the peers have no Kubernetes source).
pub fn run(ctx: &mut Ctx) -> anyhow::Result<()> {
    let (n, unrelated) = (ctx.opts.kube_kingresses, ctx.opts.kube_unrelated);
    anyhow::ensure!(
        n >= 2 * SAMPLES,
        "kube-scale needs at least {} KIngresses",
        2 * SAMPLES
    );
    let stable = ctx.pods.start("stable")?;
    let dir = tempfile::Builder::new()
        .prefix("loadtest-kube-")
        .tempdir()?;
    let kubeconfig = dir.path().join("kubeconfig");
    let server_bin = ctx.gateway().with_file_name("scale-apiserver");
    ctx.progress(format!(
        "kube-scale: an API server with {n} KIngresses and {} Services",
        n + unrelated
    ));
    let mut server = Killed(
        Command::new(&server_bin)
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(["--kingresses", &n.to_string()])
            .args(["--unrelated", &unrelated.to_string()])
            .args(["--class", CLASS])
            .args(["--backend", &stable.addr.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("cannot start {}", server_bin.display()))?,
    );
    let mut line = String::new();
    BufReader::new(server.0.stdout.take().context("its stdout")?).read_line(&mut line)?;
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .with_context(|| format!("scale-apiserver said {line:?}"))?
        .to_owned();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let api = Api {
        url,
        http: Client::builder(TokioExecutor::new()).build(HttpConnector::new()),
    };
    let loopback = |port| SocketAddr::from(([127, 0, 0, 1], port));
    let (http, internal, admin) = (
        loopback(free_port()),
        loopback(free_port()),
        loopback(free_port()),
    );
    // The gateway's internal Service: the replica the leader probes.
    let replica: SocketAddr = internal;
    let mut endpoints = population::slice("knative-gateway", "knative-gateway-internal", replica);
    endpoints["metadata"]["name"] = "knative-gateway-internal-0".into();
    rt.block_on(api.create(&endpoints))?;

    let log = std::fs::File::create(dir.path().join("gateway.log"))?;
    let started = Instant::now();
    let gateway = Killed(
        Command::new(ctx.gateway())
            .args(["--log", "warn", "serve", "--kube", "--kubeconfig"])
            .arg(&kubeconfig)
            .args([
                "--http",
                &http.to_string(),
                "--internal-http",
                &internal.to_string(),
            ])
            .args(["--https", "off", "--internal-https", "off"])
            .args(["--admin", &admin.to_string(), "--threads", "2"])
            .args(["--activator", "127.0.0.1:9"])
            .args(["--kube-api-qps", &ctx.opts.kube_qps.to_string()])
            .args(["--kube-api-burst", "1000"])
            .args(["--shutdown-grace", "0s", "--shutdown-timeout", "1s"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", ctx.gateway().display()))?,
    );
    let pid = gateway.0.id();
    let last_host = population::host(n - 1);
    let outcome = rt.block_on(async {
        // The first full table: the last KIngress's host is served.
        while api.through(http, &last_host).await != Some(200) {
            if started.elapsed() > Duration::from_secs(120) {
                bail!("no full table after 120 s");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let first_table = started.elapsed();

        // Five KIngresses change during the cold start: 1.4 s after the
        // start, and after the first table, so that they change while the
        // leader works through the backlog rather than before it begins.
        let change_at = COLD_CHANGE_AT.max(first_table + Duration::from_millis(100));
        tokio::time::sleep(change_at.saturating_sub(started.elapsed())).await;
        let changed: Vec<usize> = (0..COLD_CHANGES)
            .map(|k| (k * 2 + 1) * n / (2 * COLD_CHANGES))
            .collect();
        let mut at = Vec::new();
        for &i in &changed {
            let mut obj = population::kingress(i, CLASS, 2, &population::revision(i));
            obj["spec"]["rules"][1]["http"]["paths"][0]["appendHeaders"] =
                serde_json::json!({"X-Scale-Change": "1"});
            api.replace(&obj).await?;
            at.push(Instant::now());
        }
        let mut cold_ready = vec![None; changed.len()];
        let limit = Instant::now() + Duration::from_secs(ctx.opts.kube_ready_limit_s);
        while cold_ready.iter().any(Option::is_none) && Instant::now() < limit {
            for (k, &i) in changed.iter().enumerate() {
                if cold_ready[k].is_none() && api.ready(i, 2).await? {
                    cold_ready[k] = Some(ms_between(at[k], Instant::now()));
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        // Every KIngress Ready.
        let all_ready = loop {
            let stats = api.stats().await?;
            if stats["ready"].as_u64() == Some(n as u64) {
                break Some(started.elapsed());
            }
            if Instant::now() > limit {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let rss = crate::procstat::rss(pid);
        let stats = api.stats().await?;
        let requests = stats["requests"].as_object().cloned().unwrap_or_default();
        let writes = requests
            .get("update ingresses/status")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        let calls: u64 = requests
            .iter()
            .filter(|(k, _)| !k.starts_with("watch "))
            .filter_map(|(_, v)| v.as_u64())
            .sum();

        // Every pod started below serves until the end: one that went away
        // would fail its KIngress's probes, and their status writes would
        // load the control plane while the next sample is measured.
        let mut pods = Vec::new();
        // KIngress changes: the split moves to a Service created 50 ms before.
        let mut kingress_ms = Vec::new();
        for s in 0..SAMPLES {
            let i = s * n / SAMPLES;
            let ns = population::namespace(i);
            let moved = format!("moved-{s}");
            let pod = ctx.pods.start(&moved)?;
            tokio::time::sleep(QUIET).await;
            api.create(&population::service(&ns, &moved)).await?;
            api.create(&population::slice(&ns, &moved, pod.addr))
                .await?;
            tokio::time::sleep(Duration::from_millis(50)).await;
            let generation = if changed.contains(&i) { 3 } else { 2 };
            let t = Instant::now();
            api.replace(&population::kingress(i, CLASS, generation, &moved))
                .await?;
            if let Some(ms) = first_hit(&api, http, &population::host(i), &pod, t).await {
                kingress_ms.push(ms);
            }
            pods.push(pod);
        }
        // Endpoint changes: a revision's only pod moves.
        let mut endpoint_ms = Vec::new();
        for s in 0..SAMPLES {
            let i = s * n / SAMPLES + 1;
            let (ns, rev) = (population::namespace(i), population::revision(i));
            let pod = ctx.pods.start(&rev)?;
            tokio::time::sleep(QUIET).await;
            let t = Instant::now();
            api.replace(&population::slice(&ns, &rev, pod.addr)).await?;
            if let Some(ms) = first_hit(&api, http, &population::host(i), &pod, t).await {
                endpoint_ms.push(ms);
            }
            pods.push(pod);
        }
        let ready_s = all_ready.map(|d| d.as_secs_f64());
        let busy = ready_s
            .map(|r| r - first_table.as_secs_f64())
            .filter(|s| *s > 0.0);
        Ok(KubeScale {
            kingresses: n,
            services: n + unrelated,
            first_table_s: first_table.as_secs_f64(),
            all_ready_s: ready_s,
            cold_change_ready_ms: cold_ready,
            rss_mib: rss as f64 / (1024.0 * 1024.0),
            status_writes: writes,
            status_writes_per_s: busy.map(|b| writes as f64 / b),
            api_calls_per_kingress: calls as f64 / n as f64,
            kingress_change_p50_ms: quantile(&kingress_ms, 0.5),
            kingress_change_p99_ms: quantile(&kingress_ms, 0.99),
            kingress_change_samples: kingress_ms.len(),
            endpoint_change_p50_ms: quantile(&endpoint_ms, 0.5),
            endpoint_change_p99_ms: quantile(&endpoint_ms, 0.99),
            endpoint_change_samples: endpoint_ms.len(),
        })
    });
    drop(gateway);
    drop(server);
    let k = outcome?;
    ctx.progress(format!(
        "  first table {:.2} s, all Ready {}, RSS {:.0} MiB, {} status writes, {:.2} API calls per KIngress; change p50 {} endpoint p50 {}",
        k.first_table_s,
        k.all_ready_s.map_or("never".into(), |s| format!("{s:.1} s")),
        k.rss_mib,
        k.status_writes,
        k.api_calls_per_kingress,
        k.kingress_change_p50_ms.map_or("-".into(), |m| format!("{m:.1} ms")),
        k.endpoint_change_p50_ms.map_or("-".into(), |m| format!("{m:.1} ms")),
    ));
    ctx.report.kube_scale = Some(k);
    Ok(())
}

/// Milliseconds from `since` to the first request for `host` that `pod`
/// answers, asking again and again for up to 10 s.
async fn first_hit(
    api: &Api,
    gw: SocketAddr,
    host: &str,
    pod: &crate::backend::Backend,
    since: Instant,
) -> Option<f64> {
    let limit = since + Duration::from_secs(10);
    while Instant::now() < limit {
        let _ = api.through(gw, host).await;
        if pod.hits() > 0 {
            return Some(ms_between(since, Instant::now()));
        }
    }
    None
}
