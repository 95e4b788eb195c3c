//! What every proxy is configured to serve: routes, each splitting traffic
//! over revisions by percent, each revision a list of endpoints. Rendered to
//! the gateway's snapshot file here and to each peer's config in `peers`.

use std::fmt::Write;
use std::net::SocketAddr;

/// The domain every route's external host ends with.
pub const DOMAIN: &str = "example.com";

/// A revision: its traffic percent and ready endpoints (none: scaled to zero).
#[derive(Debug, Clone)]
pub struct Revision {
    /// Knative revision name; also what its backends answer.
    pub name: String,
    /// Share of the route's traffic, 0–100.
    pub percent: u32,
    /// Ready endpoints.
    pub endpoints: Vec<SocketAddr>,
}

/// A Knative Route's traffic.
#[derive(Debug, Clone)]
pub struct Route {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Revisions whose percents sum to 100.
    pub revisions: Vec<Revision>,
}

impl Route {
    /// External host: `name.namespace.example.com`.
    pub fn host(&self) -> String {
        format!("{}.{}.{DOMAIN}", self.name, self.namespace)
    }
}

/// Everything a proxy serves.
#[derive(Debug, Clone, Default)]
pub struct Topology {
    /// Routes, hosts distinct.
    pub routes: Vec<Route>,
    /// Backends serve TLS (Knative's system-internal TLS), if set.
    pub upstream_tls: Option<UpstreamTls>,
    /// Every request is checked with this gRPC authorization server, if set.
    pub authz: Option<SocketAddr>,
}

/// How backends serving TLS are checked: Knative's system-internal TLS, as
/// Kourier configures Envoy for it.
#[derive(Debug, Clone)]
pub struct UpstreamTls {
    /// The CA that signed every backend's certificate, as PEM.
    pub ca_pem: String,
    /// The same in a file (Envoy's `trusted_ca`).
    pub ca_file: std::path::PathBuf,
    /// The name in the backends' certificates: `kn-user-<namespace>`.
    pub name: String,
}

/// The endpoint groups a peer's config needs: revisions with the same
/// endpoints share one upstream, so a peer's config grows with hosts, not
/// with hosts × upstreams.
pub fn upstreams(t: &Topology) -> Vec<Vec<SocketAddr>> {
    let mut out: Vec<Vec<SocketAddr>> = Vec::new();
    for rev in t.routes.iter().flat_map(|r| &r.revisions) {
        if !rev.endpoints.is_empty() && !out.contains(&rev.endpoints) {
            out.push(rev.endpoints.clone());
        }
    }
    out
}

/// Index of `rev`'s endpoint group in [`upstreams`].
pub fn upstream_of(groups: &[Vec<SocketAddr>], rev: &Revision) -> usize {
    groups
        .iter()
        .position(|g| *g == rev.endpoints)
        .expect("every revision with endpoints has a group")
}

/// The gateway's snapshot file: each Route's status and one private
/// EndpointSlice per endpoint (each test backend has a port of its own);
/// with TLS backends, KIngresses instead ([`kingress_snapshot`]).
pub fn snapshot(t: &Topology) -> String {
    if let Some(tls) = &t.upstream_tls {
        return kingress_snapshot(t, tls);
    }
    let mut s = String::with_capacity(t.routes.len() * 1200);
    for route in &t.routes {
        let (ns, name) = (&route.namespace, &route.name);
        let _ = write!(
            s,
            "apiVersion: serving.knative.dev/v1\nkind: Route\nmetadata: {{name: {name}, namespace: {ns}}}\nstatus:\n  url: http://{}\n  traffic:\n",
            route.host()
        );
        for rev in &route.revisions {
            let _ = writeln!(
                s,
                "  - {{revisionName: {}, percent: {}}}",
                rev.name, rev.percent
            );
        }
        s.push_str("---\n");
        for rev in &route.revisions {
            for (i, ep) in rev.endpoints.iter().enumerate() {
                let _ = write!(
                    s,
                    "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {rev}-private-{i}\n  namespace: {ns}\n  labels: {{serving.knative.dev/revision: {rev}, networking.internal.knative.dev/serviceType: Private}}\naddressType: IPv4\nports: [{{name: http, port: {port}}}]\nendpoints: [{{addresses: [\"{ip}\"], conditions: {{ready: true}}}}]\n---\n",
                    rev = rev.name,
                    port = ep.port(),
                    ip = ep.ip()
                );
            }
        }
    }
    s
}

