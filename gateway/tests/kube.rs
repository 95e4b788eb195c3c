//! `gateway serve --kube` end to end: the real kube client, through a
//! kubeconfig, against the in-repo API server speaking the list/watch protocol.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use test_apiserver::ApiServer;

const ROUTE_API: &str = "serving.knative.dev/v1";
const SLICE_API: &str = "discovery.k8s.io/v1";

fn route_obj(ns: &str, name: &str, traffic: &[(&str, i64)]) -> Value {
    let traffic: Vec<Value> = traffic
        .iter()
        .map(|(r, p)| json!({"revisionName": r, "percent": p}))
        .collect();
    json!({"apiVersion": ROUTE_API, "kind": "Route", "metadata": {"name": name, "namespace": ns},
           "status": {"url": format!("http://{name}.{ns}.example.com"), "traffic": traffic}})
}

fn slice_obj(ns: &str, rev: &str, addr: SocketAddr, ready: bool) -> Value {
    json!({"apiVersion": SLICE_API, "kind": "EndpointSlice",
           "metadata": {"name": format!("{rev}-private-abcde"), "namespace": ns,
               "labels": {"serving.knative.dev/revision": rev,
                          "networking.internal.knative.dev/serviceType": "Private"}},
           "addressType": "IPv4",
           "ports": [{"name": "http", "port": addr.port(), "protocol": "TCP"}],
           "endpoints": [{"addresses": [addr.ip().to_string()], "conditions": {"ready": ready}}]})
}

struct Cluster {
    api: ApiServer,
    _dir: tempfile::TempDir,
    kubeconfig: std::path::PathBuf,
}

async fn cluster() -> Cluster {
    let api = ApiServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    api.write_kubeconfig(&kubeconfig);
    Cluster {
        api,
        _dir: dir,
        kubeconfig,
    }
}

