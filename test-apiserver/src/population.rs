//! A cluster of Knative's size, as Serving writes it: KIngresses of one
//! class (two rules each: the three cluster-local names, then the external
//! host; one 100% split carrying `Knative-Serving-Revision`/`-Namespace`),
//! each revision's Service and EndpointSlice, and Services and slices that no
//! KIngress references, in other namespaces. Named by index, so a test can
//! change one of them by name.

use std::net::SocketAddr;

use serde_json::{json, Value};

/// The KIngress API version.
pub const KINGRESS_API: &str = "networking.internal.knative.dev/v1alpha1";

/// KIngresses per namespace.
const PER_NAMESPACE: usize = 100;

/// The namespace of KIngress `i`.
pub fn namespace(i: usize) -> String {
    format!("app-{:03}", i / PER_NAMESPACE)
}

/// The name of KIngress `i` (its Route's).
pub fn name(i: usize) -> String {
    format!("svc-{i:05}")
}

/// The external host of KIngress `i`.
pub fn host(i: usize) -> String {
    format!("{}.{}.example.com", name(i), namespace(i))
}

/// The revision (and its Service) KIngress `i` starts on.
pub fn revision(i: usize) -> String {
    format!("{}-00001", name(i))
}

/// KIngress `i` of `class` at `generation`, all of it to Service `service`
/// (a revision of it) in its namespace.
pub fn kingress(i: usize, class: &str, generation: i64, service: &str) -> Value {
    let (ns, name) = (namespace(i), name(i));
    let http = json!({"paths": [{"splits": [{
        "serviceName": service, "serviceNamespace": ns, "servicePort": 80, "percent": 100,
        "appendHeaders": {"Knative-Serving-Revision": service, "Knative-Serving-Namespace": ns}}]}]});
    json!({"apiVersion": KINGRESS_API, "kind": "Ingress",
        "metadata": {"name": name, "namespace": ns, "generation": generation,
                     "creationTimestamp": "2026-01-01T00:00:00Z",
                     // What Serving labels a Service's KIngress with.
                     "labels": {"serving.knative.dev/route": name,
                                "serving.knative.dev/routeNamespace": ns,
                                "serving.knative.dev/service": name},
                     "annotations": {"networking.knative.dev/ingress.class": class}},
        "spec": {"httpOption": "Enabled", "rules": [
            {"hosts": [format!("{name}.{ns}"), format!("{name}.{ns}.svc"),
                       format!("{name}.{ns}.svc.cluster.local")],
             "visibility": "ClusterLocal", "http": http},
            {"hosts": [host(i)], "visibility": "ExternalIP", "http": http}]}})
}

/// A revision's Service: port 80 named `http`.
pub fn service(ns: &str, name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"type": "ClusterIP", "ports": [{"name": "http", "port": 80, "targetPort": 8012}]}})
}

/// The EndpointSlice of Service `ns/name`: one ready endpoint at `addr`.
pub fn slice(ns: &str, name: &str, addr: SocketAddr) -> Value {
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("{name}-abcde"), "namespace": ns,
                     "labels": {"kubernetes.io/service-name": name}},
        "addressType": "IPv4", "ports": [{"name": "http", "port": addr.port()}],
        "endpoints": [{"addresses": [addr.ip().to_string()], "conditions": {"ready": true}}]})
}

/// What to create.
#[derive(Debug, Clone)]
pub struct Population {
    /// KIngresses of `class`, each with its revision's Service and slice.
    pub kingresses: usize,
    /// Services (each with a slice) no KIngress references.
    pub unrelated: usize,
    /// The ingress class.
    pub class: String,
    /// Where every revision's endpoint is.
    pub backend: SocketAddr,
}

impl Population {
    /// Every object, KIngresses last (as a cluster has them: Serving creates
    /// a revision's Service before its KIngress).
    pub fn objects(&self) -> impl Iterator<Item = Value> + '_ {
        let revisions = (0..self.kingresses).flat_map(move |i| {
            let (ns, rev) = (namespace(i), revision(i));
            [service(&ns, &rev), slice(&ns, &rev, self.backend)]
        });
        let unrelated = (0..self.unrelated).flat_map(move |j| {
            let ns = format!("other-{:03}", j / PER_NAMESPACE);
            let name = format!("unrelated-{j:05}");
            [service(&ns, &name), slice(&ns, &name, self.backend)]
        });
        let kingresses =
            (0..self.kingresses).map(move |i| kingress(i, &self.class, 1, &revision(i)));
        revisions.chain(unrelated).chain(kingresses)
    }
}
