//! Knative's ingress conformance suite (knative/networking
//! `test/conformance/ingress`), ported: each test is named after the suite's
//! case and drives `gateway serve --kube` (KIngress source) through the real
//! kube client against the in-repo API server, with real backends on loopback.
//! As in the suite, every KIngress is created and awaited Ready (the leader
//! probes every replica) before traffic is checked.

mod common;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use serde_json::{json, Value};
use test_apiserver::ApiServer;

const KINGRESS_API: &str = "networking.internal.knative.dev/v1alpha1";

tokio::task_local! {
    /// Set while a case runs with Knative's system-internal TLS on (the
    /// `encrypted` module below): see [`Encryption`].
    static ENCRYPTED: ();
}
const CLASS: &str = "knative-gateway.ingress.networking.knative.dev";
const NS: &str = "serving-tests";

/// An API server and one gateway replica that the leader probes.
struct Env {
    api: ApiServer,
    gw: Gateway,
    _dir: tempfile::TempDir,
    /// Keeps the activator stand-in's port refusing for the whole test.
    _activator: SocketAddr,
    /// With system-internal TLS on.
    encryption: Option<Encryption>,
}

/// Knative's system-internal TLS as Kourier's CI turns it on for the suite:
/// every split points at port 443, the Services' `https` port, where each
/// backend serves TLS with a certificate for `kn-user-serving-tests`. The
/// first CA is in the Secret `routing-serving-certs`, the second only in a
/// trust-bundle ConfigMap; backends take turns between them.
struct Encryption {
    cas: [TestCa; 2],
    /// Each backend's TLS front, by the backend's address.
    fronts: std::sync::Mutex<HashMap<SocketAddr, TlsFront>>,
}

impl Encryption {
    /// The TLS port in front of `backend`, started on first use.
    fn front(&self, backend: SocketAddr) -> u16 {
        let mut fronts = self.fronts.lock().unwrap();
        let n = fronts.len();
        fronts
            .entry(backend)
            .or_insert_with(|| {
                let (crt, key, _) = self.cas[n % 2].leaf(&[&format!("kn-user-{NS}")]);
                TlsFront::start(backend, &crt, &key)
            })
            .addr
            .port()
    }
}

/// As Serving writes a KIngress with system-internal TLS on: every split
/// goes to port 443, but on paths that rewrite the Host (DomainMapping).
fn to_https(spec: &mut Value) {
    for rule in spec["rules"].as_array_mut().into_iter().flatten() {
        for path in rule["http"]["paths"].as_array_mut().into_iter().flatten() {
            if path.get("rewriteHost").is_some_and(|h| h != "") {
                continue;
            }
            for split in path["splits"].as_array_mut().into_iter().flatten() {
                if split["servicePort"] == 80 || split["servicePort"] == "http" {
                    split["servicePort"] = 443.into();
                }
            }
        }
    }
}

async fn env() -> Env {
    env_with(&[]).await
}

/// [`env`], with more gateway flags.
async fn env_with(extra: &[&str]) -> Env {
    let api = ApiServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    api.write_kubeconfig(&kubeconfig);
    let activator = closed();
    let gw = Gateway::kube(
        &kubeconfig,
        activator,
        &[
            "--lease",
            "gw/lease",
            "--private-service",
            "gw/internal",
            "--public-service",
            "gw/external",
        ]
        .iter()
        .chain(extra)
        .copied()
        .collect::<Vec<_>>(),
    )
    .await;
    let encryption = ENCRYPTED.try_with(|_| ()).is_ok().then(|| {
        let cas = [TestCa::new(), TestCa::new()];
        api.apply(ca_secret("knative-serving", &cas[0].pem));
        api.apply(trust_bundle(
            "knative-serving",
            "extra-trust",
            &[&cas[1].pem],
        ));
        Encryption {
            cas,
            fronts: Default::default(),
        }
    });
    // The internal Service's endpoints: this replica, which the leader probes.
    api.apply(
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "internal-0", "namespace": "gw",
                     "labels": {"kubernetes.io/service-name": "internal"}},
        "addressType": "IPv4", "ports": [{"name": "http", "port": gw.internal.port()}],
        "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": true}}]}),
    );
    Env {
        api,
        gw,
        _dir: dir,
        _activator: activator,
        encryption,
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        // A failed case shows what the gateway said.
        if std::thread::panicking() {
            eprintln!("gateway stderr:\n{}", self.gw.stderr());
        }
    }
}

impl Env {
    /// A Service `name` (port 80, named `http`, targetPort the backend's port)
    /// and its EndpointSlice, as the suite's `CreateRuntimeService` makes them.
    fn service(&self, name: &str, backend: SocketAddr) {
        self.service_alone(name, backend);
        self.slice(name, backend);
    }

    /// The Service of [`Env::service`] without its EndpointSlice.
    fn service_alone(&self, name: &str, backend: SocketAddr) {
        self.service_port(name, backend, "http");
    }

    /// A Service whose port 80 is named `port` (`http2` asks for h2c).
    /// Encrypted, it also has Knative's `https` port 443 to the backend's TLS front.
    fn service_port(&self, name: &str, backend: SocketAddr, port: &str) {
        let mut ports = vec![json!({"name": port, "port": 80, "targetPort": backend.port()})];
        if let Some(enc) = &self.encryption {
            ports.push(json!({"name": "https", "port": 443, "targetPort": enc.front(backend)}));
        }
        self.api.apply(json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"type": "ClusterIP", "ports": ports}}));
    }

    /// The EndpointSlice of [`Env::service`].
    fn slice(&self, name: &str, backend: SocketAddr) {
        self.slice_port(name, backend, "http");
    }

    /// An EndpointSlice whose port is named `port`, after its Service's.
    fn slice_port(&self, name: &str, backend: SocketAddr, port: &str) {
        let mut ports = vec![json!({"name": port, "port": backend.port()})];
        if let Some(enc) = &self.encryption {
            ports.push(json!({"name": "https", "port": enc.front(backend)}));
        }
        self.api.apply(json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": format!("{name}-abcde"), "namespace": NS,
                         "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4", "ports": ports,
            "endpoints": [{"addresses": [backend.ip().to_string()], "conditions": {"ready": true}}]}));
    }

    /// Start a backend named `name` behind a Service of the same name.
    async fn runtime(&self, name: &str) -> Backend {
        let b = Backend::start(name).await;
        self.service(name, b.addr);
        b
    }

    /// [`Env::runtime`] behind a port named `http2`: the gateway speaks h2c to it.
    async fn runtime_h2c(&self, name: &str) -> Backend {
        let b = Backend::start(name).await;
        self.service_port(name, b.addr, "http2");
        self.slice_port(name, b.addr, "http2");
        b
    }

    /// Create (or update) a KIngress of our class and wait until it is Ready
    /// for this generation.
    async fn ingress_ready(&self, name: &str, spec: Value) -> Value {
        let generation = self.create(name, spec, CLASS);
        self.wait_ready(name, generation).await
    }

    /// Create or update a KIngress of `class`; returns its generation.
    /// Encrypted, its splits point at port 443, as Serving writes them.
    fn create(&self, name: &str, mut spec: Value, class: &str) -> i64 {
        if self.encryption.is_some() {
            to_https(&mut spec);
        }
        let generation = self
            .api
            .get(KINGRESS_API, "Ingress", NS, name)
            .and_then(|o| o["metadata"]["generation"].as_i64())
            .unwrap_or(0)
            + 1;
        self.api
            .apply(json!({"apiVersion": KINGRESS_API, "kind": "Ingress",
            "metadata": {"name": name, "namespace": NS, "generation": generation,
                         "creationTimestamp": "2026-01-01T00:00:00Z",
                         "annotations": {"networking.knative.dev/ingress.class": class}},
            "spec": spec}));
        generation
    }

    async fn wait_ready(&self, name: &str, generation: i64) -> Value {
        self.wait_condition(name, generation, "True", None).await
    }

    /// Wait until KIngress `name`'s Ready condition is `status` (with
    /// `reason`, if given) for `generation`; returns the object.
    async fn wait_condition(
        &self,
        name: &str,
        generation: i64,
        status: &str,
        reason: Option<&str>,
    ) -> Value {
        let mut last = Value::Null;
        let what = format!("KIngress {name} Ready={status} {reason:?}");
        eventually(20, &what, || {
            last = self.api.get(KINGRESS_API, "Ingress", NS, name).unwrap();
            let s = &last["status"];
            let ok = s["observedGeneration"] == generation
                && s["conditions"].as_array().is_some_and(|c| {
                    c.iter().any(|c| {
                        c["type"] == "Ready"
                            && c["status"] == status
                            && reason.is_none_or(|r| c["reason"] == r)
                    })
                });
            async move { ok }
        })
        .await;
        last
    }

    /// GET `path` on `host` through the external listener.
    async fn get(&self, host: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
        request(self.gw.http, host, path, headers).await
    }
}

async fn request(addr: SocketAddr, host: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut req = http::Request::get(format!("http://{addr}{path}")).header("host", host);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    HttpClient::new()
        .send(req.body(Full::default()).unwrap())
        .await
        .unwrap()
}

/// One rule, one path, one split to `service` port 80.
fn simple(host: &str, service: &str) -> Value {
    json!({"rules": [{"hosts": [host], "visibility": "ExternalIP",
        "http": {"paths": [{"splits": [split(service, 0)]}]}}]})
}

