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
const KINGRESS_API: &str = "networking.internal.knative.dev/v1alpha1";

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

    let gw = Gateway::kube(&c.kubeconfig, activator.addr, &["--source", "routes"]).await;
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

    // The slice deleted: cold again (the activator); recreated: the pod.
    c.api
        .delete(SLICE_API, "EndpointSlice", "ns", "rev-b-private-abcde");
    eventually(5, "activator after slice delete", || async {
        body(&gw, "web.ns.example.com").await == "activator"
    })
    .await;
    c.api.apply(slice_obj("ns", "rev-b", b.addr, true));
    eventually(5, "pod after slice recreate", || async {
        body(&gw, "web.ns.example.com").await == "rev-b"
    })
    .await;

    // Cluster-local: 404 on the external listener, served on the internal one.
    let mut private = route_obj("ns", "private", &[("rev-b", 100)]);
    private["metadata"]["labels"] = json!({"networking.knative.dev/visibility": "cluster-local"});
    c.api.apply(private);
    eventually(5, "cluster-local route internal", || async {
        let r = HttpClient::new()
            .get(gw.internal, "private.ns.example.com")
            .await;
        r.is_ok_and(|r| r.body == "rev-b")
    })
    .await;
    assert_eq!(body(&gw, "private.ns.example.com").await, "status 404");
    let r = HttpClient::new()
        .get(gw.internal, "private.ns.svc.cluster.local")
        .await
        .unwrap();
    assert_eq!(r.body, "rev-b");

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
    let gw = Gateway::kube(
        &c.kubeconfig,
        a.addr,
        &["--source", "routes", "--namespace", "mine"],
    )
    .await;
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

