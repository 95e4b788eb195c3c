//! The table builder over plain data: no sockets.

use config_sync::compiler::{build, BuildOptions, LastGood};
use config_sync::sources::file::parse;
use config_sync::Outcome;
use dataplane::table::{BackendId, Dispatch, Target};
use dataplane::Table;

const SNAPSHOT: &str = r#"
apiVersion: serving.knative.dev/v1
kind: Route
metadata: {name: hello, namespace: default}
status:
  url: http://hello.default.example.com
  traffic:
  - {revisionName: hello-00001, percent: 90}
  - {revisionName: hello-00002, percent: 10}
  - {revisionName: hello-00001, percent: 0, tag: v1, url: http://v1-hello.default.example.com}
  - {revisionName: hello-00002, percent: 0, tag: v2, url: http://v2-hello.default.example.com}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: hello-00001-private-a
  namespace: default
  labels: {serving.knative.dev/revision: hello-00001, networking.internal.knative.dev/serviceType: Private}
addressType: IPv4
ports:
- {name: http-metrics, port: 9090}
- {name: http, port: 8012}
- {name: http2, port: 8013}
endpoints:
- addresses: ["10.0.0.1"]
  conditions: {ready: true}
- addresses: ["10.0.0.2"]
- addresses: ["10.0.0.3"]
  conditions: {ready: false}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: hello-00001-private-b
  namespace: default
  labels: {serving.knative.dev/revision: hello-00001, networking.internal.knative.dev/serviceType: Private}
addressType: IPv4
ports: [{name: http, port: 8012}]
endpoints:
- addresses: ["10.0.0.2"]
- addresses: ["10.0.0.4"]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: hello-00001-public
  namespace: default
  labels: {serving.knative.dev/revision: hello-00001, networking.internal.knative.dev/serviceType: Public}
ports: [{name: http, port: 80}]
endpoints: [{addresses: ["10.9.9.9"]}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: hello-00002-private
  namespace: default
  labels: {serving.knative.dev/revision: hello-00002, networking.internal.knative.dev/serviceType: Private}
addressType: IPv6
ports: [{name: http, port: 8012}]
endpoints: [{addresses: ["fd00::1"]}]
"#;

fn table(text: &str) -> (Table, LastGood) {
    table_after(text, &LastGood::default(), None)
}

fn table_after(text: &str, last_good: &LastGood, prev: Option<&Table>) -> (Table, LastGood) {
    build(
        parse(text).unwrap(),
        &BuildOptions::default(),
        last_good,
        prev,
        1,
    )
}

fn revision_of(t: &Table, host: &str) -> String {
    match &t
        .lookup(host)
        .unwrap_or_else(|| panic!("no host {host}"))
        .dispatch
    {
        Dispatch::Direct(Target::One(p)) => t.backend(p.backend).name.to_string(),
        Dispatch::Direct(Target::Split(_)) => "split".into(),
        Dispatch::Paths(_) => "paths".into(),
    }
}

/// The one backend `host` sends to.
fn one(t: &Table, host: &str) -> BackendId {
    match &t.lookup(host).unwrap().dispatch {
        Dispatch::Direct(Target::One(p)) => p.backend,
        other => panic!("{host} is not one backend: {other:?}"),
    }
}

fn addrs(t: &Table, host: &str) -> Vec<String> {
    t.backend(one(t, host))
        .endpoints
        .iter()
        .map(|e| e.addr.to_string())
        .collect()
}

#[test]
fn route_host_splits_and_tags_route_to_their_revision() {
    let (t, _) = table(SNAPSHOT);
    assert!(t.rejected().is_empty(), "{:?}", t.rejected());
    assert_eq!(revision_of(&t, "hello.default.example.com"), "split");
    let route = t.route(t.lookup("hello.default.example.com").unwrap().route);
    let traffic: Vec<(String, u32)> = route
        .traffic
        .iter()
        .map(|(r, p)| (t.backend(*r).name.to_string(), *p))
        .collect();
    assert_eq!(
        traffic,
        [("hello-00001".into(), 90), ("hello-00002".into(), 10)]
    );
    assert_eq!(
        revision_of(&t, "v1-hello.default.example.com"),
        "hello-00001"
    );
    assert_eq!(
        revision_of(&t, "v2-hello.default.example.com"),
        "hello-00002"
    );
}

#[test]
fn cluster_local_names_for_route_and_tags() {
    let (t, _) = table(SNAPSHOT);
    for host in [
        "hello.default",
        "hello.default.svc",
        "hello.default.svc.cluster.local",
    ] {
        assert_eq!(revision_of(&t, host), "split", "{host}");
    }
    for host in [
        "v2-hello.default",
        "v2-hello.default.svc",
        "v2-hello.default.svc.cluster.local",
    ] {
        assert_eq!(revision_of(&t, host), "hello-00002", "{host}");
    }
    // 1 url + 3 cluster names, for the route and each of two tags.
    assert_eq!(t.host_count(), 12);
    // Only cluster names answer with a .svc suffix, and only the cluster's own domain.
    for host in [
        "hello.default.example.com.svc",
        "hello.default.example.com.svc.cluster.local",
        "hello.default.svc.other.local",
        "hello.default.svc.svc",
        "svc",
    ] {
        assert!(t.lookup(host).is_none(), "{host}");
    }
}

#[test]
fn endpoints_are_ready_private_http_port_deduplicated() {
    let (t, _) = table(SNAPSHOT);
    assert_eq!(
        addrs(&t, "v1-hello.default.example.com"),
        ["10.0.0.1:8012", "10.0.0.2:8012", "10.0.0.4:8012"]
    );
    assert_eq!(
        addrs(&t, "v2-hello.default.example.com"),
        ["[fd00::1]:8012"]
    );
}

#[test]
fn a_revision_without_endpoints_is_cold() {
    let text = SNAPSHOT
        .replace("hello-00002-private", "unrelated-private")
        .replace(
            "serving.knative.dev/revision: hello-00002",
            "serving.knative.dev/revision: other",
        );
    let (t, _) = table(&text);
    assert!(addrs(&t, "v2-hello.default.example.com").is_empty());
}

fn one_route(name: &str, traffic: &str) -> String {
    format!(
        "kind: Route\nmetadata: {{name: {name}, namespace: ns}}\nstatus:\n  url: http://{name}.ns.example.com\n  traffic: {traffic}\n---\n"
    )
}

#[test]
fn invalid_routes_are_left_out_alone_with_their_reason() {
    let cases = [
        ("sum", "[{revisionName: a, percent: 50}]", "percent_sum"),
        (
            "negative",
            "[{revisionName: a, percent: 110}, {revisionName: b, percent: -10}]",
            "negative_percent",
        ),
        ("norev", "[{percent: 100}]", "missing_revision"),
        ("empty", "[]", "no_traffic"),
        ("types", "[{revisionName: a, percent: many}]", "decode"),
        (
            "badname",
            "[{revisionName: \"A b\", percent: 100}]",
            "bad_name",
        ),
    ];
    let mut text = one_route("good", "[{revisionName: good-1, percent: 100}]");
    for (name, traffic, _) in cases {
        text += &one_route(name, traffic);
    }
    text += "kind: Route\nmetadata: {name: nostatus, namespace: ns}\n---\n";
    text += "kind: Route\nmetadata: {name: nourl, namespace: ns}\nstatus: {traffic: [{revisionName: a, percent: 100}]}\n";
    let (t, _) = table(&text);
    assert_eq!(t.route_count(), 1);
    assert_eq!(revision_of(&t, "good.ns.example.com"), "good-1");
    let mut got: Vec<(String, &str)> = t
        .rejected()
        .iter()
        .map(|r| (r.object.to_string(), r.error.reason()))
        .collect();
    got.sort();
    let mut want: Vec<(String, &str)> = cases
        .iter()
        .map(|(n, _, reason)| (format!("ns/{n}"), *reason))
        .collect();
    want.push(("ns/nostatus".into(), "no_status"));
    want.push(("ns/nourl".into(), "no_url"));
    want.sort();
    assert_eq!(got, want);
    assert!(t.rejected().iter().all(|r| r.outcome == Outcome::LeftOut));
    let msg = t
        .rejected()
        .iter()
        .find(|r| r.object.name == "sum")
        .unwrap()
        .to_string();
    assert_eq!(
        msg,
        "Route ns/sum: status.traffic percents sum to 50, not 100 (left out)"
    );
}

#[test]
fn a_broken_update_keeps_the_last_good_version() {
    let good = one_route("r", "[{revisionName: r-1, percent: 100}]");
    let (first, last_good) = table(&good);
    assert_eq!(revision_of(&first, "r.ns.example.com"), "r-1");

    let broken = one_route("r", "[{revisionName: r-2, percent: 40}]");
    let (second, last_good) = table_after(&broken, &last_good, Some(&first));
    assert_eq!(revision_of(&second, "r.ns.example.com"), "r-1");
    assert_eq!(second.rejected()[0].outcome, Outcome::LastGood);
    assert!(second.route(0).last_good);

    // Still broken on the next build: the last good version survives it.
    let (third, last_good) = table_after(&broken, &last_good, Some(&second));
    assert_eq!(revision_of(&third, "r.ns.example.com"), "r-1");

    // Removed from the source: gone, last good or not.
    let (fourth, _) = table_after("", &last_good, Some(&third));
    assert_eq!(fourth.route_count(), 0);
}

#[test]
fn host_conflicts_go_to_the_first_route_by_key() {
    let mut text = one_route("a", "[{revisionName: a-1, percent: 100}]");
    text += &one_route("b", "[{revisionName: b-1, percent: 100}]")
        .replace("b.ns.example.com", "a.ns.example.com");
    let (t, _) = table(&text);
    assert_eq!(revision_of(&t, "a.ns.example.com"), "a-1");
    assert_eq!(revision_of(&t, "b.ns"), "b-1", "b keeps its other hosts");
    let r = &t.rejected()[0];
    assert_eq!(r.to_string(), "Route ns/b: host a.ns.example.com is already served by Route ns/a (the rest of it is served)");
}

#[test]
fn cluster_local_routes_are_marked() {
    let mut text = one_route("lbl", "[{revisionName: x-1, percent: 100}]").replace(
        "namespace: ns}",
        "namespace: ns, labels: {networking.knative.dev/visibility: cluster-local}}",
    );
    text += &one_route("svc", "[{revisionName: y-1, percent: 100}]")
        .replace("svc.ns.example.com", "svc.ns.svc.cluster.local");
    text += &one_route("pub", "[{revisionName: z-1, percent: 100}]");
    let (t, _) = table(&text);
    assert!(t.lookup("lbl.ns.example.com").unwrap().internal_only);
    assert!(t.lookup("svc.ns.svc.cluster.local").unwrap().internal_only);
    assert!(!t.lookup("pub.ns.example.com").unwrap().internal_only);
    assert!(t.rejected().is_empty(), "{:?}", t.rejected());
}

#[test]
fn bad_slices_are_rejected_by_name_and_the_rest_served() {
    let slice = |name: &str, extra: &str| {
        format!(
        "kind: EndpointSlice\nmetadata: {{name: {name}, namespace: ns, labels: {{serving.knative.dev/revision: r-1, networking.internal.knative.dev/serviceType: Private}}}}\n{extra}\n---\n"
    )
    };
    let mut text = one_route("r", "[{revisionName: r-1, percent: 100}]");
    text += &slice(
        "noport",
        "ports: [{name: metrics, port: 9090}]\nendpoints: [{addresses: [10.0.0.9]}]",
    );
    text += &slice(
        "fqdn",
        "addressType: FQDN\nports: [{name: http, port: 8012}]\nendpoints: [{addresses: [a.b]}]",
    );
    text += &slice("mixed", "ports: [{name: http, port: 8012}]\nendpoints: [{addresses: [nonsense]}, {addresses: [10.0.0.1]}]");
    let (t, _) = table(&text);
    assert_eq!(addrs(&t, "r.ns.example.com"), ["10.0.0.1:8012"]);
    let mut got: Vec<(String, &str, Outcome)> = t
        .rejected()
        .iter()
        .map(|r| (r.object.to_string(), r.error.reason(), r.outcome))
        .collect();
    got.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        got,
        [
            ("ns/fqdn".to_string(), "address_type", Outcome::LeftOut),
            ("ns/mixed".to_string(), "bad_address", Outcome::PartlyServed),
            ("ns/noport".to_string(), "no_http_port", Outcome::LeftOut),
        ]
    );
}

#[test]
fn slices_of_another_namespace_do_not_count() {
    let text = SNAPSHOT.replace(
        "name: hello-00002-private\n  namespace: default",
        "name: hello-00002-private\n  namespace: elsewhere",
    );
    let (t, _) = table(&text);
    assert!(addrs(&t, "v2-hello.default.example.com").is_empty());
}

#[test]
fn inflight_counters_survive_a_rebuild() {
    let (first, lg) = table(SNAPSHOT);
    let r = one(&first, "v1-hello.default.example.com");
    first.backend(r).endpoints[0]
        .state
        .inflight
        .store(7, std::sync::atomic::Ordering::Relaxed);
    let (second, _) = table_after(SNAPSHOT, &lg, Some(&first));
    let r = one(&second, "v1-hello.default.example.com");
    assert_eq!(second.backend(r).endpoints[0].load(), 7);
}

#[test]
fn response_counts_survive_a_rebuild_per_route_and_revision() {
    let (first, lg) = table(SNAPSHOT);
    let entry = first.lookup("v2-hello.default.example.com").unwrap();
    let v2 = one(&first, "v2-hello.default.example.com");
    let route = first.route(entry.route);
    // Both revisions of the split (and of the tags) are counted, each once.
    assert_eq!(route.responses.len(), 2);
    route.responses(v2).unwrap().record(503);
    route.responses(v2).unwrap().record(200);
    let (second, _) = table_after(SNAPSHOT, &lg, Some(&first));
    let entry = second.lookup("v2-hello.default.example.com").unwrap();
    let v2 = one(&second, "v2-hello.default.example.com");
    let mut counts = second.route(entry.route).responses(v2).unwrap().counts();
    counts.sort_unstable();
    assert_eq!(counts, [(200, 1), (503, 1)]);
    // The route's other revision starts from nothing.
    let v1 = second.routes()[entry.route as usize]
        .responses
        .iter()
        .find(|r| r.0 != v2)
        .unwrap();
    assert!(v1.1.counts().is_empty());
}

#[test]
fn endpoint_updates_swap_only_their_revisions() {
    use config_sync::ObjectKey;
    use dataplane::endpoints::revision_key;
    use dataplane::endpoints::{EndpointUpdate, SliceEndpoints};
    let (t, _) = table(SNAPSHOT);
    let v1 = one(&t, "v1-hello.default.example.com");
    let v2 = one(&t, "v2-hello.default.example.com");
    t.backend(v1).endpoints[0]
        .state
        .inflight
        .store(3, std::sync::atomic::Ordering::Relaxed);
    let updates = [
        EndpointUpdate {
            key: revision_key("default", "hello-00001"),
            slices: vec![SliceEndpoints {
                ports: vec![("http".into(), 8012), ("http-metrics".into(), 9090)],
                addrs: vec!["10.0.0.9".parse().unwrap(), "10.0.0.1".parse().unwrap()],
            }],
        },
        // Not referenced by any route: ignored.
        EndpointUpdate {
            key: revision_key("default", "nobody-00001"),
            slices: vec![],
        },
    ];
    let bad = config_sync::Rejection::new(
        config_sync::model::Kind::EndpointSlice,
        ObjectKey::new("default", "hello-00001-private-a"),
        config_sync::ObjectError::NoHttpPort,
    );
    let next = t.with_endpoints(
        &updates,
        &[ObjectKey::new("default", "hello-00001-private-a")],
        vec![bad],
        2,
    );
    assert_eq!(next.generation, 2);
    assert_eq!(
        addrs(&next, "v1-hello.default.example.com"),
        ["10.0.0.1:8012", "10.0.0.9:8012"]
    );
    assert_eq!(
        next.backend(v1).endpoints[0].load(),
        3,
        "a staying endpoint keeps its count"
    );
    // The endpoint that joined a serving revision warms up (slow start);
    // the one that stayed, and those of the first table, do not.
    assert_eq!(t.backend(v1).endpoints[0].state.ready_at(), 0);
    assert_eq!(next.backend(v1).endpoints[0].state.ready_at(), 0);
    assert!(next.backend(v1).endpoints[1].state.ready_at() > 0);
    assert_eq!(
        next.backend(v1).newest_ready_at,
        next.backend(v1).endpoints[1].state.ready_at()
    );
    assert!(
        std::ptr::eq(next.backend(v2), t.backend(v2)),
        "untouched revisions are shared"
    );
    assert_eq!(next.host_count(), t.host_count());
    assert_eq!(next.rejected().len(), 1);
    // A later update of the same slice replaces its rejection.
    let fixed = next.with_endpoints(
        &[],
        &[ObjectKey::new("default", "hello-00001-private-a")],
        vec![],
        3,
    );
    assert!(fixed.rejected().is_empty());
}

#[test]
fn a_route_listed_twice_is_served_as_its_later_version() {
    let text = one_route("r", "[{revisionName: r-1, percent: 100}]")
        + &one_route("r", "[{revisionName: r-2, percent: 100}]");
    let (t, last_good) = table(&text);
    assert_eq!(t.route_count(), 1);
    assert_eq!(revision_of(&t, "r.ns.example.com"), "r-2");
    // The last-good set agrees with what is served.
    let broken = one_route("r", "[{revisionName: r-3, percent: 1}]");
    let (next, _) = table_after(&broken, &last_good, Some(&t));
    assert_eq!(revision_of(&next, "r.ns.example.com"), "r-2");
}

/// A KIngress of our class with one rule for `host`, splitting to `services`.
fn kingress(name: &str, created: &str, host: &str, services: &[(&str, u32)]) -> String {
    let splits: Vec<String> = services
        .iter()
        .map(|(s, p)| {
            format!("{{serviceName: {s}, serviceNamespace: ns, servicePort: 80, percent: {p}}}")
        })
        .collect();
    format!(
        "apiVersion: networking.internal.knative.dev/v1alpha1\nkind: Ingress\nmetadata:\n  name: {name}\n  namespace: ns\n  creationTimestamp: \"{created}\"\n  annotations: {{networking.knative.dev/ingress.class: knative-gateway.ingress.networking.knative.dev}}\nspec:\n  rules:\n  - hosts: [{host}]\n    http:\n      paths:\n      - splits: [{}]\n---\n",
        splits.join(", ")
    )
}

/// A Service `name` with port 80 → `target`, and one slice with `addr` ready.
fn service(name: &str, target: u16, addr: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: ns}}\nspec: {{ports: [{{name: http, port: 80, targetPort: {target}}}]}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}-x, namespace: ns, labels: {{kubernetes.io/service-name: {name}}}}}\nports: [{{name: http, port: {target}}}]\nendpoints: [{{addresses: [\"{addr}\"]}}]\n---\n"
    )
}

#[test]
fn a_kingress_waiting_for_its_new_service_keeps_serving_its_last_version() {
    let v1 = kingress(
        "web",
        "2026-01-01T00:00:00Z",
        "web.example.com",
        &[("a", 100)],
    );
    let (t, lg) = table(&(v1 + &service("a", 8080, "10.0.0.1")));
    assert!(t.rejected().is_empty(), "{:?}", t.rejected());
    assert_eq!(revision_of(&t, "web.example.com"), "a");
    // The new version names Service b, whose watch event has not arrived yet.
    let v2 = kingress(
        "web",
        "2026-01-01T00:00:00Z",
        "web.example.com",
        &[("b", 100)],
    );
    let (next, lg) = table_after(
        &(v2.clone() + &service("a", 8080, "10.0.0.1")),
        &lg,
        Some(&t),
    );
    assert_eq!(
        revision_of(&next, "web.example.com"),
        "a",
        "the last good version serves"
    );
    let r = &next.rejected()[0];
    assert_eq!(
        (r.error.reason(), r.outcome),
        ("no_service", Outcome::LastGood)
    );
    // Once b arrives, the new version is served.
    let (last, _) = table_after(&(v2 + &service("b", 9090, "10.0.0.2")), &lg, Some(&next));
    assert!(last.rejected().is_empty(), "{:?}", last.rejected());
    assert_eq!(addrs(&last, "web.example.com"), ["10.0.0.2:9090"]);
    // A KIngress that was never served, waiting for its Service: left out.
    let (t, _) = table(&kingress(
        "new",
        "2026-01-01T00:00:00Z",
        "new.example.com",
        &[("c", 100)],
    ));
    assert!(t.lookup("new.example.com").is_none());
    assert_eq!(t.rejected()[0].outcome, Outcome::LeftOut);
}

/// Service `name` alone, without its EndpointSlice.
fn bare_service(name: &str, target: u16) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: ns}}\nspec: {{ports: [{{name: http, port: 80, targetPort: {target}}}]}}\n---\n"
    )
}

