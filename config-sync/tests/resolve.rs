//! Requests resolved against a table built from KIngresses: paths in order,
//! header matches, cluster-local rules, host rewrites and sticky splits, the
//! builder (config-sync) and the request-time resolution (dataplane) together.

use config_sync::compiler::{build, BuildOptions, LastGood};
use config_sync::sources::file::parse;
use dataplane::resolve::*;
use dataplane::table::Table;
use dataplane::ObjectKey;
use http::HeaderMap;

const SNAPSHOT: &str = r#"
apiVersion: networking.internal.knative.dev/v1alpha1
kind: Ingress
metadata:
  name: web
  namespace: ns
  annotations: {networking.knative.dev/ingress.class: knative-gateway.ingress.networking.knative.dev}
spec:
  rules:
  - hosts: [web.example.com]
    http:
      paths:
      - path: /api
        splits: [{serviceName: api, serviceNamespace: ns, servicePort: 80}]
      - headers: {Knative-Serving-Tag: {exact: canary}}
        appendHeaders: {X-Tag: canary}
        splits: [{serviceName: app, serviceNamespace: ns, servicePort: http,
                  appendHeaders: {Knative-Serving-Revision: app-2, Knative-Serving-Namespace: ns}}]
      - splits: [{serviceName: app, serviceNamespace: ns, servicePort: http}]
  - hosts: [web.ns.svc.cluster.local]
    visibility: ClusterLocal
    http:
      paths:
      - splits: [{serviceName: app, serviceNamespace: ns, servicePort: http}]
---
apiVersion: networking.internal.knative.dev/v1alpha1
kind: Ingress
metadata:
  name: mapping
  namespace: ns
  annotations: {networking.knative.dev/ingress.class: knative-gateway.ingress.networking.knative.dev}