/// The gateway's snapshot with TLS backends, as Serving writes it with
/// system-internal TLS on: the CA Secret, and per route a KIngress whose
/// splits go to port 443 of a Service per revision, its `https` port, with
/// one EndpointSlice per endpoint.
pub fn kingress_snapshot(t: &Topology, tls: &UpstreamTls) -> String {
    let indented: String = tls.ca_pem.lines().map(|l| format!("    {l}\n")).collect();
    let mut s = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: routing-serving-certs, namespace: knative-serving}}\nstringData:\n  ca.crt: |\n{indented}---\n"
    );
    for route in &t.routes {
        let (ns, name) = (&route.namespace, &route.name);
        let _ = write!(
            s,
            "apiVersion: networking.internal.knative.dev/v1alpha1\nkind: Ingress\nmetadata:\n  name: {name}\n  namespace: {ns}\n  annotations: {{networking.knative.dev/ingress.class: knative-gateway.ingress.networking.knative.dev}}\nspec:\n  rules:\n  - hosts: [{}]\n    visibility: ExternalIP\n    http:\n      paths:\n      - splits:\n",
            route.host()
        );
        for rev in &route.revisions {
            let _ = writeln!(
                s,
                "        - {{serviceName: {rev}, serviceNamespace: {ns}, servicePort: 443, percent: {pct}, appendHeaders: {{Knative-Serving-Revision: {rev}, Knative-Serving-Namespace: {ns}}}}}",
                rev = rev.name,
                pct = rev.percent
            );
        }
        s.push_str("---\n");
        for rev in &route.revisions {
            let _ = write!(
                s,
                "apiVersion: v1\nkind: Service\nmetadata: {{name: {rev}, namespace: {ns}}}\nspec:\n  ports: [{{name: http, port: 80, targetPort: 8012}}, {{name: https, port: 443, targetPort: 8112}}]\n---\n",
                rev = rev.name
            );
            for (i, ep) in rev.endpoints.iter().enumerate() {
                let _ = write!(
                    s,
                    "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {rev}-{i}\n  namespace: {ns}\n  labels: {{kubernetes.io/service-name: {rev}}}\naddressType: IPv4\nports: [{{name: https, port: {port}}}]\nendpoints: [{{addresses: [\"{ip}\"], conditions: {{ready: true}}}}]\n---\n",
                    rev = rev.name,
                    port = ep.port(),
                    ip = ep.ip()
                );
            }
        }
    }
    s
}

/// Write `text` to `path` atomically (write aside, then rename), as a
/// ConfigMap update or `kubectl cp` of a whole file would appear.
pub fn write_atomic(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rev(name: &str, percent: u32, ports: &[u16]) -> Revision {
        Revision {
            name: name.into(),
            percent,
            endpoints: ports
                .iter()
                .map(|p| SocketAddr::from(([127, 0, 0, 1], *p)))
                .collect(),
        }
    }

    #[test]
    fn revisions_with_equal_endpoints_share_an_upstream() {
        let t = Topology {
            routes: vec![
                Route {
                    namespace: "a".into(),
                    name: "x".into(),
                    revisions: vec![rev("x-1", 90, &[1, 2]), rev("x-2", 10, &[3])],
                },
                Route {
                    namespace: "a".into(),
                    name: "y".into(),
                    revisions: vec![rev("y-1", 100, &[1, 2]), rev("y-2", 0, &[])],
                },
            ],
            upstream_tls: None,
            authz: None,
        };
        let groups = upstreams(&t);
        assert_eq!(groups.len(), 2);
        assert_eq!(upstream_of(&groups, &t.routes[1].revisions[0]), 0);
        let yaml = snapshot(&t);
        assert_eq!(yaml.matches("kind: Route").count(), 2);
        assert_eq!(yaml.matches("kind: EndpointSlice").count(), 5);
        assert!(yaml.contains("url: http://y.a.example.com"));
        assert!(yaml.contains("{revisionName: y-2, percent: 0}"));
    }
}