#[test]
fn a_kingress_waiting_for_its_new_services_slices_keeps_serving_its_last_version() {
    use config_sync::compiler::{update_kingresses, KIngressUpdate};
    let web = |svc| {
        kingress(
            "web",
            "2026-01-01T00:00:00Z",
            "web.example.com",
            &[(svc, 100)],
        )
    };
    let (t, lg) = table(&(web("a") + &service("a", 8080, "10.0.0.1")));
    // The new version names Service b: its Service has arrived, its
    // EndpointSlice not yet. Serving b now would answer 503.
    let waiting = web("b") + &service("a", 8080, "10.0.0.1") + &bare_service("b", 9090);
    let (next, next_lg) = table_after(&waiting, &lg, Some(&t));
    assert_eq!(addrs(&next, "web.example.com"), ["10.0.0.1:8080"]);
    let r = &next.rejected()[0];
    assert_eq!(
        (r.error.to_string().as_str(), r.outcome),
        ("Service ns/b has no EndpointSlices yet", Outcome::LastGood)
    );
    // The same through the patch path.
    let snapshot = parse(&(service("a", 8080, "10.0.0.1") + &bare_service("b", 9090))).unwrap();
    let mut patch_lg = lg.clone();
    let patched = update_kingresses(
        &t,
        KIngressUpdate {
            kingresses: kingresses_of(&web("b")),
            services: snapshot.services,
            slices: snapshot.slices,
        },
        &BuildOptions::default(),
        &mut patch_lg,
        2,
    )
    .expect("held back in place");
    assert_eq!(addrs(&patched, "web.example.com"), ["10.0.0.1:8080"]);
    assert_eq!(patched.rejected()[0].error.reason(), "no_endpoints");
    // Once the slice arrives, b is served.
    let (last, _) = table_after(
        &(web("b") + &service("b", 9090, "10.0.0.2")),
        &next_lg,
        Some(&next),
    );
    assert!(last.rejected().is_empty(), "{:?}", last.rejected());
    assert_eq!(addrs(&last, "web.example.com"), ["10.0.0.2:9090"]);
    // A KIngress never served before is served at once: nothing to keep.
    let (fresh, _) = table(
        &(kingress(
            "new",
            "2026-01-01T00:00:00Z",
            "new.example.com",
            &[("c", 100)],
        ) + &bare_service("c", 8080)),
    );
    assert!(fresh.rejected().is_empty(), "{:?}", fresh.rejected());
    assert!(fresh.lookup("new.example.com").is_some());
}

