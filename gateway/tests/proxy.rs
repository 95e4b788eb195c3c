//! End to end through the real gateway binary, with real backends on loopback.

mod common;

use std::time::Duration;

use common::*;

fn assert_share(
    counts: &std::collections::HashMap<String, usize>,
    body: &str,
    total: usize,
    percent: f64,
) {
    let got = *counts.get(body).unwrap_or(&0) as f64 * 100.0 / total as f64;
    assert!(
        (got - percent).abs() <= 3.0,
        "{body}: {got:.2}% observed, {percent}% configured; {counts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_90_10_within_3_points_over_10000_requests() {
    let (a, b) = (Backend::start("rev-a").await, Backend::start("rev-b").await);
    let snap = route("ns", "web", &[("rev-a", 90, None), ("rev-b", 10, None)])
        + &slice("ns", "rev-a", &[a.addr])
        + &slice("ns", "rev-b", &[b.addr]);
    let gw = Gateway::start(&snap, closed()).await;
    let counts = count_bodies(gw.http, "web.ns.example.com", 10_000, 8).await;
    assert_share(&counts, "rev-a", 10_000, 90.0);
    assert_share(&counts, "rev-b", 10_000, 10.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_way_split_and_a_zero_percent_entry_never_picked() {
    let weights = [1, 2, 3, 4, 5, 10, 15, 20, 20, 20];
    let mut backends = Vec::new();
    let mut traffic = Vec::new();
    let names: Vec<String> = (0..11).map(|i| format!("rev-{i}")).collect();
    for (i, w) in weights.iter().enumerate() {
        traffic.push((names[i].as_str(), *w as i64, None));
    }
    traffic.push((names[10].as_str(), 0, Some("zero")));
    let mut snap = route("ns", "ten", &traffic);
    for name in &names {
        let b = Backend::start(name).await;
        snap += &slice("ns", name, &[b.addr]);
        backends.push(b);
    }
    let gw = Gateway::start(&snap, closed()).await;
    let counts = count_bodies(gw.http, "ten.ns.example.com", 10_000, 8).await;
    for (i, w) in weights.iter().enumerate() {
        assert_share(&counts, &names[i], 10_000, *w as f64);
    }
    assert_eq!(
        backends[10].hits(),
        0,
        "the 0% revision got traffic: {counts:?}"
    );
    // Its tag host still reaches it.
    let r = HttpClient::new()
        .get(gw.http, "zero-ten.ns.example.com")
        .await
        .unwrap();
    assert_eq!(r.body, "rev-10");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_hosts_and_cluster_local_names_in_any_case_with_port_or_trailing_dot() {
    let (a, b) = (Backend::start("rev-a").await, Backend::start("rev-b").await);
    let snap = route(
        "ns",
        "web",
        &[("rev-a", 100, Some("stable")), ("rev-b", 0, Some("canary"))],
    ) + &slice("ns", "rev-a", &[a.addr])
        + &slice("ns", "rev-b", &[b.addr]);
    let gw = Gateway::start(&snap, closed()).await;
    let c = HttpClient::new();
    let public = [
        ("web.ns.example.com", "rev-a"),
        ("WEB.ns.Example.COM:8080", "rev-a"),
        ("web.ns.example.com.", "rev-a"),
        ("canary-web.ns.example.com", "rev-b"),
        ("stable-web.ns.example.com", "rev-a"),
    ];
    let cluster_names = [
        ("web.ns", "rev-a"),
        ("web.ns.svc", "rev-a"),
        ("web.ns.svc.cluster.local", "rev-a"),
        ("canary-web.ns", "rev-b"),
        ("canary-web.ns.svc", "rev-b"),
        ("canary-web.ns.svc.cluster.local:80", "rev-b"),
    ];
    // Public hosts answer on both listeners; cluster names only on the internal one.
    for (listener, cases) in [
        (gw.http, &public[..]),
        (gw.internal, &public[..]),
        (gw.internal, &cluster_names[..]),
    ] {
        for (host, want) in cases {
            let r = c.get(listener, host).await.unwrap();
            assert_eq!(
                (r.status, r.body.as_str()),
                (200, *want),
                "{host} on {listener}"
            );
            assert_eq!(
                r.header("x-seen-host"),
                *host,
                "the original Host reaches the backend"
            );
        }
    }
    for (host, _) in cluster_names {
        assert_eq!(
            c.get(gw.http, host).await.unwrap().status,
            404,
            "{host} on the external listener"
        );
    }
    assert_eq!(
        c.get(gw.http, "other.ns.example.com").await.unwrap().status,
        404
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_local_routes_answer_only_on_the_internal_listener() {
    let a = Backend::start("rev-a").await;
    let labelled = route("ns", "private", &[("rev-a", 100, None)]).replace(
        "namespace: ns}",
        "namespace: ns, labels: {networking.knative.dev/visibility: cluster-local}}",
    );
    let svc_url = route("ns", "local", &[("rev-a", 100, Some("t"))])
        .replace("local.ns.example.com", "local.ns.svc.cluster.local");
    let snap = labelled
        + &svc_url
        + &route("ns", "public", &[("rev-a", 100, None)])
        + &slice("ns", "rev-a", &[a.addr]);
    let gw = Gateway::start(&snap, closed()).await;
    let c = HttpClient::new();
    for host in [
        "private.ns.example.com",
        "local.ns.svc.cluster.local",
        "t-local.ns.svc.cluster.local",
    ] {
        assert_eq!(
            c.get(gw.http, host).await.unwrap().status,
            404,
            "{host} external"
        );
        assert_eq!(
            c.get(gw.internal, host).await.unwrap().body,
            "rev-a",
            "{host} internal"
        );
    }
    assert_eq!(
        c.get(gw.http, "public.ns.example.com").await.unwrap().body,
        "rev-a"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_knative_headers_are_overwritten() {
    let a = Backend::start("rev-a").await;
    let snap = route("ns", "web", &[("rev-a", 100, None)]) + &slice("ns", "rev-a", &[a.addr]);
    let gw = Gateway::start(&snap, closed()).await;
    let r = HttpClient::new()
        .get_with(
            gw.http,
            "web.ns.example.com",
            &[
                ("Knative-Serving-Revision", "evil"),
                ("knative-serving-revision", "evil2"),
                ("Knative-Serving-Namespace", "kube-system"),
            ],
        )
        .await
        .unwrap();
    assert_eq!(r.header("x-seen-revision"), "rev-a");
    assert_eq!(r.header("x-seen-namespace"), "ns");
}

/// `--source routes`: a revision whose private EndpointSlice names its port
/// `http2` (Knative's name when the container asks for h2c) is reached over
/// HTTP/2 cleartext; one with an `http` port over HTTP/1.1. Clients speak
/// either on the same port, and WebSocket upgrades go out as HTTP/1.1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revisions_with_an_http2_port_are_reached_over_h2c() {
    let (a, b) = (
        Backend::start("rev-h2").await,
        Backend::start("rev-h1").await,
    );
    let h2_slice = format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: rev-h2-private\n  namespace: ns\n  labels: {{serving.knative.dev/revision: rev-h2, networking.internal.knative.dev/serviceType: Private}}\nports: [{{name: http2, port: {}}}]\nendpoints: [{{addresses: [\"127.0.0.1\"]}}]\n---\n",
        a.addr.port()
    );
    let snap = route("ns", "grpc", &[("rev-h2", 100, None)])
        + &route("ns", "web", &[("rev-h1", 100, None)])
        + &h2_slice
        + &slice("ns", "rev-h1", &[b.addr]);
    let gw = Gateway::start(&snap, closed()).await;
    let r = HttpClient::new()
        .get(gw.http, "grpc.ns.example.com")
        .await
        .unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "rev-h2"));
    assert_eq!(r.header("x-seen-version"), "HTTP/2.0");
    assert_eq!(r.header("x-seen-revision"), "rev-h2");
    let h2 = H2cClient::connect(gw.http).await;
    let r = h2.get("web.ns.example.com", "/").await.unwrap();
    assert_eq!((r.status, r.header("x-seen-version")), (200, "HTTP/1.1"));
    let r = h2.get("grpc.ns.example.com", "/").await.unwrap();
    assert_eq!((r.status, r.header("x-seen-version")), (200, "HTTP/2.0"));
    let routes = gw.debug_routes().await;
    let protocols: Vec<(String, String)> = routes["revisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap().to_owned(),
                r["endpoints"][0]["protocol"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(
        protocols.contains(&("rev-h2".into(), "h2c".into())),
        "{protocols:?}"
    );
    assert!(
        protocols.contains(&("rev-h1".into(), "http/1.1".into())),
        "{protocols:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_revision_goes_to_the_activator_with_both_headers() {
    let activator = Backend::start("activator").await;
    let snap = route("ns", "cold", &[("cold-1", 100, None)])
        + "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: cold-1-private\n  namespace: ns\n  labels: {serving.knative.dev/revision: cold-1, networking.internal.knative.dev/serviceType: Private}\nports: [{name: http, port: 8012}]\nendpoints: []\n";
    let gw = Gateway::start(&snap, activator.addr).await;
    let r = HttpClient::new()
        .get_with(
            gw.http,
            "cold.ns.example.com",
            &[("Knative-Serving-Revision", "other")],
        )
        .await
        .unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "activator"));
    assert_eq!(r.header("x-seen-revision"), "cold-1");
    assert_eq!(r.header("x-seen-namespace"), "ns");
    assert_eq!(r.header("x-seen-host"), "cold.ns.example.com");
    let metrics = gw.admin("/metrics").await.body;
    assert!(
        metrics.contains(r#"gateway_activator_requests_total{namespace="ns",revision="cold-1"} 1"#),
        "{metrics}"
    );
}

/// `--activator-tls` (system-internal TLS in routes mode): the activator is
/// reached over TLS, its certificate checked for `kn-routing` against the
/// trust bundle of the snapshot; another name, or no bundle, is 502 and the
/// activator never sees a plaintext request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_activator_over_tls_is_verified() {
    let ca = TestCa::new();
    let bundle = serde_norway::to_string(&ca_secret("knative-serving", &ca.pem)).unwrap();
    let cold = route("ns", "cold", &[("cold-1", 100, None)])
        + "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: cold-1-private\n  namespace: ns\n  labels: {serving.knative.dev/revision: cold-1, networking.internal.knative.dev/serviceType: Private}\nports: [{name: http, port: 8012}]\nendpoints: []\n---\n";
    let activator = Backend::start("activator").await;
    for (name, with_bundle, expect) in [
        ("kn-routing", true, 200),
        ("kn-user-ns", true, 502),
        ("kn-routing", false, 502),
    ] {
        let (crt, key, _) = ca.leaf(&[name]);
        let front = TlsFront::start(activator.addr, &crt, &key);
        let snap = if with_bundle {
            format!("{cold}{bundle}")
        } else {
            cold.clone()
        };
        let gw = Gateway::serve_with(&snap, front.addr, &["--activator-tls"]).await;
        let before = activator.hits();
        let r = HttpClient::new()
            .get(gw.http, "cold.ns.example.com")
            .await
            .unwrap();
        assert_eq!(r.status, expect, "{name}, bundle {with_bundle}: {r:?}");
        if expect == 200 {
            assert_eq!(r.body, "activator");
            assert_eq!(r.header("x-seen-revision"), "cold-1");
            assert_eq!(r.header("x-seen-namespace"), "ns");
            assert_eq!(front.handshakes(), 1);
        } else {
            assert_eq!(activator.hits(), before, "never in plaintext");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_activator_is_503_and_refusing_endpoints_are_502() {
    let snap = route("ns", "cold", &[("cold-1", 100, None)])
        + &route("ns", "dead", &[("dead-1", 100, None)])
        + &slice("ns", "dead-1", &[closed(), closed()]);
    let gw = Gateway::start(&snap, closed()).await;
    let c = HttpClient::new();
    let started = std::time::Instant::now();
    assert_eq!(
        c.get(gw.http, "cold.ns.example.com").await.unwrap().status,
        503
    );
    assert_eq!(
        c.get(gw.http, "dead.ns.example.com").await.unwrap().status,
        502
    );
    // Refused connections fail fast: nothing waits for a timeout.
    assert!(started.elapsed() < Duration::from_secs(5));
    let metrics = gw.admin("/metrics").await.body;
    assert!(
        metrics.contains(r#"gateway_upstream_connect_errors_total{upstream="activator"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"gateway_upstream_connect_errors_total{upstream="revision"} 2"#),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_is_retried_on_another_endpoint() {
    let a = Backend::start("rev-a").await;
    let snap = route("ns", "web", &[("rev-a", 100, None)])
        + &slice("ns", "rev-a", &[a.addr, closed(), closed()]);
    let gw = Gateway::start(&snap, closed()).await;
    let counts = count_bodies(gw.http, "web.ns.example.com", 300, 4).await;
    assert_eq!(counts.get("rev-a"), Some(&300));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_503_reaches_the_client_and_is_not_retried() {
    let a = Backend::with_status("busy", 503).await;
    let b = Backend::with_status("busy", 503).await;
    let snap =
        route("ns", "web", &[("rev-a", 100, None)]) + &slice("ns", "rev-a", &[a.addr, b.addr]);
    let gw = Gateway::start(&snap, closed()).await;
    let c = HttpClient::new();
    for _ in 0..20 {
        assert_eq!(
            c.get(gw.http, "web.ns.example.com").await.unwrap().status,
            503
        );
    }
    assert_eq!(a.hits() + b.hits(), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_host_is_400_and_unknown_host_is_404() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let gw = Gateway::start("", closed()).await;
    let mut s = tokio::net::TcpStream::connect(gw.http).await.unwrap();
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(
        out.starts_with("HTTP/1.1 400") || out.starts_with("HTTP/1.0 400"),
        "{out}"
    );
    let r = HttpClient::new()
        .get(gw.http, "nobody.example.com")
        .await
        .unwrap();
    assert_eq!(r.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints() {
    let a = Backend::start("rev-a").await;
    let snap = route("ns", "web", &[("rev-a", 100, Some("t"))]) + &slice("ns", "rev-a", &[a.addr]);
    let gw = Gateway::start(&snap, closed()).await;
    let c = HttpClient::new();
    assert_eq!(
        c.get(gw.http, "web.ns.example.com").await.unwrap().status,
        200
    );
    assert_eq!(
        c.get(gw.http, "nobody.ns.example.com")
            .await
            .unwrap()
            .status,
        404
    );
    assert_eq!(gw.admin("/healthz").await.status, 200);
    assert_eq!(gw.admin("/readyz").await.status, 200);
    let lines = [
        "# TYPE gateway_requests_total counter",
        r#"gateway_requests_total{code="200",namespace="ns",revision="rev-a",route="web"} 1"#,
        r#"gateway_requests_total{code="404",namespace="",revision="",route=""} 1"#,
        "gateway_table_generation 1",
        "gateway_routes 1",
        "gateway_hosts 8",
        "gateway_request_duration_seconds_count{upstream=\"revision\"} 1",
    ];
    // A request is counted when its logging hook runs, just after the client
    // has its response: the scrape may come first.
    eventually(5, "every request counted", || async {
        let m = gw.admin("/metrics").await.body;
        lines.iter().all(|line| m.contains(line))
    })
    .await;
    let m = gw.admin("/metrics").await.body;
    for line in lines {
        assert!(m.contains(line), "missing {line:?} in\n{m}");
    }
    assert!(
        m.contains("gateway_table_last_reload_timestamp_seconds "),
        "{m}"
    );
    let d = gw.debug_routes().await;
    assert_eq!(d["routes"][0]["name"], "web");
    assert_eq!(d["routes"][0]["hosts"].as_array().unwrap().len(), 8);
    assert_eq!(
        d["revisions"][0]["endpoints"][0]["address"],
        a.addr.to_string()
    );
    assert_eq!(d["ready"], true);
}

/// Sockets on this machine connected to `port` and closed by that end
/// (CLOSE_WAIT), from /proc/net/tcp.
fn half_closed_to(port: u16) -> usize {
    let text = std::fs::read_to_string("/proc/net/tcp").unwrap();
    text.lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let remote = f[2].rsplit(':').next().unwrap();
            u16::from_str_radix(remote, 16).unwrap() == port && f[3] == "08"
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_stop_at_the_gateway() {
    let a = Backend::start("rev-a").await;
    let snap = route("ns", "web", &[("rev-a", 100, None)]) + &slice("ns", "rev-a", &[a.addr]);
    let gw = Gateway::start(&snap, closed()).await;
    // One keep-alive connection throughout.
    let mut c = None;
    let host = "web.ns.example.com";
    // Without any of them, the request goes through as it is.
    let r = raw_get(&mut c, gw.http, host, "/", "X-Kept: 1\r\n")
        .await
        .unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "rev-a"));
    assert!(r.head.contains("x-echo-x-kept: 1"), "{}", r.head);
    // Each of them alone, and all of them together, stop here.
    let hop_by_hop = [
        "Keep-Alive: timeout=5",
        "Proxy-Connection: keep-alive",
        "TE: trailers",
        "Trailer: X-Checksum",
        "Proxy-Authorization: Basic Zm9vOmJhcg==",
        "Proxy-Authenticate: Basic",
        "HTTP2-Settings: AAMAAABkAAQAAP__",
    ];
    let all: String = hop_by_hop.iter().map(|h| format!("{h}\r\n")).collect();
    for extra in hop_by_hop.iter().map(|h| format!("{h}\r\n")).chain([all]) {
        let RawReply { status, head, .. } =
            raw_get(&mut c, gw.http, host, "/", &format!("{extra}X-Kept: 1\r\n"))
                .await
                .unwrap();
        assert_eq!(status, 200, "{extra}");
        assert!(head.contains("x-echo-x-kept: 1"), "{extra}: {head}");
        for h in hop_by_hop {
            let name = h.split(':').next().unwrap().to_ascii_lowercase();
            assert!(
                !head.contains(&format!("x-echo-{name}:")),
                "{name} reached the backend ({extra}): {head}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_upstream_connections_are_reused_and_closed_ones_replaced() {
    let b = RawBackend::start("counted", Duration::ZERO).await;
    let other = Backend::start("other").await;
    let snap = route("ns", "web", &[("rev-a", 100, None)])
        + &slice("ns", "rev-a", &[b.addr])
        + &route("ns", "other", &[("rev-o", 100, None)])
        + &slice("ns", "rev-o", &[other.addr]);
    let gw = Gateway::start(&snap, closed()).await;
    // One keep-alive client connection: every request lands on the gateway
    // worker thread that accepted it.
    let mut c = None;
    let mut get = async |host: &str| raw_get(&mut c, gw.http, host, "/", "").await.unwrap();
    for _ in 0..50 {
        let r = get("web.ns.example.com").await;
        assert_eq!((r.status, r.body.as_str()), (200, "counted"));
    }
    assert_eq!(
        b.accepted(),
        1,
        "50 requests in a row share one upstream connection"
    );

    // The backend now drops every connection 50 ms after answering.
    b.close_idle
        .store(true, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(get("web.ns.example.com").await.status, 200);
    for i in 0..5 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let status = get("web.ns.example.com").await.status;
        assert_eq!(
            status, 200,
            "request {i} after the idle connection was closed"
        );
    }
    assert_eq!(
        b.accepted(),
        6,
        "each closed connection was replaced, never reused"
    );

    // A closed idle connection is let go even if never asked for again: the
    // sweep on a later release (here, of another route's connection).
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(half_closed_to(b.addr.port()), 1, "the last one, idle since");
    assert_eq!(get("other.ns.example.com").await.status, 200);
    eventually(5, "the half-closed connection to be dropped", || async {
        half_closed_to(b.addr.port()) == 0
    })
    .await;
}
