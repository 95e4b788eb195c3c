//! The Route-status mode (`--source routes`, here from a snapshot file) with
//! revisions at zero: the gateway's own activator fallback sends a revision
//! whose port speaks HTTP/2 to the activator's HTTP/2 port over h2c (gRPC
//! keeps its framing and trailers), everything else and every upgrade over
//! HTTP/1.1 to its HTTP/1.1 port, with the revision headers either way. And
//! no 503 window after a start: `/readyz` waits for the names the first
//! table needs.

mod common;

use std::collections::HashSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};

type AnyBody = UnsyncBoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// One request the activator stand-in received.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    /// It came to the HTTP/2 port.
    h2_port: bool,
    version: http::Version,
    revision: String,
    namespace: String,
}

/// A stand-in for Knative's activator, serving HTTP/1.1 and h2c on two
/// ports as the activator does (8012 and 8013). It records each request and
/// answers as the woken revision would (`/test.Echo/Chat`, a WebSocket echo,
/// or its name), named `activator <revision>`; the first request for a
/// revision is sent on `woken`, so the test can start the revision.
struct Activator {
    h1: SocketAddr,
    h2: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    woken: tokio::sync::mpsc::UnboundedReceiver<String>,
    _tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Activator {
    async fn start() -> Activator {
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let asked: Arc<Mutex<HashSet<String>>> = Arc::default();
        let (wake, woken) = tokio::sync::mpsc::unbounded_channel();
        let mut addrs = Vec::new();
        let mut tasks = Vec::new();
        for h2_port in [false, true] {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            addrs.push(listener.local_addr().unwrap());
            let (seen, asked, wake) = (seen.clone(), asked.clone(), wake.clone());
            tasks.push(tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    let (seen, asked, wake) = (seen.clone(), asked.clone(), wake.clone());
                    tokio::spawn(async move {
                        let svc = hyper::service::service_fn(move |req| {
                            let header = |name: &str| {
                                req.headers()
                                    .get(name)
                                    .and_then(|v| v.to_str().ok())
                                    .unwrap_or_default()
                                    .to_owned()
                            };
                            let (revision, namespace) = (
                                header("knative-serving-revision"),
                                header("knative-serving-namespace"),
                            );
                            seen.lock().unwrap().push(Seen {
                                h2_port,
                                version: req.version(),
                                revision: revision.clone(),
                                namespace,
                            });
                            if asked.lock().unwrap().insert(revision.clone()) {
                                let _ = wake.send(revision.clone());
                            }
                            answer(req, format!("activator {revision}"))
                        });
                        let _ = hyper_util::server::conn::auto::Builder::new(
                            hyper_util::rt::TokioExecutor::new(),
                        )
                        .serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                    });
                }
            }));
        }
        Activator {
            h1: addrs[0],
            h2: addrs[1],
            seen,
            woken,
            _tasks: tasks,
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// `gateway serve` on `snapshot`, with this stand-in as its activator.
    async fn gateway(&self, snapshot: &str) -> Gateway {
        let h2_port = self.h2.port().to_string();
        Gateway::serve_with(snapshot, self.h1, &["--activator-h2-port", &h2_port]).await
    }
}

/// What a woken revision named `name` would answer to `req`.
async fn answer(
    req: http::Request<hyper::body::Incoming>,
    name: String,
) -> Result<http::Response<AnyBody>, Infallible> {
    let boxed = |e| -> Box<dyn std::error::Error + Send + Sync> { Box::new(e) };
    if gateway::demo::sample::is_websocket(&req) {
        let resp = gateway::demo::sample::accept_websocket::<Full<Bytes>>(req, name.into());
        let resp = resp.expect("a valid upgrade");
        return Ok(resp.map(|b| b.map_err(|e| match e {}).boxed_unsync()));
    }
    let grpc = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if grpc {
        let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
        let resp = grpc.streaming(Chat(name), req).await;
        return Ok(resp.map(|b| b.map_err(boxed).boxed_unsync()));
    }
    let body = Full::new(Bytes::from(name)).map_err(|e| match e {});
    Ok(http::Response::new(body.boxed_unsync()))
}

/// A revision's private EndpointSlice on a port named `port` (`http2`: it
/// speaks h2c), with `addrs` ready; none: the revision is at zero.
fn private_slice(ns: &str, rev: &str, addrs: &[SocketAddr], port: &str) -> String {
    let number = addrs.first().map_or(8012, |a| a.port());
    let endpoints: Vec<String> = addrs
        .iter()
        .map(|a| {
            format!(
                "{{addresses: [\"{}\"], conditions: {{ready: true}}}}",
                a.ip()
            )
        })
        .collect();
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {rev}-private\n  namespace: {ns}\n  labels: {{serving.knative.dev/revision: {rev}, networking.internal.knative.dev/serviceType: Private}}\naddressType: IPv4\nports: [{{name: {port}, port: {number}}}]\nendpoints: [{}]\n---\n",
        endpoints.join(", ")
    )
}