#[test]
fn the_older_kingress_keeps_a_contested_host() {
    let text = kingress(
        "young",
        "2026-03-01T00:00:00Z",
        "shared.example.com",
        &[("b", 100)],
    ) + &kingress(
        "old",
        "2026-01-01T00:00:00Z",
        "shared.example.com",
        &[("a", 100)],
    ) + &service("a", 8080, "10.0.0.1")
        + &service("b", 8080, "10.0.0.2");
    let (t, _) = table(&text);
    assert_eq!(revision_of(&t, "shared.example.com"), "a");
    let r = &t.rejected()[0];
    assert_eq!(r.object.to_string(), "ns/young");
    assert_eq!(
        r.error.to_string(),
        "host shared.example.com is already served by KIngress ns/old"
    );
    assert_eq!(r.outcome, Outcome::PartlyServed);
}

#[test]
fn endpoint_updates_by_service_follow_each_backends_port() {
    use dataplane::endpoints::service_key;
    use dataplane::endpoints::{EndpointUpdate, SliceEndpoints};
    let text = kingress(
        "web",
        "2026-01-01T00:00:00Z",
        "web.example.com",
        &[("a", 100)],
    ) + &service("a", 8080, "10.0.0.1");
    let (t, _) = table(&text);
    let update = EndpointUpdate {
        key: service_key("ns", "a"),
        slices: vec![SliceEndpoints {
            // The backend's port is the one named after the Service port, not the first.
            ports: vec![("metrics".into(), 9091), ("http".into(), 8080)],
            addrs: vec!["10.0.0.7".parse().unwrap()],
        }],
    };
    let next = t.with_endpoints(&[update], &[], Vec::new(), 2);
    assert_eq!(addrs(&next, "web.example.com"), ["10.0.0.7:8080"]);
}