async fn body(gw: &Gateway, host: &str) -> String {
    match HttpClient::new().get(gw.http, host).await {
        Ok(r) if r.status == 200 => r.body,
        Ok(r) => format!("status {}", r.status),
        Err(e) => format!("error {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_serve_and_follow_changes() {
    let c = cluster().await;
    let (a, b) = (Backend::start("rev-a").await, Backend::start("rev-b").await);
    let activator = Backend::start("activator").await;
    c.api.apply(route_obj("ns", "web", &[("rev-a", 100)]));
    c.api.apply(slice_obj("ns", "rev-a", a.addr, true));
    c.api.apply(slice_obj("ns", "rev-b", b.addr, true));
    // A slice without the revision label is filtered out server-side.
    c.api
        .apply(json!({"apiVersion": SLICE_API, "kind": "EndpointSlice",
        "metadata": {"name": "unrelated", "namespace": "ns"}, "endpoints": []}));

    let gw = Gateway::kube(&c.kubeconfig, activator.addr, &[]).await;
    assert_eq!(body(&gw, "web.ns.example.com").await, "rev-a");

    // A status change of the Route: the new split is served.
    c.api.apply(route_obj("ns", "web", &[("rev-b", 100)]));
    eventually(5, "new split", || async {
        body(&gw, "web.ns.example.com").await == "rev-b"
    })
    .await;

    // The endpoint goes unready: the activator, with both headers; then back.
    c.api.apply(slice_obj("ns", "rev-b", b.addr, false));
    eventually(5, "activator", || async {
        body(&gw, "web.ns.example.com").await == "activator"
    })
    .await;
    let r = HttpClient::new()
        .get(gw.http, "web.ns.example.com")
        .await
        .unwrap();
    assert_eq!(
        (r.header("x-seen-revision"), r.header("x-seen-namespace")),
        ("rev-b", "ns")
    );
    c.api.apply(slice_obj("ns", "rev-b", b.addr, true));
    eventually(5, "back to the pod", || async {
        body(&gw, "web.ns.example.com").await == "rev-b"
    })
    .await;

    // Deleted: 404.
    c.api.delete(ROUTE_API, "Route", "ns", "web");
    eventually(5, "404 after delete", || async {
        body(&gw, "web.ns.example.com").await == "status 404"
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_outside_the_watch_are_ignored() {
    let c = cluster().await;
    let a = Backend::start("rev-a").await;
    for ns in ["mine", "theirs"] {
        c.api.apply(route_obj(ns, "web", &[("rev-a", 100)]));
        c.api.apply(slice_obj(ns, "rev-a", a.addr, true));
    }
    let gw = Gateway::kube(&c.kubeconfig, a.addr, &["--namespace", "mine"]).await;
    assert_eq!(body(&gw, "web.mine.example.com").await, "rev-a");
    assert_eq!(body(&gw, "web.theirs.example.com").await, "status 404");
    c.api.apply(route_obj("theirs", "other", &[("rev-a", 100)]));
    c.api.apply(route_obj("mine", "other", &[("rev-a", 100)]));
    eventually(5, "mine/other", || async {
        body(&gw, "other.mine.example.com").await == "rev-a"
    })
    .await;
    assert_eq!(body(&gw, "other.theirs.example.com").await, "status 404");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_410_relists_without_losing_an_update() {
    let c = cluster().await;
    let (a, b) = (Backend::start("rev-a").await, Backend::start("rev-b").await);
    c.api.apply(route_obj("ns", "web", &[("rev-a", 100)]));
    c.api.apply(slice_obj("ns", "rev-a", a.addr, true));
    c.api.apply(slice_obj("ns", "rev-b", b.addr, true));
    let gw = Gateway::kube(&c.kubeconfig, a.addr, &[]).await;
    assert_eq!(body(&gw, "web.ns.example.com").await, "rev-a");
    let lists = c.api.lists();

    // While the watch is cut, the Route changes and history is compacted:
    // resuming from the old resourceVersion gets 410 Gone.
    c.api.stop();
    c.api.apply(route_obj("ns", "web", &[("rev-b", 100)]));
    c.api
        .apply(route_obj("ns", "gone-while-away", &[("rev-a", 100)]));
    c.api.delete(ROUTE_API, "Route", "ns", "gone-while-away");
    c.api.compact();
    c.api.restart().await;

    eventually(30, "update after relist", || async {
        body(&gw, "web.ns.example.com").await == "rev-b"
    })
    .await;
    assert!(c.api.lists() > lists, "the watcher relisted");
    eventually(10, "relist metric", || async {
        gw.admin("/metrics")
            .await
            .body
            .lines()
            .any(|l| l.starts_with("gateway_source_relists_total ") && !l.ends_with(" 0"))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_server_away_for_30s_every_request_still_served() {
    let c = cluster().await;
    let (a, b) = (Backend::start("rev-a").await, Backend::start("rev-b").await);
    c.api.apply(route_obj("ns", "web", &[("rev-a", 100)]));
    c.api.apply(slice_obj("ns", "rev-a", a.addr, true));
    c.api.apply(slice_obj("ns", "rev-b", b.addr, true));
    let gw = Gateway::kube(&c.kubeconfig, a.addr, &[]).await;
    assert_eq!(body(&gw, "web.ns.example.com").await, "rev-a");

    c.api.stop();
    let client = HttpClient::new();
    let started = Instant::now();
    let mut served = 0;
    while started.elapsed() < Duration::from_secs(30) {
        let r = client.get(gw.http, "web.ns.example.com").await.unwrap();
        assert_eq!(
            (r.status, r.body.as_str()),
            (200, "rev-a"),
            "after {:?}",
            started.elapsed()
        );
        served += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(served > 100);
    assert_eq!(
        gw.admin("/readyz").await.status,
        200,
        "stays ready while stale"
    );
    let m = gw.admin("/metrics").await.body;
    assert!(!m.contains("gateway_source_errors_total 0"), "{m}");
    assert!(
        !m.contains("gateway_source_seconds_since_last_sync 0\n"),
        "staleness shows: {m}"
    );

    // Back: a change made meanwhile is picked up.
    c.api.apply(route_obj("ns", "web", &[("rev-b", 100)]));
    c.api.restart().await;
    eventually(40, "resync", || async {
        body(&gw, "web.ns.example.com").await == "rev-b"
    })
    .await;
    eventually(10, "healthy again", || async {
        gw.admin("/metrics")
            .await
            .body
            .contains("gateway_source_seconds_since_last_sync 0\n")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_objects_are_skipped_with_a_reason() {
    let c = cluster().await;
    let a = Backend::start("rev-a").await;
    c.api.apply(route_obj("ns", "good", &[("rev-a", 100)]));
    c.api.apply(slice_obj("ns", "rev-a", a.addr, true));
    let mut wrong = route_obj("ns", "wrong-types", &[("rev-a", 100)]);
    wrong["status"]["traffic"][0]["percent"] = json!("all of it");
    c.api.apply(wrong);
    let mut unknown = route_obj("ns", "unknown-fields", &[("rev-a", 100)]);
    unknown["status"]["somethingNew"] = json!({"x": 1});
    unknown["spec"] = json!({"whatever": true});
    c.api.apply(unknown);
    c.api.apply(json!({"apiVersion": ROUTE_API, "kind": "Route", "metadata": {"name": "no-status", "namespace": "ns"}}));

    let gw = Gateway::kube(&c.kubeconfig, a.addr, &[]).await;
    assert_eq!(body(&gw, "good.ns.example.com").await, "rev-a");
    assert_eq!(
        body(&gw, "unknown-fields.ns.example.com").await,
        "rev-a",
        "unknown fields are fine"
    );
    assert_eq!(body(&gw, "wrong-types.ns.example.com").await, "status 404");
    let d = gw.debug_routes().await;
    let reasons: Vec<(String, String)> = d["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["object"].as_str().unwrap().into(),
                r["reason"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert!(
        reasons.contains(&("ns/wrong-types".into(), "decode".into())),
        "{reasons:?}"
    );
    assert!(
        reasons.contains(&("ns/no-status".into(), "no_status".into())),
        "{reasons:?}"
    );
    let m = gw.admin("/metrics").await.body;
    assert!(
        m.contains(r#"gateway_objects_rejected{kind="Route",reason="decode"} 1"#),
        "{m}"
    );
}