spec:
  rules:
  - hosts: [shop.example.org]
    http:
      paths:
      - rewriteHost: web.ns.svc.cluster.local
        appendHeaders: {K-Original-Host: shop.example.org}
        splits: [{serviceName: web, serviceNamespace: ns, servicePort: 80}]
  - hosts: [loop.example.org]
    http:
      paths:
      - rewriteHost: loop.example.org
        splits: [{serviceName: web, serviceNamespace: ns, servicePort: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: api, namespace: ns}
spec: {ports: [{port: 80, targetPort: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: app, namespace: ns}
spec: {ports: [{name: http, port: 80, targetPort: web}]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: ns}
spec: {type: ExternalName, externalName: gateway-internal.gw.svc.cluster.local,
       ports: [{name: http2, port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: api-x, namespace: ns, labels: {kubernetes.io/service-name: api}}
ports: [{port: 8080}]
endpoints: [{addresses: [10.0.0.1]}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: app-x, namespace: ns, labels: {kubernetes.io/service-name: app}}
ports: [{name: http, port: 9000}]
endpoints: [{addresses: [10.0.0.2]}]
"#;

fn table() -> Table {
    let opts = BuildOptions {
        internal_service: Some(ObjectKey::new("gw", "gateway-internal")),
        ..BuildOptions::default()
    };
    let (t, _) = build(
        parse(SNAPSHOT).unwrap(),
        &opts,
        &LastGood::default(),
        None,
        1,
    );
    assert!(t.rejected().is_empty(), "{:?}", t.rejected());
    t
}

fn go(
    t: &Table,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    internal: bool,
) -> Result<Resolved, Miss> {
    let mut map = HeaderMap::new();
    for (k, v) in headers {
        map.insert(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    let req = Request {
        host,
        path,
        headers: &map,
        internal,
        probe: false,
        tls: false,
    };
    let mut out = Resolved::default();
    resolve(t, req, &mut out).map(|()| out)
}

fn backend(t: &Table, r: &Resolved) -> String {
    let b = t.backend(r.backend);
    format!(
        "{} {:?}",
        b.name,
        b.endpoints
            .iter()
            .map(|e| e.addr.to_string())
            .collect::<Vec<_>>()
    )
}

fn set(r: &Resolved) -> Vec<(String, String)> {
    r.headers
        .iter()
        .flatten()
        .flat_map(|h| h.iter())
        .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_owned()))
        .collect()
}

#[test]
fn paths_in_order_with_prefix_and_header_matches() {
    let t = table();
    let api = go(&t, "web.example.com", "/api/v1", &[], false).unwrap();
    assert_eq!(
        backend(&t, &api),
        r#"api ["10.0.0.1:8080"]"#,
        "unnamed port by targetPort"
    );
    let tagged = go(
        &t,
        "web.example.com",
        "/",
        &[("knative-serving-tag", "canary")],
        false,
    )
    .unwrap();
    assert_eq!(
        backend(&t, &tagged),
        r#"app ["10.0.0.2:9000"]"#,
        "named targetPort via the slice's port name"
    );
    assert_eq!(
        set(&tagged),
        [
            ("x-tag", "canary"),
            ("knative-serving-namespace", "ns"),
            ("knative-serving-revision", "app-2")
        ]
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
    );
    assert!(
        tagged.activator,
        "a split with Knative-Serving-Revision goes to the activator when cold"
    );
    let other = go(
        &t,
        "web.example.com",
        "/",
        &[("knative-serving-tag", "nope")],
        false,
    )
    .unwrap();
    assert!(set(&other).is_empty());
    assert!(
        !other.activator,
        "a plain Service split is a 503 when it has no endpoint"
    );
}

#[test]
fn cluster_local_rules_only_inside_and_expanded() {
    let t = table();
    for host in ["web.ns.svc.cluster.local", "web.ns.svc", "web.ns"] {
        assert_eq!(
            go(&t, host, "/", &[], false).unwrap_err(),
            Miss::NoRoute,
            "{host}"
        );
        assert!(go(&t, host, "/", &[], true).is_ok(), "{host}");
    }
}

#[test]
fn external_name_to_the_gateway_dispatches_internally_with_the_rewritten_host() {
    let t = table();
    let r = go(&t, "shop.example.org", "/", &[], false).unwrap();
    assert_eq!(backend(&t, &r), r#"app ["10.0.0.2:9000"]"#);
    assert_eq!(r.rewrite_host.as_ref().unwrap(), "web.ns.svc.cluster.local");
    assert_eq!(
        set(&r),
        [("k-original-host".to_owned(), "shop.example.org".to_owned())]
    );
    assert_eq!(
        go(&t, "loop.example.org", "/", &[], false).unwrap_err(),
        Miss::Loop
    );
}

#[test]
fn override_gets_the_hash_and_other_values_pass() {
    let t = table();
    let r = go(
        &t,
        "web.example.com",
        "/",
        &[("k-network-hash", "override")],
        false,
    )
    .unwrap();
    let route = t.route(r.route);
    assert_eq!(r.hash, route.hash);
    assert_eq!(r.hash.as_ref().unwrap().len(), 64);
    let r = go(
        &t,
        "web.example.com",
        "/",
        &[("k-network-hash", "custom")],
        false,
    )
    .unwrap();
    assert_eq!(r.hash, None);
}

#[test]
fn a_sticky_kingress_sets_its_cookie_and_honours_it() {
    let snapshot = r#"
apiVersion: networking.internal.knative.dev/v1alpha1
kind: Ingress
metadata:
  name: shop
  namespace: ns
  annotations:
    networking.knative.dev/ingress.class: knative-gateway.ingress.networking.knative.dev
    knative-gateway.dev/affinity: cookie
spec:
  rules:
  - hosts: [shop.example.com]
    http:
      paths:
      - splits:
        - {serviceName: shop-1, serviceNamespace: ns, servicePort: 80, percent: 90}
        - {serviceName: shop-2, serviceNamespace: ns, servicePort: 80, percent: 10}
---
apiVersion: v1
kind: Service
metadata: {name: shop-1, namespace: ns}
spec: {ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: shop-2, namespace: ns}
spec: {ports: [{port: 80}]}
"#;
    let (t, _) = build(
        parse(snapshot).unwrap(),
        &BuildOptions::default(),
        &LastGood::default(),
        None,
        1,
    );
    assert!(t.rejected().is_empty(), "{:?}", t.rejected());
    let mut to_2 = 0;
    for _ in 0..100 {
        let r = go(&t, "shop.example.com", "/", &[], false).unwrap();
        let name = &t.backend(r.backend).name;
        let cookie = r.set_cookie.expect("a new user gets a cookie");
        assert!(
            cookie
                .to_str()
                .unwrap()
                .starts_with(&format!("knative-revision={name}; Max-Age=86400;")),
            "{cookie:?}"
        );
        to_2 += usize::from(&**name == "shop-2");
    }
    assert_eq!(to_2, 10, "new users split exactly");
    for _ in 0..20 {
        let r = go(
            &t,
            "shop.example.com",
            "/",
            &[("cookie", "knative-revision=shop-2")],
            false,
        )
        .unwrap();
        assert_eq!(&*t.backend(r.backend).name, "shop-2");
        assert_eq!(r.set_cookie, None);
    }
}
