//! The one intermediate form both inputs compile into. A Route's status
//! ([`crate::build::validate_route`]) and a KIngress with its Services
//! ([`crate::kingress::lower`]) each become an [`Ingress`]; the builder turns
//! a list of them into the routing table and never looks at where they came
//! from. Everything here is already validated: header names and values are
//! typed, hosts normalised, percents summing to 100.

use std::sync::Arc;

use http::{HeaderName, HeaderValue};

use crate::model::{Kind, ObjectKey};

/// Header name and value pairs set on a request, replacing what the client sent.
pub type HeaderSet = Vec<(HeaderName, HeaderValue)>;

/// A header set shared by every split that sets it (a revision's split and
/// its tag), and then by the table.
pub type SharedHeaders = Arc<[(HeaderName, HeaderValue)]>;

/// One routed object: its hosts, paths and splits.
#[derive(Debug, Clone, PartialEq)]
pub struct Ingress {
    /// `Route` or `KIngress`.
    pub kind: Kind,
    /// `namespace/name`.
    pub key: Arc<ObjectKey>,
    /// Every rule is internal only (a cluster-local Route, or a KIngress whose
    /// rules are all `ClusterLocal`).
    pub cluster_local: bool,
    /// `K-Network-Hash` set on a request that asks for it with `override`
    /// (Knative's `InsertProbe`); only KIngresses have one.
    pub hash: Option<HeaderValue>,
    /// Rules in order: the first one naming a host owns it.
    pub rules: Vec<Rule>,
    /// A Route's tags and the revision each sends to, for `/debug/routes`.
    pub tags: Vec<(String, Backend)>,
    /// Sticky canary: its splits keep each user on one revision by cookie.
    pub affinity: Option<Arc<crate::affinity::Affinity>>,
}

/// Hosts and the paths that serve them.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// Normalised hosts.
    pub hosts: Vec<Host>,
    /// Paths in order: the first that matches wins.
    pub paths: Vec<Path>,
}

/// A host of a rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Host {
    /// Lower case, no port, no trailing dot.
    pub name: String,
    /// Served only on the internal listener.
    pub internal_only: bool,
    /// A Route's `name.ns` cluster name: also answers for `name.ns.svc` and
    /// `name.ns.svc.<cluster domain>`, which are not stored.
    pub cluster_name: bool,
    /// Plain-HTTP requests get a 301 to `https://` (a KIngress with
    /// `httpOption: Redirected`, on its public hosts).
    pub https_redirect: bool,
}

/// A path rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Path {
    /// Literal prefix of the request path; empty matches every path.
    pub prefix: String,
    /// Exact header matches, all of which must hold.
    pub headers: HeaderSet,
    /// Set on the request before the split.
    pub append: HeaderSet,
    /// Replaces the upstream Host.
    pub rewrite_host: Option<HeaderValue>,
    /// Percents summing to 100; 0% splits are kept (never picked).
    pub splits: Vec<Split>,
}

/// One weighted backend of a path.
#[derive(Debug, Clone, PartialEq)]
pub struct Split {
    /// Where it goes.
    pub backend: Backend,
    /// Share of the path's requests.
    pub percent: u32,
    /// Set on the request after the split.
    pub append: Option<SharedHeaders>,
    /// With no ready endpoint, go to the activator (a revision split) rather than 503.
    pub activator: bool,
}

/// Where a split sends requests.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Backend {
    /// Ready endpoints of EndpointSlices, found in the endpoint index by
    /// [`Backend::index_key`] and served on the port `port` selects.
    Pods {
        /// Namespace. Shared: a Route's revisions all have the same one.
        namespace: Arc<str>,
        /// Revision or Service name. Shared by a revision's split and tag.
        name: Arc<str>,
        /// A revision's private slices (true), or a Service's slices.
        revision: bool,
        /// Which port of the slices.
        port: PortSelector,
    },
    /// The gateway's own internal Service (an ExternalName pointing back at
    /// it, as DomainMapping does): dispatched again without a network hop.
    Internal,
    /// An ExternalName Service elsewhere, resolved in the background.
    External {
        /// Namespace of the Service.
        namespace: String,
        /// Name of the Service.
        name: String,
        /// DNS name to resolve.
        host: String,
        /// Port to dial.
        port: u16,
    },
}

/// Which port of an EndpointSlice carries a backend, and how to speak to it:
/// the port named `name`, or else `number`, the Service's numeric `targetPort`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PortSelector {
    /// Slice port name: the Service port's name (empty when unnamed), or
    /// queue-proxy's `http` for a revision. Shared: most are the same few names.
    pub name: Arc<str>,
    /// Used when no slice port has that name.
    pub number: Option<u16>,
    /// The port speaks HTTP/2: in cleartext (a Service port named `http2`
    /// or `h2c`, or with `appProtocol: kubernetes.io/h2c`), or, with `tls`,
    /// by ALPN `h2` (the Service has such a port beside its `https` one).
    pub h2: bool,
    /// The port is Knative's `https` port (system-internal TLS): reached over
    /// TLS 1.3 with the trust bundle and Knative's names ([`crate::trust`]).
    pub tls: bool,
    /// A revision's: a slice without the `http` port is served on its port
    /// named `http2` over HTTP/2 cleartext, as Knative names the private port
    /// of a revision whose container asks for h2c.
    pub or_http2: bool,
}