/// Route ns/web at 100% rev-a, slices for rev-a and rev-b, a gateway serving it.
async fn web_on_rev_a() -> (Cluster, Backend, Backend, Gateway) {
    let c = cluster().await;
    let (a, b) = (Backend::start("rev-a").await, Backend::start("rev-b").await);
    c.api.apply(route_obj("ns", "web", &[("rev-a", 100)]));
    c.api.apply(slice_obj("ns", "rev-a", a.addr, true));
    c.api.apply(slice_obj("ns", "rev-b", b.addr, true));
    let gw = Gateway::kube(&c.kubeconfig, a.addr, &["--source", "routes"]).await;
    assert_eq!(body(&gw, "web.ns.example.com").await, "rev-a");
    (c, a, b, gw)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_410_relists_without_losing_an_update() {
    let (c, _a, _b, gw) = web_on_rev_a().await;
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
    let (c, _a, _b, gw) = web_on_rev_a().await;

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
    // Retries are at most 5 s apart plus up to 5 s of jitter (--kube-max-backoff).
    eventually(25, "resync", || async {
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

    let gw = Gateway::kube(&c.kubeconfig, a.addr, &["--source", "routes"]).await;
    assert_eq!(body(&gw, "good.ns.example.com").await, "rev-a");
    assert_eq!(
        body(&gw, "unknown-fields.ns.example.com").await,
        "rev-a",
        "unknown fields are fine"
    );
    assert_eq!(body(&gw, "wrong-types.ns.example.com").await, "status 404");
    let reasons: Vec<(String, String)> = gw
        .rejected()
        .await
        .into_iter()
        .map(|(object, reason, _)| (object, reason))
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

fn kingress_obj(class: &str, name: &str, generation: i64, traffic: &[(&str, i64)]) -> Value {
    let splits: Vec<Value> = traffic
        .iter()
        .map(|(r, p)| json!({"serviceName": r, "serviceNamespace": "ns", "servicePort": 80, "percent": p}))
        .collect();
    json!({"apiVersion": "networking.internal.knative.dev/v1alpha1", "kind": "Ingress",
           "metadata": {"name": name, "namespace": "ns", "generation": generation,
                        "annotations": {"networking.knative.dev/ingress.class": class}},
           "spec": {"rules": [
               {"hosts": [format!("{name}.ns.example.com")], "visibility": "ExternalIP",
                "http": {"paths": [{"splits": splits}]}},
               {"hosts": [format!("{name}.ns.svc.cluster.local")], "visibility": "ClusterLocal",
                "http": {"paths": [{"splits": splits}]}}]}})
}

fn hash_of(obj: &Value) -> String {
    config_sync::model::kingress::decode(obj.clone())
        .unwrap()
        .hash
        .to_string()
}

async fn probe(addr: SocketAddr, host: &str) -> (u16, String) {
    let r = HttpClient::new()
        .get_with(addr, host, &[("K-Network-Probe", "probe")])
        .await
        .unwrap();
    (r.status, r.header("k-network-hash").to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kingress_of_our_class_marked_ready_once_every_replica_serves_it() {
    const OURS: &str = "knative-gateway.ingress.networking.knative.dev";
    let c = cluster().await;
    let (a, b) = (Backend::start("rev-a").await, Backend::start("rev-b").await);
    c.api.apply(route_obj("ns", "web", &[("rev-a", 100)]));
    c.api.apply(slice_obj("ns", "rev-a", a.addr, true));
    c.api.apply(slice_obj("ns", "rev-b", b.addr, true));
    let ours = kingress_obj(OURS, "web", 1, &[("rev-a", 100)]);
    c.api.apply(ours.clone());
    c.api.apply(kingress_obj(
        "kourier.ingress.networking.knative.dev",
        "other",
        1,
        &[("rev-a", 100)],
    ));

    let flags = [
        "--source",
        "routes",
        "--lease",
        "gw/lease",
        "--private-service",
        "gw/internal",
        "--public-service",
        "gw/external",
    ];
    let one = Gateway::kube(
        &c.kubeconfig,
        a.addr,
        &[&flags[..], &["--identity", "replica-one"]].concat(),
    )
    .await;
    let two = Gateway::kube(
        &c.kubeconfig,
        a.addr,
        &[&flags[..], &["--identity", "replica-two"]].concat(),
    )
    .await;
    // The internal Service's endpoints: both replicas (one slice each, as their ports differ).
    for (i, gw) in [&one, &two].iter().enumerate() {
        c.api
            .apply(json!({"apiVersion": SLICE_API, "kind": "EndpointSlice",
            "metadata": {"name": format!("internal-{i}"), "namespace": "gw",
                         "labels": {"kubernetes.io/service-name": "internal"}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": gw.internal.port()}],
            "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": true}}]}));
    }

    // The probe, on any host of the KIngress, answers with its hash.
    let hash = hash_of(&ours);
    for gw in [&one, &two] {
        eventually(5, "probe answered", || async {
            probe(gw.http, "web.ns.example.com").await == (200, hash.clone())
        })
        .await;
        assert_eq!(
            probe(gw.internal, "web.ns.svc.cluster.local").await,
            (200, hash.clone())
        );
        assert_eq!(probe(gw.http, "unknown.ns.example.com").await.0, 404);
    }

    let status = |name: &str| {
        c.api
            .get(
                "networking.internal.knative.dev/v1alpha1",
                "Ingress",
                "ns",
                name,
            )
            .unwrap()["status"]
            .clone()
    };
    eventually(15, "KIngress Ready", || async {
        status("web")["observedGeneration"] == 1
    })
    .await;
    let s = status("web");
    let ready = s["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .unwrap();
    assert_eq!(ready["status"], "True");
    assert_eq!(
        s["publicLoadBalancer"]["ingress"][0]["domainInternal"],
        "external.gw.svc.cluster.local"
    );
    assert_eq!(
        s["privateLoadBalancer"]["ingress"][0]["domainInternal"],
        "internal.gw.svc.cluster.local"
    );
    assert!(
        status("other").is_null(),
        "another class's KIngress is never touched"
    );
    let lease = c
        .api
        .get("coordination.k8s.io/v1", "Lease", "gw", "lease")
        .unwrap();
    let holder = lease["spec"]["holderIdentity"].as_str().unwrap().to_owned();
    assert!(
        holder == "replica-one" || holder == "replica-two",
        "{holder}"
    );

    // A new KIngress generation asks for 50/50, but the Route still says 100/0:
    // not served, so not Ready, and the probe still answers the old hash.
    let newer = kingress_obj(OURS, "web", 2, &[("rev-a", 50), ("rev-b", 50)]);
    c.api.apply(newer.clone());
    // The status says why, once the probe has failed a few times: Unknown,
    // `ProbeFailing`, naming the replica and what it answered; so does
    // `/debug/routes` of the leader.
    eventually(10, "generation 2 says its probe is failing", || async {
        let s = status("web");
        s["observedGeneration"] == 2
            && s["conditions"].as_array().is_some_and(|cs| {
                cs.iter().any(|c| {
                    c["type"] == "Ready"
                        && c["status"] == "Unknown"
                        && c["reason"] == "ProbeFailing"
                        && c["message"]
                            .as_str()
                            .is_some_and(|m| m.contains("without this version's hash"))
                })
            })
    })
    .await;
    let leader = if holder == "replica-one" { &one } else { &two };
    let failures = leader.debug_routes().await["probe_failures"].clone();
    assert!(
        failures["ns/web"].as_str().is_some_and(
            |m| m.contains(" for web.ns.") && m.contains("without this version's hash")
        ),
        "{failures}"
    );
    assert_eq!(probe(one.http, "web.ns.example.com").await, (200, hash));
    // The Route catches up: both replicas serve it, and the leader marks generation 2.
    c.api
        .apply(route_obj("ns", "web", &[("rev-a", 50), ("rev-b", 50)]));
    eventually(15, "generation 2 Ready", || async {
        is_ready(&c.api.get(KINGRESS_API, "Ingress", "ns", "web").unwrap(), 2)
    })
    .await;
    assert!(leader.debug_routes().await.get("probe_failures").is_none());
    assert_eq!(
        probe(two.http, "web.ns.example.com").await,
        (200, hash_of(&newer))
    );
}

/// A cluster with Route `ns/web` on revision `rev-a` (the backend returned)
/// and a KIngress of our class for it, generation 1.
async fn web_with_kingress() -> (Cluster, Backend) {
    const OURS: &str = "knative-gateway.ingress.networking.knative.dev";
    let c = cluster().await;
    let a = Backend::start("rev-a").await;
    c.api.apply(route_obj("ns", "web", &[("rev-a", 100)]));
    c.api.apply(slice_obj("ns", "rev-a", a.addr, true));
    c.api.apply(kingress_obj(OURS, "web", 1, &[("rev-a", 100)]));
    (c, a)
}

/// The gateway's internal Service `<ns>/knative-gateway-internal`: `gw`, the
/// replica the leader probes.
fn internal_endpoints(c: &Cluster, ns: &str, gw: &Gateway) {
    c.api
        .apply(json!({"apiVersion": SLICE_API, "kind": "EndpointSlice",
        "metadata": {"name": "internal-0", "namespace": ns,
                     "labels": {"kubernetes.io/service-name": "knative-gateway-internal"}},
        "addressType": "IPv4", "ports": [{"name": "http", "port": gw.internal.port()}],
        "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": true}}]}));
}

/// The status of KIngress `ns/web`.
fn web_status(c: &Cluster) -> serde_json::Value {
    c.api
        .get(
            "networking.internal.knative.dev/v1alpha1",
            "Ingress",
            "ns",
            "web",
        )
        .unwrap()["status"]
        .clone()
}

/// Installed in another namespace, told only that namespace (as the
/// Deployment passes it from the downward API): the Lease, the Services
/// written to status and the replicas probed are all there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn installed_in_another_namespace_with_only_its_name() {
    let (c, a) = web_with_kingress().await;
    let gw = Gateway::kube(
        &c.kubeconfig,
        a.addr,
        &["--source", "routes", "--pod-namespace", "edge-system"],
    )
    .await;
    internal_endpoints(&c, "edge-system", &gw);
    eventually(15, "KIngress Ready", || async {
        web_status(&c)["observedGeneration"] == 1
    })
    .await;
    let s = web_status(&c);
    assert_eq!(
        s["publicLoadBalancer"]["ingress"][0]["domainInternal"],
        "knative-gateway.edge-system.svc.cluster.local"
    );
    assert_eq!(
        s["privateLoadBalancer"]["ingress"][0]["domainInternal"],
        "knative-gateway-internal.edge-system.svc.cluster.local"
    );
    let lease = c
        .api
        .get(
            "coordination.k8s.io/v1",
            "Lease",
            "edge-system",
            "knative-gateway",
        )
        .expect("the Lease in the pod's namespace");
    assert!(lease["spec"]["holderIdentity"].as_str().is_some());
}

/// A permission the API server refuses (RBAC's 403) is named: an error in
/// the log, `gateway_kube_forbidden_total`, and `missing_permission` in
/// `/debug/routes`, for the Lease and for status writes alike; granted, the
/// KIngress turns Ready and nothing is missing any more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_permission_is_named_until_granted() {
    let (c, a) = web_with_kingress().await;
    c.api.forbid("leases");
    let gw = Gateway::kube(&c.kubeconfig, a.addr, &["--source", "routes"]).await;
    internal_endpoints(&c, "knative-gateway", &gw);
    let missing = || async { gw.debug_routes().await["missing_permission"].clone() };
    eventually(10, "the Lease refusal named", || async {
        missing()
            .await
            .as_str()
            .is_some_and(|m| m.contains("leases"))
    })
    .await;
    assert!(gw.metric("gateway_kube_forbidden_total").await.unwrap() >= 1.0);
    assert!(
        gw.stderr().contains("refused a permission"),
        "{}",
        gw.stderr()
    );

    c.api.allow("leases");
    c.api.forbid("ingresses/status");
    eventually(10, "the status refusal named", || async {
        missing()
            .await
            .as_str()
            .is_some_and(|m| m.contains("ingresses/status"))
    })
    .await;

    c.api.allow("ingresses/status");
    eventually(15, "KIngress Ready once granted", || async {
        web_status(&c)["observedGeneration"] == 1
    })
    .await;
    eventually(5, "nothing missing", || async { missing().await.is_null() }).await;
}