/// A bidirectional gRPC stream of 100 messages to a revision at zero goes to
/// the activator's HTTP/2 port over h2c, with the revision headers; once the
/// revision is woken, the next stream goes straight to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_to_a_revision_at_zero_goes_to_the_activator_over_h2c() {
    let mut activator = Activator::start().await;
    let route = route("ns", "g", &[("g-1", 100, None)]);
    let gw = activator
        .gateway(&(route.clone() + &private_slice("ns", "g-1", &[], "http2")))
        .await;
    let host = "g.ns.example.com";
    assert_eq!(grpc_chat(gw.http, host, 100).await, "activator g-1");
    let seen = activator.seen();
    assert!(!seen.is_empty());
    for s in &seen {
        assert_eq!(
            s,
            &Seen {
                h2_port: true,
                version: http::Version::HTTP_2,
                revision: "g-1".into(),
                namespace: "ns".into(),
            }
        );
    }
    // The activator woke it: its pod is published, and served directly.
    assert_eq!(activator.woken.recv().await.as_deref(), Some("g-1"));
    let (addr, _pod) = grpc_backend("g-1").await;
    gw.reload(&(route + &private_slice("ns", "g-1", &[addr], "http2")))
        .await;
    assert_eq!(grpc_chat(gw.http, host, 100).await, "g-1");
    assert_eq!(activator.seen().len(), seen.len(), "the activator is done");
}

/// A 50/50 split between a warm gRPC revision and one at zero: streams reach
/// both, the cold side through the activator over h2c.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_split_with_one_side_at_zero_reaches_both() {
    let activator = Activator::start().await;
    let (warm, _pod) = grpc_backend("s-warm").await;
    let snapshot = route("ns", "s", &[("s-warm", 50, None), ("s-cold", 50, None)])
        + &private_slice("ns", "s-warm", &[warm], "http2")
        + &private_slice("ns", "s-cold", &[], "http2");
    let gw = activator.gateway(&snapshot).await;
    let mut answered = HashSet::new();
    for _ in 0..20 {
        answered.insert(grpc_chat(gw.http, "s.ns.example.com", 10).await);
        if answered.len() == 2 {
            break;
        }
    }
    let want: HashSet<String> = ["s-warm".to_owned(), "activator s-cold".to_owned()].into();
    assert_eq!(answered, want);
    assert!(activator
        .seen()
        .iter()
        .all(|s| s.h2_port && s.version == http::Version::HTTP_2 && s.revision == "s-cold"));
}

/// A WebSocket to a revision at zero (even one whose port speaks HTTP/2)
/// goes to the activator's HTTP/1.1 port as an HTTP/1.1 upgrade.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_to_a_revision_at_zero_goes_over_http1() {
    let activator = Activator::start().await;
    let snapshot = route("ns", "w", &[("w-1", 100, None)])
        + &private_slice("ns", "w-1", &[], "http")
        + &route("ns", "w2", &[("w2-1", 100, None)])
        + &private_slice("ns", "w2-1", &[], "http2");
    let gw = activator.gateway(&snapshot).await;
    assert_eq!(
        websocket_echoes(gw.http, "w.ns.example.com", 10).await,
        "activator w-1"
    );
    assert_eq!(
        websocket_echoes(gw.http, "w2.ns.example.com", 10).await,
        "activator w2-1"
    );
    let seen = activator.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    for (s, rev) in seen.iter().zip(["w-1", "w2-1"]) {
        assert_eq!(
            s,
            &Seen {
                h2_port: false,
                version: http::Version::HTTP_11,
                revision: rev.into(),
                namespace: "ns".into(),
            }
        );
    }
    // A plain request to the HTTP/1.1 revision: the HTTP/1.1 port too.
    let r = HttpClient::new()
        .get(gw.http, "w.ns.example.com")
        .await
        .unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "activator w-1"));
    assert!(!activator.seen().last().unwrap().h2_port);
}

/// A KIngress path to an ExternalName Service named `name` (port `port`),
/// with the Service.
fn external_ingress(name: &str, port: u16) -> String {
    format!(
        "apiVersion: networking.internal.knative.dev/v1alpha1\nkind: Ingress\nmetadata:\n  name: ext\n  namespace: ns\n  annotations: {{networking.knative.dev/ingress.class: knative-gateway.ingress.networking.knative.dev}}\nspec:\n  rules:\n  - hosts: [ext.example.com]\n    http:\n      paths:\n      - splits: [{{serviceName: ext, serviceNamespace: ns, servicePort: {port}}}]\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: ext, namespace: ns}}\nspec:\n  type: ExternalName\n  externalName: {name}\n  ports: [{{name: http, port: {port}}}]\n---\n"
    )
}

/// The first request after start to a path behind an ExternalName is served:
/// `/readyz` says ready only once the name resolved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_request_behind_an_external_name_is_served() {
    let b = Backend::start("ext").await;
    let gw = Gateway::start(&external_ingress("localhost", b.addr.port()), closed()).await;
    let r = HttpClient::new()
        .get(gw.http, "ext.example.com")
        .await
        .unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "ext"));
    assert_eq!(gw.admin("/readyz").await.body, "ready\n");
}

/// `/readyz` is 503 while a name of the first table does not resolve, and
/// ready after `--resolve-wait`, naming what is still unresolved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_waits_for_names_to_resolve_within_a_bound() {
    let started = Instant::now();
    let gw = Gateway::serve_with(
        &external_ingress("never-resolves.invalid", 80),
        closed(),
        &["--resolve-wait", "2s"],
    )
    .await;
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "not ready before the wait ran out: {:?}",
        started.elapsed()
    );
    let r = gw.admin("/readyz").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.body,
        "ready; not resolved after 2s: ExternalName never-resolves.invalid:80\n"
    );
}
