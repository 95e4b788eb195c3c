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

/// Which port of an EndpointSlice carries a backend: the port named `name`,
/// or else `number`, the Service's numeric `targetPort`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PortSelector {
    /// Slice port name: the Service port's name (empty when unnamed), or
    /// queue-proxy's `http` for a revision. Shared: most are the same few names.
    pub name: Arc<str>,
    /// Used when no slice port has that name.
    pub number: Option<u16>,
}

impl PortSelector {
    /// The port of a slice with `ports`, if any matches.
    pub fn select(&self, ports: &[(Arc<str>, u16)]) -> Option<u16> {
        ports
            .iter()
            .find(|(name, _)| **name == *self.name)
            .map(|p| p.1)
            .or(self.number)
    }
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