/// A KIngress whose status is Ready for `generation`.
fn is_ready(obj: &Value, generation: i64) -> bool {
    let s = &obj["status"];
    s["observedGeneration"] == generation
        && s["conditions"].as_array().is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
}

/// Status writes are one PUT each, with the resourceVersion held (no GET
/// first); the API server answering 429, 500 and 503 slows the writer and
/// loses nothing; a status is never written twice for the same generation
/// and verdict; and a restarted leader verifies a status that is already
/// right (probes the replicas) without writing it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_writes_are_one_call_retried_on_429_and_5xx_and_never_repeated() {
    let (c, a) = web_with_kingress().await;
    c.api.fail_next("ingresses/status", &[429, 500, 503]);
    let flags = ["--source", "routes", "--identity", "replica-0"];
    let gw = Gateway::kube(&c.kubeconfig, a.addr, &flags).await;
    internal_endpoints(&c, "knative-gateway", &gw);
    let get = || c.api.get(KINGRESS_API, "Ingress", "ns", "web").unwrap();
    eventually(20, "KIngress Ready after three failed writes", || async {
        is_ready(&get(), 1)
    })
    .await;
    assert_eq!(c.api.requests("update", "ingresses/status"), 4);
    assert_eq!(
        c.api.requests("get", "ingresses"),
        0,
        "no GET before a write"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        c.api.requests("update", "ingresses/status"),
        4,
        "Ready for generation 1 is written once"
    );
    assert_eq!(
        gw.metric("gateway_kingress_status_writes_total").await,
        Some(1.0)
    );
    drop(gw);
    let gw = Gateway::kube(&c.kubeconfig, a.addr, &flags).await;
    internal_endpoints(&c, "knative-gateway", &gw);
    eventually(10, "the status verified by the new leader", || async {
        gw.metric("gateway_kingress_probes_total{result=\"passed\"}")
            .await
            .is_some_and(|n| n >= 2.0)
    })
    .await;
    assert_eq!(c.api.requests("update", "ingresses/status"), 4);
    assert_eq!(
        gw.metric("gateway_kingress_status_writes_total").await,
        Some(0.0)
    );
}

