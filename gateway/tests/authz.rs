//! External authorization against real servers on loopback: a gRPC server
//! built on Envoy's own `Authorization` service types (`envoy-types`,
//! tonic), and a plain HTTP one, in front of the real gateway binary and
//! real backends.

mod common;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use envoy_types::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption};
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use envoy_types::pb::envoy::service::auth::v3::authorization_server::{
    Authorization, AuthorizationServer,
};
use envoy_types::pb::envoy::service::auth::v3::{
    check_response, CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse,
};
use envoy_types::pb::google::rpc;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};

/// What the gRPC server saw of the last check.
#[derive(Debug, Default, Clone)]
struct Seen {
    path: String,
    context: HashMap<String, String>,
    source: String,
    protocol: String,
    body: String,
    raw_body: Vec<u8>,
    /// `x-envoy-auth-partial-body`, if sent.
    partial: Option<String>,
    size: i64,
}

/// An allow-list server: `/allow...` passes (setting `x-user`, removing
/// `x-drop`), `/deny...` gets a 401 with a body, `/body...` passes when the
/// body it is sent (text or bytes) starts with `open sesame`, `/slow...`
/// answers after 2 s, the test gRPC service passes, anything else an
/// unauthenticated status with no answer (Envoy's 403).
#[derive(Clone, Default)]
struct AllowList {
    checks: Arc<AtomicU64>,
    seen: Arc<Mutex<Seen>>,
}

fn header(key: &str, value: &str) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.into(),
            value: value.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[tonic::async_trait]
