//! The Kubernetes source through the real kube client against the test API
//! server: what it publishes, and when it counts as idle.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use config_sync::sources::kube::{KubeOptions, KubeSource};
use config_sync::{BuildOptions, Publisher};
use dataplane::table::{Dispatch, Target};
use serde_json::{json, Value};
use test_apiserver::ApiServer;

const CLASS: &str = "knative-gateway.ingress.networking.knative.dev";

fn kingress(name: &str, host: &str, service: &str) -> Value {
    json!({"apiVersion": "networking.internal.knative.dev/v1alpha1", "kind": "Ingress",
        "metadata": {"name": name, "namespace": "ns", "generation": 1,
                     "annotations": {"networking.knative.dev/ingress.class": CLASS}},
        "spec": {"rules": [{"hosts": [host], "visibility": "ExternalIP",
            "http": {"paths": [{"splits": [{"serviceName": service, "serviceNamespace": "ns",
                                            "servicePort": 80, "percent": 100}]}]}}]}})
}

fn service(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "ns"},
        "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}})
}

fn slice(service: &str, addr: &str) -> Value {
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("{service}-x"), "namespace": "ns",
                     "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4", "ports": [{"name": "http", "port": 8080}],
        "endpoints": [{"addresses": [addr], "conditions": {"ready": true}}]})
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..500 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("not within 5 s: {what}");
}

/// The idle hook (the gateway's allocator trim) runs once after each large
/// burst of events (a first sync, a cold start), on the source's own task;
/// never while events keep coming, and not after a small change.
#[tokio::test]
async fn the_source_is_idle_once_after_each_large_burst() {
    let api = ApiServer::start().await;
    api.apply(service("a"));
    api.apply(slice("a", "10.0.0.1"));
    api.apply(kingress("web", "web.example.com", "a"));
    // Services no KIngress names: the first sync is a large burst.
    let burst = config_sync::publish::IDLE_BURST;
    for i in 0..burst {
        api.apply(service(&format!("other-{i}")));
    }
    let client = kube::Client::try_from(kube::Config::new(api.url().parse().unwrap())).unwrap();
    let publisher = Arc::new(Publisher::new(BuildOptions::default()));
    let idle = Arc::new(AtomicU32::new(0));
    let counted = idle.clone();
    let source = KubeSource::new(client, publisher.clone(), KubeOptions::default()).on_idle(
        Arc::new(move || {
            counted.fetch_add(1, Ordering::SeqCst);
        }),
    );
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(source.run(shutdown));
    let table = publisher.reader();
    eventually("the first table", || {
        table.load().lookup("web.example.com").is_some()
    })
    .await;
    eventually("idle after the first sync", || {
        idle.load(Ordering::SeqCst) == 1
    })
    .await;
    // A small change is served, and is no burst.
    api.apply(slice("a", "10.0.0.2"));
    eventually("the new endpoint", || {
        addrs(&table.load()) == ["10.0.0.2:8080"]
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(idle.load(Ordering::SeqCst), 1, "not after a small change");
    // A large burst: busy while it lasts, then one call.
    for i in 0..burst {
        api.apply(service(&format!("other-{i}-b")));
        if i % 100 == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            assert_eq!(idle.load(Ordering::SeqCst), 1, "busy during the burst");
        }
    }
    eventually("idle after the burst", || idle.load(Ordering::SeqCst) == 2).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(idle.load(Ordering::SeqCst), 2, "once per burst");
    stop.send_replace(true);
    task.await.unwrap();
}

/// The addresses `web.example.com` is served from.
fn addrs(table: &dataplane::Table) -> Vec<String> {
    let Some(Dispatch::Direct(Target::One(pick))) =
        table.lookup("web.example.com").map(|h| &h.dispatch)
    else {
        return Vec::new();
    };
    table
        .backend(pick.backend)
        .endpoints
        .iter()
        .map(|e| e.addr.to_string())
        .collect()
}

/// The labels of the route serving `host`, as `key=value`.
fn labels_of(table: &dataplane::Table, host: &str) -> Vec<String> {
    let Some(entry) = table.lookup(host) else {
        return vec!["<no route>".into()];
    };
    table
        .route(entry.route)
        .labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect()
}

/// Every label of a KIngress reaches the table when asked for (the
/// authorization server's context) and is not kept otherwise; a change of
/// labels or of an annotation the gateway reads is served, though it moves
/// no generation (Kubernetes moves it for the spec only).
#[tokio::test]
async fn kingress_labels_are_kept_only_when_asked_for_and_metadata_changes_are_served() {
    let api = ApiServer::start().await;
    api.apply(service("a"));
    api.apply(slice("a", "10.0.0.1"));
    let mut labelled = kingress("web", "web.example.com", "a");
    labelled["metadata"]["labels"] =
        json!({"team": "payments", "serving.knative.dev/route": "web"});
    api.apply(labelled.clone());
    let client = || kube::Client::try_from(kube::Config::new(api.url().parse().unwrap())).unwrap();
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let mut tables = Vec::new();
    let mut tasks = Vec::new();
    for keep in [true, false] {
        let publisher = Arc::new(Publisher::new(BuildOptions::default()));
        let options = KubeOptions {
            kingress_labels: keep,
            ..KubeOptions::default()
        };
        let source = KubeSource::new(client(), publisher.clone(), options);
        tasks.push(tokio::spawn(source.run(shutdown.clone())));
        tables.push(publisher.reader());
    }
    let (kept, trimmed) = (&tables[0], &tables[1]);
    eventually("both tables", || {
        kept.load().lookup("web.example.com").is_some()
            && trimmed.load().lookup("web.example.com").is_some()
    })
    .await;
    assert_eq!(
        labels_of(&kept.load(), "web.example.com"),
        ["serving.knative.dev/route=web", "team=payments"]
    );
    assert!(labels_of(&trimmed.load(), "web.example.com").is_empty());
    // A change of labels alone, the generation as it was.
    labelled["metadata"]["labels"]["team"] = "billing".into();
    api.apply(labelled.clone());
    eventually("the new label", || {
        labels_of(&kept.load(), "web.example.com").contains(&"team=billing".to_owned())
    })
    .await;
    // An annotation the gateway reads, alone: authorization turned off.
    let authorized = |table: &dataplane::Table| {
        let entry = table.lookup("web.example.com").unwrap();
        table.route(entry.route).authorize
    };
    assert!(authorized(&trimmed.load()));
    labelled["metadata"]["annotations"]["knative-gateway.dev/ext-authz"] = "disabled".into();
    api.apply(labelled);
    eventually("the annotation served", || {
        !authorized(&trimmed.load()) && !authorized(&kept.load())
    })
    .await;
    stop.send_replace(true);
    for task in tasks {
        task.await.unwrap();
    }
}