fn split(service: &str, percent: i64) -> Value {
    json!({"serviceName": service, "serviceNamespace": NS, "servicePort": 80, "percent": percent})
}

fn host(name: &str) -> String {
    format!("{name}.example.com")
}

async fn basics() {
    let e = env().await;
    let _b = e.runtime("basics").await;
    // servicePort by name too: it maps to the same port.
    let spec = json!({"rules": [{"hosts": [host("basics")], "visibility": "ExternalIP",
        "http": {"paths": [{"splits": [{"serviceName": "basics", "serviceNamespace": NS,
                                        "servicePort": "http"}]}]}}]});
    e.ingress_ready("basics", spec).await;
    let r = e.get(&host("basics"), "/", &[]).await;
    assert_eq!((r.status, r.body.as_str()), (200, "basics"));
    // The status names both load balancers.
    let obj = e.api.get(KINGRESS_API, "Ingress", NS, "basics").unwrap();
    assert_eq!(
        obj["status"]["privateLoadBalancer"]["ingress"][0]["domainInternal"],
        "internal.gw.svc.cluster.local"
    );
    assert_eq!(
        obj["status"]["publicLoadBalancer"]["ingress"][0]["domainInternal"],
        "external.gw.svc.cluster.local"
    );
}

async fn hosts_multiple() {
    let e = env().await;
    let _b = e.runtime("multi").await;
    let hosts = [
        "a.example.com",
        "b.example.com",
        "c.example.com",
        "d.example.com",
    ];
    let spec = json!({"rules": [{"hosts": hosts, "visibility": "ExternalIP",
        "http": {"paths": [{"splits": [split("multi", 100)]}]}}]});
    e.ingress_ready("multi", spec).await;
    for h in hosts {
        let r = e.get(h, "/", &[]).await;
        assert_eq!((r.status, r.body.as_str()), (200, "multi"), "{h}");
        // gRPC clients send the port in the authority.
        let r = e.get(&format!("{h}:80"), "/", &[]).await;
        assert_eq!(r.status, 200, "{h}:80");
    }
}

async fn dispatch_path() {
    let e = env().await;
    let mut backends = Vec::new();
    for name in ["foo", "bar", "baz", "fallback"] {
        backends.push(e.runtime(name).await);
    }
    let path = |p: &str, s: &str| json!({"path": p, "splits": [split(s, 100)]});
    let spec = json!({"rules": [{"hosts": [host("path")], "visibility": "ExternalIP",
        "http": {"paths": [path("/foo", "foo"), path("/bar", "bar"), path("/baz", "baz"),
                           {"splits": [split("fallback", 100)]}]}}]});
    e.ingress_ready("path", spec).await;
    for (p, want) in [
        ("/foo", "foo"),
        ("/bar", "bar"),
        ("/baz", "baz"),
        ("/foo/deeper", "foo"),
        ("/", "fallback"),
        ("/asdf", "fallback"),
    ] {
        let r = e.get(&host("path"), p, &[]).await;
        assert_eq!((r.status, r.body.as_str()), (200, want), "{p}");
        assert_eq!(
            r.header("x-seen-path"),
            p,
            "the path reaches the backend as sent"
        );
    }
}

/// Counts of each backend's name over `n` requests.
async fn spread(e: &Env, host: &str, path: &str, n: usize) -> HashMap<String, usize> {
    let mut tasks = tokio::task::JoinSet::new();
    let per = n / 8;
    for _ in 0..8 {
        let (addr, host, path) = (e.gw.http, host.to_owned(), path.to_owned());
        tasks.spawn(async move {
            let client = HttpClient::new();
            let mut seen = HashMap::new();
            for _ in 0..per {
                let req = http::Request::get(format!("http://{addr}{path}"))
                    .header("host", &host)
                    .body(Full::default())
                    .unwrap();
                let r = client.send(req).await.unwrap();
                assert_eq!(r.status, 200, "{r:?}");
                *seen.entry(r.body).or_insert(0) += 1;
            }
            seen
        });
    }
    let mut total = HashMap::new();
    while let Some(seen) = tasks.join_next().await {
        for (k, v) in seen.unwrap() {
            *total.entry(k).or_insert(0) += v;
        }
    }
    total
}

async fn dispatch_percentage() {
    let e = env().await;
    // 1, 2, 4, 8, 16, 32, 37, 0, 0, 0: the suite's weights.
    let mut weights = Vec::new();
    let (mut percent, mut total) = (1, 0);
    for _ in 0..10 {
        weights.push(percent);
        total += percent;
        percent *= 2;
        if total + percent > 100 {
            percent = 100 - total;
        }
    }
    let mut backends = Vec::new();
    let mut splits = Vec::new();
    for (i, w) in weights.iter().enumerate() {
        let name = format!("pct-{i}");
        backends.push(e.runtime(&name).await);
        splits.push(split(&name, *w));
    }
    let spec = json!({"rules": [{"hosts": [host("pct")], "visibility": "ExternalIP",
        "http": {"paths": [{"splits": splits}]}}]});
    e.ingress_ready("pct", spec).await;
    let seen = spread(&e, &host("pct"), "/", 1000).await;
    for (i, w) in weights.iter().enumerate() {
        let got = *seen.get(&format!("pct-{i}")).unwrap_or(&0) as f64 / 10.0;
        if *w == 0 {
            assert_eq!(got, 0.0, "pct-{i} is a 0% split: {seen:?}");
        } else {
            assert!(
                (got - *w as f64).abs() <= 10.0,
                "pct-{i}: {got}% for {w}%: {seen:?}"
            );
        }
    }
}

async fn dispatch_path_and_percentage() {
    let e = env().await;
    let _b = (
        e.runtime("left").await,
        e.runtime("right").await,
        e.runtime("rest").await,
    );
    let spec = json!({"rules": [{"hosts": [host("pp")], "visibility": "ExternalIP",
        "http": {"paths": [{"path": "/foo", "splits": [split("left", 50), split("right", 50)]},
                           {"splits": [split("rest", 100)]}]}}]});
    e.ingress_ready("pp", spec).await;
    let seen = spread(&e, &host("pp"), "/foo", 400).await;
    for side in ["left", "right"] {
        let got = *seen.get(side).unwrap_or(&0) as f64 / 4.0;
        assert!((got - 50.0).abs() <= 15.0, "{side}: {got}%: {seen:?}");
    }
    assert_eq!(e.get(&host("pp"), "/", &[]).await.body, "rest");
}

async fn dispatch_rule() {
    let e = env().await;
    let _b = (e.runtime("one").await, e.runtime("two").await);
    let rule = |h: String, s: &str| {
        json!({"hosts": [h], "visibility": "ExternalIP",
        "http": {"paths": [{"appendHeaders": {"Which-Rule": s}, "splits": [split(s, 100)]}]}})
    };
    let spec = json!({"rules": [rule(host("rule-one"), "one"), rule(host("rule-two"), "two")]});
    e.ingress_ready("rule", spec).await;
    for which in ["one", "two"] {
        let r = e.get(&host(&format!("rule-{which}")), "/", &[]).await;
        assert_eq!(r.body, which);
        assert_eq!(r.header("x-echo-which-rule"), which);
    }
}

async fn headers_pre_split() {
    let e = env().await;
    let _b = e.runtime("pre").await;
    let spec = json!({"rules": [{"hosts": [host("pre")], "visibility": "ExternalIP",
        "http": {"paths": [{"appendHeaders": {"Foo-Bar-Baz": "pre"},
                            "splits": [split("pre", 100)]}]}}]});
    e.ingress_ready("pre", spec).await;
    let r = e.get(&host("pre"), "/", &[]).await;
    assert_eq!(r.header("x-echo-foo-bar-baz"), "pre");
    // A client's value is replaced, not appended to.
    let r = e.get(&host("pre"), "/", &[("Foo-Bar-Baz", "bogus")]).await;
    assert_eq!(r.header("x-echo-foo-bar-baz"), "pre");
}

async fn headers_post_split() {
    let e = env().await;
    let mut backends = Vec::new();
    let mut splits = Vec::new();
    let mut names = std::collections::BTreeSet::new();
    for i in 0..4 {
        let name = format!("post-{i}");
        backends.push(e.runtime(&name).await);
        let mut s = split(&name, 25);
        s["appendHeaders"] = json!({"Foo-Bar-Baz": name});
        splits.push(s);
        names.insert(name);
    }
    let spec = json!({"rules": [{"hosts": [host("post")], "visibility": "ExternalIP",
        "http": {"paths": [{"splits": splits}]}}]});
    e.ingress_ready("post", spec).await;
    for client_value in [None, Some("bogus")] {
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..100 {
            let headers: Vec<(&str, &str)> = client_value
                .map(|v| ("Foo-Bar-Baz", v))
                .into_iter()
                .collect();
            let r = e.get(&host("post"), "/", &headers).await;
            // The header names the split that was taken.
            assert_eq!(r.header("x-echo-foo-bar-baz"), r.body);
            seen.insert(r.body);
            if seen == names {
                break;
            }
        }
        assert_eq!(seen, names, "client value {client_value:?}");
    }
}

