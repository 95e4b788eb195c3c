//! Where one request goes, as a plain function over the table: the host's
//! route, the first path that matches, a pick from its split, and the headers
//! to set on the way. A split to the gateway's own internal Service (an
//! ExternalName, as DomainMapping writes) is dispatched again, with the
//! rewritten Host, without a network hop.

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::select::pick_for;
use crate::table::{BackendId, BackendKind, Headers, RouteId, Table};

/// Internal re-dispatches allowed per request (DomainMapping needs one); past
/// that a request is looping through ExternalNames that point back at us.
pub const MAX_HOPS: usize = 2;
/// Header sets one request can collect: a path's and a split's per hop.
const MAX_SETS: usize = 2 * (MAX_HOPS + 1);

/// Header Knative's prober uses to ask for the applied KIngress hash.
pub const HASH_HEADER: HeaderName = HeaderName::from_static("k-network-hash");
/// The `K-Network-Hash` value that asks the ingress to fill in its hash.
pub const HASH_OVERRIDE: &str = "override";

/// What the request needs from the table.
#[derive(Debug, Clone, Copy)]
pub struct Request<'r> {
    /// Normalised host.
    pub host: &'r str,
    /// The request path.
    pub path: &'r str,
    /// The client's headers.
    pub headers: &'r HeaderMap,
    /// Came in on the internal listener.
    pub internal: bool,
    /// A Knative probe (`K-Network-Probe: probe`).
    pub probe: bool,
    /// Came in over TLS.
    pub tls: bool,
}

/// Where a request goes and what is set on it.
#[derive(Debug, Default, Clone)]
pub struct Resolved {
    /// The route whose split picked the backend.
    pub route: RouteId,
    /// The backend picked.
    pub backend: BackendId,
    /// With no ready endpoint: the activator (else 503).
    pub activator: bool,
    /// Header sets to apply upstream, in order; later ones replace earlier values.
    pub headers: [Option<Headers>; MAX_SETS],
    /// Replaces the upstream Host.
    pub rewrite_host: Option<HeaderValue>,
    /// Replaces the client's `K-Network-Hash: override`.
    pub hash: Option<HeaderValue>,
    /// A weighted split picked the backend (not a tag host, not a one-way
    /// path), so the request counts towards the route's served split.
    pub split: bool,
    /// Set on the response: a sticky split's cookie naming the revision
    /// picked for a client that had none (or one naming no revision it serves).
    pub set_cookie: Option<HeaderValue>,
}

/// Why a request is not forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Miss {
    /// No route answers this host on this listener: 404.
    NoRoute,
    /// The host's route has no path matching the request: 404.
    NoPath,
    /// A probe for a host no KIngress path serves: the gateway answers it
    /// itself (`--source routes`).
    Probe,
    /// ExternalNames pointing back at the gateway more than [`MAX_HOPS`] times.
    Loop,
    /// Plain HTTP to a host that asks for HTTPS: 301 to `https://`.
    Redirect,
}

/// Resolve `req` against `table`, into `out`.
#[inline]
pub fn resolve(table: &Table, req: Request<'_>, out: &mut Resolved) -> Result<(), Miss> {
    let mut host_buf;
    let mut host = req.host;
    let mut sets = 0;
    for hop in 0..=MAX_HOPS {
        let Some(entry) = table.lookup(host) else {
            return Err(if req.probe && hop == 0 {
                Miss::Probe
            } else {
                Miss::NoRoute
            });
        };
        if req.probe && hop == 0 && !entry.hashed {
            return Err(Miss::Probe);
        }
        // An internal hop arrives on the internal side, as it would over the network.
        if entry.internal_only && !req.internal && hop == 0 {
            return Err(Miss::NoRoute);
        }
        // Probes are never redirected: Knative probes over plain HTTP.
        if entry.https_redirect && !req.tls && !req.probe && hop == 0 {
            return Err(Miss::Redirect);
        }
        let (path, target) = entry
            .dispatch
            .resolve(req.path, req.headers)
            .ok_or(Miss::NoPath)?;
        let chosen = pick_for(target, req.headers, &mut out.set_cookie);
        // Only the first hop sees the client's `override`: it replaces it.
        if hop == 0
            && entry.hashed
            && req
                .headers
                .get(HASH_HEADER)
                .is_some_and(|v| v.as_bytes() == HASH_OVERRIDE.as_bytes())
        {
            out.hash = table.route(entry.route).hash.clone();
        }
        if let Some(path) = path {
            if let Some(h) = &path.append {
                out.headers[sets] = Some(h.clone());
                sets += 1;
            }
            if path.rewrite_host.is_some() {
                out.rewrite_host = path.rewrite_host.clone();
            }
        }
        if let Some(h) = &chosen.headers {
            out.headers[sets] = Some(h.clone());
            sets += 1;
        }
        if table.backend(chosen.backend).kind != BackendKind::Internal {
            out.route = entry.route;
            out.backend = chosen.backend;
            out.split = matches!(target, crate::table::Target::Split(_));
            out.activator = chosen.activator;
            return Ok(());
        }
        // Back into the gateway, as the (rewritten) Host on the internal listener.
        if let Some(rewritten) = &out.rewrite_host {
            host_buf = String::from_utf8_lossy(rewritten.as_bytes()).into_owned();
            host = &host_buf;
        }
    }
    Err(Miss::Loop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::{build, BuildOptions, LastGood};
    use crate::model::ObjectKey;
    use crate::sources::file::parse;

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
}
