//! Hot swap and bad input: the gateway keeps serving the last good table.

mod common;

use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_swapped_100_times_under_load_fails_no_request() {
    let (a, b) = (Backend::start("rev-a").await, Backend::start("rev-b").await);
    let slices = slice("ns", "rev-a", &[a.addr]) + &slice("ns", "rev-b", &[b.addr]);
    let splits = [(100, 0), (90, 10), (50, 50), (0, 100)];
    let snap = |i: usize| {
        let (pa, pb) = splits[i % splits.len()];
        // The endpoint set changes too: rev-a's slice comes and goes with its weight.
        route("ns", "web", &[("rev-a", pa, None), ("rev-b", pb, None)]) + &slices
    };
    let gw = Gateway::start(&snap(0), closed()).await;

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (stop, ok, failed, addr) = (stop.clone(), ok.clone(), failed.clone(), gw.http);
        load.push(tokio::spawn(async move {
            let c = HttpClient::new();
            // Bounded: stops when told, or after 200,000 requests per task at most.
            for _ in 0..200_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                match c.get(addr, "web.ns.example.com").await {
                    Ok(r) if r.status == 200 => ok.fetch_add(1, Ordering::Relaxed),
                    other => {
                        eprintln!("failed: {other:?}");
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        }));
    }
    let first = gw.generation().await;
    for i in 1..=100 {
        gw.reload(&snap(i)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.unwrap();
    }
    assert_eq!(gw.generation().await, first + 100);
    assert_eq!(failed.load(Ordering::Relaxed), 0);
    assert!(
        ok.load(Ordering::Relaxed) > 100,
        "load ran alongside the swaps"
    );
    // The last snapshot (i = 100 → 100/0) is the one served.
    let counts = count_bodies(gw.http, "web.ns.example.com", 50, 2).await;
    assert_eq!(counts.get("rev-a"), Some(&50));
}

#[test]
fn an_unparsable_file_at_start_exits_naming_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("broken.yaml");
    std::fs::write(&file, "kind: Route\nmetadata:\n  name: [unclosed\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["serve", "--file"])
        .arg(&file)
        .args([
            "--http",
            &format!("127.0.0.1:{}", free_port()),
            "--admin",
            &format!("127.0.0.1:{}", free_port()),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{}:4:1", file.display())), "{err}");

    let missing = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["serve", "--file", "/nonexistent/snapshot.yaml"])
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/snapshot.yaml"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_reload_keeps_the_last_good_table_and_reports_it() {
    let a = Backend::start("rev-a").await;
    let good = route("ns", "web", &[("rev-a", 100, None)]) + &slice("ns", "rev-a", &[a.addr]);
    let gw = Gateway::start(&good, closed()).await;
    let c = HttpClient::new();
    let generation = gw.generation().await;

    let broken = format!("{good}kind: Route\nmetadata: {{name: [oops\n");
    write_atomic(&gw.file, &broken);
    let err = gw.wait_source_error().await;
    // The error names the file and the line past the unclosed flow sequence.
    let want = format!("{}:{}:", gw.file.display(), broken.lines().count() + 1);
    assert!(err.contains(&want), "{want:?} not in {err}");
    assert_eq!(
        gw.generation().await,
        generation,
        "the table was not replaced"
    );
    assert_eq!(
        c.get(gw.http, "web.ns.example.com").await.unwrap().body,
        "rev-a"
    );
    let m = gw.admin("/metrics").await.body;
    assert!(m.contains("gateway_source_errors_total 1"), "{m}");

    // Deleting the file is a read error, not an empty table.
    std::fs::remove_file(&gw.file).unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(
        c.get(gw.http, "web.ns.example.com").await.unwrap().body,
        "rev-a"
    );

    // Fixed: served again, error cleared.
    gw.reload(&(good.clone() + &route("ns", "second", &[("rev-a", 100, None)])))
        .await;
    assert_eq!(
        c.get(gw.http, "second.ns.example.com").await.unwrap().body,
        "rev-a"
    );
    assert!(gw.debug_routes().await["source_last_error"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_route_is_left_out_or_keeps_its_last_good_version() {
    let (a, b) = (Backend::start("rev-a").await, Backend::start("rev-b").await);
    let slices = slice("ns", "rev-a", &[a.addr]) + &slice("ns", "rev-b", &[b.addr]);
    let good = route("ns", "web", &[("rev-a", 100, None)])
        + &route("ns", "other", &[("rev-b", 100, None)])
        + &slices;
    let gw = Gateway::start(&good, closed()).await;
    let c = HttpClient::new();

    // web breaks (percents sum to 60), a new route arrives broken (negative percent),
    // and one arrives without a status: only these are affected.
    let broken = route("ns", "web", &[("rev-b", 60, None)])
        + &route("ns", "other", &[("rev-b", 100, None)])
        + &route("ns", "neg", &[("rev-a", 110, None), ("rev-b", -10, None)])
        + "kind: Route\nmetadata: {name: fresh, namespace: ns}\n---\n"
        + &route("ns", "norev", &[("", 100, None)]).replace("revisionName: ,", "")
        + &slices;
    gw.reload(&broken).await;
    assert_eq!(
        c.get(gw.http, "web.ns.example.com").await.unwrap().body,
        "rev-a",
        "last good version"
    );
    assert_eq!(
        c.get(gw.http, "other.ns.example.com").await.unwrap().body,
        "rev-b"
    );
    assert_eq!(
        c.get(gw.http, "neg.ns.example.com").await.unwrap().status,
        404
    );
    assert_eq!(
        c.get(gw.http, "fresh.ns.example.com").await.unwrap().status,
        404
    );

    let rejected = gw.rejected().await;
    for want in [
        ("ns/web", "percent_sum", "last_good"),
        ("ns/neg", "negative_percent", "left_out"),
        ("ns/fresh", "no_status", "left_out"),
        ("ns/norev", "missing_revision", "left_out"),
    ] {
        let want = (want.0.to_owned(), want.1.to_owned(), want.2.to_owned());
        assert!(rejected.contains(&want), "{want:?} not in {rejected:?}");
    }
    let m = gw.admin("/metrics").await.body;
    assert!(
        m.contains(r#"gateway_objects_rejected{kind="Route",reason="percent_sum"} 1"#),
        "{m}"
    );
    assert!(
        m.contains(r#"gateway_objects_rejected{kind="Route",reason="no_status"} 1"#),
        "{m}"
    );
}

/// A snapshot file of KIngresses, Services and EndpointSlices (what `kubectl
/// get ingresses.networking.internal.knative.dev,services,endpointslices -A -o
/// yaml` prints) is served and reloaded like one of Routes; a KIngress of
/// another class in it is ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_of_kingresses_is_served_and_reloaded() {
    let (a, b) = (Backend::start("svc-a").await, Backend::start("svc-b").await);
    let service = |name: &str, addr: std::net::SocketAddr| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: ns}}\nspec: {{ports: [{{name: http, port: 80, targetPort: {port}}}]}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}-x, namespace: ns, labels: {{kubernetes.io/service-name: {name}}}}}\nports: [{{name: http, port: {port}}}]\nendpoints: [{{addresses: [\"{ip}\"]}}]\n---\n",
            port = addr.port(),
            ip = addr.ip()
        )
    };
    let kingress = |class: &str, name: &str, to: &str| {
        format!(
            "apiVersion: networking.internal.knative.dev/v1alpha1\nkind: Ingress\nmetadata:\n  name: {name}\n  namespace: ns\n  annotations: {{networking.knative.dev/ingress.class: {class}}}\nspec:\n  rules:\n  - hosts: [{name}.example.com]\n    http:\n      paths:\n      - path: /api\n        splits: [{{serviceName: svc-b, serviceNamespace: ns, servicePort: 80}}]\n      - splits: [{{serviceName: {to}, serviceNamespace: ns, servicePort: http}}]\n---\n"
        )
    };
    const OURS: &str = "knative-gateway.ingress.networking.knative.dev";
    let services = service("svc-a", a.addr) + &service("svc-b", b.addr);
    let first = kingress(OURS, "web", "svc-a")
        + &kingress("kourier.ingress.networking.knative.dev", "theirs", "svc-a")
        + &services;
    let gw = Gateway::start(&first, closed()).await;
    let c = HttpClient::new();
    let get = |host: &'static str, path: &'static str| {
        let c = c.clone();
        let addr = gw.http;
        async move {
            let req = hyper::Request::get(format!("http://{addr}{path}"))
                .header("host", host)
                .body(http_body_util::Full::default())
                .unwrap();
            c.send(req).await.unwrap()
        }
    };
    assert_eq!(get("web.example.com", "/").await.body, "svc-a");
    assert_eq!(get("web.example.com", "/api/x").await.body, "svc-b");
    assert_eq!(
        get("theirs.example.com", "/").await.status,
        404,
        "another class"
    );
    assert!(gw.rejected().await.is_empty(), "{:?}", gw.rejected().await);

    gw.reload(&(kingress(OURS, "web", "svc-b") + &services))
        .await;
    assert_eq!(get("web.example.com", "/").await.body, "svc-b");
}

/// TLS from a snapshot file: a KIngress's `spec.tls` Secret (as `kubectl get
/// secrets -o yaml` prints it, base64 `data`) serves HTTPS by SNI, and a
/// reload with a renewed Secret serves the new certificate to new handshakes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_with_tls_secrets_serves_https_and_reloads_them() {
    use base64::Engine;
    let backend = Backend::start("svc-tls").await;
    let ca = TestCa::new();
    let leaf = || ca.leaf(&["secure.example.com"]);
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let snapshot = |crt: &str, key: &str| {
        format!(
            "apiVersion: networking.internal.knative.dev/v1alpha1\nkind: Ingress\nmetadata:\n  name: secure\n  namespace: ns\n  annotations: {{networking.knative.dev/ingress.class: knative-gateway.ingress.networking.knative.dev}}\nspec:\n  tls:\n  - hosts: [secure.example.com]\n    secretName: cert\n    secretNamespace: ns\n  rules:\n  - hosts: [secure.example.com]\n    http:\n      paths:\n      - splits: [{{serviceName: svc-tls, serviceNamespace: ns, servicePort: 80}}]\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: svc-tls, namespace: ns}}\nspec: {{ports: [{{name: http, port: 80, targetPort: {port}}}]}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: svc-tls-x, namespace: ns, labels: {{kubernetes.io/service-name: svc-tls}}}}\nports: [{{name: http, port: {port}}}]\nendpoints: [{{addresses: [\"127.0.0.1\"]}}]\n---\napiVersion: v1\nkind: Secret\ntype: kubernetes.io/tls\nmetadata: {{name: cert, namespace: ns}}\ndata:\n  tls.crt: {}\n  tls.key: {}\n",
            b64(crt),
            b64(key),
            port = backend.addr.port()
        )
    };
    let (crt, key, der) = leaf();
    let gw = Gateway::start(&snapshot(&crt, &key), closed()).await;
    let r = https_get(gw.https, "secure.example.com", "/", &ca.der)
        .await
        .unwrap();
    assert_eq!(
        (r.reply.status, r.reply.body.as_str(), &r.cert),
        (200, "svc-tls", &der)
    );
    let routes = gw.debug_routes().await;
    assert_eq!(routes["certificates"][0]["name"], "secure.example.com");
    assert_eq!(routes["certificates"][0]["secret"], "ns/cert");

    let (crt2, key2, der2) = leaf();
    gw.reload(&snapshot(&crt2, &key2)).await;
    let r = https_get(gw.https, "secure.example.com", "/", &ca.der)
        .await
        .unwrap();
    assert_eq!(r.cert, der2, "new handshakes get the renewed certificate");
}