async fn headers_probe() {
    let e = env().await;
    let _b = e.runtime("probe").await;
    let obj = e
        .ingress_ready("probe", simple(&host("probe"), "probe"))
        .await;
    // The hash as Knative's ComputeHash writes it, of the object as stored.
    let want = config_sync::model::kingress::decode(obj).unwrap().hash;
    assert_eq!(want.len(), 64);
    let probe = |hash: &'static str| {
        let h = host("probe");
        let e = &e;
        async move {
            e.get(
                &h,
                "/",
                &[("K-Network-Probe", "probe"), ("K-Network-Hash", hash)],
            )
            .await
        }
    };
    let r = probe("override").await;
    assert_eq!((r.status, r.header("k-network-hash")), (200, &*want));
    let custom = "2701a1b241db6af811992c57a5e11171847148ac3d2e1a8cc992a62f9e4fa111";
    let r = probe(custom).await;
    assert_eq!((r.status, r.header("k-network-hash")), (200, custom));
}

async fn headers_tags() {
    let e = env().await;
    let _b = e.runtime("tags").await;
    let spec = json!({"rules": [{"hosts": [host("tags")], "visibility": "ExternalIP",
        "http": {"paths": [
            {"headers": {"Knative-Serving-Tag": {"exact": "the-tag"}},
             "appendHeaders": {"Which-Backend": "tag"}, "splits": [split("tags", 100)]},
            {"appendHeaders": {"Which-Backend": "no-tag"}, "splits": [split("tags", 100)]}]}}]});
    e.ingress_ready("tags", spec).await;
    for (tag, want) in [
        (Some("the-tag"), "tag"),
        (None, "no-tag"),
        (Some(""), "no-tag"),
        (Some("not-the-tag"), "no-tag"),
    ] {
        let headers: Vec<(&str, &str)> = tag
            .map(|t| ("Knative-Serving-Tag", t))
            .into_iter()
            .collect();
        let r = e.get(&host("tags"), "/", &headers).await;
        assert_eq!(r.header("x-echo-which-backend"), want, "tag {tag:?}");
    }
}

async fn host_rewrite() {
    let e = env().await;
    let _b = e.runtime("target").await;
    // The Route's KIngress: its cluster-local host, as Serving writes it.
    let route = json!({"rules": [{"hosts": ["target.serving-tests.svc.cluster.local"],
        "visibility": "ClusterLocal",
        "http": {"paths": [{"splits": [split("target", 100)]}]}}]});
    e.ingress_ready("target", route).await;
    // DomainMapping: an ExternalName Service pointing at the gateway's internal Service.
    e.api.apply(json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "mapped", "namespace": NS},
        "spec": {"type": "ExternalName", "externalName": "internal.gw.svc.cluster.local",
                 "ports": [{"name": "http2", "port": 80, "appProtocol": "kubernetes.io/h2c"}]}}));
    let mapping = json!({"rules": [{"hosts": ["shop.example.org"], "visibility": "ExternalIP",
        "http": {"paths": [{"rewriteHost": "target.serving-tests.svc.cluster.local",
                            "appendHeaders": {"K-Original-Host": "shop.example.org"},
                            "splits": [split("mapped", 100)]}]}}]});
    e.ingress_ready("mapping", mapping).await;
    let r = e.get("shop.example.org", "/", &[]).await;
    assert_eq!((r.status, r.body.as_str()), (200, "target"));
    assert_eq!(
        r.header("x-seen-host"),
        "target.serving-tests.svc.cluster.local"
    );
    assert_eq!(r.header("x-echo-k-original-host"), "shop.example.org");
    // The rewritten host itself stays cluster-local.
    assert_eq!(
        e.get("target.serving-tests.svc.cluster.local", "/", &[])
            .await
            .status,
        404
    );
}

async fn retry() {
    let e = env().await;
    let b = Backend::with_status("retry", 503).await;
    e.service("retry", b.addr);
    e.ingress_ready("retry", simple(&host("retry"), "retry"))
        .await;
    let before = b.hits();
    let r = e.get(&host("retry"), "/", &[]).await;
    assert_eq!(r.status, 503, "the backend's first 503 reaches the client");
    assert_eq!(b.hits() - before, 1, "never retried");
}

/// A backend that waits `before` to send headers, then `during` before the
/// last part of its body.
async fn slow_backend(
    before: Duration,
    during: Duration,
) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| async move {
                        // Probes are answered at once, as queue-proxy does.
                        if req.headers().contains_key("k-network-probe") {
                            let hash = req.headers().get("k-network-hash").cloned();
                            let mut r = hyper::Response::builder().status(200);
                            if let Some(h) = hash {
                                r = r.header("k-network-hash", h);
                            }
                            let body: http_body_util::combinators::BoxBody<Bytes, Infallible> =
                                Full::new(Bytes::new()).boxed();
                            return Ok::<_, Infallible>(r.body(body).unwrap());
                        }
                        tokio::time::sleep(before).await;
                        let stream = futures::stream::unfold(0, move |i| async move {
                            match i {
                                0 => Some((
                                    Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"first "))),
                                    1,
                                )),
                                1 => {
                                    tokio::time::sleep(during).await;
                                    Some((Ok(Frame::data(Bytes::from_static(b"last"))), 2))
                                }
                                _ => None,
                            }
                        });
                        Ok(hyper::Response::new(StreamBody::new(stream).boxed()))
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, task)
}

async fn timeout() {
    let e = env().await;
    let (headers_late, a) = slow_backend(Duration::from_secs(10), Duration::ZERO).await;
    let (body_late, b) = slow_backend(Duration::ZERO, Duration::from_secs(10)).await;
    e.service("late-headers", headers_late);
    e.service("late-body", body_late);
    e.ingress_ready(
        "late-headers",
        simple(&host("late-headers"), "late-headers"),
    )
    .await;
    e.ingress_ready("late-body", simple(&host("late-body"), "late-body"))
        .await;
    let started = std::time::Instant::now();
    let (h1, h2) = (host("late-headers"), host("late-body"));
    let (r1, r2) = tokio::join!(e.get(&h1, "/", &[]), e.get(&h2, "/", &[]));
    assert!(started.elapsed() >= Duration::from_secs(10));
    for r in [r1, r2] {
        assert_eq!(
            (r.status, r.body.as_str()),
            (200, "first last"),
            "no ingress timeout"
        );
    }
    a.abort();
    b.abort();
}