/// A cold start under a tight rate limit (`--kube-api-qps 5`, burst 1: 60
/// KIngresses take 12 s) does not hold up a KIngress changed meanwhile: its
/// new generation is written before the backlog is half done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_during_a_cold_start_backlog_does_not_wait_for_it() {
    const OURS: &str = "knative-gateway.ingress.networking.knative.dev";
    let c = cluster().await;
    let a = Backend::start("rev-a").await;
    c.api.apply(slice_obj("ns", "rev-a", a.addr, true));
    let names: Vec<String> = (0..60).map(|i| format!("w{i:03}")).collect();
    for name in &names {
        c.api.apply(route_obj("ns", name, &[("rev-a", 100)]));
        c.api.apply(kingress_obj(OURS, name, 1, &[("rev-a", 100)]));
    }
    let gw = Gateway::kube(
        &c.kubeconfig,
        a.addr,
        &[
            "--source",
            "routes",
            "--kube-api-qps",
            "5",
            "--kube-api-burst",
            "1",
        ],
    )
    .await;
    internal_endpoints(&c, "knative-gateway", &gw);
    let ready = |generation: i64| {
        names
            .iter()
            .filter(|n| {
                c.api
                    .get(KINGRESS_API, "Ingress", "ns", n)
                    .is_some_and(|o| is_ready(&o, generation))
            })
            .count()
    };
    eventually(10, "the backlog begun", || async { ready(1) > 0 }).await;
    // The last in store order changes (a new generation).
    let last = names.last().unwrap();
    c.api.apply(kingress_obj(OURS, last, 2, &[("rev-a", 100)]));
    let changed = Instant::now();
    eventually(5, "the changed KIngress Ready", || async {
        c.api
            .get(KINGRESS_API, "Ingress", "ns", last)
            .is_some_and(|o| is_ready(&o, 2))
    })
    .await;
    let done = ready(1);
    assert!(
        done < 30,
        "{done} of 59 were Ready first, {:?} after the change",
        changed.elapsed()
    );
}