/// Knative's name for a revision port that speaks HTTP/2 cleartext.
pub const HTTP2_PORT: &str = "http2";

impl PortSelector {
    /// The port of a slice with `ports`, if any matches, and whether it
    /// speaks HTTP/2 cleartext.
    pub fn select(&self, ports: &[(Arc<str>, u16)]) -> Option<(u16, bool)> {
        let named = |want: &str| ports.iter().find(|(name, _)| **name == *want).map(|p| p.1);
        if let Some(port) = named(&self.name) {
            return Some((port, self.h2));
        }
        if self.or_http2 {
            if let Some(port) = named(HTTP2_PORT) {
                return Some((port, true));
            }
        }
        self.number.map(|port| (port, self.h2))
    }
}

/// Knative's name for the port where the activator and queue-proxy serve TLS.
pub const HTTPS_PORT: &str = "https";

/// Whether a Service port is Knative's TLS port: named `https`, or 443.
/// With `system-internal-tls: Enabled`, Serving points every split at 443,
/// the `https` port of the revision's Services (targetPort 8112).
pub fn is_tls_port(name: Option<&str>, port: Option<i32>) -> bool {
    name == Some(HTTPS_PORT) || port == Some(443)
}

/// Whether a Service port asks for HTTP/2 cleartext to its endpoints.
pub fn is_h2c_port(name: Option<&str>, app_protocol: Option<&str>) -> bool {
    matches!(name, Some("http2" | "h2c")) || app_protocol == Some("kubernetes.io/h2c")
}

impl Backend {
    /// The endpoint index key of a `Pods` backend, written into `buf`
    /// ([`revision_key`] or [`service_key`]); `None` for any other.
    pub fn index_key<'b>(&self, buf: &'b mut String) -> Option<&'b str> {
        let Backend::Pods {
            namespace,
            name,
            revision,
            ..
        } = self
        else {
            return None;
        };
        Some(write_key(buf, *revision, namespace, name))
    }
}

/// The one writer of endpoint index keys, into `buf`: `r/ns/name` for a
/// revision's private EndpointSlices, `s/ns/name` for a Service's.
pub fn write_key<'b>(buf: &'b mut String, revision: bool, namespace: &str, name: &str) -> &'b str {
    buf.clear();
    for part in [if revision { "r" } else { "s" }, "/", namespace, "/", name] {
        buf.push_str(part);
    }
    buf
}

/// Endpoint index key of a revision's private EndpointSlices.
pub fn revision_key(namespace: &str, revision: &str) -> String {
    write_key(&mut String::new(), true, namespace, revision).to_owned()
}

/// Endpoint index key of a Service's EndpointSlices.
pub fn service_key(namespace: &str, service: &str) -> String {
    write_key(&mut String::new(), false, namespace, service).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ports(list: &[(&str, u16)]) -> Vec<(Arc<str>, u16)> {
        list.iter().map(|(n, p)| ((*n).into(), *p)).collect()
    }

    fn selector(name: &str, number: Option<u16>, h2: bool, or_http2: bool) -> PortSelector {
        PortSelector {
            name: name.into(),
            number,
            h2,
            tls: false,
            or_http2,
        }
    }

    #[test]
    fn a_port_is_picked_by_name_then_number_with_its_protocol() {
        let svc = selector("grpc", Some(9000), true, false);
        assert_eq!(
            svc.select(&ports(&[("x", 1), ("grpc", 50051)])),
            Some((50051, true))
        );
        assert_eq!(svc.select(&ports(&[("x", 1)])), Some((9000, true)));
        let unnumbered = selector("web", None, false, false);
        assert_eq!(unnumbered.select(&ports(&[("x", 1)])), None);
    }

    #[test]
    fn a_revision_without_an_http_port_is_served_on_http2_over_h2c() {
        let rev = selector("http", None, false, true);
        assert_eq!(
            rev.select(&ports(&[("http", 8012), ("http2", 8013)])),
            Some((8012, false))
        );
        assert_eq!(
            rev.select(&ports(&[("http-metrics", 9091), ("http2", 8013)])),
            Some((8013, true))
        );
        assert_eq!(rev.select(&ports(&[("http-metrics", 9091)])), None);
        // A Service's port never falls back to another name.
        let svc = selector("http", None, false, false);
        assert_eq!(svc.select(&ports(&[("http2", 8013)])), None);
    }

    #[test]
    fn tls_ports_by_name_or_number() {
        assert!(is_tls_port(Some("https"), Some(443)));
        assert!(is_tls_port(Some("https"), Some(8443)));
        assert!(is_tls_port(None, Some(443)));
        assert!(!is_tls_port(Some("http"), Some(80)));
        assert!(!is_tls_port(Some("http2"), Some(80)));
        assert!(!is_tls_port(None, None));
    }

    #[test]
    fn h2c_ports_by_name_or_app_protocol() {
        assert!(is_h2c_port(Some("http2"), None));
        assert!(is_h2c_port(Some("h2c"), None));
        assert!(is_h2c_port(Some("web"), Some("kubernetes.io/h2c")));
        assert!(!is_h2c_port(Some("http"), None));
        assert!(!is_h2c_port(None, Some("http")));
        assert!(!is_h2c_port(Some("grpc"), None));
    }
}