async fn update() {
    let e = env().await;
    let first = e.runtime("update-0").await;
    e.ingress_ready("update", simple(&host("update"), "update-0"))
        .await;
    // Continuous traffic while the KIngress changes 20 times.
    let failed = Arc::new(AtomicU64::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let (addr, failed, sent, stop) = (e.gw.http, failed.clone(), sent.clone(), stop.clone());
        load.spawn(async move {
            let client = HttpClient::new();
            while !stop.load(Ordering::Relaxed) {
                match client.get(addr, &host("update")).await {
                    Ok(r) if r.status == 200 => {}
                    other => {
                        if failed.fetch_add(1, Ordering::Relaxed) < 5 {
                            eprintln!("failed: {other:?}");
                        }
                    }
                }
                sent.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    let mut keep = vec![first];
    for i in 1..=20 {
        let name = format!("update-{i}");
        if i % 2 == 0 {
            keep.push(e.runtime(&name).await);
            e.ingress_ready("update", simple(&host("update"), &name))
                .await;
        } else {
            // Watches deliver in any order: here the KIngress and its Service
            // arrive well before the Service's EndpointSlice.
            let b = Backend::start(&name).await;
            e.service_alone(&name, b.addr);
            let generation = e.create("update", simple(&host("update"), &name), CLASS);
            tokio::time::sleep(Duration::from_millis(300)).await;
            e.slice(&name, b.addr);
            e.wait_ready("update", generation).await;
            keep.push(b);
        }
        let r = e.get(&host("update"), "/", &[]).await;
        assert_eq!(r.body, name, "update {i} served once Ready");
    }
    stop.store(true, Ordering::Relaxed);
    while load.join_next().await.is_some() {}
    assert!(sent.load(Ordering::Relaxed) > 100, "traffic ran throughout");
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "no request failed across 20 updates"
    );
}

async fn visibility() {
    let e = env().await;
    let _b = (
        e.runtime("vis").await,
        e.runtime("vis-a").await,
        e.runtime("vis-b").await,
    );
    let private = "vis.serving-tests.svc.cluster.local";
    let spec = json!({"rules": [
        {"hosts": [private], "visibility": "ClusterLocal",
         "http": {"paths": [{"splits": [split("vis", 100)]}]}},
        // visibility/split: a split behind a cluster-local host.
        {"hosts": ["vis-split.serving-tests.svc.cluster.local"], "visibility": "ClusterLocal",
         "http": {"paths": [{"splits": [split("vis-a", 50), split("vis-b", 50)]}]}},
        // visibility/path: paths behind a cluster-local host.
        {"hosts": ["vis-path.serving-tests.svc.cluster.local"], "visibility": "ClusterLocal",
         "http": {"paths": [{"path": "/a", "splits": [split("vis-a", 100)]},
                            {"splits": [split("vis-b", 100)]}]}},
        {"hosts": [host("vis")], "visibility": "ExternalIP",
         "http": {"paths": [{"splits": [split("vis", 100)]}]}}]});
    e.ingress_ready("vis", spec).await;
    for h in [private, "vis.serving-tests.svc", "vis.serving-tests"] {
        assert_eq!(e.get(h, "/", &[]).await.status, 404, "{h} is not public");
        let r = request(e.gw.internal, h, "/", &[]).await;
        assert_eq!((r.status, r.body.as_str()), (200, "vis"), "{h} inside");
    }
    let split_host = "vis-split.serving-tests.svc.cluster.local";
    assert_eq!(e.get(split_host, "/", &[]).await.status, 404);
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..100 {
        seen.insert(request(e.gw.internal, split_host, "/", &[]).await.body);
        if seen.len() == 2 {
            break;
        }
    }
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), ["vis-a", "vis-b"]);
    let path_host = "vis-path.serving-tests.svc.cluster.local";
    assert_eq!(e.get(path_host, "/a", &[]).await.status, 404);
    assert_eq!(
        request(e.gw.internal, path_host, "/a", &[]).await.body,
        "vis-a"
    );
    assert_eq!(
        request(e.gw.internal, path_host, "/b", &[]).await.body,
        "vis-b"
    );
    // The public rule answers on both listeners.
    assert_eq!(e.get(&host("vis"), "/", &[]).await.body, "vis");
    assert_eq!(
        request(e.gw.internal, &host("vis"), "/", &[]).await.body,
        "vis"
    );
}

async fn ingressclass() {
    let e = env().await;
    let _b = e.runtime("cls").await;
    e.create(
        "other",
        simple(&host("other"), "cls"),
        "kourier.ingress.networking.knative.dev",
    );
    e.create("empty", simple(&host("empty"), "cls"), "");
    e.api
        .apply(json!({"apiVersion": KINGRESS_API, "kind": "Ingress",
        "metadata": {"name": "absent", "namespace": NS, "generation": 1},
        "spec": simple(&host("absent"), "cls")}));
    // One of ours, so the writer is known to be working meanwhile.
    e.ingress_ready("ours", simple(&host("ours"), "cls")).await;
    let versions = |e: &Env| {
        ["other", "empty", "absent"].map(|n| {
            e.api.get(KINGRESS_API, "Ingress", NS, n).unwrap()["metadata"]["resourceVersion"]
                .clone()
        })
    };
    let before = versions(&e);
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(versions(&e), before, "other classes are never modified");
    for n in ["other", "empty", "absent"] {
        assert!(e.api.get(KINGRESS_API, "Ingress", NS, n).unwrap()["status"].is_null());
        assert_eq!(
            e.get(&host(n), "/", &[]).await.status,
            404,
            "{n} is not served"
        );
    }
}

/// Bad input: a KIngress whose Service does not exist yet is left out with a
/// reason (in `/debug/routes` and its status) and served once it appears; a
/// malformed one is rejected alone; two claiming one host: the older keeps it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_rejected_alone() {
    let e = env().await;
    let _b = e.runtime("fine").await;
    e.ingress_ready("fine", simple(&host("fine"), "fine")).await;

    let generation = e.create("waiting", simple(&host("waiting"), "later"), CLASS);
    e.wait_condition("waiting", generation, "False", Some("ServiceNotFound"))
        .await;
    let rejected = e.gw.rejected().await;
    assert!(
        rejected.contains(&(
            format!("{NS}/waiting"),
            "no_service".into(),
            "left_out".into()
        )),
        "{rejected:?}"
    );
    assert_eq!(e.get(&host("waiting"), "/", &[]).await.status, 404);
    let _later = e.runtime("later").await;
    e.wait_ready("waiting", generation).await;
    assert_eq!(e.get(&host("waiting"), "/", &[]).await.body, "later");

    // Malformed: a visibility that does not exist. Only it is left out.
    let bad = json!({"rules": [{"hosts": [host("bad")], "visibility": "Sideways",
        "http": {"paths": [{"splits": [split("fine", 100)]}]}}]});
    e.create("bad", bad, CLASS);
    eventually(10, "the malformed KIngress rejected", || async {
        e.gw.rejected()
            .await
            .iter()
            .any(|r| r.0 == format!("{NS}/bad") && r.1 == "visibility")
    })
    .await;
    assert_eq!(e.get(&host("fine"), "/", &[]).await.body, "fine");

    // Two KIngresses claim one host: the older keeps it, the newer is not ready.
    e.api.apply(json!({"apiVersion": KINGRESS_API, "kind": "Ingress",
        "metadata": {"name": "newer", "namespace": NS, "generation": 1,
                     "creationTimestamp": "2026-06-01T00:00:00Z",
                     "annotations": {"networking.knative.dev/ingress.class": CLASS}},
        "spec": {"rules": [
            {"hosts": [host("fine")], "http": {"paths": [{"splits": [split("later", 100)]}]}},
            {"hosts": [host("newer-own")], "http": {"paths": [{"splits": [split("later", 100)]}]}}]}}));
    e.wait_condition("newer", 1, "False", Some("DomainConflict"))
        .await;
    assert_eq!(
        e.get(&host("fine"), "/", &[]).await.body,
        "fine",
        "the older keeps the host"
    );
    assert_eq!(
        e.get(&host("newer-own"), "/", &[]).await.body,
        "later",
        "the rest of it is served"
    );
}

/// Not a suite case: an ExternalName Service that is not the gateway itself is
/// resolved in the background and dialled on its port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_name_elsewhere_is_resolved_and_dialled() {
    let e = env().await;
    let b = Backend::start("elsewhere").await;
    e.api.apply(json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "ext", "namespace": NS},
        "spec": {"type": "ExternalName", "externalName": b.addr.ip().to_string(),
                 "ports": [{"name": "http", "port": b.addr.port()}]}}));
    let spec = json!({"rules": [{"hosts": [host("ext")], "visibility": "ExternalIP",
        "http": {"paths": [{"splits": [{"serviceName": "ext", "serviceNamespace": NS,
                                        "servicePort": b.addr.port()}]}]}}]});
    e.create("ext", spec, CLASS);
    eventually(10, "the ExternalName resolved and served", || async {
        let r = e.get(&host("ext"), "/", &[]).await;
        r.status == 200 && r.body == "elsewhere"
    })
    .await;
}

/// basics/http2: a Service port named `http2` is reached over HTTP/2
/// cleartext, whatever the client speaks; any other port over HTTP/1.1.
/// Clients may speak h2c with prior knowledge on the plain port.
async fn basics_http2() {
    let e = env().await;
    let _b = (e.runtime_h2c("h2").await, e.runtime("h1").await);
    let spec = json!({"rules": [
        {"hosts": [host("h2")], "visibility": "ExternalIP",
         "http": {"paths": [{"splits": [split("h2", 100)]}]}},
        {"hosts": [host("h1")], "visibility": "ExternalIP",
         "http": {"paths": [{"splits": [split("h1", 100)]}]}}]});
    e.ingress_ready("http2", spec).await;
    let r = e.get(&host("h2"), "/", &[]).await;
    assert_eq!((r.status, r.body.as_str()), (200, "h2"));
    assert_eq!(
        r.header("x-seen-version"),
        "HTTP/2.0",
        "HTTP/1.1 in, h2c out"
    );
    let h2 = H2cClient::connect(e.gw.http).await;
    for (name, version) in [("h2", "HTTP/2.0"), ("h1", "HTTP/1.1")] {
        let r = h2.get(&host(name), "/").await.unwrap();
        assert_eq!((r.status, r.body.as_str()), (200, name));
        assert_eq!(r.header("x-seen-version"), version, "h2c in to {name}");
    }
    // Many concurrent streams on one client connection.
    let (h2_host, h1_host) = (host("h2"), host("h1"));
    let replies = futures::future::join_all(
        (0..50).map(|i| h2.get(if i % 2 == 0 { &h2_host } else { &h1_host }, "/")),
    )
    .await;
    assert!(replies
        .iter()
        .all(|r| r.as_ref().is_ok_and(|r| r.status == 200)));
}