impl Authorization for AllowList {
    async fn check(
        &self,
        request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        self.checks.fetch_add(1, Ordering::Relaxed);
        let attributes = request.into_inner().attributes.unwrap_or_default();
        let http = attributes.request.and_then(|r| r.http).unwrap_or_default();
        let source = attributes
            .source
            .and_then(|s| s.address)
            .map(|a| format!("{a:?}"))
            .unwrap_or_default();
        *self.seen.lock().unwrap() = Seen {
            path: http.path.clone(),
            context: attributes.context_extensions,
            source,
            protocol: http.protocol.clone(),
            body: http.body.clone(),
            raw_body: http.raw_body.clone(),
            partial: http.headers.get("x-envoy-auth-partial-body").cloned(),
            size: http.size,
        };
        let sesame = |b: &[u8]| b.starts_with(b"open sesame");
        let ok = |code| rpc::Status {
            code,
            ..Default::default()
        };
        let allowed = http.path.starts_with("/allow")
            || http.path.starts_with("/test.Echo/")
            || (http.path.starts_with("/body")
                && (sesame(http.body.as_bytes()) || sesame(&http.raw_body)));
        let response = if allowed {
            CheckResponse {
                status: Some(ok(0)),
                http_response: Some(check_response::HttpResponse::OkResponse(OkHttpResponse {
                    headers: vec![header("x-user", "alice")],
                    headers_to_remove: vec!["x-drop".into()],
                    ..Default::default()
                })),
                ..Default::default()
            }
        } else if http.path.starts_with("/deny") {
            CheckResponse {
                status: Some(ok(7)),
                http_response: Some(check_response::HttpResponse::DeniedResponse(
                    DeniedHttpResponse {
                        status: Some(HttpStatus { code: 401 }),
                        headers: vec![header("www-authenticate", "Bearer")],
                        body: "log in first\n".into(),
                    },
                )),
                ..Default::default()
            }
        } else {
            if http.path.starts_with("/slow") {
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            CheckResponse {
                status: Some(ok(16)),
                ..Default::default()
            }
        };
        Ok(tonic::Response::new(response))
    }
}

/// Serve `server` on `listener` until the returned task is aborted.
fn serve_grpc(server: AllowList, listener: std::net::TcpListener) -> tokio::task::JoinHandle<()> {
    listener.set_nonblocking(true).unwrap();
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    tokio::spawn(async move {
        let incoming = tokio_stream_of(listener);
        let _ = tonic::transport::Server::builder()
            .add_service(AuthorizationServer::new(server))
            .serve_with_incoming(incoming)
            .await;
    })
}

/// An [`AllowList`] served on a loopback port: its address, the server
/// (to read what it saw), and the task serving it.
fn allow_list() -> (SocketAddr, AllowList, tokio::task::JoinHandle<()>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let target = listener.local_addr().unwrap();
    let server = AllowList::default();
    let serving = serve_grpc(server.clone(), listener);
    (target, server, serving)
}

/// The accepted connections of `listener`, as tonic takes them.
fn tokio_stream_of(
    listener: tokio::net::TcpListener,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    futures::stream::unfold(listener, |l| async move {
        let next = l.accept().await.map(|(s, _)| s);
        Some((next, l))
    })
}

fn web_and_open_routes(backend: SocketAddr) -> String {
    let opted_out = route("ns", "open", &[("rev-a", 100, None)]).replace(
        "metadata: {name: open, namespace: ns}",
        "metadata: {name: open, namespace: ns, annotations: {knative-gateway.dev/ext-authz: disabled}}",
    );
    route("ns", "web", &[("rev-a", 100, None)]) + &opted_out + &slice("ns", "rev-a", &[backend])
}

async fn get(addr: SocketAddr, host: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut req = http::Request::get(format!("http://{addr}{path}")).header("host", host);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    HttpClient::new()
        .send(req.body(Full::<Bytes>::default()).unwrap())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_allows_with_headers_denies_with_the_servers_answer_and_skips_what_it_should() {
    let b = Backend::start("rev-a").await;
    let (target, server, _serving) = allow_list();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let gw = Gateway::serve_with(
        &web_and_open_routes(b.addr),
        closed(),
        &[
            "--extauthz-host",
            &target.to_string(),
            "--access-log",
            log.to_str().unwrap(),
        ],
    )
    .await;
    let checks = || server.checks.load(Ordering::Relaxed);

    // Allowed, over HTTP/1.1 and h2c: the server's header set, its removal
    // done, what it was told.
    let sent = [("x-user", "forged"), ("x-drop", "secret")];
    let h1 = get(gw.http, "web.ns.example.com", "/allow", &sent).await;
    let h2 = H2cClient::connect(gw.http)
        .await
        .get_with("web.ns.example.com", "/allow-h2", &sent)
        .await
        .unwrap();
    for (what, r) in [("HTTP/1.1", &h1), ("h2c", &h2)] {
        assert_eq!((r.status, r.body.as_str()), (200, "rev-a"), "{what}");
        assert_eq!(r.header("x-echo-x-user"), "alice", "{what}");
        assert_eq!(r.header("x-echo-x-drop"), "", "{what}");
    }
    assert_eq!(checks(), 2);
    let seen = server.seen.lock().unwrap().clone();
    assert_eq!(seen.path, "/allow-h2");
    assert_eq!(seen.protocol, "HTTP/2");
    assert_eq!(seen.context["client"], "knative-gateway");
    assert_eq!(seen.context["visibility"], "ExternalIP");
    assert!(seen.source.contains("127.0.0.1"), "{seen:?}");

    // Denied: the server's status, header and body; the backend never asked.
    let hits = b.hits();
    let denied = get(gw.http, "web.ns.example.com", "/deny", &[]).await;
    assert_eq!(denied.status, 401);
    assert_eq!(denied.header("www-authenticate"), "Bearer");
    assert_eq!(denied.body, "log in first\n");
    let refused = get(gw.http, "web.ns.example.com", "/other", &[]).await;
    assert_eq!(refused.status, 403);
    assert_eq!(b.hits(), hits);

    // Never asked: an object opted out, Knative's probe, a host no route has.
    let before = checks();
    let open = get(gw.http, "open.ns.example.com", "/other", &[]).await;
    assert_eq!((open.status, open.body.as_str()), (200, "rev-a"));
    let probe = get(
        gw.http,
        "web.ns.example.com",
        "/healthz",
        &[("k-network-probe", "probe")],
    )
    .await;
    // Routes mode answers probes itself (404: no KIngress serves the host);
    // either way, not the authorization server's 403.
    assert_eq!(probe.status, 404);
    let missing = get(gw.http, "nobody.example.com", "/allow", &[]).await;
    assert_eq!(missing.status, 404);
    assert_eq!(checks(), before);

    // Counted, and in the access log.
    let allowed = gw
        .metric("gateway_authz_checks_total{outcome=\"allowed\"}")
        .await;
    let denied = gw
        .metric("gateway_authz_checks_total{outcome=\"denied\"}")
        .await;
    assert_eq!((allowed, denied), (Some(2.0), Some(2.0)));
    let lines = access_log_lines(&log, 7).await;
    let authz_of = |path: &str| {
        lines
            .iter()
            .find(|l| l["path"] == path)
            .map(|l| l["authz"].clone())
            .unwrap()
    };
    assert_eq!(authz_of("/allow"), "allowed");
    assert_eq!(authz_of("/deny"), "denied");
    assert!(authz_of("/healthz").is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_down_slow_or_back_is_met_by_the_failure_mode() {
    let b = Backend::start("rev-a").await;
    // A port nothing listens on yet.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let target = listener.local_addr().unwrap();
    drop(listener);
    let snap = web_and_open_routes(b.addr);
    let common = ["--extauthz-timeout", "300ms"];
    let target_flag = format!("--extauthz-host={target}");
    let closed_gw =
        Gateway::serve_with(&snap, closed(), &[&target_flag, common[0], common[1]]).await;
    let open_gw = Gateway::serve_with(
        &snap,
        closed(),
        &[
            &target_flag,
            common[0],
            common[1],
            "--extauthz-failure-mode-allow",
        ],
    )
    .await;

    // Down: closed says 403, open lets it through.
    let r = get(closed_gw.http, "web.ns.example.com", "/allow", &[]).await;
    assert_eq!(r.status, 403);
    let r = get(open_gw.http, "web.ns.example.com", "/deny", &[]).await;
    assert_eq!((r.status, r.body.as_str()), (200, "rev-a"));
    assert_eq!(
        closed_gw
            .metric("gateway_authz_checks_total{outcome=\"error\"}")
            .await,
        Some(1.0)
    );

    // Back: the server's answers again, without a restart.
    let listener = std::net::TcpListener::bind(target).unwrap();
    let server = AllowList::default();
    let _serving = serve_grpc(server.clone(), listener);
    eventually(10, "the server reached again", || async {
        get(closed_gw.http, "web.ns.example.com", "/allow", &[])
            .await
            .status
            == 200
    })
    .await;
    let r = get(open_gw.http, "web.ns.example.com", "/deny", &[]).await;
    assert_eq!(r.status, 401);

    // Slow: past the timeout the failure mode answers, and a request that
    // needs no check is not held behind it.
    let started = std::time::Instant::now();
    let slow = tokio::spawn({
        let addr = closed_gw.http;
        async move { get(addr, "web.ns.example.com", "/slow", &[]).await }
    });
    let open = get(closed_gw.http, "open.ns.example.com", "/", &[]).await;
    assert_eq!(open.status, 200);
    assert_eq!(slow.await.unwrap().status, 403);
    // The 2 s answer was not waited for (the timeout is 300 ms).
    assert!(started.elapsed() < Duration::from_millis(1900));
}

/// What the HTTP authorization server was asked.
#[derive(Debug, Clone, PartialEq)]
struct Asked {
    path: String,
    client: String,
    body: String,
    /// `x-envoy-auth-partial-body`, if sent.
    partial: Option<String>,
}

impl Asked {
    fn bodiless(path: &str) -> Asked {
        Asked {
            path: path.into(),
            client: "knative-gateway".into(),
            body: String::new(),
            partial: None,
        }
    }
}

/// An HTTP authorization server: `<prefix>/success...` passes, anything
/// else gets 403 with a body and a header. Records what it was asked.
async fn http_server(prefix: &'static str) -> (SocketAddr, Arc<Mutex<Vec<Asked>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let log = log.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let log = log.clone();
                    async move {
                        let header = |name: &str| {
                            req.headers()
                                .get(name)
                                .map(|v| v.to_str().unwrap().to_owned())
                        };
                        let path = req.uri().path().to_owned();
                        let client = header("client").unwrap_or_default();
                        let partial = header("x-envoy-auth-partial-body");
                        let body = http_body_util::BodyExt::collect(req.into_body())
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        let body = String::from_utf8_lossy(&body).into_owned();
                        log.lock().unwrap().push(Asked {
                            path: path.clone(),
                            client,
                            body,
                            partial,
                        });
                        let allowed = path.starts_with(&format!("{prefix}/success"));
                        let resp = if allowed {
                            hyper::Response::new(Full::<Bytes>::default())
                        } else {
                            hyper::Response::builder()
                                .status(403)
                                .header("x-reason", "not on the list")
                                .body(Full::new(Bytes::from_static(b"forbidden here\n")))
                                .unwrap()
                        };
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_mode_sends_the_path_after_the_prefix_and_passes_a_denial_on() {
    let b = Backend::start("rev-a").await;
    let (target, seen) = http_server("/authz").await;
    let gw = Gateway::serve_with(
        &web_and_open_routes(b.addr),
        closed(),
        &[
            "--extauthz-host",
            &target.to_string(),
            "--extauthz-protocol",
            "http",
            "--extauthz-path-prefix",
            "/authz",
        ],
    )
    .await;
    let ok = get(gw.http, "web.ns.example.com", "/success?x=1", &[]).await;
    assert_eq!((ok.status, ok.body.as_str()), (200, "rev-a"));
    let hits = b.hits();
    let no = get(gw.http, "web.ns.example.com", "/private", &[]).await;
    assert_eq!(no.status, 403);
    assert_eq!(no.header("x-reason"), "not on the list");
    assert_eq!(no.body, "forbidden here\n");
    assert_eq!(b.hits(), hits);
    // A body goes to the server as the body of its request.
    let posted = post(gw.http, "/success/form", b"a=1&b=2", false).await;
    assert_eq!((posted.status, posted.body.as_str()), (200, "rev-a"));
    let mut with_body = Asked::bodiless("/authz/success/form");
    with_body.body = "a=1&b=2".into();
    with_body.partial = Some("false".into());
    assert_eq!(
        *seen.lock().unwrap(),
        [
            Asked::bodiless("/authz/success"),
            Asked::bodiless("/authz/private"),
            with_body,
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_mode_checks_the_servers_certificate() {
    let b = Backend::start("rev-a").await;
    let (plain, seen) = http_server("").await;
    let ca = TestCa::new();
    let (crt, key, _) = ca.leaf(&["127.0.0.1"]);
    let front = TlsFront::start(plain, &crt, &key);
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.pem).unwrap();
    let snap = web_and_open_routes(b.addr);
    let target = format!("--extauthz-host={}", front.addr);
    let trusted = Gateway::serve_with(
        &snap,
        closed(),
        &[
            &target,
            "--extauthz-protocol=https",
            &format!("--extauthz-ca-file={}", ca_file.display()),
        ],
    )
    .await;
    let ok = get(trusted.http, "web.ns.example.com", "/success", &[]).await;
    assert_eq!((ok.status, ok.body.as_str()), (200, "rev-a"));
    let no = get(trusted.http, "web.ns.example.com", "/private", &[]).await;
    assert_eq!((no.status, no.body.as_str()), (403, "forbidden here\n"));
    assert_eq!(seen.lock().unwrap().len(), 2);
    assert!(front.handshakes() >= 1);

    // Against the system's roots the test CA is unknown: no check is
    // answered, and the failure mode (closed) refuses.
    let untrusted =
        Gateway::serve_with(&snap, closed(), &[&target, "--extauthz-protocol=https"]).await;
    let r = get(untrusted.http, "web.ns.example.com", "/success", &[]).await;
    assert_eq!((r.status, r.body.as_str()), (403, ""));
    assert_eq!(
        untrusted
            .metric("gateway_authz_checks_total{outcome=\"error\"}")
            .await,
        Some(1.0)
    );
    assert_eq!(seen.lock().unwrap().len(), 2);

    // A CA file that is not one stops the start, naming it.
    let err = start_fails(&[
        &target,
        "--extauthz-protocol=https",
        "--extauthz-ca-file=/nonexistent/ca.pem",
    ]);
    assert!(
        err.contains("--extauthz-ca-file /nonexistent/ca.pem: cannot read it"),
        "{err}"
    );
}

/// A KIngress of this gateway's class for `kweb.example.com`, with an ACME
/// HTTP-01 path and a catch-all, both to Service `svc-a` at `backend`.
fn kingress_with_acme(backend: SocketAddr) -> String {
    format!(
        "apiVersion: networking.internal.knative.dev/v1alpha1\nkind: Ingress\nmetadata:\n  name: kweb\n  namespace: ns\n  labels: {{serving.knative.dev/route: kweb, team: payments}}\n  annotations: {{networking.knative.dev/ingress.class: knative-gateway.ingress.networking.knative.dev}}\nspec:\n  rules:\n  - hosts: [kweb.example.com]\n    visibility: ExternalIP\n    http:\n      paths:\n      - path: /.well-known/acme-challenge/\n        splits: [{{serviceName: svc-a, serviceNamespace: ns, servicePort: 80}}]\n      - splits: [{{serviceName: svc-a, serviceNamespace: ns, servicePort: 80}}]\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: svc-a, namespace: ns}}\nspec: {{ports: [{{name: http, port: 80, targetPort: {port}}}]}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: svc-a-x, namespace: ns, labels: {{kubernetes.io/service-name: svc-a}}}}\nports: [{{name: http, port: {port}}}]\nendpoints: [{{addresses: [\"{ip}\"]}}]\n---\n",
        port = backend.port(),
        ip = backend.ip()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn knatives_probes_and_acme_challenges_are_never_checked() {
    let b = Backend::start("rev-a").await;
    let (target, server, _serving) = allow_list();
    let gw = Gateway::serve_with(
        &kingress_with_acme(b.addr),
        closed(),
        &["--extauthz-host", &target.to_string()],
    )
    .await;
    // Checked: the server's list refuses this path.
    let other = get(gw.http, "kweb.example.com", "/other", &[]).await;
    assert_eq!(other.status, 403);
    assert_eq!(server.checks.load(Ordering::Relaxed), 1);
    // The KIngress's labels are context extensions, as Kourier sends them.
    let context = server.seen.lock().unwrap().context.clone();
    assert_eq!(context["team"], "payments");
    assert_eq!(context["serving.knative.dev/route"], "kweb");
    assert_eq!(context["client"], "knative-gateway");
    assert_eq!(context["visibility"], "ExternalIP");
    // Knative's probe reaches queue-proxy (here the backend) unchecked.
    let probe = get(
        gw.http,
        "kweb.example.com",
        "/healthz",
        &[("k-network-probe", "probe")],
    )
    .await;
    assert_eq!(probe.status, 200);
    // So does an HTTP-01 challenge under the KIngress's ACME path.
    let acme = get(
        gw.http,
        "kweb.example.com",
        "/.well-known/acme-challenge/tok",
        &[],
    )
    .await;
    assert_eq!((acme.status, acme.body.as_str()), (200, "rev-a"));
    assert_eq!(server.checks.load(Ordering::Relaxed), 1);
}

/// FNV-1a of `bytes`: enough to tell a body that arrived whole.
fn checksum(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

/// A backend that reads each request's body and answers `<length>
/// <checksum>`, with the `Expect` it was sent as `x-seen-expect`.
async fn body_backend() -> (SocketAddr, Arc<AtomicU64>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicU64::new(0));
    let counted = hits.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let hits = counted.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    hits.fetch_add(1, Ordering::Relaxed);
                    async move {
                        let expect = req
                            .headers()
                            .get("expect")
                            .map_or("", |v| v.to_str().unwrap())
                            .to_owned();
                        let body = http_body_util::BodyExt::collect(req.into_body())
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        let text = format!("{} {:08x}", body.len(), checksum(&body));
                        Ok::<_, Infallible>(
                            hyper::Response::builder()
                                .header("x-seen-expect", expect)
                                .body(Full::new(Bytes::from(text)))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, hits)
}

/// POST `body` to `path` of `web.ns.example.com` over HTTP/1.1 (or h2c).
async fn post(addr: SocketAddr, path: &str, body: &[u8], h2c: bool) -> Reply {
    let body = Full::new(Bytes::copy_from_slice(body));
    if h2c {
        let req = http::Request::post(format!("http://web.ns.example.com{path}"))
            .version(http::Version::HTTP_2)
            .body(body)
            .unwrap();
        return H2cClient::connect(addr).await.send(req).await.unwrap();
    }
    let req = http::Request::post(format!("http://{addr}{path}"))
        .header("host", "web.ns.example.com")
        .body(body)
        .unwrap();
    HttpClient::new().send(req).await.unwrap()
}

/// `len` bytes of text that start with `start`, then a pattern.
fn long_body(start: &[u8], len: usize) -> Vec<u8> {
    let mut body = start.to_vec();
    body.extend((0..len - start.len()).map(|i| b'a' + (i % 26) as u8));
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_sees_the_body_up_to_the_limit_and_the_backend_all_of_it() {
    let (backend, hits) = body_backend().await;
    let (target, server, _serving) = allow_list();
    let gw = Gateway::serve_with(
        &web_and_open_routes(backend),
        closed(),
        &[
            "--extauthz-host",
            &target.to_string(),
            "--extauthz-max-request-body-bytes",
            "1000",
        ],
    )
    .await;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let seen = || server.seen.lock().unwrap().clone();
    let answer = |body: &[u8]| format!("{} {:08x}", body.len(), checksum(body));

    for h2c in [false, true] {
        // Short: all of it, not partial, and its size.
        let r = post(gw.http, "/body", b"open sesame", h2c).await;
        assert_eq!((r.status, r.body.clone()), (200, answer(b"open sesame")));
        let s = seen();
        assert_eq!(s.body, "open sesame", "h2c {h2c}");
        assert_eq!(s.partial.as_deref(), Some("false"), "h2c {h2c}");
        assert!(s.raw_body.is_empty());
        if !h2c {
            assert_eq!(s.size, 11);
        }

        // Long (300 KB, past pingora's 64 KiB read): the first 1000 bytes,
        // marked partial; the backend gets every byte, in order.
        let long = long_body(b"open sesame", 300_000);
        let r = post(gw.http, "/body-long", &long, h2c).await;
        assert_eq!(
            (r.status, r.body.clone()),
            (200, answer(&long)),
            "h2c {h2c}"
        );
        let s = seen();
        assert_eq!(s.body.as_bytes(), &long[..1000], "h2c {h2c}");
        assert_eq!(s.partial.as_deref(), Some("true"), "h2c {h2c}");

        // Denied on what the body says: the backend never sees it.
        let before = hits.load(Ordering::Relaxed);
        let r = post(gw.http, "/body", &long_body(b"let me in", 50_000), h2c).await;
        assert_eq!(r.status, 403, "h2c {h2c}");
        assert_eq!(hits.load(Ordering::Relaxed), before);
    }

    // A body that arrives in two parts, the first shorter than the limit
    // and the second longer than one read: what was read for the server
    // and what followed both reach the backend.
    let long = long_body(b"open sesame", 200_000);
    let mut conn = tokio::net::TcpStream::connect(gw.http).await.unwrap();
    let head = format!(
        "POST /body-parts HTTP/1.1\r\nHost: web.ns.example.com\r\nContent-Length: {}\r\n\r\n",
        long.len()
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    conn.write_all(&long[..500]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    conn.write_all(&long[500..]).await.unwrap();
    let reply = read_answer(&mut conn).await;
    assert!(reply.starts_with("HTTP/1.1 200 "), "{reply}");
    assert!(reply.ends_with(&answer(&long)), "{reply}");
    assert_eq!(seen().body.as_bytes(), &long[..1000]);

    // No body: none sent, no partial marker.
    let r = get(gw.http, "web.ns.example.com", "/allow", &[]).await;
    assert_eq!(r.status, 200);
    let s = seen();
    assert_eq!((s.body.as_str(), s.partial), ("", None));

    // A chunked body after `Expect: 100-continue`: the gateway says
    // continue, reads what the server is to see, and the backend gets the
    // whole body without the `Expect` (already answered).
    let mut conn = tokio::net::TcpStream::connect(gw.http).await.unwrap();
    conn.write_all(
        b"POST /body HTTP/1.1\r\nHost: web.ns.example.com\r\n\
          Transfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf))
        .await
        .expect("a 100 Continue")
        .unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 100 Continue\r\n"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    conn.write_all(b"b\r\nopen sesame\r\n6\r\n, too!\r\n0\r\n\r\n")
        .await
        .unwrap();
    let mut reply = Vec::new();
    let expected = answer(b"open sesame, too!");
    while !String::from_utf8_lossy(&reply).contains(&expected) {
        let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf))
            .await
            .expect("the answer")
            .unwrap();
        assert!(n > 0, "closed: {:?}", String::from_utf8_lossy(&reply));
        reply.extend_from_slice(&buf[..n]);
    }
    let reply = String::from_utf8_lossy(&reply).to_lowercase();
    assert!(reply.starts_with("http/1.1 200"), "{reply}");
    assert!(reply.contains("x-seen-expect: \r\n"), "{reply}");
    assert_eq!(seen().body, "open sesame, too!");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pack_as_bytes_sends_a_binary_body_as_it_is_and_zero_sends_none() {
    let (backend, _) = body_backend().await;
    let (target, server, _serving) = allow_list();
    let snap = web_and_open_routes(backend);
    let target_flag = format!("--extauthz-host={target}");
    let packed =
        Gateway::serve_with(&snap, closed(), &[&target_flag, "--extauthz-pack-as-bytes"]).await;
    let binary: Vec<u8> = b"open sesame\xff\xfe\x00\x01".to_vec();
    let r = post(packed.http, "/body", &binary, false).await;
    assert_eq!(r.status, 200);
    let s = server.seen.lock().unwrap().clone();
    assert_eq!((s.raw_body, s.body.as_str()), (binary.clone(), ""));

    let none = Gateway::serve_with(
        &snap,
        closed(),
        &[&target_flag, "--extauthz-max-request-body-bytes=0"],
    )
    .await;
    // The server sees no body, so it refuses; the body is not waited for.
    let r = post(none.http, "/body", b"open sesame", false).await;
    assert_eq!(r.status, 403);
    let s = server.seen.lock().unwrap().clone();
    assert_eq!((s.body.as_str(), s.partial), ("", None));

    // Packing applies to gRPC only, as in Kourier.
    let err = start_fails(&[
        "--extauthz-host=127.0.0.1:9",
        "--extauthz-protocol=http",
        "--extauthz-pack-as-bytes",
    ]);
    assert!(
        err.contains("--extauthz-pack-as-bytes applies to --extauthz-protocol grpc only"),
        "{err}"
    );
}

/// Read one HTTP/1.1 answer with a `Content-Length` from `conn`.
async fn read_answer(conn: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&got).to_lowercase();
        if let Some(head_end) = text.find("\r\n\r\n") {
            let length: usize = text
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .map_or(0, |v| v.trim().parse().unwrap());
            if got.len() >= head_end + 4 + length {
                return String::from_utf8_lossy(&got).into_owned();
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf))
            .await
            .expect("an answer")
            .unwrap();
        assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fast_path_asks_as_the_general_path_does_and_a_denial_keeps_the_connection() {
    use tokio::io::AsyncWriteExt;
    let b = Backend::start("rev-a").await;
    let (target, server, _serving) = allow_list();
    let gw = Gateway::serve_with(
        &web_and_open_routes(b.addr),
        closed(),
        &["--extauthz-host", &target.to_string()],
    )
    .await;

    // Plain HTTP/1.1 requests, checked or opted out, are served by the fast
    // path, which asks the server as the general path does (the other
    // tests' h2c requests and long bodies take the general path).
    let served = gw.fast_path_requests("served").await;
    let handed = gw.fast_path_requests("handed_over").await;
    for _ in 0..3 {
        let r = get(gw.http, "open.ns.example.com", "/x", &[]).await;
        assert_eq!((r.status, r.body.as_str()), (200, "rev-a"));
    }
    let sent = [("x-user", "forged"), ("x-drop", "secret")];
    let r = get(gw.http, "web.ns.example.com", "/allow", &sent).await;
    assert_eq!((r.status, r.header("x-echo-x-user")), (200, "alice"));
    assert_eq!(r.header("x-echo-x-drop"), "");
    let r = get(gw.http, "web.ns.example.com", "/deny", &[]).await;
    assert_eq!((r.status, r.body.as_str()), (401, "log in first\n"));
    assert_eq!(r.header("www-authenticate"), "Bearer");
    // Counted once the answer is written: a moment after the client has it.
    eventually(5, "five requests served by the fast path", || async {
        gw.fast_path_requests("served").await == served + 5
    })
    .await;
    assert_eq!(gw.fast_path_requests("handed_over").await, handed);
    assert_eq!(server.checks.load(Ordering::Relaxed), 2);

    // Denied, then allowed and then opted out, on one connection.
    let mut conn = tokio::net::TcpStream::connect(gw.http).await.unwrap();
    for (path, host, status, body) in [
        ("/deny", "web", "401", "log in first\n"),
        ("/allow", "web", "200", "rev-a"),
        ("/deny", "open", "200", "rev-a"),
    ] {
        let req = format!("GET {path} HTTP/1.1\r\nHost: {host}.ns.example.com\r\n\r\n");
        conn.write_all(req.as_bytes()).await.unwrap();
        let answer = read_answer(&mut conn).await;
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status} ")),
            "{path}: {answer}"
        );
        assert!(answer.ends_with(body), "{path}: {answer}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_is_waited_for_no_longer_than_the_timeout_and_a_grpc_stream_not_at_all() {
    use tokio::io::AsyncWriteExt;
    let (backend, _) = body_backend().await;
    let (grpc, _grpc_task) = grpc_backend("rev-g").await;
    let (target, server, _serving) = allow_list();
    let grpc_slice = format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: rev-g-private\n  namespace: ns\n  labels: {{serving.knative.dev/revision: rev-g, networking.internal.knative.dev/serviceType: Private}}\nports: [{{name: http2, port: {}}}]\nendpoints: [{{addresses: [\"127.0.0.1\"]}}]\n---\n",
        grpc.port()
    );
    let snap =
        web_and_open_routes(backend) + &route("ns", "chat", &[("rev-g", 100, None)]) + &grpc_slice;
    let gw = Gateway::serve_with(
        &snap,
        closed(),
        &[
            "--extauthz-host",
            &target.to_string(),
            "--extauthz-timeout",
            "300ms",
        ],
    )
    .await;

    // A client that sends 11 bytes of 100 and stops: after the timeout the
    // check goes with them, marked partial; the rest, sent later, still
    // reaches the backend.
    let mut conn = tokio::net::TcpStream::connect(gw.http).await.unwrap();
    conn.write_all(
        b"POST /body HTTP/1.1\r\nHost: web.ns.example.com\r\nContent-Length: 100\r\n\r\nopen sesame",
    )
    .await
    .unwrap();
    eventually(5, "the check with a partial body", || async {
        server.seen.lock().unwrap().partial.is_some()
    })
    .await;
    let s = server.seen.lock().unwrap().clone();
    assert_eq!(
        (s.body.as_str(), s.partial.as_deref()),
        ("open sesame", Some("true"))
    );
    let rest = [b'x'; 89];
    conn.write_all(&rest).await.unwrap();
    let reply = read_answer(&mut conn).await;
    let mut whole = b"open sesame".to_vec();
    whole.extend_from_slice(&rest);
    assert!(
        reply.ends_with(&format!("100 {:08x}", checksum(&whole))),
        "{reply}"
    );

    // A gRPC stream sends one message and waits for its answer: checked
    // at once, without its body (no partial marker: none was waited for).
    assert_eq!(grpc_chat(gw.http, "chat.ns.example.com", 3).await, "rev-g");
    let s = server.seen.lock().unwrap().clone();
    assert_eq!((s.path.as_str(), s.partial), ("/test.Echo/Chat", None));
}