/// `/debug/routes` of a table, without what differs between any two builds.
fn view(t: &Table) -> serde_json::Value {
    let mut v = serde_json::to_value(t.view()).unwrap();
    v["generation"] = serde_json::Value::Null;
    v["built_at_unix"] = serde_json::Value::Null;
    // Backend ids may differ: compare backends as a sorted set.
    let mut revisions: Vec<String> = v["revisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.to_string())
        .collect();
    revisions.sort();
    revisions.dedup();
    v["revisions"] = serde_json::json!(revisions);
    v
}

/// Decoded KIngresses of `text` (for an update).
fn kingresses_of(text: &str) -> Vec<std::sync::Arc<config_sync::model::kingress::KIngress>> {
    parse(text).unwrap().kingresses
}

#[test]
fn a_patched_kingress_change_equals_a_full_build() {
    use config_sync::compiler::{update_kingresses, KIngressUpdate};
    let services = service("a", 8080, "10.0.0.1") + &service("b", 9090, "10.0.0.2");
    let before = kingress(
        "web",
        "2026-01-01T00:00:00Z",
        "web.example.com",
        &[("a", 100)],
    ) + &kingress(
        "other",
        "2026-01-01T00:00:00Z",
        "other.example.com",
        &[("a", 100)],
    );
    let (t, mut lg) = table(&(before + &services));
    // The split changes; a new KIngress appears on a free host.
    let changed = kingress(
        "web",
        "2026-01-01T00:00:00Z",
        "web.example.com",
        &[("a", 30), ("b", 70)],
    ) + &kingress(
        "fresh",
        "2026-01-02T00:00:00Z",
        "fresh.example.com",
        &[("b", 100)],
    );
    let snapshot = parse(&services).unwrap();
    let update = KIngressUpdate {
        kingresses: kingresses_of(&changed),
        services: snapshot.services,
        slices: snapshot.slices,
    };
    let patched = update_kingresses(&t, update, &BuildOptions::default(), &mut lg, 2)
        .expect("a split change and a new free host are patched");
    let after = kingress(
        "other",
        "2026-01-01T00:00:00Z",
        "other.example.com",
        &[("a", 100)],
    ) + &changed
        + &services;
    let (full, _) = table(&after);
    let mut a = view(&patched);
    let mut b = view(&full);
    // Routes are listed by id: the patch appends, the full build orders by age.
    for v in [&mut a, &mut b] {
        let mut routes = v["routes"].as_array().unwrap().clone();
        routes.sort_by_key(|r| r["name"].to_string());
        v["routes"] = serde_json::json!(routes);
    }
    assert_eq!(a, b);
    assert_eq!(addrs(&patched, "fresh.example.com"), ["10.0.0.2:9090"]);
}

#[test]
fn a_kingress_change_that_moves_hosts_takes_a_full_build() {
    use config_sync::compiler::{update_kingresses, KIngressUpdate};
    let services = service("a", 8080, "10.0.0.1");
    let (t, mut lg) = table(
        &(kingress(
            "web",
            "2026-01-01T00:00:00Z",
            "web.example.com",
            &[("a", 100)],
        ) + &services),
    );
    let snapshot = parse(&services).unwrap();
    let moved = KIngressUpdate {
        kingresses: kingresses_of(&kingress(
            "web",
            "2026-01-01T00:00:00Z",
            "www.example.com",
            &[("a", 100)],
        )),
        services: snapshot.services.clone(),
        slices: snapshot.slices.clone(),
    };
    assert!(update_kingresses(&t, moved, &BuildOptions::default(), &mut lg, 2).is_none());
    let taken = KIngressUpdate {
        kingresses: kingresses_of(&kingress(
            "thief",
            "2026-01-01T00:00:00Z",
            "web.example.com",
            &[("a", 100)],
        )),
        services: snapshot.services.clone(),
        slices: snapshot.slices.clone(),
    };
    assert!(update_kingresses(&t, taken, &BuildOptions::default(), &mut lg, 2).is_none());
    // A broken version is patched as its rejection; the last good one serves.
    let broken = KIngressUpdate {
        kingresses: kingresses_of(&kingress(
            "web",
            "2026-01-01T00:00:00Z",
            "web.example.com",
            &[("a", 50)],
        )),
        services: snapshot.services,
        slices: snapshot.slices,
    };
    let next = update_kingresses(&t, broken, &BuildOptions::default(), &mut lg, 2).unwrap();
    assert_eq!(addrs(&next, "web.example.com"), ["10.0.0.1:8080"]);
    let r = &next.rejected()[0];
    assert_eq!(
        (r.error.reason(), r.outcome),
        ("split_sum", Outcome::LastGood)
    );
}

#[test]
fn only_an_endpoint_joining_others_warms_up() {
    use dataplane::endpoints::revision_key;
    use dataplane::endpoints::{EndpointUpdate, SliceEndpoints};
    let (t, lg) = table(SNAPSHOT);
    let v1 = one(&t, "v1-hello.default.example.com");
    let with = |addrs: &[&str]| EndpointUpdate {
        key: revision_key("default", "hello-00001"),
        slices: vec![SliceEndpoints {
            ports: vec![("http".into(), 8012)],
            addrs: addrs.iter().map(|a| a.parse().unwrap()).collect(),
        }],
    };
    let zero = t.with_endpoints(&[with(&[])], &[], vec![], 2);
    assert!(zero.backend(v1).endpoints.is_empty());
    // Waking from zero: the first pod takes everything at once.
    let woken = zero.with_endpoints(&[with(&["10.0.0.5"])], &[], vec![], 3);
    assert_eq!(woken.backend(v1).endpoints[0].state.ready_at(), 0);
    assert_eq!(woken.backend(v1).newest_ready_at, 0);
    let two = woken.with_endpoints(&[with(&["10.0.0.5", "10.0.0.6"])], &[], vec![], 4);
    let eps = &two.backend(v1).endpoints;
    assert_eq!(eps[0].state.ready_at(), 0);
    assert!(eps[1].state.ready_at() > 0, "the second pod warms up");
    // A full rebuild over a live table marks a new endpoint the same way,
    // and keeps the state of the ones it knew.
    let text = SNAPSHOT.replacen(
        "- addresses: [\"10.0.0.1\"]",
        "- addresses: [\"10.0.0.42\"]\n- addresses: [\"10.0.0.1\"]",
        1,
    );
    assert!(text.contains("10.0.0.42"), "the fixture lists 10.0.0.1");
    let (rebuilt, _) = table_after(&text, &lg, Some(&t));
    let eps = &rebuilt
        .backend(one(&rebuilt, "v1-hello.default.example.com"))
        .endpoints;
    let new = eps
        .iter()
        .find(|e| e.addr.ip().to_string() == "10.0.0.42")
        .unwrap();
    assert!(new.state.ready_at() > 0);
    let old = eps
        .iter()
        .find(|e| e.addr.ip().to_string() == "10.0.0.1")
        .unwrap();
    assert!(std::sync::Arc::ptr_eq(
        &old.state,
        &t.backend(v1).endpoints[0].state
    ));
}

/// The objects of a snapshot text, read as a source's stores are when its
/// changes are applied; counts the full snapshots taken.
struct TextInputs {
    text: String,
    full_reads: std::cell::Cell<u32>,
}

impl config_sync::change::Inputs for TextInputs {
    fn snapshot(&self) -> config_sync::Snapshot {
        self.full_reads.set(self.full_reads.get() + 1);
        parse(&self.text).unwrap()
    }

    fn kingresses(
        &self,
        keys: &std::collections::BTreeSet<config_sync::ObjectKey>,
    ) -> config_sync::compiler::KIngressUpdate {
        let s = parse(&self.text).unwrap();
        config_sync::compiler::KIngressUpdate {
            kingresses: s
                .kingresses
                .into_iter()
                .filter(|k| keys.contains(&k.key()))
                .collect(),
            services: s.services,
            slices: s.slices,
        }
    }

    fn endpoints(
        &self,
        keys: &std::collections::BTreeSet<String>,
    ) -> config_sync::change::EndpointsNow {
        let mut now = config_sync::change::EndpointsNow::default();
        let mut updates: Vec<dataplane::endpoints::EndpointUpdate> = keys
            .iter()
            .map(|k| dataplane::endpoints::EndpointUpdate {
                key: k.clone(),
                slices: Vec::new(),
            })
            .collect();
        for slice in parse(&self.text).unwrap().slices {
            let found = config_sync::compiler::slice_endpoints(&slice, &mut now.rejected);
            if let Ok(Some((slice_keys, found))) = found {
                for u in updates.iter_mut().filter(|u| slice_keys.contains(&u.key)) {
                    u.slices.push(found.clone());
                }
            }
        }
        now.updates = updates;
        now
    }
}

#[test]
fn the_publisher_patches_what_changed_and_rebuilds_only_what_a_patch_cannot_express() {
    use config_sync::change::Changes;
    use config_sync::{ObjectKey, Publisher};
    let web = |host: &str, svc| kingress("web", "2026-01-01T00:00:00Z", host, &[(svc, 100)]);
    let web_changed = || Changes {
        kingresses: [ObjectKey::new("ns", "web")].into_iter().collect(),
        ..Changes::default()
    };
    let publisher = Publisher::new(BuildOptions::default());
    let mut inputs = TextInputs {
        text: web("web.example.com", "a") + &service("a", 8080, "10.0.0.1"),
        full_reads: Default::default(),
    };
    let apply = |changes, inputs: &TextInputs| publisher.apply(changes, inputs);
    assert!(
        apply(Changes::default(), &inputs).is_none(),
        "nothing changed"
    );
    // Before the first table, any change is a full build.
    let first = apply(web_changed(), &inputs).unwrap();
    assert_eq!(addrs(&first, "web.example.com"), ["10.0.0.1:8080"]);
    assert_eq!(inputs.full_reads.get(), 1);
    // The split moves to Service b, whose slice has not arrived: patched in,
    // held at its last good version.
    inputs.text =
        web("web.example.com", "b") + &service("a", 8080, "10.0.0.1") + &bare_service("b", 9090);
    let held = apply(web_changed(), &inputs).unwrap();
    assert_eq!(addrs(&held, "web.example.com"), ["10.0.0.1:8080"]);
    assert_eq!(held.rejected()[0].error.reason(), "no_endpoints");
    assert_eq!(inputs.full_reads.get(), 1, "a patch, not a full build");
    // The slice arrives: only an endpoint change, yet the held KIngress is
    // the one it releases, patched without a full build.
    inputs.text = web("web.example.com", "b")
        + &service("a", 8080, "10.0.0.1")
        + &service("b", 9090, "10.0.0.2");
    let endpoints = [dataplane::endpoints::service_key("ns", "b")];
    let slice_arrived = Changes {
        endpoints: endpoints.into_iter().collect(),
        ..Changes::default()
    };
    let released = apply(slice_arrived, &inputs).unwrap();
    assert!(released.rejected().is_empty(), "{:?}", released.rejected());
    assert_eq!(addrs(&released, "web.example.com"), ["10.0.0.2:9090"]);
    assert_eq!(inputs.full_reads.get(), 1, "still no full build");
    // Its hosts move: a patch cannot be exact, so everything is rebuilt.
    inputs.text = web("www.example.com", "b") + &service("b", 9090, "10.0.0.2");
    let moved = apply(web_changed(), &inputs).unwrap();
    assert_eq!(inputs.full_reads.get(), 2, "rebuilt");
    assert!(moved.lookup("web.example.com").is_none());
    assert_eq!(addrs(&moved, "www.example.com"), ["10.0.0.2:9090"]);
    // A full change is always a full build.
    let full = Changes {
        full: true,
        ..Changes::default()
    };
    apply(full, &inputs).unwrap();
    assert_eq!(inputs.full_reads.get(), 3);
}