/// Forwarding headers, as Envoy sets them for Kourier: the client address is
/// appended to `X-Forwarded-For`, `X-Forwarded-Proto` is the listener's
/// scheme, and trace context passes untouched.
async fn forwarding_headers() {
    let e = env().await;
    let _b = e.runtime("fwd").await;
    e.ingress_ready("fwd", simple(&host("fwd"), "fwd")).await;
    let trace = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let r = e
        .get(
            &host("fwd"),
            "/",
            &[
                ("x-forwarded-for", "203.0.113.9"),
                ("x-forwarded-proto", "https"),
                ("traceparent", trace),
                ("tracestate", "a=1"),
                ("baggage", "k=v"),
            ],
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-echo-x-forwarded-for"), "203.0.113.9, 127.0.0.1");
    assert_eq!(
        r.header("x-echo-x-forwarded-proto"),
        "http",
        "the gateway's scheme, not the client's claim"
    );
    assert_eq!(r.header("x-echo-traceparent"), trace);
    assert_eq!(r.header("x-echo-tracestate"), "a=1");
    assert_eq!(r.header("x-echo-baggage"), "k=v");
    let r = e.get(&host("fwd"), "/", &[]).await;
    assert_eq!(r.header("x-echo-x-forwarded-for"), "127.0.0.1");
}

/// websocket: 100 echoes over one upgraded connection, also to a backend
/// whose port asks for h2c (upgrades go out as HTTP/1.1: Kourier's #801).
async fn websocket() {
    let e = env().await;
    let _b = (e.runtime("ws").await, e.runtime_h2c("ws-h2").await);
    let spec = json!({"rules": [
        {"hosts": [host("ws")], "visibility": "ExternalIP",
         "http": {"paths": [{"splits": [split("ws", 100)]}]}},
        {"hosts": [host("ws-h2")], "visibility": "ExternalIP",
         "http": {"paths": [{"splits": [split("ws-h2", 100)]}]}}]});
    e.ingress_ready("ws", spec).await;
    assert_eq!(websocket_echoes(e.gw.http, &host("ws"), 100).await, "ws");
    assert_eq!(
        websocket_echoes(e.gw.http, &host("ws-h2"), 100).await,
        "ws-h2"
    );
}

/// websocket/split: upgrades through a 50/50 split reach both sides.
async fn websocket_split() {
    let e = env().await;
    let _b = (e.runtime("ws-a").await, e.runtime("ws-b").await);
    let spec = json!({"rules": [{"hosts": [host("ws-split")], "visibility": "ExternalIP",
        "http": {"paths": [{"splits": [split("ws-a", 50), split("ws-b", 50)]}]}}]});
    e.ingress_ready("ws-split", spec).await;
    let h = host("ws-split");
    let seen = two_sides_seen(|| websocket_echoes(e.gw.http, &h, 10)).await;
    assert_eq!(seen, ["ws-a", "ws-b"]);
}

/// The sides `call` answers from, sorted, after calling it until two were
/// seen (40 calls at most): a 50/50 split shows both within a few.
async fn two_sides_seen<F, Fut>(mut call: F) -> Vec<String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = String>,
{
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..40 {
        seen.insert(call().await);
        if seen.len() == 2 {
            break;
        }
    }
    seen.into_iter().collect()
}

/// A `kubernetes.io/tls` Secret in the test namespace.
fn tls_secret(name: &str, crt: &str, key: &str) -> Value {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
           "metadata": {"name": name, "namespace": NS},
           "data": {"tls.crt": b64(crt), "tls.key": b64(key)}})
}

/// tls: HTTP and HTTPS both serve a KIngress with `spec.tls`; each SNI name
/// gets its own Secret's certificate; a renewed Secret serves new
/// handshakes; a broken one keeps its last good certificate, named in
/// /debug/routes; an unknown name gets a handshake alert, with no default
/// certificate. Stalled handshakes and plaintext on the HTTPS port affect
/// no other connection.
async fn tls() {
    let e = env().await;
    let ca = TestCa::new();
    let _b = (e.runtime("tls-a").await, e.runtime("tls-b").await);
    let (host_a, host_b) = (host("tls-a"), host("tls-b"));
    let (crt_a, key_a, der_a) = ca.leaf(&[&host_a]);
    let (crt_b, key_b, der_b) = ca.leaf(&[&host_b]);
    e.api.apply(tls_secret("cert-a", &crt_a, &key_a));
    e.api.apply(tls_secret("cert-b", &crt_b, &key_b));
    let spec = json!({
        "tls": [{"hosts": [host_a], "secretName": "cert-a", "secretNamespace": NS},
                {"hosts": [host_b], "secretName": "cert-b", "secretNamespace": NS}],
        "rules": [
            {"hosts": [host_a], "visibility": "ExternalIP",
             "http": {"paths": [{"splits": [split("tls-a", 100)]}]}},
            {"hosts": [host_b], "visibility": "ExternalIP",
             "http": {"paths": [{"splits": [split("tls-b", 100)]}]}}]});
    e.ingress_ready("tls", spec).await;
    // A client that connects and never completes a handshake, and one that
    // speaks plaintext HTTP to the HTTPS port: neither affects the others.
    let _stalled = tokio::net::TcpStream::connect(e.gw.https).await.unwrap();
    let mut plain = tokio::net::TcpStream::connect(e.gw.https).await.unwrap();
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        plain
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut buf)).await;
        assert!(
            read.is_ok(),
            "plaintext on the HTTPS port is closed, not left hanging"
        );
        assert!(
            !String::from_utf8_lossy(&buf).contains("200"),
            "no HTTP answer over plaintext"
        );
    }
    for (h, name, der) in [(&host_a, "tls-a", &der_a), (&host_b, "tls-b", &der_b)] {
        let r = https_get(e.gw.https, h, "/", &ca.der).await.unwrap();
        assert_eq!((r.reply.status, r.reply.body.as_str()), (200, name));
        assert_eq!(&r.cert, der, "{h} gets its own certificate");
        assert_eq!(r.alpn.as_deref(), Some(&b"h2"[..]));
        assert_eq!(r.reply.header("x-echo-x-forwarded-proto"), "https");
        assert_eq!(e.get(h, "/", &[]).await.body, name, "plain HTTP too");
    }
    let unknown = https_get(e.gw.https, "nobody.example.com", "/", &ca.der).await;
    assert!(
        unknown.as_ref().is_err_and(|e| e.starts_with("handshake")),
        "{:?}",
        unknown.as_ref().err()
    );
    // Renewed: new handshakes get the new certificate, without a restart.
    let (crt_a2, key_a2, der_a2) = ca.leaf(&[&host_a]);
    e.api.apply(tls_secret("cert-a", &crt_a2, &key_a2));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while https_get(e.gw.https, &host_a, "/", &ca.der)
        .await
        .unwrap()
        .cert
        != der_a2
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the renewed certificate is served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Broken: a key that does not match its certificate is rejected alone.
    e.api.apply(tls_secret("cert-b", &crt_b, &key_a2));
    eventually(10, "the broken Secret is reported", || async {
        e.gw.rejected().await.contains(&(
            format!("{NS}/cert-b"),
            "bad_tls_secret".into(),
            "last_good".into(),
        ))
    })
    .await;
    let routes = e.gw.debug_routes().await;
    let messages: Vec<&str> = routes["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["message"].as_str())
        .collect();
    assert!(
        messages.contains(&"tls.key does not match the certificate in tls.crt"),
        "{messages:?}"
    );
    let r = https_get(e.gw.https, &host_b, "/", &ca.der).await.unwrap();
    assert_eq!(r.cert, der_b, "the last good certificate still serves");
    assert_eq!(
        https_get(e.gw.https, &host_a, "/", &ca.der)
            .await
            .unwrap()
            .cert,
        der_a2
    );
    let metrics = e.gw.admin("/metrics").await.body;
    assert!(
        metrics.contains(r#"gateway_objects_rejected{kind="Secret",reason="bad_tls_secret"} 1"#),
        "{metrics}"
    );
}

/// A default certificate (`--default-certificate NS/NAME`) for every name no
/// KIngress has one for.
async fn tls_default_certificate() {
    let e = env_with(&["--default-certificate", "serving-tests/fallback"]).await;
    let ca = TestCa::new();
    let _b = e.runtime("tls-d").await;
    let (crt, key, der) = ca.leaf(&[&host("tls-d")]);
    e.api.apply(tls_secret("fallback", &crt, &key));
    e.ingress_ready("tls-d", simple(&host("tls-d"), "tls-d"))
        .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let r = loop {
        match https_get(e.gw.https, &host("tls-d"), "/", &ca.der).await {
            Ok(r) => break r,
            Err(err) => assert!(std::time::Instant::now() < deadline, "{err}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        (r.reply.status, r.reply.body.as_str(), r.cert),
        (200, "tls-d", der)
    );
}

/// httpoption: `Redirected` answers plain HTTP with 301 to https:// (same
/// host, path and query) while HTTPS serves; `Enabled` serves both. Probes
/// are never redirected (the KIngress becomes Ready through them).
async fn httpoption() {
    let e = env().await;
    let ca = TestCa::new();
    let _b = e.runtime("opt").await;
    let (redirected, enabled) = (host("redirected"), host("enabled"));
    let (crt, key, _) = ca.leaf(&[&redirected, &enabled]);
    e.api.apply(tls_secret("opt-cert", &crt, &key));
    let spec = |h: &str, option: &str| {
        json!({"httpOption": option,
               "tls": [{"hosts": [h], "secretName": "opt-cert", "secretNamespace": NS}],
               "rules": [{"hosts": [h], "visibility": "ExternalIP",
                          "http": {"paths": [{"splits": [split("opt", 100)]}]}}]})
    };
    e.ingress_ready("redirected", spec(&redirected, "Redirected"))
        .await;
    e.ingress_ready("enabled", spec(&enabled, "Enabled")).await;
    let r = e.get(&redirected, "/a/b?x=1", &[]).await;
    assert_eq!(r.status, 301);
    assert_eq!(
        r.header("location"),
        format!("https://{redirected}/a/b?x=1")
    );
    assert_eq!(e.get(&enabled, "/", &[]).await.body, "opt");
    for h in [&redirected, &enabled] {
        let r = https_get(e.gw.https, h, "/", &ca.der).await.unwrap();
        assert_eq!(
            (r.reply.status, r.reply.body.as_str()),
            (200, "opt"),
            "{h} over HTTPS"
        );
    }
}

/// Bad input over HTTP/2: garbage after the preface, a stream reset
/// mid-body, and the concurrent-stream limit each get the protocol's own
/// answer and leave other connections (and other streams) alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_bad_input() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let e = env().await;
    let _b = e.runtime("h2-bad").await;
    e.ingress_ready("h2-bad", simple(&host("h2-bad"), "h2-bad"))
        .await;
    let healthy = H2cClient::connect(e.gw.http).await;
    // The preface, then bytes that are no HTTP/2 frame: the connection ends
    // (after a GOAWAY), it does not hang.
    let mut raw = tokio::net::TcpStream::connect(e.gw.http).await.unwrap();
    raw.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    raw.write_all(&[0xff; 64]).await.unwrap();
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), raw.read_to_end(&mut buf)).await;
    assert!(closed.is_ok(), "a broken HTTP/2 connection is closed");
    // A request body reset mid-way: only that stream ends.
    let (mut tx, rx) = futures::channel::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(1);
    let req = http::Request::post(format!("http://{}/upload", host("h2-bad")))
        .version(http::Version::HTTP_2)
        .body(StreamBody::new(rx))
        .unwrap();
    let stream = tokio::net::TcpStream::connect(e.gw.http).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let pending = send.send_request(req);
    {
        use futures::SinkExt;
        tx.send(Ok(Frame::data(Bytes::from_static(b"first half"))))
            .await
            .unwrap();
        tx.send(Err(std::io::Error::other("client gave up")))
            .await
            .unwrap();
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), pending)
        .await
        .expect("the reset stream ends");
    let (done, empty) = futures::channel::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(1);
    drop(done);
    let again = http::Request::get(format!("http://{}/", host("h2-bad")))
        .version(http::Version::HTTP_2)
        .body(StreamBody::new(empty))
        .unwrap();
    send.ready().await.unwrap();
    let r = read_reply(send.send_request(again).await.unwrap())
        .await
        .unwrap();
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "h2-bad"),
        "the connection lives on"
    );
    // The stream limit is advertised (100), and a client sending 150 at
    // once is held to it, all answered.
    let tcp = tokio::net::TcpStream::connect(e.gw.http).await.unwrap();
    let (h2, conn) = h2::client::handshake(tcp).await.unwrap();
    let mut conn = Box::pin(conn);
    // Settings arrive with the first exchange.
    let probe = {
        let mut h2 = h2.clone().ready().await.unwrap();
        let req = http::Request::get(format!("http://{}/", host("h2-bad")))
            .body(())
            .unwrap();
        h2.send_request(req, true).unwrap().0
    };
    let resp = match futures::future::select(probe, conn.as_mut()).await {
        futures::future::Either::Left((resp, _)) => resp.unwrap(),
        futures::future::Either::Right((ended, _)) => panic!("the connection ended: {ended:?}"),
    };
    assert_eq!(resp.status(), 200);
    assert_eq!(conn.max_concurrent_send_streams(), 100);
    tokio::spawn(conn);
    let bad_host = host("h2-bad");
    let replies = futures::future::join_all((0..150).map(|_| healthy.get(&bad_host, "/"))).await;
    assert!(replies
        .iter()
        .all(|r| r.as_ref().is_ok_and(|r| r.status == 200)));
}

