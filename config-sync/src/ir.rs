//! The one intermediate form both inputs compile into. A Route's status
//! ([`crate::lower::route::validate_route`]) and a KIngress with its Services
//! ([`crate::lower::kingress::lower`]) each become an [`Ingress`]; the builder turns
//! a list of them into the routing table and never looks at where they came
//! from. Everything here is already validated: header names and values are
//! typed, hosts normalised, percents summing to 100.

use std::sync::Arc;

use http::{HeaderName, HeaderValue};

use dataplane::affinity::Affinity;
use dataplane::endpoints::{write_key, PortSelector};

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
    pub affinity: Option<Arc<Affinity>>,
    /// Its requests go to the authorization server, when there is one
    /// (`knative-gateway.dev/ext-authz`).
    pub authorize: bool,
    /// A KIngress's labels, for the authorization server.
    pub labels: dataplane::table::Labels,
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

#[cfg(test)]
mod tests {
    use super::*;

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
