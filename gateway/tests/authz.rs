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
}

/// An allow-list server: `/allow...` passes (setting `x-user`, removing
/// `x-drop`), `/deny...` gets a 401 with a body, `/slow...` answers after
/// 2 s, anything else an unauthenticated status with no answer (Envoy's
/// 403).
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
        };
        let ok = |code| rpc::Status {
            code,
            ..Default::default()
        };
        let response = if http.path.starts_with("/allow") {
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
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let target = listener.local_addr().unwrap();
    let server = AllowList::default();
    let _serving = serve_grpc(server.clone(), listener);
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

/// An HTTP authorization server: `<prefix>/success...` passes, anything
/// else gets 403 with a body and a header. Records the paths and `client`
/// headers it saw.
async fn http_server(prefix: &'static str) -> (SocketAddr, Arc<Mutex<Vec<(String, String)>>>) {
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
                    let path = req.uri().path().to_owned();
                    let client = req
                        .headers()
                        .get("client")
                        .map_or("", |v| v.to_str().unwrap())
                        .to_owned();
                    log.lock().unwrap().push((path.clone(), client));
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
                    std::future::ready(Ok::<_, Infallible>(resp))
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
    assert_eq!(
        *seen.lock().unwrap(),
        [
            ("/authz/success".to_owned(), "knative-gateway".to_owned()),
            ("/authz/private".to_owned(), "knative-gateway".to_owned()),
        ]
    );
}

/// A KIngress of this gateway's class for `kweb.example.com`, with an ACME
/// HTTP-01 path and a catch-all, both to Service `svc-a` at `backend`.
fn kingress_with_acme(backend: SocketAddr) -> String {
    format!(
        "apiVersion: networking.internal.knative.dev/v1alpha1\nkind: Ingress\nmetadata:\n  name: kweb\n  namespace: ns\n  annotations: {{networking.knative.dev/ingress.class: knative-gateway.ingress.networking.knative.dev}}\nspec:\n  rules:\n  - hosts: [kweb.example.com]\n    visibility: ExternalIP\n    http:\n      paths:\n      - path: /.well-known/acme-challenge/\n        splits: [{{serviceName: svc-a, serviceNamespace: ns, servicePort: 80}}]\n      - splits: [{{serviceName: svc-a, serviceNamespace: ns, servicePort: 80}}]\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: svc-a, namespace: ns}}\nspec: {{ports: [{{name: http, port: 80, targetPort: {port}}}]}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: svc-a-x, namespace: ns, labels: {{kubernetes.io/service-name: svc-a}}}}\nports: [{{name: http, port: {port}}}]\nendpoints: [{{addresses: [\"{ip}\"]}}]\n---\n",
        port = backend.port(),
        ip = backend.ip()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn knatives_probes_and_acme_challenges_are_never_checked() {
    let b = Backend::start("rev-a").await;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let target = listener.local_addr().unwrap();
    let server = AllowList::default();
    let _serving = serve_grpc(server.clone(), listener);
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