/// `--stream-idle-timeout`: a WebSocket silent longer than it is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_idle_timeout() {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Message;
    let e = env_with(&["--stream-idle-timeout", "1s"]).await;
    let _b = e.runtime("idle").await;
    e.ingress_ready("idle", simple(&host("idle"), "idle")).await;
    let mut req = format!("ws://{}/", e.gw.http)
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("host", host("idle").parse().unwrap());
    let stream = tokio::net::TcpStream::connect(e.gw.http).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(req, stream).await.unwrap();
    ws.send(Message::text("hi")).await.unwrap();
    assert_eq!(
        ws.next()
            .await
            .unwrap()
            .unwrap()
            .into_text()
            .unwrap()
            .as_str(),
        "idle: hi"
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let after = tokio::time::timeout(Duration::from_secs(5), async {
        let _ = ws.send(Message::text("still there?")).await;
        ws.next().await
    })
    .await
    .expect("the closed stream ends at once");
    assert!(
        !matches!(&after, Some(Ok(Message::Text(t))) if t.as_str() == "idle: still there?"),
        "closed after 1 s of silence: {after:?}"
    );
}

/// The gRPC message of the tests, derived by hand (no code generation).
/// A gRPC backend named `name` on h2c ([`grpc_backend`]) behind a Service
/// port named `http2`.
async fn grpc_runtime(e: &Env, name: &str) -> tokio::task::JoinHandle<()> {
    let (addr, task) = grpc_backend(name).await;
    e.service_port(name, addr, "http2");
    e.slice_port(name, addr, "http2");
    task
}

/// grpc: 100 round trips of one bidirectional stream over h2c on the plain
/// port, to a backend whose port asks for h2c; trailers pass through.
async fn grpc() {
    let e = env().await;
    let _b = grpc_runtime(&e, "grpc").await;
    e.ingress_ready("grpc", simple(&host("grpc"), "grpc")).await;
    assert_eq!(grpc_chat(e.gw.http, &host("grpc"), 100).await, "grpc");
}

/// grpc/split: streams through a 50/50 split reach both sides.
async fn grpc_split() {
    let e = env().await;
    let _b = (
        grpc_runtime(&e, "grpc-a").await,
        grpc_runtime(&e, "grpc-b").await,
    );
    let spec = json!({"rules": [{"hosts": [host("grpc-split")], "visibility": "ExternalIP",
        "http": {"paths": [{"splits": [split("grpc-a", 50), split("grpc-b", 50)]}]}}]});
    e.ingress_ready("grpc-split", spec).await;
    let h = host("grpc-split");
    let seen = two_sides_seen(|| grpc_chat(e.gw.http, &h, 10)).await;
    assert_eq!(seen, ["grpc-a", "grpc-b"]);
}

impl Env {
    /// Serve `backend` as Service `name` over TLS with `crt`/`key` (its
    /// `https` port), in an encrypted environment.
    fn tls_service(&self, name: &str, backend: SocketAddr, crt: &str, key: &str) {
        let enc = self.encryption.as_ref().expect("an encrypted environment");
        enc.fronts
            .lock()
            .unwrap()
            .insert(backend, TlsFront::start(backend, crt, key));
        self.service(name, backend);
    }

    /// Read the TLS front of `backend`.
    fn front<T>(&self, backend: SocketAddr, read: impl FnOnce(&TlsFront) -> T) -> T {
        let enc = self.encryption.as_ref().expect("an encrypted environment");
        read(&enc.fronts.lock().unwrap()[&backend])
    }

    /// Refused backend certificates so far, for `reason`.
    async fn tls_failures(&self, reason: &str) -> f64 {
        let series = format!("gateway_upstream_tls_failures_total{{reason=\"{reason}\"}}");
        self.gw.metric(&series).await.unwrap_or(0.0)
    }
}

/// Not a suite case: with system-internal TLS on, a backend's certificate
/// must chain to the trust bundle and name `kn-user-<namespace>` (or
/// `kn-routing`, the activator's). A wrong name, an unknown issuer or an
/// expired certificate gets 502, counted by reason, and the backend is
/// never reached in plaintext. Connections are kept alive, and no SNI is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_backends_are_verified_and_never_reached_in_plaintext() {
    let e = ENCRYPTED.scope((), env()).await;
    let [trusted, _] = &e.encryption.as_ref().unwrap().cas;
    let untrusted = TestCa::new();
    let user = format!("kn-user-{NS}");
    let good = e.runtime("tls-good").await;
    let routing = Backend::start("tls-routing").await;
    let (crt, key, _) = trusted.leaf(&["kn-routing"]);
    e.tls_service("tls-routing", routing.addr, &crt, &key);
    let leaf = |ca: &TestCa, name: &str| {
        let (crt, key, _) = ca.leaf(&[name]);
        (crt, key)
    };
    let mut bad = Vec::new();
    for (name, (crt, key), reason) in [
        // Another namespace's certificate never serves this one.
        (
            "tls-other-ns",
            leaf(trusted, "kn-user-elsewhere"),
            "wrong_name",
        ),
        ("tls-unknown", leaf(&untrusted, &user), "unknown_issuer"),
        ("tls-expired", trusted.expired_leaf(&[&user]), "expired"),
    ] {
        let b = Backend::start(name).await;
        e.tls_service(name, b.addr, &crt, &key);
        bad.push((name, b, reason));
    }
    for name in ["tls-good", "tls-routing"] {
        e.ingress_ready(name, simple(&host(name), name)).await;
    }
    // Served, but never Ready: Knative's probe reaches no backend either.
    for (name, ..) in &bad {
        e.create(name, simple(&host(name), name), CLASS);
    }
    for (name, ..) in &bad {
        eventually(10, &format!("{name} routed"), || async {
            e.get(&host(name), "/", &[]).await.status != 404
        })
        .await;
    }
    // Twenty requests on one keep-alive client: TLS connections are reused.
    let client = HttpClient::new();
    for _ in 0..20 {
        let r = client.get(e.gw.http, &host("tls-good")).await.unwrap();
        assert_eq!((r.status, r.body.as_str()), (200, "tls-good"));
    }
    assert!(
        e.gw.fast_path_requests("served").await >= 20,
        "served by the fast path over its TLS pool"
    );
    let handshakes = e.front(good.addr, |f| f.handshakes());
    assert!(
        (1..=2).contains(&handshakes),
        "one upstream connection per worker thread at most: {handshakes}"
    );
    assert_eq!(
        e.front(good.addr, |f| f.last_sni.lock().unwrap().clone()),
        Some(None),
        "no SNI"
    );
    let r = e.get(&host("tls-routing"), "/", &[]).await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "tls-routing"),
        "the activator's name is accepted"
    );
    for (name, backend, reason) in &bad {
        let before = e.tls_failures(reason).await;
        let r = e.get(&host(name), "/", &[]).await;
        assert_eq!(r.status, 502, "{name}: {r:?}");
        assert_eq!(backend.hits(), 0, "{name} never reached in plaintext");
        let after = e.tls_failures(reason).await;
        assert!(
            after > before,
            "{name} counted as {reason}: {before} -> {after}"
        );
    }
    let log = e.gw.stderr();
    assert!(
        log.contains("TLS to the backend failed")
            && log.contains("expected_name=kn-user-serving-tests"),
        "the reason is logged: {log}"
    );
}

/// Not a suite case: a split to an `https` port while nothing is trusted is
/// not served, and its KIngress says why (`TrustBundleMissing`, in status and
/// `/debug/routes`); the CA Secret's arrival makes it Ready and served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_trust_bundle_a_tls_split_waits_for_one() {
    let e = env().await;
    let ca = TestCa::new();
    let b = Backend::start("nobundle").await;
    let (crt, key, _) = ca.leaf(&[&format!("kn-user-{NS}")]);
    let front = TlsFront::start(b.addr, &crt, &key);
    e.api.apply(json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "nobundle", "namespace": NS},
        "spec": {"ports": [{"name": "http", "port": 80, "targetPort": b.addr.port()},
                           {"name": "https", "port": 443, "targetPort": front.addr.port()}]}}));
    e.api.apply(json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "nobundle-abcde", "namespace": NS,
                     "labels": {"kubernetes.io/service-name": "nobundle"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": b.addr.port()}, {"name": "https", "port": front.addr.port()}],
        "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": true}}]}));
    let spec = json!({"rules": [{"hosts": [host("nobundle")], "visibility": "ExternalIP",
        "http": {"paths": [{"splits": [{"serviceName": "nobundle", "serviceNamespace": NS,
                                        "servicePort": 443, "percent": 100}]}]}}]});
    let generation = e.create("nobundle", spec, CLASS);
    e.wait_condition("nobundle", generation, "False", Some("TrustBundleMissing"))
        .await;
    let rejected = e.gw.rejected().await;
    assert!(
        rejected
            .iter()
            .any(|(object, reason, _)| object == "serving-tests/nobundle"
                && reason == "no_trust_bundle"),
        "{rejected:?}"
    );
    assert_eq!(e.get(&host("nobundle"), "/", &[]).await.status, 404);
    assert_eq!(b.hits(), 0, "never in plaintext");
    e.api.apply(ca_secret("knative-serving", &ca.pem));
    e.wait_ready("nobundle", generation).await;
    let r = e.get(&host("nobundle"), "/", &[]).await;
    assert_eq!((r.status, r.body.as_str()), (200, "nobundle"));
    assert!(front.handshakes() >= 1);
}

/// A backend that answers every request with `body` and `Connection: close`,
/// so that each request through the gateway takes a new (TLS) connection.
async fn closing_backend(body: &'static str) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                // Knative's probe gets its hash back, as from queue-proxy.
                let head = String::from_utf8_lossy(&buf).to_ascii_lowercase();
                let hash = head
                    .lines()
                    .find_map(|l| l.strip_prefix("k-network-hash:"))
                    .map(|h| format!("k-network-hash: {}\r\n", h.trim()))
                    .unwrap_or_default();
                let reply = format!(
                    "HTTP/1.1 200 OK\r\nconnection: close\r\n{hash}content-length: {}\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(reply.as_bytes()).await;
            });
        }
    });
    (addr, task)
}

/// Not a suite case: the trust bundle rotated under load, as an operator
/// rotates a CA: the new CA added beside the old, the backend moved to a
/// certificate of the new one, the old CA removed. Every request succeeds,
/// each on a new TLS connection; afterwards the old CA is no longer trusted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trust_bundle_rotated_under_load_fails_no_request() {
    let e = ENCRYPTED.scope((), env()).await;
    let (old, new) = (TestCa::new(), TestCa::new());
    let user = format!("kn-user-{NS}");
    e.api.apply(ca_secret("knative-serving", &old.pem));
    let trusted = |n: u64| {
        let e = &e;
        async move {
            eventually(10, &format!("{n} certificates trusted"), || async move {
                e.gw.debug_routes().await["trust"]["certificates"] == n
            })
            .await
        }
    };
    // `old` in the Secret, the environment's second CA in its ConfigMap.
    trusted(2).await;
    let (addr, _task) = closing_backend("rotated").await;
    let (crt, key, _) = old.leaf(&[&user]);
    e.tls_service("rotated", addr, &crt, &key);
    e.ingress_ready("rotated", simple(&host("rotated"), "rotated"))
        .await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = tokio::task::JoinSet::new();
    for _ in 0..2 {
        let (gw, stop) = (e.gw.http, stop.clone());
        load.spawn(async move {
            let client = HttpClient::new();
            let (mut ok, mut failed) = (0u64, Vec::new());
            // Bounded: at most 20,000 requests, and it stops when told.
            for _ in 0..20_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                match client.get(gw, &host("rotated")).await {
                    Ok(r) if r.status == 200 && r.body == "rotated" => ok += 1,
                    other => failed.push(format!("{other:?}")),
                }
            }
            (ok, failed)
        });
    }
    let pause = || tokio::time::sleep(Duration::from_millis(300));
    pause().await;
    e.api
        .apply(trust_bundle("knative-serving", "rotation", &[&new.pem]));
    trusted(3).await;
    pause().await;
    let (crt, key, _) = new.leaf(&[&user]);
    e.front(addr, |f| f.set_cert(&crt, &key));
    pause().await;
    e.api
        .delete("v1", "Secret", "knative-serving", "routing-serving-certs");
    trusted(2).await;
    pause().await;
    stop.store(true, Ordering::Relaxed);
    let (mut ok, mut failed) = (0, Vec::new());
    while let Some(done) = load.join_next().await {
        let (o, f) = done.unwrap();
        ok += o;
        failed.extend(f);
    }
    assert!(
        failed.is_empty(),
        "{} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    let handshakes = e.front(addr, |f| f.handshakes());
    assert!(
        ok >= 20 && handshakes >= ok,
        "{ok} requests, {handshakes} handshakes"
    );
    // New connections resume their TLS sessions (a new trust starts anew).
    let resumed = e.front(addr, |f| f.resumed.load(Ordering::Relaxed));
    assert!(
        resumed > handshakes / 2,
        "{resumed} of {handshakes} resumed"
    );
    // The old CA is gone: a backend (a new one: TLS sessions already
    // verified resume) with its certificate is refused from now on.
    let (stale, _stale_task) = closing_backend("stale").await;
    let (crt, key, _) = old.leaf(&[&user]);
    e.tls_service("stale", stale, &crt, &key);
    e.create("stale", simple(&host("stale"), "stale"), CLASS);
    eventually(10, "stale routed", || async {
        e.get(&host("stale"), "/", &[]).await.status != 404
    })
    .await;
    assert_eq!(e.get(&host("stale"), "/", &[]).await.status, 502);
}

/// Not a suite case: `cluster-local-domain-tls`. A `spec.tls` entry holding
/// every host of a ClusterLocal rule is served on the internal HTTPS
/// listener only; `--cluster-cert-secret` is the internal listener's
/// certificate for other cluster-local names; the external listener never
/// presents either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_local_certificates_stay_on_the_internal_listener() {
    let e = env_with(&["--cluster-cert-secret", "serving-tests/cluster-cert"]).await;
    let ca = TestCa::new();
    let _b = e.runtime("local-tls").await;
    let local = [
        "local-tls.serving-tests",
        "local-tls.serving-tests.svc",
        "local-tls.serving-tests.svc.cluster.local",
    ];
    let (crt, key, local_der) = ca.leaf(&local);
    e.api.apply(tls_secret("local-tls-cert", &crt, &key));
    let (crt, key, cluster_der) = ca.leaf(&["*.serving-tests.svc.cluster.local"]);
    e.api.apply(tls_secret("cluster-cert", &crt, &key));
    let (crt, key, public_der) = ca.leaf(&[&host("local-tls")]);
    e.api.apply(tls_secret("public-cert", &crt, &key));
    let spec = json!({
        "rules": [
            {"hosts": local, "visibility": "ClusterLocal",
             "http": {"paths": [{"splits": [split("local-tls", 100)]}]}},
            {"hosts": [host("local-tls")], "visibility": "ExternalIP",
             "http": {"paths": [{"splits": [split("local-tls", 100)]}]}}],
        "tls": [
            {"hosts": local, "secretName": "local-tls-cert", "secretNamespace": NS},
            {"hosts": [host("local-tls")], "secretName": "public-cert", "secretNamespace": NS}]});
    e.ingress_ready("local-tls", spec).await;
    let name = "local-tls.serving-tests.svc.cluster.local";
    let r = https_get(e.gw.internal_https, name, "/", &ca.der)
        .await
        .unwrap();
    assert_eq!((r.reply.status, r.reply.body.as_str()), (200, "local-tls"));
    assert_eq!(
        r.cert, local_der,
        "the cluster-local entry's certificate inside"
    );
    let other = "other.serving-tests.svc.cluster.local";
    let r = https_get(e.gw.internal_https, other, "/", &ca.der).await;
    assert_eq!(r.unwrap().cert, cluster_der, "--cluster-cert-secret inside");
    let r = https_get(e.gw.https, &host("local-tls"), "/", &ca.der)
        .await
        .unwrap();
    assert_eq!((r.reply.status, r.cert), (200, public_der));
    for sni in [name, other] {
        let outside = https_get(e.gw.https, sni, "/", &ca.der).await;
        assert!(
            outside.is_err(),
            "the external listener presents no cluster-local certificate for {sni}: {:?}",
            outside.map(|r| r.cert == local_der || r.cert == cluster_der)
        );
    }
    let certs = e.gw.debug_routes().await["certificates"].clone();
    assert!(
        certs
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["name"] == name && c["internal_only"] == true),
        "{certs}"
    );
}

/// Not a suite case: `--secret-label-selector` keeps certificate Secrets
/// without the label out of the gateway: a KIngress naming one is served
/// without its certificate (the Secret is missing, by name, in
/// `/debug/routes`) and is not Ready (`SecretNotFound`), while a labelled
/// one serves its certificate and is Ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_labelled_certificate_secrets_are_watched_when_asked() {
    let label = "networking.internal.knative.dev/certificate-uid";
    let e = env_with(&["--secret-label-selector", label]).await;
    let ca = TestCa::new();
    let _b = e.runtime("labelled").await;
    for (name, labelled) in [("labelled", true), ("unlabelled", false)] {
        let (crt, key, _) = ca.leaf(&[&host(name)]);
        let mut secret = tls_secret(&format!("{name}-cert"), &crt, &key);
        if labelled {
            secret["metadata"]["labels"] = json!({label: "0b1d"});
        }
        e.api.apply(secret);
        let mut spec = simple(&host(name), "labelled");
        spec["tls"] = json!([{"hosts": [host(name)], "secretName": format!("{name}-cert"),
                              "secretNamespace": NS}]);
        let generation = e.create(name, spec, CLASS);
        if labelled {
            e.wait_ready(name, generation).await;
        } else {
            let obj = e
                .wait_condition(name, generation, "False", Some("SecretNotFound"))
                .await;
            let conditions = obj["status"]["conditions"].to_string();
            assert!(
                conditions.contains("serving-tests/unlabelled-cert"),
                "{conditions}"
            );
        }
    }
    let r = https_get(e.gw.https, &host("labelled"), "/", &ca.der)
        .await
        .unwrap();
    assert_eq!((r.reply.status, r.reply.body.as_str()), (200, "labelled"));
    let refused = https_get(e.gw.https, &host("unlabelled"), "/", &ca.der).await;
    assert!(refused.is_err(), "no certificate for an unlabelled Secret");
    let rejected = e.gw.rejected().await;
    assert!(
        rejected.iter().any(
            |(object, reason, _)| object == "serving-tests/unlabelled" && reason == "no_secret"
        ),
        "{rejected:?}"
    );
}

/// Not a suite case: a KIngress with TLS is probed over the HTTPS listener
/// of each rule's visibility, on every replica, with the rule's host as SNI,
/// and is Ready only once every replica presents the certificate its Secret
/// holds. A second replica (another pod: the same ports on 127.0.0.2) that
/// does not see the Secrets presents its default certificate outside and
/// none inside: the status says which replica and listener, until the
/// Secrets reach it too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_rules_are_ready_once_every_replica_serves_their_certificate() {
    let label = "networking.internal.knative.dev/certificate-uid";
    let e = env().await;
    let _b = e.runtime("secured").await;
    // Ready with one replica first: this one leads.
    e.ingress_ready("secured", simple(&host("secured"), "secured"))
        .await;
    let ca = TestCa::new();
    let (crt, key, _) = ca.leaf(&["fallback.example.com"]);
    let mut fallback = tls_secret("fallback-cert", &crt, &key);
    fallback["metadata"]["labels"] = json!({label: "f"});
    e.api.apply(fallback);
    let two =
        e.gw.replica_at(
            std::net::Ipv4Addr::new(127, 0, 0, 2),
            &[
                "--secret-label-selector",
                label,
                "--default-certificate",
                &format!("{NS}/fallback-cert"),
            ],
        )
        .await;
    e.api.apply(
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "internal-1", "namespace": "gw",
                     "labels": {"kubernetes.io/service-name": "internal"}},
        "addressType": "IPv4", "ports": [{"name": "http", "port": two.internal.port()}],
        "endpoints": [{"addresses": ["127.0.0.2"], "conditions": {"ready": true}}]}),
    );
    // The leader lists the replicas every second.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let local = "secured.serving-tests.svc.cluster.local";
    let (crt, key, _) = ca.leaf(&[&host("secured")]);
    e.api.apply(tls_secret("public-cert", &crt, &key));
    let (crt, key, _) = ca.leaf(&[local]);
    e.api.apply(tls_secret("local-cert", &crt, &key));
    let spec = json!({
        "rules": [
            {"hosts": [host("secured")], "visibility": "ExternalIP",
             "http": {"paths": [{"splits": [split("secured", 100)]}]}},
            {"hosts": [local], "visibility": "ClusterLocal",
             "http": {"paths": [{"splits": [split("secured", 100)]}]}}],
        "tls": [
            {"hosts": [host("secured")], "secretName": "public-cert", "secretNamespace": NS},
            {"hosts": [local], "secretName": "local-cert", "secretNamespace": NS}]});
    let generation = e.create("secured", spec, CLASS);
    let obj = e
        .wait_condition("secured", generation, "Unknown", Some("ProbeFailing"))
        .await;
    let message = obj["status"]["conditions"].to_string();
    let external = format!("127.0.0.2:{}", e.gw.https.port());
    let internal = format!("127.0.0.2:{}", e.gw.internal_https.port());
    assert!(
        message.contains(&format!(
            "{external} presents another certificate for {}",
            host("secured")
        )) || message.contains(&internal),
        "the external listener presents the fallback, the internal one nothing: {message}"
    );
    let failures = e.gw.debug_routes().await["probe_failures"].clone();
    assert!(failures[&format!("{NS}/secured")].is_string(), "{failures}");
    // Both Secrets reach the second replica: both listeners of both replicas
    // present the Secrets' certificates.
    for name in ["public-cert", "local-cert"] {
        let mut secret = e.api.get("v1", "Secret", NS, name).unwrap();
        secret["metadata"]["labels"] = json!({label: name});
        e.api.apply(secret);
    }
    e.wait_ready("secured", generation).await;
    assert!(e.gw.debug_routes().await.get("probe_failures").is_none());
    // Nothing was Ready while a replica presented another certificate.
    drop(two);
}

/// Not a suite case: a Service no KIngress names costs no table (its
/// change swaps nothing in, and a full build leaves it out), yet a KIngress
/// that starts naming it is served at once, from the stores.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_no_kingress_names_costs_no_table_until_one_does() {
    let e = env().await;
    let _b = e.runtime("named").await;
    e.ingress_ready("named", simple(&host("named"), "named"))
        .await;
    let before = e.gw.generation().await;
    let later = Backend::start("later").await;
    e.service_alone("later", later.addr);
    // The Service arrives; nothing routes to it: no table is made.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(
        e.gw.generation().await,
        before,
        "a Service no KIngress names"
    );
    e.slice("later", later.addr);
    // A full build (a Secret changed) leaves them out of the table...
    let ca = TestCa::new();
    let (crt, key, _) = ca.leaf(&["x.example.com"]);
    e.api.apply(tls_secret("any-cert", &crt, &key));
    let now = e.gw.generation().await;
    eventually(10, "a full build", || async {
        e.gw.generation().await > now
    })
    .await;
    // ...and a KIngress that starts naming them is served at once.
    e.ingress_ready("later", simple(&host("later"), "later"))
        .await;
    assert_eq!(e.get(&host("later"), "/", &[]).await.body, "later");
    assert!(later.hits() > 0);
}

/// Each case of Knative's suite runs twice: as it is (`plain::`), and with
/// system-internal TLS on (`encrypted::`, see [`Encryption`]).
macro_rules! cases {
    ($($name:ident),* $(,)?) => {
        mod plain {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name().await
                }
            )*
        }
        mod encrypted {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::ENCRYPTED.scope((), super::$name()).await
                }
            )*
        }
    };
}

cases!(
    basics,
    hosts_multiple,
    dispatch_path,
    dispatch_percentage,
    dispatch_path_and_percentage,
    dispatch_rule,
    headers_pre_split,
    headers_post_split,
    headers_probe,
    headers_tags,
    host_rewrite,
    retry,
    timeout,
    update,
    visibility,
    ingressclass,
    basics_http2,
    forwarding_headers,
    websocket,
    websocket_split,
    tls,
    tls_default_certificate,
    httpoption,
    grpc,
    grpc_split,
);
